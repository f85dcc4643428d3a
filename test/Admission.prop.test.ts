/**
 * Property tests of admission control: random limits and random schedules of
 * arrivals (through `admit`, or `enterUnsafe` first as `/infer` does), model
 * times, per-request budgets and client disconnects, driven by TestClock so
 * every run is deterministic and instant.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Clock, Effect, Exit, Fiber, Schema } from "effect"
import { TestClock } from "effect/testing"
import { Admission, Rejected } from "../src/router/core/Admission.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const RequestPlan = Schema.Struct({
  /** Gap after the previous arrival; 0 = same instant. */
  gapMs: int(0, 60),
  modelMs: int(0, 200),
  budgetMs: Schema.optional(int(0, 300)),
  /** Client hangs up this long after arriving (while queued or running). */
  hangUpAfterMs: Schema.optional(int(0, 400)),
  /** Arrives as `/infer` does: first tries `enterUnsafe`, then `admit`. */
  direct: Schema.Boolean
})

const Scenario = Schema.Struct({
  slots: int(1, 4),
  maxQueue: int(0, 6),
  queueTimeoutMs: int(1, 300),
  requests: Schema.Array(RequestPlan).check(Schema.isMinLength(1), Schema.isMaxLength(30))
})
type Scenario = typeof Scenario.Type

type Event =
  | { readonly at: number; readonly kind: "arrive"; readonly index: number }
  | { readonly at: number; readonly kind: "hangUp"; readonly index: number }

const runScenario = (scenario: Scenario) =>
  Effect.gen(function*() {
    const { maxQueue, queueTimeoutMs, slots } = scenario
    const admission = yield* Admission.make({ slots, maxQueue, queueTimeoutMs })
    const t0 = yield* Clock.currentTimeMillis

    // Oracle state, updated from inside the work and around admit.
    let inModel = 0
    let peakInModel = 0
    const grants: Array<number> = []
    const completions = new Array<number>(scenario.requests.length).fill(0)
    const arrivedAt: Array<number> = []
    const endedAt: Array<number> = []
    const fibers: Array<Fiber.Fiber<void, Rejected>> = []

    const quiescentCheck = () => {
      const stats = admission.statsUnsafe()
      assert.strictEqual(stats.running, inModel, "admission's running count matches the model's callers")
      const notGranted = fibers.filter((f, i) => f.pollUnsafe() === undefined && !grants.includes(i)).length
      assert.strictEqual(stats.waiting, notGranted, "admission's waiting count matches the requests still queued")
      assert.isAtMost(notGranted, maxQueue, "never more than MAX_QUEUE waiting")
      if (notGranted > 0) assert.strictEqual(inModel, slots, "nothing waits while a slot is free")
    }

    const events: Array<Event> = []
    let at = 0
    scenario.requests.forEach((plan, index) => {
      at += plan.gapMs
      events.push({ at, kind: "arrive", index })
      if (plan.hangUpAfterMs !== undefined) events.push({ at: at + plan.hangUpAfterMs, kind: "hangUp", index })
    })
    // Stable: at equal times arrivals keep their order, hang-ups come after.
    events.sort((a, b) => a.at - b.at || (a.kind === b.kind ? a.index - b.index : a.kind === "arrive" ? -1 : 1))

    for (const event of events) {
      const now = (yield* Clock.currentTimeMillis) - t0
      if (event.at > now) yield* TestClock.adjust(event.at - now)
      quiescentCheck()
      const plan = scenario.requests[event.index]
      if (event.kind === "arrive") {
        arrivedAt[event.index] = event.at
        const work = Effect.gen(function*() {
          grants.push(event.index)
          inModel++
          peakInModel = Math.max(peakInModel, inModel)
          if (inModel > slots) throw new Error(`model saw ${inModel} callers with ${slots} slots`)
          yield* Effect.sleep(plan.modelMs)
          completions[event.index]++
        }).pipe(Effect.ensuring(Effect.sync(() => inModel--)))
        const leave = plan.direct ? admission.enterUnsafe() : undefined
        const admitted = leave === undefined
          ? admission.admit(() => work, { maxWaitMs: plan.budgetMs })
          : work.pipe(Effect.onExit((exit) => Effect.sync(() => leave(exit))))
        fibers[event.index] = yield* Effect.forkChild(
          admitted.pipe(
            Effect.onExit(() => Effect.map(Clock.currentTimeMillis, (t) => void (endedAt[event.index] = t - t0)))
          ),
          { startImmediately: true }
        )
      } else {
        yield* Fiber.interrupt(fibers[event.index])
      }
      // Let the fibers woken by this event run before checking.
      yield* Effect.repeat(Effect.yieldNow, { times: 5 })
      quiescentCheck()
    }
    // Let everything settle.
    yield* TestClock.adjust(10_000)
    quiescentCheck()

    // Every request ended exactly once, with one of three outcomes.
    for (let i = 0; i < scenario.requests.length; i++) {
      const plan = scenario.requests[i]
      const exit = fibers[i].pollUnsafe()
      assert.isDefined(exit, `request ${i} never ended`)
      if (Exit.isSuccess(exit!)) {
        assert.strictEqual(completions[i], 1, `served request ${i} ran the model once`)
      } else if (Cause.hasInterruptsOnly(exit!.cause)) {
        assert.isDefined(plan.hangUpAfterMs, `request ${i} was cancelled without hanging up`)
        assert.strictEqual(completions[i], 0)
      } else {
        const error = Cause.squash(exit!.cause)
        assert.instanceOf(error, Rejected, `request ${i} failed with ${String(error)}`)
        const rejected = error as Rejected
        assert.isAtLeast(rejected.retryAfterSeconds, 1)
        assert.isFalse(grants.includes(i), "a shed request never reached the model")
        if (rejected.reason === "queue_timeout") {
          // The deadline fires on time: at arrival + the smaller of the two budgets.
          const budget = Math.min(queueTimeoutMs, plan.budgetMs ?? Infinity)
          assert.strictEqual(endedAt[i], arrivedAt[i] + budget, `request ${i} timed out on time`)
        } else {
          assert.strictEqual(endedAt[i], arrivedAt[i], "queue_full is answered at once")
        }
      }
    }

    // Slots were granted in arrival order.
    assert.deepStrictEqual(grants, [...grants].sort((a, b) => a - b))
    assert.isAtMost(peakInModel, slots)

    // Nothing leaked: every slot is free and the full capacity is usable again.
    assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
    const again = yield* Effect.forEach(
      Array.from({ length: slots }, () => admission.admit(() => Effect.sleep(1))),
      (effect) => Effect.forkChild(effect, { startImmediately: true })
    )
    assert.strictEqual(admission.statsUnsafe().running, slots)
    yield* TestClock.adjust(1)
    yield* Fiber.joinAll(again)
  })

describe("Admission properties", () => {
  it.effect.prop(
    "never over capacity, FIFO, on-time deadlines, every request ends exactly once, nothing leaks",
    [Scenario],
    ([scenario]) => runScenario(scenario).pipe(Effect.tapDefect(() => Effect.sync(() => console.log(JSON.stringify(scenario))))),
    { arbitrary: { runs: Number(process.env.PROPERTY_RUNS ?? 300) } }
  )
})
