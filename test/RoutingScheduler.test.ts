/**
 * The cache-aware choice: predicted time to first token (arithmetic and
 * online learning), bounded load, spills, near-ties and the reasons.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { prng } from "../src/router/simulated/Simulation.ts"
import { TtftPredictor } from "../src/router/routing/Predictor.ts"
import { CacheAwareScheduler, type Candidate, defaultSchedulerSettings, loadCap, type RoutingRequest, strictLoadCap } from "../src/router/routing/Scheduler.ts"

const request = (prefix: string, blocks: number, blockSize = 16): RoutingRequest => ({
  promptTokens: blocks * blockSize,
  keys: () => Array.from({ length: blocks }, (_, i) => `${prefix}${i}`)
})

const upstreams = (...inFlight: Array<number>): Array<{ id: string; inFlight: number }> => inFlight.map((count, i) => ({ id: `u${i}`, inFlight: count }))

describe("predicted time to first token", () => {
  it("is overhead + prefill cost × (uncached + queued prefill) + load cost × in flight", () => {
    const predictor = new TtftPredictor({ overheadMs: 20, prefillMsPerToken: 0.5, loadMsPerRequest: 2, forgetting: 0.98, minSamples: 10 })
    assert.strictEqual(predictor.predict("u", { uncachedTokens: 100, queuedPrefillTokens: 40, inFlight: 3 }), 20 + 0.5 * 140 + 2 * 3)
  })

  it("learns an upstream's true costs from observed answers (within 5% after 200 answers)", () => {
    const predictor = new TtftPredictor()
    const random = prng(3)
    const truth = (tokens: number, inFlight: number) => 35 + 0.8 * tokens + 4 * inFlight
    for (let i = 0; i < 200; i++) {
      const input = { uncachedTokens: Math.floor(random() * 4000), queuedPrefillTokens: 0, inFlight: Math.floor(random() * 8) }
      predictor.observe("u", input, truth(input.uncachedTokens, input.inFlight))
    }
    const learned = predictor.coefficients("u")
    assert.approximately(learned.overheadMs, 35, 35 * 0.05)
    assert.approximately(learned.prefillMsPerToken, 0.8, 0.8 * 0.05)
    assert.approximately(learned.loadMsPerRequest, 4, 4 * 0.05)
    assert.strictEqual(learned.samples, 200)
  })

  it("judges an upstream without answers of its own by the pool's fit, then by its own", () => {
    const predictor = new TtftPredictor()
    const input = (tokens: number) => ({ uncachedTokens: tokens, queuedPrefillTokens: 0, inFlight: 0 })
    for (let i = 0; i < 100; i++) predictor.observe("slow", input(i * 30), 50 + 2 * i * 30)
    // "new" has no answers: predicted like the pool (here: like "slow").
    assert.approximately(predictor.predict("new", input(1000)), predictor.predict("slow", input(1000)), 1)
    for (let i = 0; i < 100; i++) predictor.observe("new", input(i * 30), 10 + 0.5 * i * 30)
    assert.approximately(predictor.predict("new", input(1000)), 10 + 500, 10)
    assert.approximately(predictor.predict("slow", input(1000)), 50 + 2000, 20)
  })

  it("follows an upstream that slows down (forgetting)", () => {
    const predictor = new TtftPredictor()
    const random = prng(5)
    for (const perToken of [0.2, 1.0]) {
      for (let i = 0; i < 300; i++) {
        const input = { uncachedTokens: Math.floor(random() * 2000), queuedPrefillTokens: 0, inFlight: 0 }
        predictor.observe("u", input, 10 + perToken * input.uncachedTokens)
      }
    }
    assert.approximately(predictor.coefficients("u").prefillMsPerToken, 1.0, 0.05)
  })

  it("ignores answers that are not times", () => {
    const predictor = new TtftPredictor()
    predictor.observe("u", { uncachedTokens: 1, queuedPrefillTokens: 0, inFlight: 0 }, Number.NaN)
    predictor.observe("u", { uncachedTokens: 1, queuedPrefillTokens: 0, inFlight: 0 }, -5)
    assert.strictEqual(predictor.coefficients("u").samples, 0)
  })
})

describe("the cache-aware choice", () => {
  it("sends a prompt where its prefix is cached (reason cache), and records it there", () => {
    const scheduler = new CacheAwareScheduler(defaultSchedulerSettings, undefined, undefined, prng(1))
    scheduler.index.recordDecision("u2", request("p", 10).keys(16), 0)
    const decision = scheduler.choose(upstreams(0, 0, 0), request("p", 12), 0)
    assert.strictEqual(decision.candidate.id, "u2")
    assert.strictEqual(decision.reason, "cache")
    assert.strictEqual(decision.cachedTokens, 160)
    scheduler.sent("u2", decision, 0)
    assert.strictEqual(scheduler.index.cachedPrefix("u2", request("p", 12).keys(16), 0), 12)
  })

  it("with nothing cached, goes by load (reason load); one candidate is only-healthy", () => {
    const scheduler = new CacheAwareScheduler(defaultSchedulerSettings, undefined, undefined, prng(1))
    const decision = scheduler.choose(upstreams(3, 1, 2), request("q", 4), 0)
    assert.strictEqual(decision.candidate.id, "u1")
    assert.strictEqual(decision.reason, "load")
    assert.strictEqual(scheduler.choose(upstreams(9), request("q", 4), 0).reason, "only-healthy")
  })

  it("counts requests queued for prefill from the moment of the pick: a burst spreads", () => {
    const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 100 }, undefined, undefined, prng(2))
    const pool = upstreams(0, 0, 0, 0)
    const chosen = new Set<string>()
    for (let i = 0; i < 4; i++) {
      // Four different long prompts, none cached: each pick sees the earlier ones queued.
      const decision = scheduler.choose(pool, request(`r${i}-`, 200), 0)
      scheduler.sent(decision.candidate.id, decision, 0)
      decision.candidate.inFlight++
      chosen.add(decision.candidate.id)
    }
    assert.strictEqual(chosen.size, 4)
  })

  it("spills a hot prefix past the load bound, and the index learns the second location", () => {
    const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 1.25 }, undefined, undefined, prng(4))
    const pool = upstreams(0, 0, 0, 0)
    scheduler.index.recordDecision("u0", request("hot", 20).keys(16), 0)
    const reasons: Array<string> = []
    for (let i = 0; i < 12; i++) {
      const decision = scheduler.choose(pool, request("hot", 20), 0)
      scheduler.sent(decision.candidate.id, decision, 0)
      decision.candidate.inFlight++
      reasons.push(decision.reason)
    }
    assert.include(reasons, "spill")
    const holders = pool.filter((u) => scheduler.index.cachedPrefix(u.id, request("hot", 20).keys(16), 0) === 20)
    assert.isAtLeast(holders.length, 2)
    // No one above the bound at any point: 12 requests over 4 is a mean of 3, bound ceil(1.25 × 3) = 4.
    assert.isAtMost(Math.max(...pool.map((u) => u.inFlight)), 4)
  })

  it("rounds the bound down where another holder of the prefix is within it, up only for the one holder of it", () => {
    // 28 in flight over 4: 1.25 × 29 ÷ 4 = 9.06.
    assert.strictEqual(strictLoadCap(1.25, 28, 4), 9)
    assert.strictEqual(loadCap(1.25, 28, 4), 10)
    // Never below the balanced level (the least loaded always fits).
    assert.strictEqual(strictLoadCap(1.25, 5, 4), 2)
    const hot = request("hot", 20)
    // A hot prefix held by u0 and u1; u0 at the strict cap: u1 takes it (no prefill either way).
    const two = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 1.25 }, undefined, undefined, prng(5))
    two.index.recordDecision("u0", hot.keys(16), 0)
    two.index.recordDecision("u1", hot.keys(16), 0)
    // u1 has a short prefill queued, so u0 would be predicted faster (29 against 36.6 ms): the bound decides.
    const pool = upstreams(9, 7, 6, 6)
    two.sent("u1", two.choose([pool[1]], request("other", 6), 0), 0)
    const decision = two.choose(pool, hot, 0)
    assert.strictEqual(decision.candidate.id, "u1")
    // A group's prefix held by u0 only, at the strict cap: it stays (spilling would prefill it from nothing) ...
    const one = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 1.25 }, undefined, undefined, prng(5))
    one.index.recordDecision("u0", hot.keys(16), 0)
    assert.strictEqual(one.choose(upstreams(9, 7, 6, 6), hot, 0).candidate.id, "u0")
    // ... until the loose cap.
    const spilled = one.choose(upstreams(10, 7, 6, 5), hot, 0)
    assert.notStrictEqual(spilled.candidate.id, "u0")
    assert.strictEqual(spilled.reason, "spill")
  })

  it("holds a hot upstream to the bound × the mean rounded up: at 8 in flight per upstream, 11 (1.25 × 33 ÷ 4 = 10.3)", () => {
    assert.strictEqual(loadCap(1.25, 32, 4), 11)
    assert.strictEqual(loadCap(1.25, 0, 4), 1)
    assert.strictEqual(loadCap(2, 3, 4), 2)
    const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 1.25 }, undefined, undefined, prng(5))
    // The hot prefix is cached on u0 only, which is at the bound; the others are busy with other work.
    scheduler.index.recordDecision("u0", request("hot", 20).keys(16), 0)
    const pool = upstreams(11, 8, 7, 6)
    const decision = scheduler.choose(pool, request("hot", 20), 0)
    assert.notStrictEqual(decision.candidate.id, "u0")
    assert.strictEqual(decision.reason, "spill")
    // One fewer (30 in all: cap ⌈1.25 × 31 ÷ 4⌉ = 10): it takes it.
    pool[0].inFlight = 9
    assert.strictEqual(scheduler.choose(pool, request("hot", 20), 0).candidate.id, "u0")
  })

  it("counts a long prefill's remaining part, not the whole: a request arriving halfway waits for it where its prefix is cached", () => {
    // Prior: 20 ms + 0.1 ms per token. u0 holds the prefix and started prefilling another 2,000-token prompt.
    const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 10 }, undefined, undefined, prng(6))
    const pool = upstreams(0, 0)
    scheduler.index.recordDecision("u0", request("shared", 125).keys(16), 0)
    const other = scheduler.choose([pool[0]], request("cold", 125), 0)
    scheduler.sent("u0", other, 0)
    pool[0].inFlight++
    assert.strictEqual(scheduler.queuedPrefill("u0", 0), 2_000)
    // 100 ms later half of it is done: 20 + 0.1 × (32 + 1,000) = 123 ms on u0 against 20 + 0.1 × 2,032 = 223 ms on u1.
    assert.strictEqual(scheduler.queuedPrefill("u0", 100), 1_000)
    const next = scheduler.choose(pool, request("shared", 127), 100)
    assert.strictEqual(next.candidate.id, "u0")
    assert.approximately(next.predictedMs, 20 + 0.1 * (32 + 1_000) + 1, 1e-6)
  })

  it("knows, at a request's first token, that what was sent before it is prefilled and what came after is not", () => {
    // Prior prefill cost 0.1 ms per token: 10 tokens drain per ms.
    const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: 10 }, undefined, undefined, prng(7))
    const u0 = upstreams(0)
    const first = scheduler.choose(u0, request("a", 100), 0)
    scheduler.sent("u0", first, 0)
    // 100 ms later 1,000 of its 1,600 tokens are done; another request's 800 join them.
    const second = scheduler.choose(u0, request("b", 50), 100)
    scheduler.sent("u0", second, 100)
    assert.approximately(scheduler.queuedPrefill("u0", 100), 1_400, 1e-6)
    // The first one's first token, later than the drain predicted: only the second one's 800 can be left.
    scheduler.firstToken("u0", first, 120)
    assert.approximately(scheduler.queuedPrefill("u0", 120), 800, 1e-6)
    scheduler.firstToken("u0", second, 130)
    assert.strictEqual(scheduler.queuedPrefill("u0", 130), 0)
    // Told twice (a first token, then the end): counted once.
    scheduler.sent("u0", first, 130)
    scheduler.firstToken("u0", second, 130)
    assert.approximately(scheduler.queuedPrefill("u0", 130), 1_600, 1e-6)
  })

  it("spreads near-ties at random among the least loaded", () => {
    const scheduler = new CacheAwareScheduler(defaultSchedulerSettings, undefined, undefined, prng(9))
    const counts = new Map<string, number>()
    for (let i = 0; i < 300; i++) {
      const id = scheduler.choose(upstreams(0, 0, 0), request("z", 1), 0).candidate.id
      counts.set(id, (counts.get(id) ?? 0) + 1)
    }
    for (const id of ["u0", "u1", "u2"]) assert.isAbove(counts.get(id) ?? 0, 70, `${id}: ${counts.get(id)}`)
  })

  const Load = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 30 }))
  it.prop(
    "never gives an upstream more than the load bound × the pool's mean (request included)",
    [Schema.Array(Load).check(Schema.isMinLength(1), Schema.isMaxLength(8)), Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 7 })), Schema.Int.check(Schema.isBetween({ minimum: 100, maximum: 300 }))],
    ([loads, cachedAt, boundPercent]) => {
      const bound = boundPercent / 100
      const scheduler = new CacheAwareScheduler({ ...defaultSchedulerSettings, loadBound: bound }, undefined, undefined, prng(loads.length))
      const pool: Array<Candidate & { inFlight: number }> = upstreams(...loads)
      scheduler.index.recordDecision(`u${cachedAt % loads.length}`, request("hot", 50).keys(16), 0)
      for (let i = 0; i < 20; i++) {
        const decision = scheduler.choose(pool, request("hot", 50), 0)
        const total = pool.reduce((sum, u) => sum + u.inFlight, 0)
        const mean = (total + 1) / pool.length
        // The bound × the mean, rounded up; the least loaded always fits (no fallback beyond the bound).
        const cap = Math.ceil(bound * mean - 1e-9)
        const strict = Math.max(Math.ceil(mean - 1e-9), Math.floor(bound * mean + 1e-9))
        assert.strictEqual(loadCap(bound, total, pool.length), cap)
        assert.strictEqual(strictLoadCap(bound, total, pool.length), strict)
        assert.isAtLeast(strict, Math.min(...pool.map((u) => u.inFlight)) + 1)
        const chosenLoad = decision.candidate.inFlight + 1
        assert.isAtMost(chosenLoad, cap, `load ${chosenLoad} cap ${cap}`)
        // Past the strict cap only a holder of more of the prompt than any upstream within it.
        if (chosenLoad > strict) {
          const within = pool.filter((u) => u.inFlight + 1 <= strict).map((u) => scheduler.index.cachedPrefix(u.id, request("hot", 50).keys(16), 0))
          assert.isAbove(decision.cachedTokens, Math.max(0, ...within) * 16, `load ${chosenLoad} strict ${strict}`)
        }
        scheduler.sent(decision.candidate.id, decision, 0)
        ;(decision.candidate as { inFlight: number }).inFlight++
      }
    }
  )
})
