/**
 * MODEL_BACKEND=upstream end to end: routers in simulated mode are the model
 * servers (real processes, with their failure injection), a router in
 * upstream mode is in front, and every assertion is about what a client or an
 * operator sees: status, headers, SSE events, metrics, readiness.
 * Statistical bounds are wide (several standard deviations) so a slow machine
 * cannot fail them; waits poll with generous limits.
 */
import { afterEach, assert, describe, it } from "vitest"
import { freePort, killAll, until } from "./support/Processes.ts"
import { chatStream, metricValue, openStream, post, startFront, startUpstream, waitFor } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

afterEach(killAll)

const upstreamOf = (response: { headers: Record<string, unknown> }) => response.headers["x-inference-upstream"] as string

/** Retries to every upstream together (each upstream's series exists from 0). */
const retriesOfAll = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n")
    .filter((line) => line.startsWith("router_upstream_retries_total{"))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

describe("routing to upstream model servers", () => {
  it("honours weights, labels versions, answers /infer in its own shape and reuses connections", async () => {
    const [stable, canary] = await Promise.all([startUpstream(), startUpstream()])
    const front = await startFront([], {
      UPSTREAMS: `http://127.0.0.1:${stable.port};weight=3;version=v1,http://127.0.0.1:${canary.port}/v1;weight=1;version=v2`
    })
    const counts = new Map<string, number>()
    for (let i = 0; i < 200; i++) {
      const response = await requestAt(front.port, {
        method: "POST",
        path: "/infer",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: `request ${i}` }),
        keepAlive: true
      })
      assert.strictEqual(response.status, 200)
      assert.deepInclude(response.json, { modelRef: "m", prompt: `request ${i}` })
      counts.set(upstreamOf(response), (counts.get(upstreamOf(response)) ?? 0) + 1)
    }
    // Binomial(200, 0.75): standard deviation 6.1; the bound is 5 of them.
    const stableCount = counts.get(`127.0.0.1:${stable.port}`) ?? 0
    assert.isTrue(stableCount >= 120 && stableCount <= 180, `stable served ${stableCount} of 200`)
    const chat = await post(front.port, "/v1/chat/completions", { model: "m", messages: [{ role: "user", content: "hi" }] })
    assert.strictEqual(chat.status, 200)
    assert.strictEqual((chat.json as { object: string }).object, "chat.completion")
    assert.include(["v1", "v2"], chat.headers["x-inference-upstream-version"])
    // One request at a time: one connection each serves them all (a health check may add one).
    for (const upstream of [stable, canary]) {
      const connections = await metricValue(front.port, `router_upstream_connections{upstream="127.0.0.1:${upstream.port}"}`)
      assert.isTrue(connections !== undefined && connections >= 1 && connections <= 2, `connections to ${upstream.port}: ${connections}`)
    }
    const ok = await metricValue(front.port, `router_upstream_requests_total{upstream="127.0.0.1:${stable.port}",version="v1",status="200"}`)
    // Every attempt counted, the chat request's too when it went there; each one timed to its end.
    assert.include([stableCount, stableCount + 1], ok)
    assert.strictEqual(await metricValue(front.port, `router_upstream_request_duration_seconds_count{upstream="127.0.0.1:${stable.port}"}`), ok)
  })

  it("sends fewer requests to a slower upstream (least request)", async () => {
    const [slow, fast] = await Promise.all([startUpstream({ SIM_LATENCY_MS: "300" }), startUpstream({ SIM_LATENCY_MS: "5" })])
    const front = await startFront([slow, fast])
    const counts = new Map<string, number>()
    await Promise.all(Array.from({ length: 6 }, async () => {
      for (let i = 0; i < 10; i++) {
        const response = await post(front.port, "/infer", { prompt: "x" })
        assert.strictEqual(response.status, 200)
        counts.set(upstreamOf(response), (counts.get(upstreamOf(response)) ?? 0) + 1)
      }
    }))
    const slowCount = counts.get(`127.0.0.1:${slow.port}`) ?? 0
    const fastCount = counts.get(`127.0.0.1:${fast.port}`) ?? 0
    assert.isTrue(fastCount > 3 * slowCount, `fast ${fastCount}, slow ${slowCount}`)
  })

  it("ejects an upstream after consecutive 5xx, and takes it back after the ejection time", async () => {
    const [failing, healthy] = await Promise.all([
      startUpstream({ SIM_FAILURE_RATE: "100", SIM_FAILURE_TYPES: "server_error" }),
      startUpstream()
    ])
    const front = await startFront([failing, healthy], { UPSTREAM_EJECT_AFTER: "2", UPSTREAM_EJECT_BASE_MS: "1500" })
    const body = { model: "m", prompt: "x", max_tokens: 2 }
    let failures = 0
    for (let i = 0; i < 200 && failures < 2; i++) {
      const response = await post(front.port, "/v1/completions", body)
      if (response.status === 500) {
        failures++
        // The upstream's own OpenAI error, passed through.
        assert.strictEqual((response.json as { error: { code: string } }).error.code, "server_error")
      }
    }
    assert.strictEqual(failures, 2)
    assert.strictEqual(await metricValue(front.port, `router_upstream_ejections_total{upstream="127.0.0.1:${failing.port}"}`), 1)
    for (let i = 0; i < 20; i++) {
      const response = await post(front.port, "/v1/completions", body)
      assert.strictEqual(response.status, 200)
      assert.strictEqual(upstreamOf(response), `127.0.0.1:${healthy.port}`)
    }
    await until(async () => (await metricValue(front.port, `router_upstream_available{upstream="127.0.0.1:${failing.port}"}`)) === 1, "the ejected upstream to return")
  })

  it("retries a 429 and a refused connection on another upstream, and counts the retries", async () => {
    const [limited, healthy] = await Promise.all([
      startUpstream({ SIM_FAILURE_RATE: "100", SIM_FAILURE_TYPES: "rate_limit" }),
      startUpstream()
    ])
    const closed = await freePort()
    // No active checks: the closed port counts as healthy until requests fail.
    const front = await startFront([limited, healthy, `http://127.0.0.1:${closed}`], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_EJECT_AFTER: "1000" })
    for (let i = 0; i < 30; i++) {
      const response = await post(front.port, "/v1/completions", { model: "m", prompt: "x", max_tokens: 2 })
      assert.strictEqual(response.status, 200)
      assert.strictEqual(upstreamOf(response), `127.0.0.1:${healthy.port}`)
    }
    assert.isAbove((await metricValue(front.port, `router_upstream_retries_total{upstream="127.0.0.1:${healthy.port}"}`)) ?? 0, 0)
    assert.isAbove(
      (await metricValue(front.port, `router_upstream_requests_total{upstream="127.0.0.1:${closed}",version="",status="connect_error"}`)) ?? 0,
      0
    )
    // No retry budget: a refusal is passed on as it came, not retried.
    const strict = await startFront([limited, healthy], { UPSTREAM_RETRY_BUDGET_PERCENT: "0", UPSTREAM_RETRY_BUDGET_MIN: "0" })
    let passedOn = 0
    for (let i = 0; i < 20; i++) {
      const response = await post(strict.port, "/v1/completions", { model: "m", prompt: "x", max_tokens: 2 })
      if (response.status === 429) passedOn++
      else assert.strictEqual(response.status, 200)
    }
    assert.isAbove(passedOn, 0)
    assert.strictEqual(await retriesOfAll(strict.port), 0)
    // When every upstream refuses, the client gets the refusal and the upstream's Retry-After.
    const refused = await post(front.port, "/v1/completions", { model: "m", prompt: "x" }, { "x-sim-failure": "rate_limit" })
    assert.strictEqual(refused.status, 429)
    assert.strictEqual(refused.headers["retry-after"], "1")
    assert.strictEqual((refused.json as { error: { type: string } }).error.type, "rate_limit_error")
  })

  it("passes a stream through event by event; an upstream dying mid-stream ends it with an error frame and [DONE], not retried", async () => {
    const upstream = await startUpstream({ SIM_MODE: "echo", SIM_TTFT_MS: "10", SIM_ITL_MS: "40" })
    const front = await startFront([upstream], { LOG_LEVEL: "debug" })
    const stream = await openStream(front.port, "/v1/chat/completions", chatStream(50))
    assert.strictEqual(stream.status, 200)
    assert.strictEqual(stream.headers["content-type"], "text/event-stream; charset=utf-8")
    await stream.received(3)
    const first = JSON.parse(stream.events[0])
    assert.deepStrictEqual(first.choices[0].delta, { role: "assistant", content: "w0" })
    upstream.child.kill("SIGKILL")
    await stream.ended
    const last = stream.events.slice(-2)
    assert.strictEqual(last[1], "[DONE]")
    assert.strictEqual(JSON.parse(last[0]).error.code, "upstream_broken")
    // Every event before the error is whole JSON: nothing was cut mid-frame.
    for (const event of stream.events.slice(0, -1)) JSON.parse(event)
    assert.isBelow(stream.events.length, 50)
    assert.strictEqual(await retriesOfAll(front.port), 0)
    // Logs never hold prompts, even at debug.
    await until(() => front.output().stdout.includes("/v1/chat/completions"), "the access log line")
    assert.notInclude(front.output().stdout + front.output().stderr, "w17")
  })

  it("a client that hangs up aborts the upstream's generation", async () => {
    const upstream = await startUpstream({ SIM_MODE: "echo", SIM_TTFT_MS: "10", SIM_ITL_MS: "50" })
    const front = await startFront([upstream])
    const running = () => metricValue(upstream.port, `vllm:num_requests_running{model_name="m"}`)
    const stream = await openStream(front.port, "/v1/chat/completions", chatStream(200))
    const inFlight = () => metricValue(front.port, `router_upstream_in_flight{upstream="127.0.0.1:${upstream.port}"}`)
    await stream.received(2)
    assert.strictEqual(await running(), 1)
    assert.strictEqual(await inFlight(), 1)
    stream.hangUp()
    await until(async () => (await running()) === 0, "the upstream to stop generating", 5_000)
    await until(async () => (await inFlight()) === 0, "the front's in-flight count to drop", 5_000)
    await until(async () => (await metricValue(front.port, "router_requests_running")) === 0, "the front's slot to free", 5_000)
  })

  it("times out an upstream that goes silent mid-stream (idle) or sends no response at all (first byte)", async () => {
    const upstream = await startUpstream({ SIM_MODE: "echo", SIM_TTFT_MS: "10", SIM_ITL_MS: "2000" })
    const front = await startFront([upstream], { UPSTREAM_IDLE_TIMEOUT_MS: "300", UPSTREAM_FIRST_BYTE_TIMEOUT_MS: "500" })
    const stream = await openStream(front.port, "/v1/completions", { model: "m", prompt: "a b c d", stream: true })
    await stream.ended
    assert.strictEqual(stream.events.at(-1), "[DONE]")
    assert.strictEqual(JSON.parse(stream.events.at(-2)!).error.code, "upstream_timeout")
    // Not streamed, the upstream answers only after its whole generation (over 2 s): no first byte in time.
    const startedAt = Date.now()
    const plain = await post(front.port, "/v1/completions", { model: "m", prompt: "a b c d" })
    assert.strictEqual(plain.status, 504)
    assert.strictEqual((plain.json as { error: { code: string } }).error.code, "upstream_timeout")
    assert.isBelow(Date.now() - startedAt, 2000)
  })

  it("is not ready while no upstream is healthy, and ready again when one is", async () => {
    const upstream = await startUpstream()
    const front = await startFront([upstream])
    upstream.child.kill("SIGKILL")
    await waitFor(front.port, 503)
    const readyz = await requestAt(front.port, { path: "/readyz" })
    assert.deepStrictEqual(readyz.json, { status: "no_healthy_upstream" })
    const refused = await post(front.port, "/v1/completions", { model: "m", prompt: "x" })
    assert.strictEqual(refused.status, 503)
    assert.strictEqual((refused.json as { error: { code: string } }).error.code, "no_healthy_upstream")
    assert.strictEqual(refused.headers["retry-after"], "1")
    const infer = await post(front.port, "/infer", { prompt: "x" })
    assert.strictEqual(infer.status, 503)
    assert.strictEqual((infer.json as { error: { code: string } }).error.code, "no_healthy_upstream")
    await startUpstream({}, upstream.port)
    await waitFor(front.port, 200)
    assert.strictEqual((await post(front.port, "/infer", { prompt: "x" })).status, 200)
  })

  it("drains: a stream in flight at SIGTERM runs to its end", async () => {
    const upstream = await startUpstream({ SIM_MODE: "echo", SIM_TTFT_MS: "10", SIM_ITL_MS: "30" })
    const front = await startFront([upstream], { SHUTDOWN_TIMEOUT_MS: "15000" })
    const stream = await openStream(front.port, "/v1/chat/completions", chatStream(30))
    await stream.received(2)
    front.child.kill("SIGTERM")
    await stream.ended
    assert.strictEqual(stream.events.at(-1), "[DONE]")
    assert.strictEqual(JSON.parse(stream.events.at(-2)!).choices[0].finish_reason, "stop")
    assert.strictEqual(stream.events.length, 32) // 30 tokens, the finish chunk, [DONE]
    assert.strictEqual(await front.exited, 0)
  })

  it("fails fast on bad upstream settings, naming the variable", async () => {
    const port = await freePort()
    const { startProcess } = await import("./support/Processes.ts")
    const bad = startProcess(["src/router/main.ts"], { PORT: String(port), MODEL_BACKEND: "upstream", UPSTREAMS: "http://a:1;weight=0" })
    assert.notStrictEqual(await bad.exited, 0)
    assert.include(bad.output().stderr + bad.output().stdout, "UPSTREAMS")
    assert.include(bad.output().stderr + bad.output().stdout, "weight must be an integer from 1 to 1000")
  })
})
