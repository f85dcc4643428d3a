/**
 * Per-upstream series follow the pool, so the alerts that read them can fire:
 * an upstream that leaves (a `dns+` name's answer changes) takes its gauges
 * with it, one that joins starts its ejection and retry counters at 0 and its
 * routing-signals gauge at 0 until a scrape of its /metrics succeeds.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Metric, References } from "effect"
import { exposition } from "./support/Exposition.ts"
import { TestClock } from "effect/testing"
import { upstreamGauges } from "../src/router/upstream/UpstreamBackend.ts"
import { defaultUpstream } from "../src/router/core/Config.ts"
import { makeCacheAwareRouting } from "../src/router/routing/Routing.ts"
import { defaultRouting } from "../src/router/routing/RoutingSettings.ts"
import { makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, parseTargets, type UpstreamTarget } from "../src/router/upstream/Targets.ts"
import { Upstreams } from "../src/router/upstream/Upstreams.ts"


/** The series of `name`, by their `upstream` label. */
const byUpstream = (samples: Record<string, number>, name: string) =>
  Object.fromEntries(
    Object.entries(samples)
      .filter(([series]) => series.startsWith(`${name}{`))
      .map(([series, value]) => [/upstream="([^"]*)"/.exec(series)![1], value])
  )

/** Each test its own registry. */
const isolated = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provideService(effect, Metric.MetricRegistry, new Map())

describe("per-upstream series", () => {
  it.effect("an upstream that leaves the pool takes its gauges with it; one that joins counts ejections and retries from 0", () =>
    isolated(Effect.gen(function*() {
      let answer: ReadonlyArray<string> = ["10.0.0.1", "10.0.0.2"]
      const upstreams = yield* Upstreams.make(
        {
          ...defaultUpstream,
          healthIntervalMs: 0,
          dnsRefreshMs: 1000,
          targets: (parseTargets("dns+http://model-pods.ns.svc:8000") as { targets: ReadonlyArray<UpstreamTarget> }).targets
        },
        10,
        async () => answer
      )
      const scrape = upstreamGauges()
      const context = yield* Effect.context<never>()
      scrape(upstreams.view(), upstreams.ready(), context)
      let samples = yield* exposition
      assert.deepStrictEqual(byUpstream(samples, "router_upstream_available"), { "10.0.0.1:8000": 1, "10.0.0.2:8000": 1 })
      assert.strictEqual(samples["router_upstreams_healthy"], 2)
      assert.strictEqual(samples["router_upstream_pool_ready"], 1)
      assert.deepStrictEqual(byUpstream(samples, "router_upstream_ejections_total"), { "10.0.0.1:8000": 0, "10.0.0.2:8000": 0 })
      assert.deepStrictEqual(byUpstream(samples, "router_upstream_retries_total"), { "10.0.0.1:8000": 0, "10.0.0.2:8000": 0 })

      answer = ["10.0.0.3"] // the pods were replaced
      yield* TestClock.adjust(1000)
      scrape(upstreams.view(), upstreams.ready(), context)
      samples = yield* exposition
      for (const gauge of ["router_upstream_available", "router_upstream_in_flight", "router_upstream_connections"]) {
        assert.deepStrictEqual(Object.keys(byUpstream(samples, gauge)), ["10.0.0.3:8000"], gauge)
      }
      assert.strictEqual(byUpstream(samples, "router_upstream_ejections_total")["10.0.0.3:8000"], 0)
      assert.strictEqual(byUpstream(samples, "router_upstream_retries_total")["10.0.0.3:8000"], 0)

      answer = []
      yield* TestClock.adjust(1000)
      scrape(upstreams.view(), upstreams.ready(), context)
      samples = yield* exposition
      // No member left: no per-upstream series (not a stale 1), and the router's count is 0, not absent.
      assert.deepStrictEqual(byUpstream(samples, "router_upstream_available"), {})
      assert.strictEqual(samples["router_upstreams_healthy"], 0)
      assert.strictEqual(samples["router_upstream_pool_ready"], 0)
    }).pipe(Effect.scoped)))

  it.effect("a dns+ name that never resolved: an empty pool counts 0 healthy upstreams, so the no-healthy-upstream alert sees it", () =>
    isolated(Effect.gen(function*() {
      const upstreams = yield* Upstreams.make(
        {
          ...defaultUpstream,
          healthIntervalMs: 0,
          dnsRefreshMs: 1000,
          targets: (parseTargets("dns+http://model-pods.ns.svc:8000") as { targets: ReadonlyArray<UpstreamTarget> }).targets
        },
        10,
        async () => {
          throw new Error("ENOTFOUND") // a headless Service without ready pods
        }
      )
      upstreamGauges()(upstreams.view(), upstreams.ready(), yield* Effect.context<never>())
      const samples = yield* exposition
      assert.strictEqual(samples["router_upstreams_healthy"], 0)
    }).pipe(Effect.scoped, Effect.provideService(References.MinimumLogLevel, "None"))))

  it.effect("the pool counts as ready by /readyz's rule: an ejected upstream chosen in panic serves, though none is healthy", () =>
    isolated(Effect.gen(function*() {
      const ejected = { id: "10.0.0.1:8000", version: "", weight: 1, inFlight: 0, available: false, connections: 1 }
      const scrape = upstreamGauges()
      const context = yield* Effect.context<never>()
      scrape([ejected], true, context)
      let samples = yield* exposition
      assert.strictEqual(samples["router_upstreams_healthy"], 0)
      assert.strictEqual(samples["router_upstream_pool_ready"], 1)
      scrape([ejected], false, context)
      samples = yield* exposition
      assert.strictEqual(samples["router_upstream_pool_ready"], 0)
    })))

  it.effect("routing signals: 0 from joining until a scrape succeeds, gone when the upstream leaves", () =>
    isolated(Effect.gen(function*() {
      const target = parseTarget("http://127.0.0.1:9") as UpstreamTarget
      const endpoints = ["10.0.0.1", "10.0.0.2"].map((address) => makeEndpoint(target, address, `${address}:9`, 1, true))
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 100 },
        kvEndpoints: [],
        pool: "t",
        fetchMetrics: async (url) => {
          if (url.includes("10.0.0.2")) throw new Error("connection refused")
          return `vllm:num_requests_running{model_name="m"} 1\nvllm:num_requests_waiting{model_name="m"} 0`
        }
      })
      let pool = endpoints
      routing.attach(() => pool)
      yield* TestClock.adjust(100)
      for (let i = 0; i < 3; i++) yield* Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))
      let samples = yield* exposition
      assert.deepStrictEqual(byUpstream(samples, "router_routing_upstream_signals_fresh"), { "10.0.0.1:9": 1, "10.0.0.2:9": 0 })

      pool = [endpoints[1]]
      yield* TestClock.adjust(100)
      samples = yield* exposition
      assert.deepStrictEqual(byUpstream(samples, "router_routing_upstream_signals_fresh"), { "10.0.0.2:9": 0 })
      assert.deepStrictEqual(Object.keys(byUpstream(samples, "router_routing_index_blocks")), ["10.0.0.2:9"])
    }).pipe(Effect.scoped)))
})
