/**
 * What a client gets when a model server answers badly, end to end: small
 * `node:http` stubs in this process play the misbehaving upstreams, a real
 * router process in upstream mode is in front. Each case is one the router
 * once passed through, buffered without bound or hung on.
 */
import * as Http from "node:http"
import type { AddressInfo, Socket } from "node:net"
import { afterEach, assert, describe, it } from "vitest"
import { killAll, until } from "./support/Processes.ts"
import { requestAt } from "./support/TestRouter.ts"
import { metricValue, openStream, post, startFront, startUpstream } from "./support/Routers.ts"

const stubs: Array<Http.Server> = []

afterEach(async () => {
  killAll()
  for (const stub of stubs.splice(0)) {
    stub.closeAllConnections()
    await new Promise((resolve) => stub.close(resolve))
  }
})

interface Stub {
  readonly url: string
  /** Requests that arrived whole (their body read), by path. */
  readonly received: Array<string>
}

/** An upstream stub: `/health` answers 200; every other request goes to `answer` once its body is read. */
const stub = async (answer: (request: Http.IncomingMessage, response: Http.ServerResponse, socket: Socket) => void): Promise<Stub> => {
  const received: Array<string> = []
  const server = Http.createServer((request, response) => {
    if (request.url === "/health") return void response.end("ok")
    request.resume()
    request.on("end", () => {
      received.push(request.url ?? "")
      answer(request, response, request.socket)
    })
  })
  stubs.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, received }
}

const json = (response: Http.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

const completion = { id: "c", object: "text_completion", choices: [{ index: 0, text: "ok", finish_reason: "stop" }] }
const body = { model: "m", prompt: "x" }
const stream = { ...body, stream: true }
const codeOf = (response: { json: unknown }) => (response.json as { error: { code: string } }).error.code
const messageOf = (response: { json: unknown }) => (response.json as { error: { message: string } }).error.message

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

describe("what is sent again, counted at the upstream", () => {
  it("resends a request an upstream may have processed once (never with UPSTREAM_RETRIES=0), on a fresh connection or a reused one", { timeout: 60_000 }, async () => {
    const other = await stub((_, response) => json(response, 200, completion))
    // Reads the whole request, then drops the connection without a byte of answer: on a fresh connection.
    const dropper = await stub((_, __, socket) => socket.destroy())
    const noBudget = { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_RETRIES: "0" }
    const front = await startFront([`${dropper.url};weight=1000`, `${other.url};weight=1`], noBudget)
    let tries = 0
    while (dropper.received.length === 0 && tries++ < 20) {
      const response = await post(front.port, "/v1/completions", body)
      if ((dropper.received.length as number) === 1) {
        assert.strictEqual(response.status, 502)
        assert.strictEqual(codeOf(response), "upstream_failed")
      }
    }
    assert.strictEqual(dropper.received.length, 1)
    // The model may have it: nobody else was asked.
    assert.strictEqual(other.received.length, tries - 1)
    // With the defaults: sent once more, elsewhere.
    const budgeted = await startFront([`${dropper.url};weight=1000`, `${other.url};weight=1`], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })
    const otherBefore = other.received.length
    for (let i = 0; i < 20 && dropper.received.length < 2; i++) assert.strictEqual((await post(budgeted.port, "/v1/completions", body)).status, 200)
    assert.strictEqual(dropper.received.length, 2)
    assert.isAbove(other.received.length, otherBefore)

    // Answers the first request on a connection, and drops the connection when a second one has been read:
    // a reused connection broken after the whole request was written is "may have been processed" too.
    const served = new WeakSet<Socket>()
    const closer = await stub((_, response, socket) => {
      if (served.has(socket)) return void socket.destroy()
      served.add(socket)
      json(response, 200, completion)
    })
    const second = await startFront([`${closer.url};weight=1000`, `${other.url};weight=1`], noBudget)
    const before = other.received.length
    let failed = 0
    for (let i = 0; i < 20 && closer.received.length < 2; i++) {
      const response = await post(second.port, "/v1/completions", body)
      if (response.status !== 200) {
        failed++
        assert.strictEqual(response.status, 502)
        assert.strictEqual(codeOf(response), "upstream_failed")
      }
    }
    assert.strictEqual(closer.received.length, 2)
    // The one that met the dropped connection was not sent again with UPSTREAM_RETRIES=0.
    assert.strictEqual(failed, 1)
    assert.strictEqual(other.received.length - before, 0)
  })

  it("a keep-alive connection the server closes unread as a request arrives: resent once, each request read once", { timeout: 60_000 }, async () => {
    // Answers the first request on a connection, then stops reading it and closes it 300 ms later: a
    // draining server closing an "idle" connection whose next request already sits unread in its kernel.
    const closing = await stub((_, response, socket) => {
      json(response, 200, completion)
      socket.pause()
      setTimeout(() => socket.destroy(), 300)
    })
    const other = await stub((_, response) => json(response, 200, completion))
    const front = await startFront([`${closing.url};weight=1000`, `${other.url};weight=1`], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })
    let firstOnClosing = false
    for (let i = 0; i < 20 && !firstOnClosing; i++) {
      assert.strictEqual((await post(front.port, "/v1/completions", body)).status, 200)
      firstOnClosing = closing.received.length === 1
    }
    assert.isTrue(firstOnClosing)
    const otherBefore = other.received.length
    const otherId = other.url.slice("http://".length)
    const retriesToOther = async () => (await metricValue(front.port, `router_upstream_retries_total{upstream="${otherId}"`)) ?? 0
    // Sent at once, on the same (reused) connection, which the server never reads; one whose first
    // draw was the other upstream (1 in 1001) went there directly, and the next is sent.
    let sent = 0
    while (sent < 5 && (await retriesToOther()) === 0) {
      const second = await post(front.port, "/v1/completions", body)
      sent++
      assert.strictEqual(second.status, 200)
      assert.strictEqual(second.headers["x-inference-upstream"], otherId)
    }
    // HTTP/1.1 cannot prove it went unread (a reset also comes from a proxy whose model server died
    // after reading it), so it was a budgeted retry: each request read once, by the other upstream.
    assert.strictEqual(await retriesToOther(), 1)
    assert.strictEqual(closing.received.length, 1)
    assert.strictEqual(other.received.length - otherBefore, sent)
    // Counted as "may have been processed" (error), not as never reached (connect_error).
    const lines = (await requestAt(front.port, { path: "/metrics" })).text.split("\n")
      .filter((line) => line.startsWith("router_upstream_requests_total{") && line.includes(closing.url.slice("http://".length)) && !line.includes("status=\"200\""))
    assert.strictEqual(lines.length, 1, lines.join("\n"))
    assert.include(lines[0], "status=\"error\"")
    assert.isTrue(lines[0].endsWith(" 1"), lines[0])
  })

  it("answers a request every upstream may have processed with 502 upstream_failed, not 503 no_healthy_upstream", { timeout: 60_000 }, async () => {
    // Reads the request, then resets 100 ms later on a fresh connection; the only upstream, so the budgeted retry finds none left.
    const crashing = await stub((_, __, socket) => void setTimeout(() => socket.destroy(), 100))
    const front = await startFront([crashing.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0" })
    const response = await post(front.port, "/v1/completions", body)
    assert.strictEqual(response.status, 502)
    assert.strictEqual(codeOf(response), "upstream_failed")
    assert.isUndefined(response.headers["retry-after"])
    assert.strictEqual(crashing.received.length, 1)
  })

  it("sends a request that kills model servers mid-work to no other with UPSTREAM_RETRIES=0, and to one more at most by default, even with no retry budget, over warm keep-alive connections", { timeout: 60_000 }, async () => {
    /** Answers ordinary requests; reads a POISON one, then dies 300 ms later (its connections drop, its port closes). */
    const poisoned = async () => {
      const poison: Array<number> = []
      const server = Http.createServer((request, response) => {
        if (request.url === "/health") return void response.end("ok")
        let text = ""
        request.setEncoding("utf8")
        request.on("data", (chunk) => (text += chunk))
        request.on("end", () => {
          if (!text.includes("POISON")) return json(response, 200, completion)
          poison.push(Date.now())
          setTimeout(() => {
            server.close()
            server.closeAllConnections()
          }, 300)
        })
      })
      stubs.push(server)
      await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
      return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, poison }
    }
    const run = async (env: Record<string, string>) => {
      const servers = await Promise.all([poisoned(), poisoned(), poisoned()])
      const front = await startFront(servers.map((s) => s.url), { UPSTREAM_HEALTH_INTERVAL_MS: "0", ...env })
      // Keep-alive connections to every server, each having served answers.
      for (let round = 0; round < 3; round++) {
        const answers = await Promise.all(Array.from({ length: 6 }, () => post(front.port, "/v1/completions", body)))
        assert.deepStrictEqual(answers.map((a) => a.status), Array(6).fill(200))
      }
      const response = await post(front.port, "/v1/completions", { model: "m", prompt: "POISON" })
      return { response, received: servers.map((s) => s.poison.length).reduce((a, b) => a + b, 0) }
    }
    const strict = await run({ UPSTREAM_RETRIES: "0" })
    assert.strictEqual(strict.received, 1)
    assert.strictEqual(strict.response.status, 502)
    assert.strictEqual(codeOf(strict.response), "upstream_failed")
    killAll()
    // UPSTREAM_RETRIES=5 and no retry budget: still resent once only, to one more server, then the real failure (not "none is healthy").
    const budgeted = await run({ UPSTREAM_RETRIES: "5", UPSTREAM_RETRY_BUDGET_MIN: "0", UPSTREAM_RETRY_BUDGET_PERCENT: "0" })
    assert.strictEqual(budgeted.received, 2)
    assert.strictEqual(budgeted.response.status, 502)
    assert.strictEqual(codeOf(budgeted.response), "upstream_failed")
  })
})

describe("a refusal whose body never ends", () => {
  it("is not drained for ever: its connection is closed, the pool stays free, every request is answered", { timeout: 60_000 }, async () => {
    let open = 0
    // 503 with Retry-After, then a body dripping a KB every 50 ms, for ever.
    const endless = await stub((_, response) => {
      open++
      response.writeHead(503, { "content-type": "text/plain", "retry-after": "0" })
      const timer = setInterval(() => response.write("x".repeat(1000)), 50)
      response.on("close", () => {
        clearInterval(timer)
        open--
      })
    })
    const other = await stub((_, response) => json(response, 200, completion))
    // Two slots: the endless upstream's pool has three connections, which drained bodies would fill.
    const front = await startFront([`${endless.url};weight=1000`, `${other.url};weight=1`], {
      UPSTREAM_HEALTH_INTERVAL_MS: "0",
      MAX_CONCURRENCY: "2",
      UPSTREAM_FIRST_BYTE_TIMEOUT_MS: "1500"
    })
    const statuses: Array<number> = []
    for (let i = 0; i < 6; i++) statuses.push((await post(front.port, "/v1/completions", body)).status)
    assert.deepStrictEqual(statuses, Array(6).fill(200))
    assert.isAtLeast(endless.received.length, 4)
    // Every dropped refusal's connection closed by the router (at most 4 KB or 1 s of its body read).
    await until(async () => open === 0, "the endless bodies' connections closed", 3000)
  })
})

describe("Retry-After beyond 2^53", () => {
  it("is capped at 60 s for the balancer and the client, on /v1/* and /infer: no client left waiting", { timeout: 60_000 }, async () => {
    const huge = await stub((_, response) => {
      response.writeHead(429, { "retry-after": "99999999999999999999", "content-length": 2 })
      response.end("{}")
    })
    const front = await startFront([huge.url], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_REQUEST_TIMEOUT_MS: "5000" })
    for (const path of ["/v1/completions", "/infer"]) {
      const response = await Promise.race([
        post(front.port, path, path === "/infer" ? { prompt: "x" } : body),
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${path}: no answer within 5 s`)), 5000))
      ])
      assert.strictEqual(response.status, 429, path)
      assert.strictEqual(response.headers["retry-after"], "60", path)
    }
  })
})

describe("deadlines across retries", () => {
  it("ends a slow refusal followed by a silent upstream in a 504 within about one first-byte timeout, not two", { timeout: 60_000 }, async () => {
    const slowRefusal = await stub((_, response) => {
      setTimeout(() => json(response, 503, { error: { message: "busy" } }), 1000)
    })
    const silent = await stub(() => {})
    const front = await startFront([`${slowRefusal.url};weight=1000`, `${silent.url};weight=1`], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_FIRST_BYTE_TIMEOUT_MS: "2000" })
    const startedAt = Date.now()
    const response = await post(front.port, "/v1/completions", body)
    const tookMs = Date.now() - startedAt
    assert.strictEqual(response.status, 504)
    assert.strictEqual(codeOf(response), "upstream_timeout")
    // One timeout (2 s) and slack; a fresh timeout for the retry could not answer before 1 s + 2 s
    // (timers never fire early), so that is the bound: a loaded machine's delays stay below it.
    assert.isBelow(tookMs, 3000)
    assert.isAtLeast(tookMs, 1950)
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
})
