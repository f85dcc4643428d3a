/**
 * The reconcile queue under TestClock: deduplication, one run per key at a
 * time, bounded parallelism, per-key exponential backoff reset by success.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Deferred, Duration, Effect } from "effect"
import { TestClock } from "effect/testing"
import { backoffDelay, makeWorkQueue } from "../src/controller/WorkQueue.ts"

const options = { parallelism: 2, backoffBase: "100 millis", backoffMax: "1 second" } as const

/** Lets the queue's fibers run until they wait on something. */
const settle = Effect.gen(function*() {
  for (let i = 0; i < 20; i++) yield* Effect.yieldNow
})

describe("work queue", () => {
  it("backoff doubles per failure up to the cap", () => {
    assert.deepStrictEqual([1, 2, 3, 4, 5, 6].map((n) => Duration.toMillis(backoffDelay(options, n))), [100, 200, 400, 800, 1000, 1000])
  })

  it.effect("a key added many times while waiting runs once", () =>
    Effect.gen(function*() {
      const runs: Array<string> = []
      const gate = yield* Deferred.make<void>()
      const queue = yield* makeWorkQueue({ ...options, parallelism: 1 }, (key) =>
        key === "block" ? Deferred.await(gate) : Effect.sync(() => void runs.push(key)))
      queue.add("block")
      yield* settle
      for (let i = 0; i < 5; i++) queue.add("a")
      queue.add("b")
      assert.strictEqual(queue.depth(), 2)
      yield* Deferred.succeed(gate, undefined)
      yield* settle
      assert.deepStrictEqual(runs, ["a", "b"])
    }))

  it.effect("a key added while it runs runs again after, never twice at once; parallelism bounds the rest", () =>
    Effect.gen(function*() {
      let concurrent = 0
      let most = 0
      const perKey = new Map<string, number>()
      const starts: Array<string> = []
      const queue = yield* makeWorkQueue(options, (key) =>
        Effect.gen(function*() {
          concurrent++
          most = Math.max(most, concurrent)
          perKey.set(key, (perKey.get(key) ?? 0) + 1)
          assert.strictEqual(perKey.get(key), 1, `${key} twice at once`)
          starts.push(key)
          yield* Effect.sleep(50)
          perKey.set(key, perKey.get(key)! - 1)
          concurrent--
        }))
      for (const key of ["a", "b", "c", "d"]) queue.add(key)
      yield* settle
      queue.add("a") // while "a" runs: dirty
      yield* TestClock.adjust(50)
      yield* settle
      yield* TestClock.adjust(50)
      yield* settle
      yield* TestClock.adjust(50)
      yield* settle
      assert.strictEqual(most, 2)
      assert.deepStrictEqual(starts, ["a", "b", "c", "d", "a"])
    }))

  it.effect("a failing key is retried with growing delays; a success resets them", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      let failUntil = 3
      const queue = yield* makeWorkQueue(options, () =>
        Effect.gen(function*() {
          attempts.push(Number(yield* Clock.currentTimeMillis))
          if (attempts.length <= failUntil) return yield* Effect.fail("boom")
        }))
      queue.add("k")
      yield* settle
      for (let t = 0; t < 20; t++) {
        yield* TestClock.adjust(50)
        yield* settle
      }
      // Failed at 0, 100, 300; succeeded at 700.
      assert.deepStrictEqual(attempts, [0, 100, 300, 700])
      assert.strictEqual(queue.failures("k"), 0)
      failUntil = 5
      queue.add("k")
      yield* settle
      yield* TestClock.adjust(100)
      yield* settle
      assert.deepStrictEqual(attempts.slice(4), [1000, 1100], "backoff starts from the base again")
    }))

  it.effect("many failing keys: retries together stay within the overall rate (10/s, burst 100)", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const queue = yield* makeWorkQueue(
        { parallelism: 50, backoffBase: "10 millis", backoffMax: "10 millis", retryRate: { perSecond: 10, burst: 100 } },
        () => Effect.gen(function*() {
          attempts.push(Number(yield* Clock.currentTimeMillis))
          return yield* Effect.fail("boom")
        })
      )
      for (let i = 0; i < 200; i++) queue.add(`k${i}`)
      yield* settle
      for (let t = 0; t < 100; t++) {
        yield* TestClock.adjust(100)
        yield* settle
      }
      // 200 first attempts at 0; then the burst of 100 retries; then 10 a second.
      const retries = attempts.length - 200
      assert.isAtMost(retries, 100 + 10 * 10 + 1)
      assert.isAtLeast(retries, 100 + 10 * 10 - 10)
    }))

  it.effect("a retry's delay is stretched by at most the jitter, and delays differ", () =>
    Effect.gen(function*() {
      const attempts = new Map<string, Array<number>>()
      const queue = yield* makeWorkQueue({ parallelism: 10, backoffBase: "1 second", backoffMax: "1 second", jitter: 0.5 }, (key) =>
        Effect.gen(function*() {
          attempts.set(key, [...(attempts.get(key) ?? []), Number(yield* Clock.currentTimeMillis)])
          return yield* Effect.fail("boom")
        }))
      for (let i = 0; i < 10; i++) queue.add(`k${i}`)
      yield* settle
      for (let t = 0; t < 16; t++) {
        yield* TestClock.adjust(100)
        yield* settle
      }
      const seconds = [...attempts.values()].map((times) => times[1])
      for (const at of seconds) assert.isTrue(at >= 1_000 && at <= 1_500, String(at))
      assert.isAbove(new Set(seconds).size, 1, "not all at once")
    }))

  it.effect("longestRunningMs: how long the oldest reconcile in progress has run (liveness)", () =>
    Effect.gen(function*() {
      const queue = yield* makeWorkQueue(options, (key) => key === "stuck" ? Effect.never : Effect.void)
      assert.strictEqual(queue.longestRunningMs(), 0)
      queue.add("stuck")
      yield* settle
      yield* TestClock.adjust(60_000)
      yield* settle
      assert.strictEqual(queue.longestRunningMs(), 60_000)
    }))

  it.effect("a failure carrying the server's Retry-After is retried no sooner than it says (a 429)", () =>
    Effect.gen(function*() {
      const attempts: Array<number> = []
      const queue = yield* makeWorkQueue(options, () =>
        Effect.gen(function*() {
          attempts.push(Number(yield* Clock.currentTimeMillis))
          if (attempts.length === 1) return yield* Effect.fail({ retryAfterSeconds: 3 })
        }))
      queue.add("k")
      yield* settle
      for (let t = 0; t < 40; t++) {
        yield* TestClock.adjust(100)
        yield* settle
      }
      assert.deepStrictEqual(attempts, [0, 3_000])
    }))
})
