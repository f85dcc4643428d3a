/**
 * The simulated engine on TestClock: time to first token by what the prefix
 * cache holds, a long prefill stretching another sequence's gaps by the
 * formula, eviction order, a request waiting for blocks and then running,
 * cached tokens reported, the prefix cache reset.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Fiber, Schema } from "effect"
import { TestClock } from "effect/testing"
import { defaultSimulation } from "../src/router/core/Config.ts"
import type { KvEvent } from "../src/router/simulated/BlockCache.ts"
import { type EngineSettings, makeEngine, type SequenceResult } from "../src/router/simulated/Engine.ts"
import { effectTimerClock, Model } from "../src/router/simulated/Model.ts"
import { planText } from "../src/router/simulated/Simulation.ts"
import { blockHashes, blockSeed, tokenIds } from "../src/router/simulated/Tokens.ts"

const base: EngineSettings = {
  blockSize: 4,
  kvBlocks: 1000,
  maxRunning: 10,
  maxBatchedTokens: 1000,
  ttftMs: 20,
  ttftStdDevMs: 0,
  itlMs: 10,
  itlStdDevMs: 0,
  prefillUsPerToken: 1000,
  loadFactor: 1,
  modelName: "m",
  seed: 0
}

/** `n` distinct words: `n` tokens. */
const words = (n: number, prefix = "w") => Array.from({ length: n }, (_, i) => `${prefix}${i}`).join(" ")

interface Run {
  readonly times: Array<number>
  result?: SequenceResult
  stop: () => void
}

/** An engine on TestClock, and a way to submit a prompt for `outputTokens` tokens, recording when each came. */
const engineOn = (settings: Partial<EngineSettings> = {}) =>
  Effect.gen(function*() {
    const clock = effectTimerClock(yield* Clock.Clock, yield* Effect.context<never>())
    const events: Array<KvEvent> = []
    const engine = makeEngine({ ...base, ...settings }, clock, (batch) => events.push(...batch))
    const submit = (prompt: string, outputTokens: number): Run => {
      const run: Run = { times: [], stop: () => {} }
      const plan = planText({ mode: "echo", echoText: words(outputTokens, "o"), maxTokens: outputTokens, stop: [], seed: 0 })
      run.stop = engine.submit(tokenIds(prompt), plan, {
        token: (_text, _index, next) => {
          run.times.push(clock.now())
          next()
        },
        end: (result) => (run.result = result)
      })
      return run
    }
    return { engine, events, submit, now: () => clock.now() }
  })

describe("time to first token by the prefix cache (TestClock)", () => {
  it.effect("cold, fully cached, half cached: (TTFT - ITL) + one step of ITL + SIM_PREFILL_US_PER_TOKEN per uncached token", () =>
    Effect.gen(function*() {
      const { submit } = yield* engineOn()
      const prompt = words(40)
      const cold = submit(prompt, 1)
      yield* TestClock.adjust(1_000)
      // 20 - 10 before the step, then a step of 10 + 40 x 1 ms.
      assert.deepStrictEqual(cold.result?.firstTokenMs, 60)
      assert.strictEqual(cold.result?.cachedTokens, 0)

      const cached = submit(prompt, 1)
      yield* TestClock.adjust(1_000)
      // 9 of 10 blocks cached: as vLLM, hits stop at the prompt's length - 1 tokens in whole blocks, so the last block is computed again.
      assert.strictEqual(cached.result?.cachedTokens, 36)
      assert.strictEqual(cached.result?.firstTokenMs, 10 + 10 + 4)

      const half = submit(`${words(20)} ${words(20, "x")}`, 1)
      yield* TestClock.adjust(1_000)
      assert.strictEqual(half.result?.cachedTokens, 20)
      assert.strictEqual(half.result?.firstTokenMs, 10 + 10 + 20)
    }))

  it.effect("chunked prefill: a prompt longer than SIM_MAX_BATCHED_TOKENS takes several steps, each with its ITL", () =>
    Effect.gen(function*() {
      const { submit } = yield* engineOn({ maxBatchedTokens: 16 })
      const run = submit(words(40), 1)
      yield* TestClock.adjust(1_000)
      // Chunks of 16, 16, 8: three steps of 10 ms, plus 40 ms of prefill, after 10 ms.
      assert.strictEqual(run.result?.firstTokenMs, 10 + 3 * 10 + 40)
    }))
})

describe("a long prefill slows the batch (TestClock)", () => {
  it.effect("another sequence's gaps stretch by SIM_PREFILL_US_PER_TOKEN per token prefilled in each step", () =>
    Effect.gen(function*() {
      const { submit } = yield* engineOn({ ttftMs: 10, maxBatchedTokens: 100 })
      const decoding = submit("a", 12)
      yield* TestClock.adjust(31) // its first token at 11 (1 token prefilled), then every 10 ms: 21, 31
      assert.deepStrictEqual(decoding.times, [11, 21, 31])
      const long = submit(words(300), 1)
      yield* TestClock.adjust(1_000)
      // The step 31-41 was under way: the long prompt joins the one after it. From then each step decodes
      // 1 token and prefills 99 (the rest of the budget), three times, then the last 3.
      const gaps = decoding.times.slice(1).map((t, i) => t - decoding.times[i])
      assert.deepStrictEqual(gaps, [10, 10, 10, 10 + 99, 10 + 99, 10 + 99, 10 + 3, 10, 10, 10, 10])
      assert.strictEqual(long.result?.firstTokenMs, 10 + 4 * 10 + 300)
    }))
})

describe("blocks (TestClock)", () => {
  it.effect("eviction: least recently used first, a finished sequence's tail before its prefix", () =>
    Effect.gen(function*() {
      const { engine, events, submit } = yield* engineOn({ kvBlocks: 6, prefillUsPerToken: 0 })
      const x = words(8, "x")
      const xHashes = blockHashes(blockSeed("m"), tokenIds(x), 4)
      submit(x, 1)
      yield* TestClock.adjust(100)
      submit(words(8, "y"), 1)
      yield* TestClock.adjust(100)
      // x's 2 blocks and y's 2 are cached and free; a 12-token prompt needs 4 blocks (3 + 1 for its output): 2 empty, then x's tail.
      assert.strictEqual(engine.stats().usedBlocks, 0)
      submit(words(12, "z"), 1)
      yield* TestClock.adjust(100)
      const removed = events.filter((event) => event._tag === "BlockRemoved").flatMap((event) => event.blockHashes)
      assert.deepStrictEqual(removed, [xHashes[1], xHashes[0]])
      const again = submit(x, 1)
      yield* TestClock.adjust(100)
      assert.strictEqual(again.result?.cachedTokens, 0, "x's blocks were evicted")
    }))

  it.effect("a request whose blocks don't fit waits (num_requests_waiting) until a sequence ends, then runs", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ kvBlocks: 4, prefillUsPerToken: 0, ttftMs: 10 })
      const first = submit(words(16), 4) // its prompt: all 4 blocks (its output past the cache stays uncached)
      yield* TestClock.adjust(5)
      const second = submit(words(4, "b"), 4) // 1 block
      yield* TestClock.adjust(5)
      assert.deepStrictEqual(engine.stats(), {
        running: 1,
        waiting: 1,
        usedBlocks: 4,
        kvBlocks: 4,
        blockSize: 4,
        prefixQueries: 16,
        prefixHits: 0,
        preemptions: 0
      })
      yield* TestClock.adjust(1_000)
      // The first's 4 tokens at 10, 20, 30, 40; the second joins when they end, its own steps after.
      assert.deepStrictEqual(first.times, [10, 20, 30, 40])
      assert.deepStrictEqual(second.times, [50, 60, 70, 80])
      assert.strictEqual(engine.stats().waiting, 0)
    }))

  it.effect("the block a sequence's last token fills is not cached (vLLM never computes that token's KV); one filled before it is", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ prefillUsPerToken: 0 })
      submit(words(3), 1) // 3 prompt tokens and its only token fill a block
      yield* TestClock.adjust(1_000)
      assert.strictEqual(engine.cachedHashes().size, 0)
      submit(words(3, "x"), 2) // the first generated token fills the block, the second starts another
      yield* TestClock.adjust(1_000)
      assert.strictEqual(engine.cachedHashes().size, 1)
    }))

  it.effect("a chunked prefill takes its blocks chunk by chunk, as vLLM allocates them", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ maxBatchedTokens: 8, ttftMs: 10 })
      const run = submit(words(24), 2)
      const used: Array<number> = []
      // Steps of 10 ms + 8 tokens x 1 ms end at 18, 36 and 54 (the first token).
      for (const at of [1, 20, 40]) {
        yield* TestClock.adjust(at - (used.length === 0 ? 0 : [1, 20, 40][used.length - 1]))
        used.push(engine.stats().usedBlocks)
      }
      // 8 tokens: 2 blocks; 16: 4; all 24 and the first generated token: 7.
      assert.deepStrictEqual(used, [2, 4, 7])
      yield* TestClock.adjust(1_000)
      assert.deepStrictEqual(run.times, [54, 64])
    }))

  it.effect("blocks are taken as tokens are generated; when none is free the last sequence admitted is preempted, waits first in line, and computes its tokens again", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ kvBlocks: 4, prefillUsPerToken: 0, ttftMs: 10 })
      const used: Array<number> = []
      const waiting: Array<number> = []
      const first = submit(words(4), 10)
      yield* TestClock.adjust(5)
      const second = submit(words(4, "b"), 6)
      // Blocks in use and requests waiting after each step (every 10 ms).
      for (let at = 10; at <= 120; at += 10) {
        yield* TestClock.adjust(at === 10 ? 5 : 10)
        used.push(engine.stats().usedBlocks)
        waiting.push(engine.stats().waiting)
      }
      yield* TestClock.adjust(1_000)
      // Each holds 1 prompt block and takes a block per 4 tokens (the first's token 0 already needs its second).
      // At 40 the first needs a third block: none free, the second (admitted last) is preempted after 3
      // tokens; it needs 2 blocks to compute its 4 + 3 tokens again, so it waits for the first to end (100).
      assert.deepStrictEqual(used, [4, 4, 4, 3, 3, 3, 3, 4, 4, 2, 3, 3])
      assert.deepStrictEqual(waiting, [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0])
      assert.deepStrictEqual(first.times, [10, 20, 30, 40, 50, 60, 70, 80, 90, 100])
      assert.deepStrictEqual(second.times, [20, 30, 40, 110, 120, 130], "its tokens once each, in order, resumed after the recompute")
      assert.strictEqual(second.result?.completionTokens, 6)
      // Prompt tokens looked up: 4 + 4; a preempted request's lookup again is not counted, as in vLLM.
      assert.include(engine.stats(), { usedBlocks: 0, prefixQueries: 8, prefixHits: 0, preemptions: 1 })
    }))

  it.effect("a preempted reply's blocks computed again are keyed as the reply sent back reads them (its first token with the blank before it)", () =>
    Effect.gen(function*() {
      const clock = effectTimerClock(yield* Clock.Clock, yield* Effect.context<never>())
      const events: Array<KvEvent> = []
      const engine = makeEngine({ ...base, kvBlocks: 4, prefillUsPerToken: 0, ttftMs: 10 }, clock, (batch) => events.push(...batch))
      const submit = (prompt: string, outputTokens: number) => {
        const plan = planText({ mode: "echo", echoText: words(outputTokens, "o"), maxTokens: outputTokens, stop: [], seed: 0 })
        const run: { result?: SequenceResult } = {}
        engine.submit(tokenIds(prompt), plan, { token: (_text, _index, next) => next(), end: (result) => (run.result = result) }, " ")
        return run
      }
      // As above: the second is preempted after 3 tokens and computes its prompt and those 3 again.
      submit(words(4), 10)
      yield* TestClock.adjust(5)
      const second = submit(words(4, "b"), 6)
      yield* TestClock.adjust(1_000)
      assert.strictEqual(second.result?.completionTokens, 6)
      assert.strictEqual(engine.stats().preemptions, 1)
      // Its prompt + " " + its reply: the second block holds " o0" o1 o2 (computed again) and o3.
      const sentBack = tokenIds(`${words(4, "b")} ${words(6, "o")}`)
      const expected = blockHashes(blockSeed("m"), sentBack, 4)[1]
      const stored = events.flatMap((event) => event._tag === "BlockStored" ? [event] : []).find((event) => event.blockHashes.includes(expected))
      assert.isDefined(stored, "the reply's block is cached under the key its sender will look up")
      assert.deepStrictEqual(stored!.tokenIds, sentBack.slice(4, 8))
    }))

  it.effect("a stopped sequence gives its blocks back at once; the cache reset forgets every block (AllBlocksCleared)", () =>
    Effect.gen(function*() {
      const { engine, events, submit } = yield* engineOn({ kvBlocks: 4, prefillUsPerToken: 0 })
      const prompt = words(8)
      const run = submit(prompt, 8)
      yield* TestClock.adjust(25)
      // Its 8 prompt tokens and the first generated one: 3 blocks.
      assert.strictEqual(engine.stats().usedBlocks, 3)
      run.stop()
      yield* TestClock.adjust(100)
      assert.strictEqual(engine.stats().usedBlocks, 0)
      assert.isUndefined(run.result, "stopped: it never ends")
      assert.strictEqual(engine.cachedHashes().size, 2, "its prompt's blocks stay cached")
      engine.resetPrefixCache()
      assert.deepStrictEqual(events.at(-1), { _tag: "AllBlocksCleared" })
      assert.strictEqual(engine.cachedHashes().size, 0)
      const again = submit(prompt, 1)
      yield* TestClock.adjust(100)
      assert.strictEqual(again.result?.cachedTokens, 0)
    }))
})

describe("/reset_prefix_cache while requests run (TestClock)", () => {
  it.effect("refuses as vLLM's BlockPool does (false, nothing forgotten, no event) unless told to reset running requests", () =>
    Effect.gen(function*() {
      const { engine, events, submit } = yield* engineOn({ prefillUsPerToken: 0 })
      submit(words(8), 1)
      yield* TestClock.adjust(100)
      const running = submit(words(8), 20)
      yield* TestClock.adjust(50)
      assert.isAbove(engine.stats().usedBlocks, 0)
      const before = events.length
      const cached = engine.cachedHashes()
      assert.isAtLeast(cached.size, 2)
      assert.isFalse(engine.resetPrefixCache())
      assert.strictEqual(events.length, before, "no AllBlocksCleared")
      assert.deepStrictEqual(engine.cachedHashes(), cached, "nothing forgotten")
      assert.isTrue(engine.resetPrefixCache(true))
      assert.deepStrictEqual(events.at(-1), { _tag: "AllBlocksCleared" })
      yield* TestClock.adjust(1_000)
      assert.isDefined(running.result)
      assert.strictEqual(engine.stats().usedBlocks, 0)
      assert.isTrue(engine.resetPrefixCache(), "idle: it resets")
    }))
})

describe("the model's generation reports cached tokens (TestClock)", () => {
  it.effect("the same chat prompt again: cachedTokens counts its cached blocks' tokens", () =>
    Effect.gen(function*() {
      const model = Model.simulated(0, { ...defaultSimulation, mode: "echo", ttftMs: 5, itlMs: 1, blockSize: 4 })
      const promptText = words(10)
      const request = { echoText: "hi there", promptText, promptTokens: 10, maxTokens: 2, stop: [], seed: undefined }
      const first = yield* Effect.forkChild(model.generate(request, () => Effect.void), { startImmediately: true })
      yield* TestClock.adjust(100)
      assert.strictEqual((yield* Fiber.join(first)).cachedTokens, 0)
      const second = yield* Effect.forkChild(model.generate(request, () => Effect.void), { startImmediately: true })
      yield* TestClock.adjust(100)
      assert.strictEqual((yield* Fiber.join(second)).cachedTokens, 8)
      assert.deepStrictEqual(model.simulation?.stats().prefixQueries, 20)
      assert.deepStrictEqual(model.simulation?.stats().prefixHits, 8)
    }))
})

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const Arrival = Schema.Struct({
  gapMs: int(0, 12),
  /** Words from a three-word vocabulary: prompts share prefixes often. */
  prompt: Schema.Array(int(0, 2)).check(Schema.isMaxLength(14)),
  output: int(0, 6),
  /** The client hangs up this long after arriving. */
  hangUpAfterMs: Schema.optional(int(0, 40))
})
const Workload = Schema.Struct({
  blockSize: int(1, 4),
  kvBlocks: int(4, 24),
  maxRunning: int(1, 4),
  maxBatchedTokens: int(1, 16),
  ttftMs: int(0, 5),
  itlMs: int(0, 3),
  prefillUsPerToken: Schema.Literals([0, 500, 1000]),
  arrivals: Schema.Array(Arrival).check(Schema.isMinLength(1), Schema.isMaxLength(25))
})

describe("the engine (properties, TestClock)", () => {
  it.effect.prop(
    "blocks in use never exceed SIM_KV_BLOCKS; hits <= queries; the KV events replayed give the cache's blocks; every request not hung up ends with all its tokens",
    [Workload],
    ([workload]) =>
      Effect.gen(function*() {
        const clock = effectTimerClock(yield* Clock.Clock, yield* Effect.context<never>())
        const index = new Set<number>()
        let engine: ReturnType<typeof makeEngine> | undefined
        const check = () => {
          const stats = engine!.stats()
          assert.isAtMost(stats.usedBlocks, workload.kvBlocks)
          assert.isAtMost(stats.prefixHits, stats.prefixQueries)
          assert.deepStrictEqual(index, engine!.cachedHashes())
        }
        engine = makeEngine(
          { ...base, ...workload, ttftStdDevMs: 0, itlStdDevMs: 0 },
          clock,
          (batch) => {
            for (const event of batch) {
              if (event._tag === "BlockStored") {
                for (const hash of event.blockHashes) {
                  assert.isFalse(index.has(hash), "stored once while cached")
                  index.add(hash)
                }
              } else if (event._tag === "BlockRemoved") {
                for (const hash of event.blockHashes) assert.isTrue(index.delete(hash), "removed only after stored, once")
              } else index.clear()
            }
            check()
          }
        )
        const runs: Array<{ tokens: number; expected: number; ended: boolean; hungUp: boolean }> = []
        for (const arrival of workload.arrivals) {
          yield* TestClock.adjust(arrival.gapMs)
          check()
          const run = { tokens: 0, expected: arrival.output, ended: false, hungUp: false }
          runs.push(run)
          const plan = planText({ mode: "echo", echoText: words(arrival.output, "o"), maxTokens: arrival.output, stop: [], seed: 0 })
          const stop = engine.submit(tokenIds(arrival.prompt.map((word) => `v${word}`).join(" ")), plan, {
            token: (_text, index, next) => {
              assert.strictEqual(index, run.tokens++)
              next()
            },
            end: () => {
              assert.isFalse(run.ended, "ends once")
              run.ended = true
            }
          })
          if (arrival.hangUpAfterMs !== undefined) {
            yield* Effect.forkChild(Effect.andThen(Effect.sleep(arrival.hangUpAfterMs), Effect.sync(() => {
              if (!run.ended) run.hungUp = true
              stop()
            })))
          }
        }
        yield* TestClock.adjust(100_000)
        check()
        for (const run of runs) {
          if (run.hungUp) continue
          assert.isTrue(run.ended, "every request not hung up ends")
          assert.strictEqual(run.tokens, run.expected)
        }
        assert.strictEqual(engine.stats().usedBlocks, 0, "every block released")
        assert.strictEqual(engine.stats().running + engine.stats().waiting, 0)
      }).pipe(Effect.tapDefect(() => Effect.sync(() => console.log(JSON.stringify(workload))))),
    { arbitrary: { runs: Number(process.env.PROPERTY_RUNS ?? 100) } }
  )
})

describe("step timing on a slow event loop", () => {
  it("the next step is due a step after the last was due, however long handing out its tokens took", () => {
    let now = 0
    let armed: { readonly callback: () => void; readonly at: number } | undefined
    const clock = {
      now: () => now,
      setTimeout: (callback: () => void, ms: number) => (armed = { callback, at: now + ms }),
      clearTimeout: () => (armed = undefined)
    }
    const engine = makeEngine({ ...base, ttftMs: 10, prefillUsPerToken: 0 }, clock)
    const times: Array<number> = []
    engine.submit(tokenIds("a"), planText({ mode: "echo", echoText: words(4, "o"), maxTokens: 4, stop: [], seed: 0 }), {
      token: (_text, _index, next) => {
        times.push(now)
        now += 3 // the client's write takes 3 ms of the event loop
        next()
      },
      end: () => {}
    })
    while (armed !== undefined) {
      const due = armed
      armed = undefined
      now = Math.max(now, due.at)
      due.callback()
    }
    assert.deepStrictEqual(times, [10, 20, 30, 40])
  })
})

describe("the wait before the first step (SIM_TTFT_MS well above SIM_ITL_MS, TestClock)", () => {
  it.effect("the request holds its slot and blocks and its prefix is looked up at admission: the metrics count it while it waits; TTFT unchanged", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ ttftMs: 500, itlMs: 10, prefillUsPerToken: 0 })
      const warm = submit(words(8), 1)
      yield* TestClock.adjust(1_000)
      assert.isDefined(warm.result)
      const queriesBefore = engine.stats().prefixQueries
      const run = submit(words(8), 4)
      yield* TestClock.adjust(100)
      // Its 8 prompt tokens: 2 blocks, 1 of them found cached (the last prompt block is computed again).
      assert.include(engine.stats(), { running: 1, waiting: 0, usedBlocks: 2, prefixQueries: queriesBefore + 8, prefixHits: 4 })
      assert.lengthOf(run.times, 0, "no token before its time")
      yield* TestClock.adjust(1_000)
      assert.strictEqual(run.result?.firstTokenMs, 500 - 10 + 10)
      assert.strictEqual(run.result?.cachedTokens, 4)
      assert.include(engine.stats(), { running: 0, usedBlocks: 0 })
    }))
})

describe("a client that stops reading (TestClock)", () => {
  it.effect("does not hold the engine: its sequence generates on, frees its blocks and slot when done; the client gets every token in order when it reads again", () =>
    Effect.gen(function*() {
      const { engine, submit } = yield* engineOn({ maxRunning: 1, kvBlocks: 10, prefillUsPerToken: 0 })
      const received: Array<string> = []
      let resume: (() => void) | undefined
      let result: SequenceResult | undefined
      const plan = planText({ mode: "echo", echoText: words(20, "o"), maxTokens: 20, stop: [], seed: 0 })
      // Takes the first two tokens, then stops reading.
      engine.submit(tokenIds(words(8)), plan, {
        token: (text, index, next) => {
          received.push(text)
          if (index < 1) next()
          else resume = next
        },
        end: (done) => (result = done)
      })
      yield* TestClock.adjust(10 + 20 * 10)
      assert.lengthOf(received, 2, "the client has what it read")
      // 8 prompt + 20 generated tokens: 7 blocks, all released; no slot held.
      assert.include(engine.stats(), { running: 0, usedBlocks: 0 })
      // The only slot is free: another request runs meanwhile.
      const other = submit(words(4, "z"), 2)
      yield* TestClock.adjust(100)
      assert.isDefined(other.result)
      // Reading again: the rest at once, in order, then the end.
      const reading = (): void => {
        const next = resume!
        resume = undefined
        next()
      }
      while (resume !== undefined) reading()
      assert.deepStrictEqual(received.join(""), words(20, "o"))
      assert.isDefined(result)
      assert.strictEqual(result!.completionTokens, 20)
    }))
})

describe("a request arriving during a step joins at the next one (docs/simulator.md, 'Time to first token')", () => {
  it.effect("SIM_TTFT_MS = SIM_ITL_MS = 50, engine busy: TTFT is the rest of the current step plus one step (50 to 100 ms), never more", () =>
    Effect.gen(function*() {
      const { submit } = yield* engineOn({ ttftMs: 50, itlMs: 50, prefillUsPerToken: 0 })
      // Keeps the engine stepping at 0, 50, 100, ... (its first token at 50).
      const busy = submit("a", 40)
      yield* TestClock.adjust(100)
      assert.deepStrictEqual(busy.times, [50, 100])
      const arrivals = [1, 25, 49, 50]
      const runs: Array<Run> = []
      for (const offset of arrivals) {
        yield* TestClock.adjust(offset - (runs.length === 0 ? 0 : arrivals[runs.length - 1]))
        runs.push(submit("b", 1))
      }
      yield* TestClock.adjust(200)
      // Arriving 1 ms into a step: 49 ms to its end, then the step that prefills it; at 50 ms (a boundary, after the
      // step there ended) it joins the step starting then.
      assert.deepStrictEqual(runs.map((run) => run.result?.firstTokenMs), [99, 75, 51, 100])
      assert.deepStrictEqual(runs.map((run) => run.times[0]), [200, 200, 200, 250])
    }))

  it("1,000 streams replacing each other as bench:streams' clients do: TTFT is 2 steps minus the client's turnaround; steps stay on their grid with 17 µs of CPU per token", () => {
    // A clock whose time moves by the CPU the callbacks take: each token handed out costs 17 µs (bench:streams' figure).
    let now = 0
    const timers: Array<{ readonly at: number; readonly callback: () => void; cancelled: boolean }> = []
    const clock = {
      now: () => now,
      setTimeout: (callback: () => void, ms: number) => {
        const entry = { at: now + ms, callback, cancelled: false }
        timers.push(entry)
        return entry
      },
      clearTimeout: (handle: unknown) => {
        ;(handle as { cancelled: boolean }).cancelled = true
      }
    }
    const engine = makeEngine({ ...base, ttftMs: 50, itlMs: 50, prefillUsPerToken: 0, maxRunning: 100_000, kvBlocks: 100_000 }, clock)
    const turnaroundMs = 3 // the client sees the last token, opens a connection, the router parses the request
    const tokens = 20
    const ttfts: Array<number> = []
    const firstTokenTimes = new Set<number>()
    const stream = (measured: boolean) => {
      const plan = planText({ mode: "echo", echoText: words(tokens, "o"), maxTokens: tokens, stop: [], seed: 0 })
      engine.submit(tokenIds("p"), plan, {
        token: (_text, index, next) => {
          // Handed out in the step's burst: the step ended at the last multiple of 50 (new streams' first tokens go first).
          if (index === 0) firstTokenTimes.add(Math.floor(now))
          now += 0.017
          next()
        },
        end: (result) => {
          if (measured) ttfts.push(result.firstTokenMs)
          if (now < 20_000) timers.push({ at: now + turnaroundMs, callback: () => stream(now > 3_000), cancelled: false })
        }
      })
    }
    // Opened over one stream's lifetime, as bench:streams opens them.
    for (let i = 0; i < 1000; i++) timers.push({ at: (i * (50 + tokens * 50)) / 1000, callback: () => stream(false), cancelled: false })
    for (;;) {
      let first = -1
      for (let i = 0; i < timers.length; i++) if (first === -1 || timers[i].at < timers[first].at) first = i
      if (first === -1) break
      const [entry] = timers.splice(first, 1)
      if (entry.cancelled) continue
      now = Math.max(now, entry.at)
      entry.callback()
    }
    ttfts.sort((a, b) => a - b)
    assert.isAbove(ttfts.length, 5_000)
    // Every new stream arrives 3 ms (plus the burst's CPU before its end was handed out) after a step began.
    assert.isAtLeast(ttfts[0], 50)
    assert.isAtMost(ttfts[ttfts.length - 1], 100)
    assert.isAtLeast(ttfts[Math.floor(ttfts.length / 2)], 100 - turnaroundMs - 17 - 1)
    // Every first token ends a step on the 50 ms grid: no drift with 17 ms of output per step.
    for (const at of firstTokenTimes) assert.strictEqual(at % 50, 0, `first token at ${at}`)
  })
})
