/**
 * Admission under random interleavings of enterUnsafe / leave / admit /
 * interrupt with no settling between operations, so arrivals land inside the
 * window between a released slot and its woken waiter running (Effect's
 * semaphore does not reserve the permit for the waiter): never more than
 * `slots` in the model, no slot leaked, capacity neither shrunk nor grown.
 * Fails when enterUnsafe ignores the waiters (checked by planting it).
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Fiber, Scheduler } from "effect"
import { Admission } from "../src/router/core/Admission.ts"

const stress = (seed: number, slots: number) =>
  Effect.gen(function*() {
    const admission = yield* Admission.make({ slots, maxQueue: 4, queueTimeoutMs: 1_000_000 })
    let inModel = 0
    let peak = 0
    let violation: string | undefined
    let rng = seed
    const rand = (n: number) => {
      rng = (rng * 1103515245 + 12345) & 0x7fffffff
      return rng % n
    }
    const enterModel = () => {
      inModel++
      peak = Math.max(peak, inModel)
      if (inModel > slots) violation ??= `seed ${seed}: model saw ${inModel} callers with ${slots} slots`
    }
    const fibers: Array<Fiber.Fiber<unknown, unknown>> = []
    const pendingLeaves: Array<() => void> = []
    const work = (steps: number) =>
      Effect.gen(function*() {
        enterModel()
        for (let i = 0; i < steps; i++) yield* Effect.yieldNow
      }).pipe(Effect.ensuring(Effect.sync(() => inModel--)))
    const admitNow = (maxWaitMs?: number) =>
      Effect.forkChild(admission.admit(() => work(rand(6)), { maxWaitMs }), { startImmediately: true })
    const checkStats = () => {
      const s = admission.statsUnsafe()
      assert.isAtLeast(s.running, inModel, "running counts at least the callers in the model")
      assert.isAtMost(s.running, slots)
    }
    for (let op = 0; op < 4000; op++) {
      const r = rand(12)
      if (r < 4) {
        const leave = admission.enterUnsafe()
        if (leave !== undefined) {
          enterModel()
          pendingLeaves.push(() => {
            inModel--
            leave(rand(3) === 0 ? Exit.interrupt() : Exit.void)
          })
        } else fibers.push(yield* admitNow())
      } else if (r < 6) {
        fibers.push(yield* admitNow(rand(4) === 0 ? 0 : undefined))
      } else if (r < 9) {
        if (pendingLeaves.length > 0) pendingLeaves.splice(rand(pendingLeaves.length), 1)[0]()
      } else if (r < 10) {
        if (fibers.length > 0) fibers[rand(fibers.length)].interruptUnsafe()
      } else {
        yield* Effect.yieldNow
      }
      checkStats()
      assert.isUndefined(violation)
    }
    for (const leave of pendingLeaves.splice(0)) leave()
    for (let i = 0; i < 50; i++) yield* Effect.yieldNow
    for (const f of fibers) yield* Fiber.await(f)
    assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
    // Capacity exactly `slots`: all run at once via enterUnsafe, the next must wait.
    const leaves = Array.from({ length: slots }, () => admission.enterUnsafe())
    assert.isTrue(leaves.every((l) => l !== undefined), `seed ${seed}: capacity shrank`)
    let extraRan = false
    const extra = yield* Effect.forkChild(admission.admit(() => Effect.sync(() => (extraRan = true)), { maxWaitMs: 1000 }), {
      startImmediately: true
    })
    for (let i = 0; i < 5; i++) yield* Effect.yieldNow
    assert.isFalse(extraRan, `seed ${seed}: capacity grew`)
    assert.isUndefined(extra.pollUnsafe(), `seed ${seed}: the extra admit ended early: ${String(extra.pollUnsafe())}`)
    yield* Fiber.interrupt(extra)
    for (const l of leaves) l!(Exit.void)
    return peak
  })

describe("admission under interleavings with no settling", () => {
  for (const sync of [false, true]) {
    it.effect(`random interleavings, ${sync ? "MixedScheduler(sync)" : "default scheduler"}`, () =>
      Effect.gen(function*() {
        for (let seed = 1; seed <= 8; seed++) {
          const slots = 1 + (seed % 3)
          const run = stress(seed, slots)
          yield* sync ? Effect.provideService(run, Scheduler.Scheduler, new Scheduler.MixedScheduler("sync")) : run
        }
      }))
  }
})
