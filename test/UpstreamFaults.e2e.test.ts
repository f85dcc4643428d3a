/**
 * MODEL_BACKEND=upstream end to end, when something fails on either side:
 * routers in simulated mode are the model servers (real processes), a router
 * in upstream mode is in front; an upstream killed mid-stream, a client that
 * hangs up, an upstream gone silent, none healthy, a drain with a stream in
 * flight, bad settings. Balancing and retries: Upstream.e2e.test.ts.
 * Waits poll with generous limits.
 */
import { afterEach, assert, describe, it } from "vitest"
import { freePort, killAll, until } from "./support/Processes.ts"
import { chatStream, metricValue, openStream, post, retriesOfAll, startFront, startUpstream, waitFor } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

afterEach(killAll)

describe("upstream mode when a side fails", () => {
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
    // A model server's fault is not the router shedding: no shed series for it.
    assert.isUndefined(await metricValue(front.port, `router_shed_total{reason="upstream_timeout"}`))
  })

  it("is not ready while no upstream is healthy, and ready again when one is", async () => {
    const upstream = await startUpstream()
    const front = await startFront([upstream])
    // The pool's own rejections are exported from the start, as admission's are.
    assert.strictEqual(await metricValue(front.port, `router_shed_total{reason="no_healthy_upstream"}`), 0)
    assert.strictEqual(await metricValue(front.port, `router_shed_total{reason="upstreams_saturated"}`), 0)
    upstream.child.kill("SIGKILL")
    await waitFor(front.port, 503)
    // The log says which upstream failed and why.
    await until(() => front.output().stdout.includes(`upstream 127.0.0.1:${upstream.port} failed its health check (GET /health): ECONNREFUSED`), "the health check's warning")
    const readyz = await requestAt(front.port, { path: "/readyz" })
    assert.deepStrictEqual(readyz.json, { status: "no_healthy_upstream" })
    const refused = await post(front.port, "/v1/completions", { model: "m", prompt: "x" })
    assert.strictEqual(refused.status, 503)
    assert.strictEqual((refused.json as { error: { code: string } }).error.code, "no_healthy_upstream")
    assert.strictEqual(refused.headers["retry-after"], "1")
    const infer = await post(front.port, "/infer", { prompt: "x" })
    assert.strictEqual(infer.status, 503)
    assert.strictEqual((infer.json as { error: { code: string } }).error.code, "no_healthy_upstream")
    // The router's own rejection, in both dialects: named by the reason header, counted as shed.
    assert.strictEqual(refused.headers["x-router-reject-reason"], "no_healthy_upstream")
    assert.strictEqual(infer.headers["x-router-reject-reason"], "no_healthy_upstream")
    assert.strictEqual(await metricValue(front.port, `router_shed_total{reason="no_healthy_upstream"}`), 2)
    await startUpstream({}, upstream.port)
    await waitFor(front.port, 200)
    assert.strictEqual((await post(front.port, "/infer", { prompt: "x" })).status, 200)
  })

  it("an upstream that never passed a check is named in the log with the cause, once per run of failures", async () => {
    const closed = await freePort()
    const front = await startFront([`http://127.0.0.1:${closed}`], {}, false)
    const warning = `upstream 127.0.0.1:${closed} failed its health check (GET /health): ECONNREFUSED`
    await until(() => front.output().stdout.includes(warning), "the first check's warning")
    // Checked again and again (every 100 ms here), but said once.
    await new Promise((resolve) => setTimeout(resolve, 500))
    assert.strictEqual(front.output().stdout.split(warning).length - 1, 1)
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
