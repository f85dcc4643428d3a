/**
 * MODEL_BACKEND=upstream end to end: routers in simulated mode are the model
 * servers (real processes, with their failure injection), a router in
 * upstream mode is in front, and every assertion is about what a client or an
 * operator sees: status, headers, metrics. Balancing and retries here;
 * failures on either side (streams cut, hang-ups, silence, readiness, drain,
 * bad settings) in UpstreamFaults.e2e.test.ts.
 * Statistical bounds are wide (several standard deviations) so a slow machine
 * cannot fail them; waits poll with generous limits.
 */
import { afterEach, assert, describe, it } from "vitest"
import { freePort, killAll, until } from "./support/Processes.ts"
import { metricValue, post, retriesOfAll, startFront, startUpstream } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

afterEach(killAll)

const upstreamOf = (response: { headers: Record<string, unknown> }) => response.headers["x-inference-upstream"] as string

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
      assert.include(["v1", "v2"], response.headers["x-inference-upstream-version"])
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
})
