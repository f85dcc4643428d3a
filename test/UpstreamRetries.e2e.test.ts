/**
 * What the router sends again to model servers, and when, end to end: small
 * `node:http` stubs in this process play the upstreams (support/Stubs.ts) and
 * count what reached them, a real router process in upstream mode is in front:
 * requests an upstream may have processed, refusals whose body never ends,
 * Retry-After beyond reason, one deadline across retries.
 */
import * as Http from "node:http"
import type { Socket } from "node:net"
import { afterEach, assert, describe, it } from "vitest"
import { killAll, until } from "./support/Processes.ts"
import { requestAt } from "./support/TestRouter.ts"
import { metricValue, post, startFront } from "./support/Routers.ts"
import { body, closeStubs, codeOf, completion, json, listenStub, stub } from "./support/Stubs.ts"

afterEach(async () => {
  killAll()
  await closeStubs()
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
      return { url: await listenStub(server), poison }
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
