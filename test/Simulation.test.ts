/**
 * The simulated model: its documented tokenization, echo and seeded random
 * text, stop sequences, finish reasons, and its timing on TestClock (time to
 * first token, inter-token latency, latency growing with load).
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Fiber, Layer, Schema, SchemaGetter } from "effect"
import { TestClock } from "effect/testing"
import { Admission } from "../src/router/core/Admission.ts"
import { defaultSimulation } from "../src/router/core/Config.ts"
import { testConfigLayer } from "./support/TestSettings.ts"
import { type Generated, makeTokenTimer, Model } from "../src/router/simulated/Model.ts"
import { Upstreams } from "../src/router/upstream/Upstreams.ts"

const testModelLayer = Model.layer.pipe(
  Layer.provide(Layer.mergeAll(Admission.layer, Layer.succeed(Upstreams, Upstreams.disabled))),
  Layer.provide(testConfigLayer({ simulation: { ...defaultSimulation, ttftMs: 5, itlMs: 1 } }))
)
import { countTokens, planOutput, planText, type TextPlan, type TextRequest, tokenPattern, tokenReader } from "../src/router/simulated/Simulation.ts"

/** A plan's tokens, all at once, as the model emits them one by one. */
const planTokens = (plan: TextPlan): Array<string> => Array.from({ length: plan.tokens }, tokenReader(plan))
/** All of a text's tokens: echo's, with no limit and no stop sequence. */
const tokenize = (text: string): Array<string> => planTokens(planText({ mode: "echo", echoText: text, maxTokens: Infinity, stop: [], seed: 0 }))

describe("simulated text", () => {
  it("tokens are runs of non-blanks with the blanks before them", () => {
    assert.deepStrictEqual(tokenize("Hello, big  world "), ["Hello,", " big", "  world"])
    assert.strictEqual(countTokens("Hello, big  world "), 3)
    assert.strictEqual(countTokens(""), 0)
  })

  /** The plan as its tokens and finish reason. */
  const plan = (request: TextRequest) => {
    const planned = planText(request)
    return { tokens: planTokens(planned), finishReason: planned.finishReason }
  }
  const echo = (echoText: string, maxTokens: number, stop: ReadonlyArray<string> = []) => plan({ mode: "echo", echoText, maxTokens, stop, seed: 0 })

  it("echo repeats up to max_tokens; a stop sequence cuts before itself", () => {
    assert.deepStrictEqual(echo("a b c", 5), { tokens: ["a", " b", " c"], finishReason: "stop" })
    assert.deepStrictEqual(echo("a b c", 2), { tokens: ["a", " b"], finishReason: "length" })
    assert.deepStrictEqual(echo("a b c ", 3), { tokens: ["a", " b", " c"], finishReason: "stop" })
    assert.deepStrictEqual(echo("a b", 0), { tokens: [], finishReason: "length" })
    assert.deepStrictEqual(echo("alpha beta", 9, ["ta"]), { tokens: ["alpha", " be"], finishReason: "stop" })
    assert.deepStrictEqual(echo("alpha beta", 9, ["alpha"]), { tokens: [], finishReason: "stop" })
    assert.deepStrictEqual(echo("alpha beta", 9, ["", "x"]), { tokens: ["alpha", " beta"], finishReason: "stop" })
    // Past max_tokens a stop sequence is never seen.
    assert.deepStrictEqual(echo("alpha beta", 1, ["beta"]), { tokens: ["alpha"], finishReason: "length" })
  })

  it("a stop sequence across tokens: no part of it is returned", () => {
    assert.deepStrictEqual(echo("Hello world again", 9, ["world"]), { tokens: ["Hello", " "], finishReason: "stop" })
    assert.deepStrictEqual(echo("Hello world again", 9, ["o w"]), { tokens: ["Hell"], finishReason: "stop" })
    assert.deepStrictEqual(echo("Hello world again", 9, [" world"]), { tokens: ["Hello"], finishReason: "stop" })
    assert.strictEqual(planOutput(planText({ mode: "echo", echoText: "Hello world again", maxTokens: 9, stop: ["d a"], seed: 0 })), "Hello worl")
  })

  it("any number of stop sequences (more than a function call takes arguments)", () => {
    assert.deepStrictEqual(echo("alpha beta", 9, Array.from({ length: 200_000 }, () => "ta")), { tokens: ["alpha", " be"], finishReason: "stop" })
  })

  it("of several stop sequences, the text ends at the one completed first, as a server checking after each token", () => {
    // " beta gamma" begins first, but "ta" is complete a token earlier.
    assert.deepStrictEqual(echo("alpha beta gamma", 9, [" beta gamma", "ta"]), { tokens: ["alpha", " be"], finishReason: "stop" })
    // Both complete in the same token: the earlier one cuts.
    assert.deepStrictEqual(echo("alpha beta gamma", 9, ["ta", "beta"]), { tokens: ["alpha", " "], finishReason: "stop" })
  })

  it("random text is seeded: same seed, same text; another seed, another text", () => {
    const random = (seed: number) => plan({ mode: "random", echoText: "", maxTokens: 20, stop: [], seed })
    const a = random(1)
    assert.deepStrictEqual(random(1), a)
    assert.notDeepEqual(random(2).tokens, a.tokens)
    assert.isAtMost(a.tokens.length, 20)
    assert.deepStrictEqual(a.tokens, tokenize(a.tokens.join("")))
  })
})

describe("simulated timing (TestClock)", () => {
  const request = { echoText: "one two three four", promptTokens: 4, maxTokens: undefined, stop: [], seed: undefined }

  it.effect("the first token after TTFT, each next after ITL; processingMs is the whole time", () =>
    Effect.gen(function*() {
      const model = Model.simulated(100, { ...defaultSimulation, mode: "echo", ttftMs: 50, itlMs: 10 })
      const times: Array<number> = []
      const fiber = yield* Effect.forkChild(
        model.generate(request, () => Effect.flatMap(Clock.currentTimeMillis, (t) => Effect.sync(() => void times.push(t)))),
        { startImmediately: true }
      )
      yield* TestClock.adjust(1_000)
      const generated = yield* Fiber.join(fiber)
      assert.deepStrictEqual(times, [50, 60, 70, 80])
      assert.strictEqual(generated.firstTokenMs, 50)
      assert.strictEqual(generated.processingMs, 80)
      assert.strictEqual(generated.finishReason, "stop")
    }))

  it.effect("unset TTFT and ITL: /infer keeps SIM_LATENCY_MS; generation's first token after it, the rest at once", () =>
    Effect.gen(function*() {
      const model = Model.simulated(100, { ...defaultSimulation, mode: "echo" })
      const inference = yield* Effect.forkChild(model.infer("x"), { startImmediately: true })
      const times: Array<number> = []
      const generation = yield* Effect.forkChild(
        model.generate(request, () => Effect.flatMap(Clock.currentTimeMillis, (t) => Effect.sync(() => void times.push(t)))),
        { startImmediately: true }
      )
      yield* TestClock.adjust(100)
      assert.deepStrictEqual(yield* Fiber.join(inference), { processingMs: 100 })
      yield* Fiber.join(generation)
      assert.deepStrictEqual(times, [100, 100, 100, 100])
    }))

  it.effect("latency grows with load: SIM_LOAD_FACTOR is reached when every other slot is busy", () =>
    Effect.gen(function*() {
      let busy = 0
      const model = Model.simulated(0, { ...defaultSimulation, mode: "echo", ttftMs: 40, itlMs: 10, loadFactor: 3 }, () => busy)
      const timeOf = (share: number) =>
        Effect.gen(function*() {
          busy = share
          const fiber = yield* Effect.forkChild(model.generate({ ...request, maxTokens: 2 }, () => Effect.void), { startImmediately: true })
          yield* TestClock.adjust(10_000)
          return (yield* Fiber.join(fiber)).processingMs
        })
      assert.strictEqual(yield* timeOf(0), 50)
      assert.strictEqual(yield* timeOf(0.5), 100)
      assert.strictEqual(yield* timeOf(1), 150)
    }))

  it.effect("/infer becomes a whole generation when TTFT or ITL is set", () =>
    Effect.gen(function*() {
      const model = Model.simulated(100, { ...defaultSimulation, mode: "echo", ttftMs: 30, itlMs: 5 })
      const fiber = yield* Effect.forkChild(model.infer("a b c"), { startImmediately: true })
      yield* TestClock.adjust(1_000)
      assert.deepStrictEqual(yield* Fiber.join(fiber), { processingMs: 40 })
    }))
})

describe("the shared token timer", () => {
  /** A clock driven by hand: `runAt(t)` moves time to t and runs the armed timer (its callbacks run "late" when t is past its due time). */
  const handClock = () => {
    let now = 0
    let armed: { readonly callback: () => void; readonly at: number } | undefined
    return {
      clock: {
        now: () => now,
        setTimeout: (callback: () => void, ms: number) => (armed = { callback, at: now + ms }),
        clearTimeout: (handle: unknown) => {
          if (armed === handle) armed = undefined
        }
      },
      armedAt: () => armed?.at,
      runAt(t: number) {
        now = t
        const due = armed!
        armed = undefined
        due.callback()
      }
    }
  }

  it("counts a token's successor from when the token was due: up to a millisecond of lateness made up, a longer stall not", () => {
    const hand = handClock()
    const timer = makeTokenTimer(hand.clock)
    const ran: Array<number> = []
    const token = () => {
      ran.push(hand.clock.now())
      timer.after(10, token)
    }
    timer.after(10, token)
    assert.strictEqual(hand.armedAt(), 10)
    hand.runAt(10.6) // 0.6 ms late: the next is due at 20, not 20.6 (which would round to 21)
    assert.strictEqual(hand.armedAt(), 20)
    hand.runAt(20.9) // 0.9 ms late: still made up
    assert.strictEqual(hand.armedAt(), 30)
    hand.runAt(34) // a 4 ms stall: only 1 ms of it made up, the next 10 ms after 33
    assert.strictEqual(hand.armedAt(), 43)
    assert.deepStrictEqual(ran, [10.6, 20.9, 34])
  })

  it("a timer that fires early by under half a millisecond (Node truncates timeouts to whole milliseconds) runs what is due, as due; one earlier is armed again", () => {
    const hand = handClock()
    const timer = makeTokenTimer(hand.clock)
    const ran: Array<number> = []
    timer.after(20, () => {
      ran.push(timer.now())
      timer.after(20, () => ran.push(timer.now()))
    })
    assert.strictEqual(hand.armedAt(), 20)
    hand.runAt(19.6) // Node ran the timer 0.4 ms before its time
    assert.deepStrictEqual(ran, [20]) // run now, counted as due at 20 (armed again, it would come late)
    assert.strictEqual(hand.armedAt(), 40)
    hand.runAt(39.4) // 0.6 ms early: armed again for its time
    assert.deepStrictEqual(ran, [20])
    assert.strictEqual(hand.armedAt(), 40)
    hand.runAt(39) // a whole millisecond early: armed again
    assert.deepStrictEqual(ran, [20])
    assert.strictEqual(hand.armedAt(), 40)
    hand.runAt(40)
    assert.deepStrictEqual(ran, [20, 40])
  })

  it("runs every callback due in the same millisecond from one timer, and a new request's delay from now", () => {
    const hand = handClock()
    const timer = makeTokenTimer(hand.clock)
    const ran: Array<string> = []
    timer.after(5, () => ran.push("a"))
    timer.after(5.2, () => ran.push("b"))
    timer.after(7, () => ran.push("c"))
    assert.strictEqual(hand.armedAt(), 5)
    hand.runAt(5)
    assert.deepStrictEqual(ran, ["a", "b"])
    assert.strictEqual(hand.armedAt(), 7)
    hand.runAt(7)
    assert.deepStrictEqual(ran, ["a", "b", "c"])
    assert.isUndefined(hand.armedAt())
  })
})

describe("the hand-written generation (generateUnsafe)", () => {
  const fixed = { ...defaultSimulation, mode: "echo" as const, ttftMs: 3, itlMs: 1 }
  const request = { echoText: "one two three four five six", promptTokens: 6, maxTokens: 4, stop: [], seed: undefined }

  it("exists on the system clock, whatever the delays (the engine draws them); under TestClock, generate runs", () => {
    assert.isDefined(Model.simulated(0, fixed, () => 0, true).generateUnsafe)
    assert.isUndefined(Model.simulated(0, fixed, () => 0, false).generateUnsafe)
    assert.isDefined(Model.simulated(0, { ...fixed, itlStdDevMs: 2 }, () => 0, true).generateUnsafe)
    assert.isDefined(Model.simulated(0, { ...fixed, loadFactor: 2 }, () => 0, true).generateUnsafe)
  })

  const modelOfLayer = Effect.gen(function*() {
    return yield* Model
  }).pipe(Effect.provide(testModelLayer))

  it.effect("under TestClock the model layer keeps the Effect path", () =>
    Effect.gen(function*() {
      assert.isUndefined((yield* modelOfLayer).generateUnsafe)
    }))

  it.live("on the system clock the model layer has the hand-written path", () =>
    Effect.gen(function*() {
      assert.isDefined((yield* modelOfLayer).generateUnsafe)
    }))

  it.live("gives generate's tokens, in order, each after the previous was taken, then ends once", () =>
    Effect.gen(function*() {
      const model = Model.simulated(0, fixed, () => 0, true)
      const expected = yield* model.generate(request, () => Effect.void)
      const seen: Array<string> = []
      const generated = yield* Effect.callback<Generated>((resume) => {
        const stop = model.generateUnsafe!(request, {
          // A consumer that is slow to take each token: the next comes only after `next`.
          token: (text, index, next) => {
            seen.push(`${index}:${text}`)
            setTimeout(next, 2)
          },
          end: (generated) => resume(Effect.succeed(generated))
        })
        return Effect.sync(stop)
      })
      assert.deepStrictEqual(seen, ["0:one", "1: two", "2: three", "3: four"])
      assert.deepStrictEqual({ ...generated, firstTokenMs: 0, processingMs: 0 }, { ...expected, firstTokenMs: 0, processingMs: 0 })
      // Timing itself is TestClock's to test (the Effect path); here only that the reported times are consistent.
      assert.isAtMost(generated.firstTokenMs, generated.processingMs)
    }))

  it.live("with no delay at all a long generation runs in a loop, not by recursion", () =>
    Effect.gen(function*() {
      const model = Model.simulated(0, { ...fixed, ttftMs: 0, itlMs: 0, maxModelLen: 200_000 }, () => 0, true)
      const long = { ...request, echoText: "w ".repeat(100_000), maxTokens: 100_000 }
      let count = 0
      const generated = yield* Effect.callback<Generated>((resume) => {
        model.generateUnsafe!(long, { token: (_, __, next) => (count++, next()), end: (generated) => resume(Effect.succeed(generated)) })
      })
      assert.strictEqual(count, 100_000)
      assert.strictEqual(generated.completionTokens, 100_000)
    }))

  it.live("inferUnsafe: at SIM_LATENCY_MS=0 the inference itself, at once (0 ms); with a latency, through its callback", () =>
    Effect.gen(function*() {
      const instant = Model.simulated(0, defaultSimulation, () => 0, true).inferUnsafe!("a b c", () => assert.fail("answered at once, not later"))
      assert.deepStrictEqual(instant, { processingMs: 0 })
      const later = yield* Effect.callback<{ processingMs: number }>((resume) => {
        const started = Model.simulated(5, defaultSimulation, () => 0, true).inferUnsafe!("a b c", (inference) => resume(Effect.succeed(inference)))
        assert.isFunction(started)
      })
      assert.isAtLeast(later.processingMs, 4)
    }))

  it.live("stopped, it emits nothing more and never ends", () =>
    Effect.gen(function*() {
      const model = Model.simulated(0, fixed, () => 0, true)
      const seen: Array<number> = []
      let ended = false
      let stop = () => {}
      stop = model.generateUnsafe!(request, {
        token: (_, index, next) => {
          seen.push(index)
          if (index === 1) stop()
          next()
        },
        end: () => (ended = true)
      })
      yield* Effect.sleep(30)
      assert.deepStrictEqual(seen, [0, 1])
      assert.isFalse(ended)
    }))
})

describe("the tokenizer's scan", () => {
  const blanks = [" ", "\t", "\n", "\r", "\v", "\f", "\u00a0", "\u1680", "\u2000", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f", "\u3000", "\ufeff", "\u200b", "\u0085"]
  // Also text written without blanks (each character a token) and runs longer than 16 (cut every 16).
  const unblanked = ["\u{1f600}\u{1f680}\u{1f389}", "a\u{1f600}", "中文提示词，没有空格。", "ภาษาไทยไม่มีช่องว่าง", "日本語のテキスト", "한국어텍스트", "ＡＢＣ", "x".repeat(40), "eyJhbGciOiJIUzI1NiJ9eyJzdWIiOiIxMjM0NTY3ODkwIn0", "{\"a\":[1,2,3],\"b\":{\"c\":\"d\"}}"]
  const Text = Schema.Array(Schema.Union([Schema.String, Schema.Literals(blanks), Schema.Literals(unblanked)])).pipe(Schema.decodeTo(Schema.String, {
    decode: SchemaGetter.transform((parts: ReadonlyArray<string>) => parts.join("")),
    encode: SchemaGetter.transform((text: string) => [text])
  }))

  // (The pieces themselves: an arbitrary of Text draws from its decoded side, plain strings, and never a literal.)
  const Pieces = Schema.Array(Schema.Union([Schema.String, Schema.Literals(blanks), Schema.Literals(unblanked)]))
  it.prop("is the rule tokenPattern exactly (blanks, then one CJK/Thai/Hangul character or up to 16 others), on any text", [Pieces], ([pieces]) => {
    const text = pieces.join("")
    assert.deepStrictEqual(tokenize(text), text.match(tokenPattern) ?? [])
    assert.strictEqual(countTokens(text), (text.match(tokenPattern) ?? []).length)
  })

  it("never cuts a surrogate pair: a run of emoji is cut after the pair, one code unit past 16", () => {
    const text = "a" + "\u{1f600}".repeat(12)
    const tokens = tokenize(text)
    assert.strictEqual(tokens.join(""), text)
    for (const token of tokens) assert.isFalse(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/.test(token), JSON.stringify(token))
    assert.deepStrictEqual(tokens.map((token) => token.length), [17, 8])
    assert.deepStrictEqual(tokens, text.match(tokenPattern))
  })

  it("cuts text without blanks: a character of Chinese or Thai each, a long run every 16 characters", () => {
    assert.deepStrictEqual(tokenize("说 中文"), ["说", " 中", "文"])
    assert.deepStrictEqual(tokenize("abc中def"), ["abc", "中", "def"])
    assert.deepStrictEqual(tokenize(` ${"a".repeat(20)} b`), [` ${"a".repeat(16)}`, "aaaa", " b"])
    assert.strictEqual(countTokens("中".repeat(4_800)), 4_800)
    // A blank in the CJK block (U+3000) is a blank.
    assert.deepStrictEqual(tokenize("中\u3000文"), ["中", "\u3000文"])
  })

  it.prop(
    "a plan's tokens make its text; stop sequences cut it at one of them, and none is left in it",
    [Text, Schema.Array(Schema.String), Schema.Array(Schema.Tuple([Schema.Int, Schema.Int])), Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 12 }))],
    ([text, others, slices, maxTokens]) => {
      // Mostly pieces of the text itself, so that they are found.
      const stop = [...others, ...slices.map(([from, length]) => text.slice(Math.abs(from) % (text.length + 1)).slice(0, Math.abs(length) % 8))]
      const whole = planText({ mode: "echo", echoText: text, maxTokens, stop: [], seed: 0 })
      const cut = planText({ mode: "echo", echoText: text, maxTokens, stop, seed: 0 })
      for (const plan of [whole, cut]) {
        const tokens = planTokens(plan)
        assert.strictEqual(tokens.length, plan.tokens)
        assert.strictEqual(tokens.join(""), planOutput(plan))
        assert.isTrue(tokens.every((token) => token !== ""))
      }
      assert.deepStrictEqual(planTokens(whole), tokenize(text).slice(0, maxTokens))
      assert.isTrue(planOutput(whole).startsWith(planOutput(cut)))
      if (cut.end < whole.end) {
        assert.strictEqual(cut.finishReason, "stop")
        assert.isTrue(stop.some((sequence) => sequence !== "" && planOutput(whole).startsWith(sequence, cut.end)))
        assert.isTrue(stop.every((sequence) => sequence === "" || !planOutput(cut).includes(sequence)))
      } else {
        // Not cut: no sequence was in the text, and the plan is the same, finish reason included.
        assert.isTrue(stop.every((sequence) => sequence === "" || !planOutput(whole).includes(sequence)))
        assert.deepStrictEqual(cut, whole)
      }
    }
  )
})
