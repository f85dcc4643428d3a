import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { Admission, type AdmissionLimits, Rejected } from "../src/router/core/Admission.ts"
import { Model } from "../src/router/simulated/Model.ts"

const limits = (overrides: Partial<AdmissionLimits> = {}): AdmissionLimits => ({
  slots: 2,
  maxQueue: 10,
  queueTimeoutMs: 30_000,
  ...overrides
})

interface Outcome {
  readonly finishedAt: number
  readonly waitedMs: number
  readonly processingMs: number
}

/**
 * Starts one request now (synchronously, so arrival order is call order):
 * admission around the simulated model, recording when it finished.
 */
const arrive = (admission: Admission["Service"], latencyMs: number, maxWaitMs?: number) =>
  Effect.forkChild(
    admission.admit(({ waitedMs }) =>
      Effect.gen(function*() {
        const { processingMs } = yield* Model.simulated(latencyMs).infer("prompt")
        const finishedAt = yield* Clock.currentTimeMillis
        return { finishedAt, waitedMs, processingMs } satisfies Outcome
      }), { maxWaitMs }),
    { startImmediately: true }
  )

const rejection = (exit: Exit.Exit<unknown, unknown>): Rejected => {
  assert.isTrue(Exit.isFailure(exit), "expected a rejection")
  const error = Exit.isFailure(exit) ? exit.cause.reasons.find((r) => r._tag === "Fail") : undefined
  assert.instanceOf(error?._tag === "Fail" ? error.error : undefined, Rejected)
  return (error as any).error
}

describe("Admission", () => {
  it.effect("2 slots, 100 ms model: 5 requests finish at 100, 100, 200, 200, 300 ms", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits())
      const fibers = []
      for (let i = 0; i < 5; i++) fibers.push(yield* arrive(admission, 100))
      yield* TestClock.adjust(300)
      const outcomes = yield* Fiber.joinAll(fibers)
      assert.deepStrictEqual(outcomes.map((o) => o.finishedAt), [100, 100, 200, 200, 300])
      assert.deepStrictEqual(outcomes.map((o) => o.waitedMs), [0, 0, 100, 100, 200])
      // processingMs is the model's time only, never the wait
      assert.deepStrictEqual(outcomes.map((o) => o.processingMs), [100, 100, 100, 100, 100])
      assert.deepStrictEqual(admission.statsUnsafe(), { ...limits(), running: 0, waiting: 0, nearTimeout: 0 })
    }))

  it.effect("counts running and waiting work", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits())
      for (let i = 0; i < 5; i++) yield* arrive(admission, 100)
      assert.include(admission.statsUnsafe(), { running: 2, waiting: 3 })
      yield* TestClock.adjust(100)
      assert.include(admission.statsUnsafe(), { running: 2, waiting: 1 })
      yield* TestClock.adjust(200)
      assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
    }))

  it.effect("MAX_QUEUE=0 rejects at once when every slot is busy", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits({ slots: 1, maxQueue: 0 }))
      const first = yield* arrive(admission, 100)
      const second = yield* arrive(admission, 100)
      const exit = yield* Fiber.await(second)
      const rejected = rejection(exit)
      assert.strictEqual(rejected.reason, "queue_full")
      assert.strictEqual(yield* Clock.currentTimeMillis, 0)
      yield* TestClock.adjust(100)
      assert.strictEqual((yield* Fiber.join(first)).finishedAt, 100)
    }))

  it.effect("rejects beyond MAX_QUEUE waiting, and admits again once the queue drains", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits({ slots: 1, maxQueue: 2 }))
      const admitted = [yield* arrive(admission, 100), yield* arrive(admission, 100), yield* arrive(admission, 100)]
      const shed = yield* arrive(admission, 100)
      assert.strictEqual(rejection(yield* Fiber.await(shed)).reason, "queue_full")
      yield* TestClock.adjust(100)
      const late = yield* arrive(admission, 100)
      yield* TestClock.adjust(300)
      assert.deepStrictEqual((yield* Fiber.joinAll(admitted)).map((o) => o.finishedAt), [100, 200, 300])
      assert.strictEqual((yield* Fiber.join(late)).finishedAt, 400)
    }))

  it.effect("grants slots in arrival order", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits({ slots: 1 }))
      const granted: Array<number> = []
      const fibers = []
      for (let i = 0; i < 6; i++) {
        fibers.push(
          yield* Effect.forkChild(
            admission.admit(() => Effect.sync(() => granted.push(i)).pipe(Effect.andThen(Effect.sleep(10)))),
            { startImmediately: true }
          )
        )
      }
      yield* TestClock.adjust(60)
      yield* Fiber.joinAll(fibers)
      assert.deepStrictEqual(granted, [0, 1, 2, 3, 4, 5])
    }))

  describe("queue deadline", () => {
    it.effect("fires on time while every slot stays busy", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, queueTimeoutMs: 250 }))
        const running = yield* arrive(admission, 1_000)
        const queued = yield* arrive(admission, 100)
        yield* TestClock.adjust(249)
        assert.isUndefined(queued.pollUnsafe(), "still waiting at 249 ms")
        yield* TestClock.adjust(1)
        const rejected = rejection(yield* Fiber.await(queued))
        assert.strictEqual(rejected.reason, "queue_timeout")
        assert.strictEqual(yield* Clock.currentTimeMillis, 250)
        assert.include(admission.statsUnsafe(), { running: 1, waiting: 0 })
        yield* TestClock.adjust(750)
        assert.strictEqual((yield* Fiber.join(running)).finishedAt, 1_000)
      }))

    it.effect("only bounds the wait, not the model time", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, queueTimeoutMs: 150 }))
        yield* arrive(admission, 100)
        const queued = yield* arrive(admission, 500)
        yield* TestClock.adjust(600)
        const outcome = yield* Fiber.join(queued)
        assert.deepStrictEqual(outcome, { finishedAt: 600, waitedMs: 100, processingMs: 500 })
      }))

    it.effect("a request's own budget lowers the deadline", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, queueTimeoutMs: 250 }))
        yield* arrive(admission, 1_000)
        const queued = yield* arrive(admission, 100, 40)
        yield* TestClock.adjust(40)
        assert.strictEqual(rejection(yield* Fiber.await(queued)).reason, "queue_timeout")
        assert.strictEqual(yield* Clock.currentTimeMillis, 40)
      }))

    it.effect("counts the requests granted after waiting at least 80 % of their own budget", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, queueTimeoutMs: 1_000 }))
        yield* arrive(admission, 100) // free slot: waits 0
        yield* arrive(admission, 700) // waits 100 of 1,000
        yield* arrive(admission, 100, 1_000) // waits 800 of 1,000: near
        yield* arrive(admission, 100, 1_100) // waits 900 of its 1,000 (the budget cannot rise): near
        yield* arrive(admission, 100, 1_250) // waits 1,000 of 1,000: times out, never granted
        yield* TestClock.adjust(900)
        assert.strictEqual(admission.statsUnsafe().nearTimeout, 2)
        yield* TestClock.adjust(1_000)
        assert.include(admission.statsUnsafe(), { running: 0, waiting: 0, nearTimeout: 2 })
      }))

    it.effect("a request's own budget never raises the deadline", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, queueTimeoutMs: 250 }))
        yield* arrive(admission, 1_000)
        const queued = yield* arrive(admission, 100, 60_000)
        yield* TestClock.adjust(250)
        assert.strictEqual(rejection(yield* Fiber.await(queued)).reason, "queue_timeout")
        assert.strictEqual(yield* Clock.currentTimeMillis, 250)
      }))

    it.effect("a budget of 0 runs at once when a slot is free and is rejected at once otherwise", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1 }))
        const runs = yield* arrive(admission, 100, 0)
        const rejected = yield* arrive(admission, 100, 0)
        assert.strictEqual(rejection(yield* Fiber.await(rejected)).reason, "queue_timeout")
        assert.strictEqual(yield* Clock.currentTimeMillis, 0)
        yield* TestClock.adjust(100)
        assert.strictEqual((yield* Fiber.join(runs)).finishedAt, 100)
      }))
  })

  it.effect("Retry-After grows with the queue and with observed model time", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make(limits({ slots: 2, maxQueue: 40 }))
      const retryAfterWith = (queued: number) =>
        Effect.gen(function*() {
          const holders = []
          for (let i = 0; i < 2 + queued; i++) holders.push(yield* arrive(admission, 60_000))
          // A budget of 0 is rejected at once, against the queue as it stands.
          const seconds = rejection(yield* Fiber.await(yield* arrive(admission, 10, 0))).retryAfterSeconds
          yield* Effect.forEach(holders, Fiber.interrupt)
          return seconds
        })
      assert.strictEqual(yield* retryAfterWith(10), 1, "nothing observed yet: the minimum")
      // Teach it that work holds a slot for 2 s.
      for (let i = 0; i < 40; i++) yield* arrive(admission, 2_000)
      yield* TestClock.adjust(40_000)
      const empty = yield* retryAfterWith(0)
      const short = yield* retryAfterWith(4)
      const long = yield* retryAfterWith(20)
      assert.isAtLeast(empty, 1)
      assert.isAbove(short, empty)
      assert.isAbove(long, short)
      // 20 queued ahead on 2 slots of ~2 s each: about 20 s
      assert.approximately(long, 22, 3)
      assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
    }))

  it.effect("before any work finished, Retry-After starts from the configured model time, not 1 s", () =>
    Effect.gen(function*() {
      const admission = yield* Admission.make({ ...limits({ slots: 1, maxQueue: 5 }), expectedHoldMs: 3_000 })
      const holder = yield* arrive(admission, 60_000)
      const queued = []
      for (let i = 0; i < 3; i++) queued.push(yield* arrive(admission, 60_000))
      // 3 queued ahead on 1 slot of 3 s each, plus its own turn: 12 s.
      const seconds = rejection(yield* Fiber.await(yield* arrive(admission, 10, 0))).retryAfterSeconds
      assert.strictEqual(seconds, 12)
      yield* Effect.forEach([holder, ...queued], Fiber.interrupt)
    }))

  describe("cancellation", () => {
    it.effect("a request interrupted while queued leaves the queue at once", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1, maxQueue: 1 }))
        const running = yield* arrive(admission, 100)
        const queued = yield* arrive(admission, 100)
        assert.include(admission.statsUnsafe(), { running: 1, waiting: 1 })
        yield* Fiber.interrupt(queued)
        assert.include(admission.statsUnsafe(), { running: 1, waiting: 0 })
        // Its place is free again: a new arrival queues instead of being shed.
        const next = yield* arrive(admission, 100)
        yield* TestClock.adjust(200)
        assert.strictEqual((yield* Fiber.join(running)).finishedAt, 100)
        assert.strictEqual((yield* Fiber.join(next)).finishedAt, 200)
      }))

    it.effect("a request interrupted while running stops the model and frees the slot", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1 }))
        let modelFinished = false
        const running = yield* Effect.forkChild(
          admission.admit(() => Effect.sleep(1_000).pipe(Effect.andThen(Effect.sync(() => (modelFinished = true))))),
          { startImmediately: true }
        )
        const queued = yield* arrive(admission, 100)
        yield* TestClock.adjust(10)
        yield* Fiber.interrupt(running)
        yield* TestClock.adjust(100)
        assert.deepStrictEqual(yield* Fiber.join(queued), { finishedAt: 110, waitedMs: 10, processingMs: 100 })
        yield* TestClock.adjust(1_000)
        assert.isFalse(modelFinished)
        assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
      }))
  })

  describe("enterUnsafe (outside a fiber)", () => {
    it.effect("takes a free slot at once, counts it, and frees it on leave", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1 }))
        const leave = admission.enterUnsafe()
        assert.isDefined(leave)
        assert.include(admission.statsUnsafe(), { running: 1, waiting: 0 })
        assert.isUndefined(admission.enterUnsafe(), "no second slot")
        // admit queues behind it and gets the slot once it is left
        const queued = yield* arrive(admission, 100)
        assert.include(admission.statsUnsafe(), { running: 1, waiting: 1 })
        yield* TestClock.adjust(50)
        leave!(Exit.void)
        yield* TestClock.adjust(100)
        const outcome = yield* Fiber.join(queued)
        assert.strictEqual(outcome.waitedMs, 50)
        assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
      }))

    it.effect("never takes a slot that a queued request is about to get", () =>
      Effect.gen(function*() {
        const admission = yield* Admission.make(limits({ slots: 1 }))
        let enteredOnRelease: unknown = "not called"
        // The first request frees its slot and, in the same step, a direct
        // arrival asks for one: the queued second request must keep its turn.
        const first = yield* Effect.forkChild(
          admission.admit(() => Effect.sleep(100)).pipe(
            Effect.ensuring(Effect.sync(() => (enteredOnRelease = admission.enterUnsafe())))
          ),
          { startImmediately: true }
        )
        const second = yield* arrive(admission, 100)
        yield* TestClock.adjust(100)
        yield* Fiber.join(first)
        assert.isUndefined(enteredOnRelease)
        yield* TestClock.adjust(100)
        assert.strictEqual((yield* Fiber.join(second)).finishedAt, 200)
      }))
  })
})
