/**
 * What a cache-aware route tells the client and learns from the answer:
 * the route header names the predicted cached tokens only when asked for;
 * `cache_salt` separates tenants' keys; reported usage is read in the
 * upstream's tokens and scaled to the router's; the prediction's error is a
 * metric; text without blanks still has block keys (as the simulator's).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Metric, Schema } from "effect"
import { blockKeysOf, simulatorTokenIds, tokenIdsOf, tokenIdsOfParts } from "../src/router/routing/BlockKeys.ts"
import { type PredictionInput } from "../src/router/routing/Predictor.ts"
import { makeCacheAwareRouting, promptOf } from "../src/router/routing/Routing.ts"
import { routingMetrics } from "../src/router/routing/RoutingMetrics.ts"
import { defaultRouting, type RoutingSettings } from "../src/router/routing/RoutingSettings.ts"
import { predictedCachedInUpstreamTokens, uncachedOfUsage } from "../src/router/routing/Scheduler.ts"
import { promptBlockHashes } from "../src/router/simulated/Tokens.ts"
import { makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, type UpstreamTarget } from "../src/router/upstream/Targets.ts"

const target = parseTarget("http://127.0.0.1:9") as UpstreamTarget
const endpointsOf = (n: number) => Array.from({ length: n }, (_, i) => makeEndpoint(target, `10.0.0.${i}`, `10.0.0.${i}:9`, 1, true))
const words = (n: number, from = 0) => Array.from({ length: n }, (_, i) => `w${from + i}`).join(" ")
const body = (text: string, extra: Record<string, unknown> = {}) => JSON.stringify({ model: "m", stream: true, messages: [{ role: "user", content: text }], ...extra })

const routingWith = (settings: Partial<RoutingSettings> = {}) =>
  makeCacheAwareRouting({ settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0, ...settings }, kvEndpoints: [], pool: "t", random: () => 0.5 })

describe("the x-inference-route header", () => {
  it.effect("names the scheduler and the reason only, unless UPSTREAM_ROUTE_HEADER_CACHED_TOKENS is true", () =>
    Effect.gen(function*() {
      for (const shown of [false, true]) {
        const routing = yield* routingWith(shown ? { routeHeaderCachedTokens: true } : {})
        const pool = endpointsOf(2)
        routing.attach(() => pool)
        const first = routing.route({ path: "/v1/chat/completions", body: body(words(64)) })!
        first.sent(first.choose(pool, 0), 0)
        const next = routing.route({ path: "/v1/chat/completions", body: body(`${words(64)} ${words(8, 100)}`) })!
        next.choose(pool, 10)
        if (shown) assert.match(next.header(), /^cache-aware; reason=cache; cached-tokens=64; predicted-ttft-ms=\d+$/)
        else assert.strictEqual(next.header(), "cache-aware; reason=cache")
      }
    }))
})

describe("cache_salt", () => {
  it("is read with the prompt, and only a non-empty string counts", () => {
    assert.strictEqual(promptOf(body("a b", { cache_salt: "tenant-1" }))?.cacheSalt, "tenant-1")
    assert.isUndefined(promptOf(body("a b", { cache_salt: "" }))?.cacheSalt)
    assert.isUndefined(promptOf(body("a b", { cache_salt: 7 }))?.cacheSalt)
    assert.deepStrictEqual(promptOf(body("a b")), { model: "m", parts: ["a b"], stream: true })
  })

  it("seeds the keys: a salted prompt's keys match neither another salt's nor the unsalted", () => {
    const ids = tokenIdsOf(words(64))
    const plain = blockKeysOf("m", ids, 16)
    const one = blockKeysOf("m", ids, 16, "tenant-1")
    assert.strictEqual(one.length, plain.length)
    assert.deepStrictEqual(blockKeysOf("m", ids, 16, "tenant-1"), one)
    for (const other of [plain, blockKeysOf("m", ids, 16, "tenant-2")]) assert.isTrue(one.every((key) => !other.includes(key)))
  })

  it.effect("a prompt another tenant's salt left cached is not cached for this one", () =>
    Effect.gen(function*() {
      const routing = yield* routingWith({ routeHeaderCachedTokens: true })
      const pool = endpointsOf(3)
      routing.attach(() => pool)
      const prompt = words(64)
      const first = routing.route({ path: "/v1/chat/completions", body: body(prompt, { cache_salt: "tenant-1" }) })!
      first.sent(first.choose(pool, 0), 0)
      for (const [salt, expected] of [["tenant-2", /reason=load; cached-tokens=0;/], [undefined, /reason=load; cached-tokens=0;/], ["tenant-1", /reason=cache; cached-tokens=64;/]] as const) {
        const next = routing.route({ path: "/v1/chat/completions", body: body(prompt, salt === undefined ? {} : { cache_salt: salt }) })!
        next.choose(pool, 10)
        assert.match(next.header(), expected, `salt ${salt}`)
      }
    }))
})

describe("the usage an answer reports", () => {
  it("is scaled from the upstream's tokens to the router's: the cached fraction carries over", () => {
    // 100 router tokens; the server counted 130 (its BPE), 104 of them cached (80 %): 20 router tokens uncached.
    assert.approximately(uncachedOfUsage(100, { promptTokens: 130, cachedTokens: 104 })!, 20, 1e-9)
    assert.strictEqual(uncachedOfUsage(100, { promptTokens: 130, cachedTokens: 130 }), 0)
    assert.isUndefined(uncachedOfUsage(100, { promptTokens: undefined, cachedTokens: 104 }))
    assert.isUndefined(uncachedOfUsage(100, { promptTokens: 0, cachedTokens: 0 }))
    assert.isUndefined(uncachedOfUsage(100, undefined))
    assert.strictEqual(predictedCachedInUpstreamTokens({ cachedTokens: 64, promptTokens: 100 }, 130), 83)
    assert.strictEqual(predictedCachedInUpstreamTokens({ cachedTokens: 64, promptTokens: 100 }, undefined), 64)
  })

  it.effect("teaches the predictor the uncached tokens in the router's units; the TTFT error is measured", () =>
    Effect.gen(function*() {
      const routing = yield* routingWith()
      const pool = endpointsOf(1)
      routing.attach(() => pool)
      const observed: Array<{ input: PredictionInput; ttftMs: number }> = []
      const predictor = routing.scheduler.predictor
      const observe = predictor.observe.bind(predictor)
      predictor.observe = (upstream, input, ttftMs) => {
        observed.push({ input, ttftMs })
        observe(upstream, input, ttftMs)
      }
      const errorBefore = yield* Metric.value(routingMetrics.ttftPredictionError)
      const observedBefore = yield* Metric.value(routingMetrics.ttftObservedSeconds)
      const route = routing.route({ path: "/v1/chat/completions", body: body(words(100)) })!
      const chosen = route.choose(pool, 0)
      route.sent(chosen, 0)
      route.data(Buffer.from("data: {\"choices\":[{\"delta\":{\"content\":\"x\"}}]}\n\n"), 250)
      // The server's own count: 130 prompt tokens, 104 cached (80 %).
      route.data(Buffer.from("data: {\"choices\":[],\"usage\":{\"prompt_tokens\":130,\"completion_tokens\":1,\"prompt_tokens_details\":{\"cached_tokens\":104}}}\n\n"), 260)
      route.ended(chosen, 270)
      assert.strictEqual(observed.length, 1)
      // 100 − 104 would teach 0 uncached; 100 × (1 − 104/130) = 20.
      assert.approximately(observed[0].input.uncachedTokens, 20, 1e-9)
      assert.strictEqual(observed[0].ttftMs, 250)
      const errorAfter = yield* Metric.value(routingMetrics.ttftPredictionError)
      assert.strictEqual(errorAfter.count - errorBefore.count, 1)
      assert.isAbove(errorAfter.sum - errorBefore.sum, 0)
      assert.approximately((yield* Metric.value(routingMetrics.ttftObservedSeconds)).count - observedBefore.count, 0.25, 1e-9)
    }))
})

describe("text without blanks", () => {
  it("has tokens and block keys: a 4,800-character Chinese prompt, Thai, base64, minified JSON", () => {
    const chinese = "这是一个没有空格的中文提示词用于测试路由器的前缀缓存".repeat(200).slice(0, 4_800)
    assert.strictEqual(tokenIdsOf(chinese).length, 4_800)
    assert.strictEqual(blockKeysOf("m", tokenIdsOf(chinese), 16).length, 300)
    assert.isAtLeast(blockKeysOf("m", tokenIdsOf("ภาษาไทยไม่มีช่องว่างระหว่างคำ".repeat(10)), 16).length, 10)
    const base64 = Buffer.from("x".repeat(3_000)).toString("base64")
    assert.strictEqual(tokenIdsOf(base64).length, Math.ceil(base64.length / 16))
    const json = JSON.stringify(Array.from({ length: 200 }, (_, i) => ({ id: i, name: `n${i}` })))
    assert.isAtLeast(blockKeysOf("m", tokenIdsOf(json), 16).length, 10)
  })

  it.prop(
    "the router's ids and keys are the simulator's, for any text (messages joined by newlines)",
    [Schema.Array(Schema.Literals(["中", "文", "ไทย", "한", "ｶ", "a", "bc", "x".repeat(20), " ", "\n", "\u3000", "{\"k\":1}", "😀"])).check(Schema.isMaxLength(80))],
    ([parts]) => {
      const text = parts.join("")
      assert.deepStrictEqual(Array.from(tokenIdsOf(text)), Array.from(simulatorTokenIds(text)))
      const cut = Math.floor(parts.length / 2)
      const messages = [parts.slice(0, cut).join(""), parts.slice(cut).join("")]
      assert.deepStrictEqual(Array.from(tokenIdsOfParts(messages)), Array.from(simulatorTokenIds(messages.join("\n"))))
      assert.deepStrictEqual(blockKeysOf("m", tokenIdsOf(text), 4), promptBlockHashes("m", text, 4).map(String))
    }
  )
})
