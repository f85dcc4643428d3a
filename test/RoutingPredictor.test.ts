/**
 * The TTFT predictor's learning over long runs: it never stops learning (the
 * recursive least squares it replaced froze after ~1,460 answers, its
 * covariance no longer positive), and a slowdown after 100,000 answers is
 * learned within a bounded number of answers.
 */
import { assert, describe, it } from "@effect/vitest"
import { TtftPredictor } from "../src/router/routing/Predictor.ts"
import { prng } from "../src/router/simulated/Simulation.ts"

interface Truth {
  readonly overheadMs: number
  readonly perToken: number
  readonly perRequest: number
}

/** The reviewer's workload: 90 % near-total hits (0–50 uncached), 10 % misses of 500–2,000 tokens, 0–3 in flight. */
const workload = (seed: number, missRate: number) => {
  const random = prng(seed)
  return () => ({
    uncachedTokens: random() < missRate ? 500 + Math.floor(random() * 1501) : Math.floor(random() * 51),
    queuedPrefillTokens: 0,
    inFlight: Math.floor(random() * 4)
  })
}

const ttft = (truth: Truth, input: { uncachedTokens: number; queuedPrefillTokens: number; inFlight: number }) =>
  truth.overheadMs + truth.perToken * (input.uncachedTokens + input.queuedPrefillTokens) + truth.perRequest * input.inFlight

const base: Truth = { overheadMs: 20, perToken: 0.1, perRequest: 2 }

describe("the TTFT predictor over long runs", () => {
  it("keeps learning past thousands of answers (every answer counted, the fit stays on the truth)", () => {
    const predictor = new TtftPredictor()
    const next = workload(1, 0.1)
    for (let i = 0; i < 5_000; i++) {
      const input = next()
      predictor.observe("u", input, ttft(base, input))
    }
    const learned = predictor.coefficients("u")
    assert.strictEqual(learned.samples, 5_000)
    assert.approximately(learned.overheadMs, 20, 1)
    assert.approximately(learned.prefillMsPerToken, 0.1, 0.005)
    assert.approximately(learned.loadMsPerRequest, 2, 0.1)
  })

  it("with ±20 % noise and 1 % misses, stays near the truth after 5,000 answers", () => {
    for (const missRate of [0.1, 0.01]) {
      const predictor = new TtftPredictor()
      const next = workload(2, missRate)
      const noise = prng(7)
      for (let i = 0; i < 5_000; i++) {
        const input = next()
        predictor.observe("u", input, ttft(base, input) * (0.8 + 0.4 * noise()))
      }
      const learned = predictor.coefficients("u")
      assert.strictEqual(learned.samples, 5_000)
      assert.isBelow(learned.overheadMs, 40, `miss rate ${missRate}: overhead ${learned.overheadMs}`)
      assert.isBelow(learned.prefillMsPerToken, 0.2, `miss rate ${missRate}: prefill ${learned.prefillMsPerToken}`)
      // A 1,000-token miss with 1 in flight: predicted within 25 % of the truth's mean.
      const miss = { uncachedTokens: 1_000, queuedPrefillTokens: 0, inFlight: 1 }
      assert.approximately(predictor.predict("u", miss), ttft(base, miss), 0.25 * ttft(base, miss), `miss rate ${missRate}`)
    }
  })

  it("after 100,000 answers, learns a slowdown to within 5 % in at most 300 answers", () => {
    const predictor = new TtftPredictor()
    const next = workload(3, 0.1)
    for (let i = 0; i < 100_000; i++) {
      const input = next()
      predictor.observe("u", input, ttft(base, input))
    }
    // The server slows down: prefill cost ×3, overhead ×2.
    const slow: Truth = { overheadMs: 40, perToken: 0.3, perRequest: 2 }
    const probes = [
      { uncachedTokens: 0, queuedPrefillTokens: 0, inFlight: 0 },
      { uncachedTokens: 1_000, queuedPrefillTokens: 0, inFlight: 2 },
      { uncachedTokens: 2_000, queuedPrefillTokens: 500, inFlight: 3 }
    ]
    const within = () => probes.every((probe) => Math.abs(predictor.predict("u", probe) - ttft(slow, probe)) <= 0.05 * ttft(slow, probe))
    let answers = 0
    while (!within() && answers < 2_000) {
      const input = next()
      predictor.observe("u", input, ttft(slow, input))
      answers++
    }
    assert.isTrue(within(), `not learned after ${answers} answers: ${JSON.stringify(predictor.coefficients("u"))}`)
    assert.isAtMost(answers, 300)
    assert.strictEqual(predictor.coefficients("u").samples, 100_000 + answers)
  })

  it("a feature that never varies keeps its prior; none goes negative", () => {
    const predictor = new TtftPredictor()
    // Nothing in flight ever: the load cost cannot be learned and stays at the prior.
    for (let i = 0; i < 1_000; i++) predictor.observe("u", { uncachedTokens: (i % 10) * 100, queuedPrefillTokens: 0, inFlight: 0 }, 5 + 0.2 * (i % 10) * 100)
    const learned = predictor.coefficients("u")
    assert.approximately(learned.loadMsPerRequest, predictor.settings.loadMsPerRequest, 1e-6)
    assert.approximately(learned.prefillMsPerToken, 0.2, 0.001)
    // A truth with a negative intercept: clamped at 0, the rest still fitted.
    const other = new TtftPredictor()
    for (let i = 0; i < 1_000; i++) other.observe("v", { uncachedTokens: 100 + (i % 10) * 100, queuedPrefillTokens: 0, inFlight: i % 3 }, -30 + 0.5 * (100 + (i % 10) * 100) + (i % 3))
    const fitted = other.coefficients("v")
    assert.isAtLeast(fitted.overheadMs, 0)
    assert.isAtLeast(fitted.loadMsPerRequest, 0)
    assert.isAbove(fitted.prefillMsPerToken, 0.4)
  })
})
