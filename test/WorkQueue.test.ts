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
})
