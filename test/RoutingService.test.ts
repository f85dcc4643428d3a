/**
 * The cache-aware routing service under TestClock: scraped signals and their
 * staleness, a request's route (header, in flight from the pick, learning from
 * a stream's first token and reported cached tokens), and forgetting an
 * upstream that fails its checks.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, References } from "effect"
import { TestClock } from "effect/testing"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { fetchUpstreamMetrics, makeCacheAwareRouting, maxMetricsBytes, promptOf } from "../src/router/routing/Routing.ts"
import { defaultRouting } from "../src/router/routing/RoutingSettings.ts"
import type { PrefixIndex } from "../src/router/routing/PrefixIndex.ts"
import { parseVllmMetrics } from "../src/router/routing/VllmMetrics.ts"
import { makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, type UpstreamTarget } from "../src/router/upstream/Targets.ts"

const target = parseTarget("http://127.0.0.1:9") as UpstreamTarget
const endpointsOf = (n: number) => Array.from({ length: n }, (_, i) => makeEndpoint(target, `10.0.0.${i}`, `10.0.0.${i}:9`, 1, true))

const metricsText = (waiting: number) =>
  [
    `vllm:num_requests_running{model_name="m"} 2`,
    `vllm:num_requests_waiting{model_name="m"} ${waiting}`,
    `vllm:cache_config_info{block_size="4",num_gpu_blocks="50",model_name="m"} 1`
  ].join("\n")

/** Lets the promises the background fibers wait on settle. */
const settle = Effect.promise(() => new Promise<void>((resolve) => setImmediate(resolve)))

/** Its KV events name the router's keys (a simulated server's): a decided block came back stored. */
const followsEvents = (routing: { readonly scheduler: { readonly index: PrefixIndex } }, id: string) => {
  routing.scheduler.index.recordDecision(id, ["probe"], 0)
  routing.scheduler.index.applyBatch(id, { seq: 0, events: [{ type: "BlockStored", blockHashes: ["probe"] }] }, 0)
}

const body = (text: string, stream = true) => JSON.stringify({ model: "m", stream, messages: [{ role: "user", content: text }] })
const words = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `w${from + i}`).join(" ")

describe("the prompt a request carries", () => {
  it("is the chat messages joined by newlines, or the completion prompt", () => {
    assert.deepStrictEqual(promptOf(JSON.stringify({ model: "m", messages: [{ role: "system", content: "a b" }, { role: "user", content: [{ type: "text", text: "c" }] }] })), { model: "m", parts: ["a b", "c"], stream: false })
    assert.deepStrictEqual(promptOf(JSON.stringify({ model: "m", prompt: ["x y"], stream: true })), { model: "m", parts: ["x y"], stream: true })
    assert.isUndefined(promptOf("{not json"))
    assert.isUndefined(promptOf(JSON.stringify({ model: "m" })))
    assert.isUndefined(promptOf(undefined))
  })
})

describe("an upstream's vLLM metrics", () => {
  it("are read in vLLM's names, summed over models, labels in any order", () => {
    const text = [
      "# HELP vllm:num_requests_running Number of requests in model execution batches.",
      "# TYPE vllm:num_requests_running gauge",
      `vllm:num_requests_running{engine="0",model_name="a"} 3`,
      `vllm:num_requests_running{engine="0",model_name="b"} 1`,
      `vllm:num_requests_waiting{model_name="a"} 2.0`,
      `vllm:kv_cache_usage_perc{model_name="a"} 0.25`,
      `vllm:cache_config_info{num_gpu_blocks="9000",block_size="32",cache_dtype="auto"} 1.0`,
      `vllm:num_requests_waiting{model_name="b"} NaN`,
      `router_requests_total{endpoint="x"} 5`
    ].join("\n")
    assert.deepStrictEqual(parseVllmMetrics(text), { running: 4, waiting: 2, blockSize: 32, numGpuBlocks: 9000, kvCacheUsage: 0.25 })
  })

  it("are absent from a server that publishes none of them", () => {
    assert.isUndefined(parseVllmMetrics("router_requests_total 1\n# vllm:num_requests_running 3"))
    assert.isUndefined(parseVllmMetrics(""))
  })
})

describe("reading an upstream's /metrics", () => {
  it.live("stops at maxMetricsBytes: an exporter gone wrong cannot fill the router's memory", () =>
    Effect.gen(function*() {
      const small = "vllm:num_requests_running{model_name=\"m\"} 1\n"
      const server = createServer((request, response) => {
        if (request.url === "/small") return response.end(small)
        // Endless: only the cap ends the read.
        const line = Buffer.alloc(64 * 1024, "#")
        const more = () => {
          while (response.write(line)) {}
          response.once("drain", more)
        }
        more()
      })
      yield* Effect.acquireRelease(
        Effect.promise(() => new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))),
        () => Effect.sync(() => server.closeAllConnections()).pipe(Effect.andThen(Effect.promise(() => new Promise((resolve) => server.close(resolve)))))
      )
      const port = (server.address() as AddressInfo).port
      assert.strictEqual(yield* Effect.promise(() => fetchUpstreamMetrics(`http://127.0.0.1:${port}/small`, 5_000)), small)
      const failure = yield* Effect.flip(Effect.tryPromise(() => fetchUpstreamMetrics(`http://127.0.0.1:${port}/endless`, 5_000)))
      assert.include(String(failure.cause), `exceed ${maxMetricsBytes} bytes`)
    }).pipe(Effect.scoped))
})

describe("UPSTREAMS items with kv-events", () => {
  it("take a port (on each address) or tcp://host:port, and refuse anything else", () => {
    assert.strictEqual((parseTarget("http://a:8000;kv-events=5557") as UpstreamTarget).kvEvents, 5557)
    assert.strictEqual((parseTarget("http://a:8000;kv-events=tcp://b:5557;weight=2") as UpstreamTarget).kvEvents, "tcp://b:5557")
    assert.strictEqual((parseTarget("dns+http://pods:8000;kv-events=5557") as UpstreamTarget).kvEvents, 5557)
    assert.isUndefined((parseTarget("http://a:8000") as UpstreamTarget).kvEvents)
    assert.strictEqual(parseTarget("http://a:8000;kv-events=0"), "kv-events must be a port (1-65535) or tcp://host:port")
    assert.strictEqual(parseTarget("http://a:8000;kv-events=http://b:1"), "kv-events must be a port (1-65535) or tcp://host:port")
    assert.strictEqual(parseTarget("dns+http://pods:8000;kv-events=tcp://b:1"), "a dns+ item's kv-events is a port (each address publishes its own)")
    assert.strictEqual(parseTarget("http://a:8000;kv_events=1"), `"kv_events=1" is not key=value`)
  })
})

describe("the cache-aware routing service", () => {
  it.effect("reads upstream metrics every interval and stops trusting them after three intervals", () =>
    Effect.gen(function*() {
      let failing = false
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 100 },
        kvEndpoints: [],
        pool: "t",
        fetchMetrics: async () => {
          if (failing) throw new Error("down")
          return metricsText(7)
        }
      })
      const pool = endpointsOf(2)
      routing.attach(() => pool)
      yield* TestClock.adjust(100)
      yield* settle
      yield* TestClock.adjust(100)
      yield* settle
      const state = routing.scheduler.state(pool[0].id)
      assert.deepInclude(state.signals, { running: 2, waiting: 7, blockSize: 4 })
      assert.strictEqual(state.blockSize, 4)
      failing = true
      yield* TestClock.adjust(300)
      yield* settle
      assert.isDefined(routing.scheduler.state(pool[0].id).signals, "still within three intervals")
      yield* TestClock.adjust(200)
      yield* settle
      assert.isUndefined(routing.scheduler.state(pool[0].id).signals)
    }))

  it.effect("a route: picks, counts from the pick, explains itself, learns from the stream's first token", () =>
    Effect.gen(function*() {
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0, routeHeaderCachedTokens: true },
        kvEndpoints: [],
        pool: "t",
        random: () => 0.5
      })
      const pool = endpointsOf(3)
      routing.attach(() => pool)
      const prompt = words(64)
      const first = routing.route({ path: "/v1/chat/completions", body: body(prompt) })!
      const chosen = first.choose(pool, 0)
      chosen.inFlight++
      first.sent(chosen, 0)
      assert.match(first.header(), /^cache-aware; reason=load; cached-tokens=0; predicted-ttft-ms=\d+$/)
      assert.isAbove(routing.scheduler.state(chosen.id).queuedPrefillTokens, 0)
      first.data(Buffer.from("data: {\"choices\":[]}\n\n"), 40)
      assert.strictEqual(routing.scheduler.state(chosen.id).queuedPrefillTokens, 0)
      first.data(Buffer.from("data: {\"usage\":{\"prompt_tokens\":64,\"prompt_tokens_details\":{\"cached_tokens\":0}}}\n\n"), 90)
      chosen.inFlight--
      first.ended(chosen, 100)
      assert.strictEqual(routing.scheduler.predictor.coefficients(chosen.id).samples, 1)

      // The same conversation's next turn: its prefix is cached there.
      const second = routing.route({ path: "/v1/chat/completions", body: body(`${prompt} ${words(8, 100)}`) })!
      assert.strictEqual(second.choose(pool, 200), chosen)
      assert.match(second.header(), /reason=cache; cached-tokens=64;/)
    }))

  it.effect("an answer confirms its prompt's blocks, an error does not; failures count as load", () =>
    Effect.gen(function*() {
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0 },
        kvEndpoints: [],
        pool: "t",
        // Near-ties keep the first candidate: only load can move the choice to b.
        random: () => 0.99
      })
      const [a, b] = endpointsOf(2)
      routing.attach(() => [a, b])
      // Both follow KV events naming the router's keys (the pending entries of a decision then live 2 s unless confirmed).
      for (const endpoint of [a, b]) followsEvents(routing, endpoint.id)
      const attempt = (text: string, answer: string) => {
        const route = routing.route({ path: "/v1/chat/completions", body: body(text) })!
        const chosen = route.choose([a], 0)
        route.sent(chosen, 0)
        route.data(Buffer.from(answer), 10)
        route.ended(chosen, 20)
        return route
      }
      attempt(words(32, 0), "{\"error\":{\"message\":\"refused\"}}")
      attempt(words(32, 1000), "data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n")
      const refusedKeys = routing.scheduler.index.keys(a.id, 5_000)
      assert.strictEqual(refusedKeys.size, 3, "only the answered prompt's two blocks (and the probe's, stored) remain after the pending time")

      // a failing fast (three consecutive failures) looks loaded, not idle.
      a.consecutiveFailures = 3
      const route = routing.route({ path: "/v1/chat/completions", body: body(words(8, 2000)) })!
      assert.strictEqual(route.choose([a, b], 0), b)
    }))

  it.effect("an answer confirms its prompt's blocks at its first token, not when the stream ends", () =>
    Effect.gen(function*() {
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0, routeHeaderCachedTokens: true },
        kvEndpoints: [],
        pool: "t"
      })
      const [a] = endpointsOf(1)
      routing.attach(() => [a])
      followsEvents(routing, a.id)
      const route = routing.route({ path: "/v1/chat/completions", body: body(words(64)) })!
      route.sent(route.choose([a], 0), 0)
      // The probe's block and the prompt's.
      const held = routing.scheduler.index.keys(a.id, 0).size
      assert.isAbove(held, 1)
      route.data(Buffer.from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"), 100)
      // A long generation: still streaming 30 s later, well past a decision's 2 s stand-in.
      assert.strictEqual(routing.scheduler.index.keys(a.id, 30_000).size, held)
      route.ended(a, 60_000)
    }))

  it.effect("keeps following the pool after a tick that throws", () =>
    Effect.gen(function*() {
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0 },
        kvEndpoints: [],
        pool: "t"
      })
      const pool = endpointsOf(1)
      let calls = 0
      routing.attach(() => {
        if (calls++ === 0) throw new Error("a bad tick")
        return pool
      })
      const route = routing.route({ path: "/v1/chat/completions", body: body(words(40)) })!
      route.sent(route.choose(pool, 0), 0)
      yield* TestClock.adjust(100)
      yield* TestClock.adjust(100)
      assert.isAtLeast(calls, 2)
      pool[0].healthy = false
      yield* TestClock.adjust(100)
      assert.strictEqual(routing.scheduler.index.size(pool[0].id), 0, "the later ticks still forget")
    }).pipe(Effect.provideService(References.MinimumLogLevel, "None")))

  it.effect("forgets an upstream that fails its checks or keeps refusing connections, not one refused connection", () =>
    Effect.gen(function*() {
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0 },
        kvEndpoints: [],
        pool: "t"
      })
      const pool = endpointsOf(2)
      routing.attach(() => pool)
      yield* TestClock.adjust(100)
      const route = routing.route({ path: "/v1/chat/completions", body: body(words(40)) })!
      const chosen = route.choose(pool, 0)
      route.sent(chosen, 0)
      assert.isAbove(routing.scheduler.index.size(chosen.id), 0)
      chosen.healthy = false
      yield* TestClock.adjust(100)
      assert.strictEqual(routing.scheduler.index.size(chosen.id), 0)
      // One refused connection (the pool takes it out for a second): a blip, what was learned stays.
      const other = pool.find((endpoint) => endpoint !== chosen)!
      const again = routing.route({ path: "/v1/chat/completions", body: body(words(40, 500)) })!
      assert.strictEqual(again.choose([other], 200), other)
      again.sent(other, 200)
      const held = routing.scheduler.index.size(other.id)
      assert.isAbove(held, 0)
      other.unreachableUntil = 1_200
      other.unreachableCount = 1
      yield* TestClock.adjust(100)
      assert.strictEqual(routing.scheduler.index.size(other.id), held)
      // Refused three times in a row: down (restarting, its cache cold).
      other.unreachableCount = 3
      yield* TestClock.adjust(100)
      assert.strictEqual(routing.scheduler.index.size(other.id), 0)
    }))
})
