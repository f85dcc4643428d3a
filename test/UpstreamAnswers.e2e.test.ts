/**
 * What a client gets when a model server answers badly, end to end: small
 * `node:http` stubs in this process play the misbehaving upstreams
 * (support/Stubs.ts), a real router process in upstream mode is in front.
 * Each case is one the router once passed through, buffered without bound or
 * hung on. What is sent again, and when, is in UpstreamRetries.e2e.test.ts.
 */
import * as Http from "node:http"
import { afterEach, assert, describe, it } from "vitest"
import { killAll, until } from "./support/Processes.ts"
import { openUnreadStream, requestAt } from "./support/TestRouter.ts"
import { metricValue, openStream, post, startFront, startUpstream } from "./support/Routers.ts"
import { body, closeStubs, codeOf, completion, json, messageOf, stream, stub } from "./support/Stubs.ts"

afterEach(async () => {
  killAll()
  await closeStubs()
})

describe("bad upstream answers", () => {
  it("answers 502 naming the fault for a redirect without Location, a status that is not HTTP's, and a 2xx completion that is not JSON", { timeout: 60_000 }, async () => {
    const redirect = await stub((_, response) => {
      response.writeHead(301)
      response.end()
    })
    const strange = await stub((_, response, socket) => {
      // Node refuses to write 999 itself: written raw.
      socket.end("HTTP/1.1 999 Whatever\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
      response.destroy()
    })
    const html = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/html" })
      response.end("<html>oops</html>")
    })
    const upgrade = await stub((_, response, socket) => {
      socket.end("HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\nGARBAGE")
      response.destroy()
    })
    const cases = [[redirect, "without a Location"], [strange, "status 999"], [html, "not JSON"], [upgrade, "protocol switch (101)"]] as const
    const fronts = await Promise.all(cases.map(([upstream]) => startFront([upstream.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })))
    for (const [i, [, detail]] of cases.entries()) {
      const front = fronts[i]
      for (const path of ["/v1/completions", "/infer"]) {
        const response = await post(front.port, path, path === "/infer" ? { prompt: "x" } : body)
        assert.strictEqual(response.status, 502, `${path} ${detail}`)
        assert.strictEqual(codeOf(response), "upstream_bad_answer", `${path} ${detail}: ${messageOf(response)}`)
        assert.include(messageOf(response), detail)
      }
      // An answer, however bad, is never sent again.
      assert.strictEqual(cases[i][0].received.length, 2, detail)
    }
  })

  it("an answer Node's HTTP parser refuses (no status line, headers too large) is a bad answer, not a silence", { timeout: 60_000 }, async () => {
    const garbage = await stub((_, response, socket) => {
      socket.end("THIS IS NOT HTTP\r\n\r\n")
      response.destroy()
    })
    const huge = await stub((_, response, socket) => {
      socket.end(`HTTP/1.1 200 OK\r\nx-padding: ${"a".repeat(200_000)}\r\ncontent-length: 2\r\n\r\n{}`)
      response.destroy()
    })
    const fronts = await Promise.all([garbage, huge].map((upstream) => startFront([upstream.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })))
    for (const [front, detail] of [[fronts[0], "(HPE"], [fronts[1], "(UND_ERR_HEADERS_OVERFLOW)"]] as const) {
      for (const path of ["/v1/completions", "/infer"]) {
        const response = await post(front.port, path, path === "/infer" ? { prompt: "x" } : body)
        assert.strictEqual(response.status, 502, path)
        assert.strictEqual(codeOf(response), "upstream_bad_answer", `${path}: ${messageOf(response)}`)
        assert.include(messageOf(response), `not valid HTTP/1.1 ${detail}`)
      }
    }
  })

  it("a content-type sent twice, events to a non-streamed request, a stream that ends without [DONE]", { timeout: 60_000 }, async () => {
    const twice = await stub((_, __, socket) => {
      const text = JSON.stringify(completion)
      socket.end(`HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-type: text/event-stream\r\ncontent-length: ${text.length}\r\nconnection: close\r\n\r\n${text}`)
    })
    const events = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" })
      response.end("data: {\"x\":1}\n\n")
    })
    const [twiceFront, eventsFront] = await Promise.all([twice, events].map((upstream) => startFront([upstream.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })))
    const first = await post(twiceFront.port, "/v1/completions", body)
    assert.strictEqual(first.status, 200)
    assert.strictEqual(first.headers["content-type"], "application/json")
    const unasked = await post(eventsFront.port, "/v1/completions", body)
    assert.strictEqual(unasked.status, 502)
    assert.strictEqual(codeOf(unasked), "upstream_bad_answer")
    assert.include(messageOf(unasked), "did not ask for a stream")
    const client = await openStream(eventsFront.port, "/v1/completions", stream)
    await client.ended
    assert.strictEqual(client.events.length, 3)
    assert.strictEqual(client.events[0], "{\"x\":1}")
    assert.include(client.events[1], "upstream_broken")
    assert.strictEqual(client.events[2], "[DONE]")
  })

  it("bounds a buffered answer (UPSTREAM_MAX_BODY_BYTES): 502 naming the setting, logged", { timeout: 60_000 }, async () => {
    const huge = await stub((_, response) => {
      response.writeHead(200, { "content-type": "application/json" })
      // Never ends by itself: the router must stop reading, not hold it all.
      const more = () => {
        while (response.write(`{"pad":"${"x".repeat(8192)}"},`)) {}
        response.once("drain", more)
      }
      response.write("[")
      more()
    })
    const front = await startFront([huge.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_MAX_BODY_BYTES: "65536", LOG_LEVEL: "info" })
    for (const path of ["/v1/completions", "/infer"]) {
      const response = await post(front.port, path, path === "/infer" ? { prompt: "x" } : body)
      assert.strictEqual(response.status, 502)
      assert.strictEqual(codeOf(response), "upstream_body_too_large")
      assert.include(messageOf(response), "UPSTREAM_MAX_BODY_BYTES")
    }
    await until(() => front.output().stdout.includes("UPSTREAM_MAX_BODY_BYTES"), "the log line naming the setting")
  })

  it("relays CRLF-framed events as they come, and ends a stream cut inside an event with one error frame and [DONE]", { timeout: 60_000 }, async () => {
    let next: (() => void) | undefined
    const sse = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" })
      response.write(`data: {"n":1}\r\n\r\n`)
      // The second event only once the client has the first: nothing may wait for the stream's end.
      next = () => {
        response.write(`data: {"n":2}\r\n\r\ndata: {"n":`)
        setTimeout(() => response.end(), 50)
      }
    })
    const front = await startFront([sse.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })
    const client = await openStream(front.port, "/v1/completions", stream)
    assert.strictEqual(client.status, 200)
    await client.received(1)
    assert.deepStrictEqual(JSON.parse(client.events[0]), { n: 1 })
    next!()
    await client.ended
    assert.deepStrictEqual(client.events.slice(0, 2).map((e) => JSON.parse(e)), [{ n: 1 }, { n: 2 }])
    assert.strictEqual(client.events.length, 4)
    assert.strictEqual(JSON.parse(client.events[2]).error.code, "upstream_broken")
    assert.strictEqual(client.events[3], "[DONE]")
  })

  it("ends a stream whose event outgrows UPSTREAM_MAX_EVENT_BYTES with an error frame and [DONE]", { timeout: 60_000 }, async () => {
    const endless = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" })
      response.write("data: {\"n\":1}\n\n")
      response.write("data: " + "x".repeat(4096))
    })
    const front = await startFront([endless.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_MAX_EVENT_BYTES: "2048" })
    const client = await openStream(front.port, "/v1/completions", stream)
    await client.ended
    assert.strictEqual(client.events.length, 3)
    assert.strictEqual(JSON.parse(client.events[1]).error.code, "upstream_event_too_large")
    assert.include(JSON.parse(client.events[1]).error.message, "UPSTREAM_MAX_EVENT_BYTES")
    assert.strictEqual(client.events[2], "[DONE]")
  })

  it("ends a request that drips bytes forever at UPSTREAM_REQUEST_TIMEOUT_MS", { timeout: 60_000 }, async () => {
    const drip = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" })
      const timer = setInterval(() => response.write(": still here\n"), 50)
      response.on("close", () => clearInterval(timer))
    })
    const front = await startFront([drip.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_IDLE_TIMEOUT_MS: "300", UPSTREAM_REQUEST_TIMEOUT_MS: "800" })
    const startedAt = Date.now()
    const client = await openStream(front.port, "/v1/completions", stream)
    await client.ended
    const error = JSON.parse(client.events.at(-2)!).error
    assert.strictEqual(error.code, "upstream_timeout")
    assert.include(error.message, "UPSTREAM_REQUEST_TIMEOUT_MS")
    assert.strictEqual(client.events.at(-1), "[DONE]")
    assert.isBelow(Date.now() - startedAt, 5000)
  })
})

describe("backpressure through an upstream", () => {
  it("stalls the upstream's stream while the client does not read, instead of buffering it", { timeout: 60_000 }, async () => {
    let written = 0
    const firehose = await stub((_, response) => {
      response.writeHead(200, { "content-type": "text/event-stream" })
      const event = `data: ${JSON.stringify({ pad: "x".repeat(1000) })}\n\n`
      const more = () => {
        while (written < 256 * 1024 * 1024) {
          written += event.length
          if (!response.write(event)) return void response.once("drain", more)
        }
        response.end()
      }
      more()
    })
    const front = await startFront([firehose.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })
    // A client that reads the headers, then nothing.
    const stalled = await new Promise<Http.IncomingMessage>((resolve, reject) => {
      const text = JSON.stringify(stream)
      const request = Http.request({ host: "127.0.0.1", port: front.port, method: "POST", path: "/v1/completions", agent: false, headers: { "content-type": "application/json", "content-length": text.length } }, resolve)
      request.on("error", reject)
      request.end(text)
    })
    stalled.pause()
    await new Promise((resolve) => setTimeout(resolve, 2500))
    // Socket buffers on the way hold what the kernel allows (9 MB measured here; autotuning may allow more);
    // without backpressure the router read 100-180 MB in 1.5 s.
    assert.isBelow(written, 64 * 1024 * 1024, `the upstream wrote ${written} bytes to a client that read none`)
    stalled.destroy()
  })
})

describe("a client that stops reading a relayed stream", () => {
  it("is cut off after CLIENT_STALL_TIMEOUT_MS, the upstream's stream stopped and the slot given to the next request", { timeout: 60_000 }, async () => {
    const upstream = await startUpstream({ SIM_TTFT_MS: "0", SIM_ITL_MS: "0", SIM_MAX_MODEL_LEN: "1000000" })
    const front = await startFront([upstream], { MAX_CONCURRENCY: "1", CLIENT_STALL_TIMEOUT_MS: "300" })
    const socket = openUnreadStream(front.port, "m")
    await until(async () => (await metricValue(front.port, "router_requests_running")) === 1, "the stream holding the one slot")
    const next = await post(front.port, "/infer", { prompt: "after the stall" })
    assert.strictEqual(next.status, 200)
    assert.strictEqual(await metricValue(front.port, `router_requests_total{endpoint="/v1/completions",status="499"}`), 1)
    socket.destroy()
  })
})

describe("/v1/models through upstreams", () => {
  it("reports the model servers' max_model_len, or the router's own when they do not say", { timeout: 60_000 }, async () => {
    const upstream = await startUpstream({ SIM_MAX_MODEL_LEN: "1234" })
    const front = await startFront([upstream])
    const models = await requestAt(front.port, { path: "/v1/models" })
    assert.strictEqual(models.status, 200)
    assert.deepInclude((models.json as { data: Array<unknown> }).data[0], { id: "m", max_model_len: 1234 })
    const silent = await stub((_, response) => json(response, 404, { error: { message: "no such route" } }))
    const fallback = await startFront([silent.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0", SIM_MAX_MODEL_LEN: "777" })
    const own = await requestAt(fallback.port, { path: "/v1/models" })
    assert.deepInclude((own.json as { data: Array<unknown> }).data[0], { id: "m", max_model_len: 777 })
  })

  it("a /v1/models still asking a silent upstream when the router stops is answered 503 shutting_down, and the router exits", { timeout: 60_000 }, async () => {
    // Holds /v1/models unanswered (its first-byte timeout is far away).
    const held: Array<Http.ServerResponse> = []
    const silent = await stub((_, response) => void held.push(response))
    const front = await startFront([silent.url], {
      UPSTREAM_HEALTH_INTERVAL_MS: "0",
      UPSTREAM_FIRST_BYTE_TIMEOUT_MS: "60000",
      SHUTDOWN_DELAY_MS: "0",
      SHUTDOWN_TIMEOUT_MS: "300"
    })
    const models = requestAt(front.port, { path: "/v1/models" })
    await until(async () => silent.received.includes("/v1/models"), "the upstream was asked")
    front.child.kill("SIGTERM")
    const answer = await models
    assert.strictEqual(answer.status, 503)
    assert.strictEqual((answer.json as { error: { code: string } }).error.code, "shutting_down")
    assert.strictEqual(await front.exited, 0)
    for (const response of held) response.destroy()
  })
})
