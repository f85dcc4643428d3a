/**
 * Property tests of streams behind admission: random mixes of streaming and
 * non-streaming generations (the model's tokens on TestClock, streams with
 * slow readers), hang-ups at random points. A stream holds its slot until its
 * last token; a hang-up stops the generation (no token after it) and frees
 * the slot at once; nothing leaks.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Effect, Exit, Fiber, Schema } from "effect"
import { TestClock } from "effect/testing"
import { Admission, Rejected } from "../src/router/core/Admission.ts"
import { defaultSimulation } from "../src/router/core/Config.ts"
import { Model } from "../src/router/simulated/Model.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const Plan = Schema.Struct({
  gapMs: int(0, 40),
  stream: Schema.Boolean,
  maxTokens: int(1, 8),
  /** A slow reader: each token waits this long before the next is generated (backpressure). */
  readMs: int(0, 15),
  hangUpAfterMs: Schema.optional(int(0, 300))
})

const Scenario = Schema.Struct({
  slots: int(1, 3),
  maxQueue: int(0, 5),
  ttftMs: int(0, 30),
  itlMs: int(0, 20),
  requests: Schema.Array(Plan).check(Schema.isMinLength(1), Schema.isMaxLength(20))
})

const runScenario = (scenario: typeof Scenario.Type) =>
  Effect.gen(function*() {
    const admission = yield* Admission.make({ slots: scenario.slots, maxQueue: scenario.maxQueue, queueTimeoutMs: 10_000 })
    const model = Model.simulated(0, { ...defaultSimulation, mode: "random", ttftMs: scenario.ttftMs, itlMs: scenario.itlMs })
    const t0 = yield* Clock.currentTimeMillis
    let running = 0
    const tokenTimes: Array<Array<number>> = scenario.requests.map(() => [])
    const hungUpAt: Array<number | undefined> = []
    const fibers: Array<Fiber.Fiber<unknown, Rejected>> = []

    const events: Array<{ at: number; index: number; kind: "arrive" | "hangUp" }> = []
    let at = 0
    scenario.requests.forEach((plan, index) => {
      at += plan.gapMs
      events.push({ at, index, kind: "arrive" })
      if (plan.hangUpAfterMs !== undefined) events.push({ at: at + plan.hangUpAfterMs, index, kind: "hangUp" })
    })
    events.sort((a, b) => a.at - b.at || (a.kind === b.kind ? a.index - b.index : a.kind === "arrive" ? -1 : 1))

    for (const event of events) {
      const now = (yield* Clock.currentTimeMillis) - t0
      if (event.at > now) yield* TestClock.adjust(event.at - now)
      const plan = scenario.requests[event.index]
      if (event.kind === "arrive") {
        const work = Effect.gen(function*() {
          running++
          assert.isAtMost(running, scenario.slots, "never over capacity")
          return yield* model.generate(
            { echoText: `request ${event.index}`, promptTokens: 2, maxTokens: plan.maxTokens, stop: [], seed: event.index },
            (_token) =>
              Effect.gen(function*() {
                tokenTimes[event.index].push((yield* Clock.currentTimeMillis) - t0)
                if (plan.stream && plan.readMs > 0) yield* Effect.sleep(plan.readMs)
              })
          )
        }).pipe(Effect.ensuring(Effect.sync(() => running--)))
        fibers[event.index] = yield* Effect.forkChild(admission.admit(() => work), { startImmediately: true })
      } else {
        hungUpAt[event.index] = event.at
        yield* Fiber.interrupt(fibers[event.index])
        assert.strictEqual(admission.statsUnsafe().running, running, "a hang-up frees its slot at once")
      }
      yield* Effect.repeat(Effect.yieldNow, { times: 5 })
    }
    yield* TestClock.adjust(60_000)

    for (let i = 0; i < scenario.requests.length; i++) {
      const exit = fibers[i].pollUnsafe()
      assert.isDefined(exit, `request ${i} ended`)
      const times = tokenTimes[i]
      if (hungUpAt[i] !== undefined) {
        // Nothing produced after the client left.
        assert.isTrue(times.every((t) => t <= hungUpAt[i]!), `request ${i}: token after hang-up at ${hungUpAt[i]}: ${times}`)
      }
      if (Exit.isSuccess(exit!)) {
        const generated = exit.value as { completionTokens: number }
        assert.strictEqual(generated.completionTokens, times.length, "every token reached the client once")
        assert.isAtMost(times.length, scenario.requests[i].maxTokens)
      } else if (!Cause.hasInterruptsOnly(exit!.cause)) {
        assert.instanceOf(Cause.squash(exit!.cause), Rejected)
        assert.lengthOf(times, 0, "a shed request never generated")
      }
    }
    assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
  })

describe("streams behind admission (properties)", () => {
  it.effect.prop(
    "streams hold slots to their last token; hang-ups stop generation and free the slot; nothing leaks",
    [Scenario],
    ([scenario]) => runScenario(scenario).pipe(Effect.tapDefect(() => Effect.sync(() => console.log(JSON.stringify(scenario))))),
    { arbitrary: { runs: Number(process.env.PROPERTY_RUNS ?? 200) } }
  )
})
