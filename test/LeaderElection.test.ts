/**
 * Leader election under TestClock, against an in-memory Lease shared by
 * candidates that each have their own view of the API (so one's requests can
 * fail or hang while the other's answer): at most one leader acting at any
 * time; a leader that cannot renew stops within the renew deadline; a
 * shutdown with a hanging API ends within its bound; a holder whose clock is
 * skewed is not taken over while it renews.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { KubeApi, KubeError } from "../src/controller/KubeApi.ts"
import { runWhileLeader } from "../src/controller/LeaderElection.ts"

interface LeaseStore {
  lease: any | undefined
  version: number
}

type Fault = "none" | "fail" | "hang"

/** One candidate's view of the API: the shared Lease, with its own faults. */
const viewOf = (store: LeaseStore, fault: () => Fault) => {
  const guard = <A>(operation: string, run: () => A) =>
    Effect.suspend(() => {
      const now = fault()
      if (now === "hang") return Effect.never
      if (now === "fail") return Effect.fail(new KubeError({ operation, status: 403, detail: "forbidden (test)" }))
      return Effect.try({ try: run, catch: (error) => error as KubeError })
    })
  const unused = () => Effect.die("not used by leader election")
  return KubeApi.of({
    server: "memory",
    list: unused,
    watch: unused,
    apply: unused,
    applyStatus: unused,
    read: unused,
    remove: unused,
    createEvent: unused,
    readLease: () => guard("read lease", () => structuredClone(store.lease)),
    createLease: (_namespace, lease) =>
      guard("create lease", () => {
        if (store.lease !== undefined) throw new KubeError({ operation: "create lease", status: 409, detail: "exists" })
        store.lease = { ...structuredClone(lease), metadata: { ...lease.metadata, resourceVersion: String(++store.version) } }
        return structuredClone(store.lease)
      }),
    replaceLease: (_namespace, _name, lease) =>
      guard("replace lease", () => {
        if (lease.metadata?.resourceVersion !== store.lease?.metadata.resourceVersion) {
          throw new KubeError({ operation: "replace lease", status: 409, detail: "conflict" })
        }
        store.lease = { ...structuredClone(lease), metadata: { ...lease.metadata, resourceVersion: String(++store.version) } }
        return structuredClone(store.lease)
      })
  })
}

const options = { namespace: "ns", name: "lease", leaseDurationSeconds: 15, renewDeadlineMs: 10_000, retryMs: 2_000 }

/** Who is acting (its work running), sampled after every step of the clock. */
const candidate = (store: LeaseStore, identity: string, acting: Set<string>, fault: () => Fault) => {
  const work = Effect.acquireRelease(Effect.sync(() => acting.add(identity)), () => Effect.sync(() => acting.delete(identity))).pipe(
    Effect.andThen(Effect.never),
    Effect.scoped
  )
  return runWhileLeader({ ...options, identity }, work).pipe(Effect.provideService(KubeApi, viewOf(store, fault)))
}

/** The test clock with a wall clock `offset()` ms away (stepped by NTP, say); monotonic time and sleeps unchanged. */
const steppedWallClock = (base: Clock.Clock, offset: () => number): Clock.Clock => ({
  ...base,
  currentTimeMillisUnsafe: () => base.currentTimeMillisUnsafe() + offset(),
  currentTimeMillis: Effect.sync(() => base.currentTimeMillisUnsafe() + offset()),
  currentTimeNanosUnsafe: () => base.currentTimeNanosUnsafe() + BigInt(offset()) * 1_000_000n,
  currentTimeNanos: Effect.sync(() => base.currentTimeNanosUnsafe() + BigInt(offset()) * 1_000_000n),
  monotonicTimeNanosUnsafe: () => base.monotonicTimeNanosUnsafe(),
  monotonicTimeNanos: Effect.sync(() => base.monotonicTimeNanosUnsafe()),
  sleep: (duration) => base.sleep(duration)
})

const settle = Effect.gen(function*() {
  for (let i = 0; i < 30; i++) yield* Effect.yieldNow
})

/** Advances the clock in 100 ms steps, checking after each that at most one acts. */
const run = (ms: number, acting: Set<string>, log: Array<string>) =>
  Effect.gen(function*() {
    for (let t = 0; t < ms; t += 100) {
      yield* TestClock.adjust(100)
      yield* settle
      assert.isAtMost(acting.size, 1, `two leaders acting at once: ${[...acting]}`)
      const now = [...acting].join(",")
      if (log.at(-1) !== now) log.push(now)
    }
  })

describe("leader election", () => {
  it.effect("a leader whose renewals fail stops leading within the renew deadline (milliseconds, not seconds)", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      const acting = new Set<string>()
      let fault: Fault = "none"
      const a = yield* Effect.forkChild(candidate(store, "a", acting, () => fault))
      yield* settle
      assert.isTrue(acting.has("a"))
      yield* run(3_000, acting, [])
      fault = "fail"
      const failingSince = 3_000
      // Renewed last at 2,000: the deadline passes at 12,000, within a renew period after it.
      const stoppedAt = yield* Effect.gen(function*() {
        for (let t = failingSince; t < 60_000; t += 100) {
          yield* TestClock.adjust(100)
          yield* settle
          if (!acting.has("a")) return t + 100
        }
        return Number.POSITIVE_INFINITY
      })
      assert.isAtMost(stoppedAt, 2_000 + options.renewDeadlineMs + options.retryMs)
      assert.isAtLeast(stoppedAt, 2_000 + options.renewDeadlineMs - options.retryMs)
      yield* Fiber.interrupt(a)
    }))

  it.effect("lease requests hanging: the leader stops acting before another can take over; never two at once", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      const acting = new Set<string>()
      const log: Array<string> = []
      let aFault: Fault = "none"
      const a = yield* Effect.forkChild(candidate(store, "a", acting, () => aFault))
      yield* settle
      const b = yield* Effect.forkChild(candidate(store, "b", acting, () => "none"))
      yield* run(5_000, acting, log)
      assert.deepStrictEqual([...acting], ["a"])
      aFault = "hang"
      yield* run(40_000, acting, log)
      assert.deepStrictEqual([...acting], ["b"], "b took over once a's lease expired")
      assert.deepStrictEqual(log, ["a", "", "b"], "a stopped, and only then b started")
      assert.strictEqual(store.lease.spec.holderIdentity, "b")
      yield* Fiber.interrupt(b)
      yield* Fiber.interrupt(a)
    }))

  it.effect("shutdown while the API hangs ends within its bound instead of waiting on the release", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      const acting = new Set<string>()
      let fault: Fault = "none"
      const a = yield* Effect.forkChild(candidate(store, "a", acting, () => fault))
      yield* run(3_000, acting, [])
      fault = "hang"
      const stopping = yield* Effect.forkChild(Fiber.interrupt(a))
      yield* run(5_000, acting, [])
      assert.isDefined(stopping.pollUnsafe(), "shutdown done within 5 s although the release hangs")
      assert.strictEqual(acting.size, 0)
    }))

  it.effect("the leader's wall clock stepped back an hour while its renewals fail: it still stops within the renew deadline; never two leaders", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      const acting = new Set<string>()
      const log: Array<string> = []
      let aFault: Fault = "none"
      let aOffset = 0
      const base = yield* Clock.Clock
      const a = yield* Effect.forkChild(
        candidate(store, "a", acting, () => aFault).pipe(Effect.provideService(Clock.Clock, steppedWallClock(base, () => aOffset)))
      )
      yield* settle
      const b = yield* Effect.forkChild(candidate(store, "b", acting, () => "none"))
      yield* run(3_000, acting, log)
      assert.deepStrictEqual([...acting], ["a"])
      aOffset = -3_600_000
      aFault = "fail"
      yield* run(options.renewDeadlineMs + options.retryMs, acting, log)
      assert.isFalse(acting.has("a"), "a stopped within its renew deadline, by elapsed time, not by its wall clock")
      yield* run(30_000, acting, log)
      assert.deepStrictEqual([...acting], ["b"], "b took over once the lease expired")
      yield* Fiber.interrupt(a)
      yield* Fiber.interrupt(b)
    }))

  it.effect("the leader's wall clock stepped forward an hour: it keeps leading, its work not restarted", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      let starts = 0
      let offset = 0
      const base = yield* Clock.Clock
      const work = Effect.sync(() => starts++).pipe(Effect.andThen(Effect.never))
      const a = yield* Effect.forkChild(
        runWhileLeader({ ...options, identity: "a" }, work).pipe(
          Effect.provideService(KubeApi, viewOf(store, () => "none")),
          Effect.provideService(Clock.Clock, steppedWallClock(base, () => offset))
        )
      )
      yield* run(3_000, new Set(), [])
      assert.strictEqual(starts, 1)
      offset = 3_600_000
      yield* run(20_000, new Set(), [])
      assert.strictEqual(starts, 1, "leadership not lost and taken again")
      assert.strictEqual(store.lease.spec.holderIdentity, "a")
      yield* Fiber.interrupt(a)
    }))

  it.effect("a holder whose clock is an hour behind is not taken over while it renews; once it stops, it is", () =>
    Effect.gen(function*() {
      const store: LeaseStore = { lease: undefined, version: 0 }
      const acting = new Set<string>()
      const log: Array<string> = []
      let renewing = true
      // The holder writes renewTime from a clock an hour behind ours.
      const renew = Effect.gen(function*() {
        while (true) {
          if (renewing) {
            const skewed = new Date(Date.UTC(2026, 0, 1) - 3_600_000 + Number(yield* Clock.currentTimeMillis)).toISOString()
            store.lease = {
              metadata: { name: "lease", namespace: "ns", resourceVersion: String(++store.version) },
              spec: { holderIdentity: "skewed", leaseDurationSeconds: 15, renewTime: skewed, acquireTime: skewed, leaseTransitions: 0 }
            }
          }
          yield* Effect.sleep(2_000)
        }
      })
      const holder = yield* Effect.forkChild(renew)
      yield* settle
      const a = yield* Effect.forkChild(candidate(store, "a", acting, () => "none"))
      yield* run(60_000, acting, log)
      assert.strictEqual(acting.size, 0, "no takeover while the holder renews")
      assert.strictEqual(store.lease.spec.holderIdentity, "skewed")
      renewing = false
      yield* run(20_000, acting, log)
      assert.deepStrictEqual([...acting], ["a"], "taken over once the record stopped changing for the lease duration")
      yield* Fiber.interrupt(a)
      yield* Fiber.interrupt(holder)
    }))
})
