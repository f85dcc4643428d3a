/**
 * Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
 * leaderelection:
 * - A candidate takes the Lease when it is free (released) or its record has
 *   not changed for `leaseDurationSeconds`, timed by this replica's own
 *   monotonic clock from when it saw the record change: never by comparing
 *   the holder's `renewTime` with the local clock, so a holder whose clock is
 *   skewed is not taken over while it renews. Every duration here (the renew
 *   deadline too) is monotonic time, so a wall clock stepped by NTP changes
 *   nothing.
 * - Writes carry the Lease's resourceVersion, so of two replicas racing, one
 *   gets 409 Conflict and stays a candidate.
 * - The leader renews every `retryMs`; each attempt is bounded by what is
 *   left of `renewDeadlineMs` since the last renewal, and when the deadline
 *   passes (a failing or hanging API, a 403) it stops leading at once, even
 *   mid-call: its work is interrupted and its requests aborted. The deadline
 *   is shorter than the lease, so it has stopped before another replica can
 *   see the lease expire.
 * - On shutdown the leader releases the Lease (bounded in time, so a hanging
 *   API cannot hold SIGTERM), and a successor takes over at once.
 * Failed lease calls are logged as warnings (a 409 race, which is normal, at
 * debug).
 */
import { Clock, Effect, Exit, Fiber, Option } from "effect"
import { KubeApi, type KubeError } from "./KubeApi.ts"

export interface LeaderElectionOptions {
  readonly namespace: string
  readonly name: string
  readonly identity: string
  readonly leaseDurationSeconds: number
  readonly renewDeadlineMs: number
  readonly retryMs: number
  readonly onLeading?: (leading: boolean) => void
}

/** Kubernetes' MicroTime: RFC 3339 with microseconds. */
const microTime = (millis: number) => new Date(millis).toISOString().replace(/\.(\d{3})Z$/, ".$1000Z")

/** The part of a Lease whose change shows its holder is alive (client-go's LeaderElectionRecord). */
const recordOf = (lease: any) =>
  JSON.stringify([
    lease?.spec?.holderIdentity ?? "",
    lease?.spec?.renewTime ?? "",
    lease?.spec?.acquireTime ?? "",
    lease?.spec?.leaseDurationSeconds ?? 0,
    lease?.spec?.leaseTransitions ?? 0
  ])

export const runWhileLeader = <E, R>(options: LeaderElectionOptions, work: Effect.Effect<void, E, R>) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const clock = yield* Clock.Clock
    // Elapsed time (renewals, deadlines, when a record changed) on the monotonic clock: a wall clock
    // stepped by NTP must neither keep a leader past its deadline nor make a lease look expired.
    // The wall clock only stamps the Lease's renewTime/acquireTime (read by people and other tools).
    const now = clock.monotonicTimeNanos.pipe(Effect.map((nanos) => Number(nanos / 1_000_000n)))
    const wallTime = () => microTime(clock.currentTimeMillisUnsafe())
    /** The Lease's record as last seen, and when (local clock) it was seen to change. */
    let observed: { readonly record: string; readonly at: number } | undefined
    let heldVersion: string | undefined
    let lastError: string | undefined

    const observe = (lease: any, at: number) => {
      const record = recordOf(lease)
      if (observed?.record !== record) observed = { record, at }
    }

    /** One attempt to take or renew the Lease; true when we hold it afterwards. */
    const tryAcquireOrRenew = Effect.gen(function*() {
      const lease = yield* kube.readLease(options.namespace, options.name)
      const at = yield* now
      const stamp = wallTime()
      const spec = {
        holderIdentity: options.identity,
        leaseDurationSeconds: options.leaseDurationSeconds,
        renewTime: stamp
      }
      if (lease === undefined) {
        const created = yield* kube.createLease(options.namespace, {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name: options.name, namespace: options.namespace },
          spec: { ...spec, acquireTime: stamp, leaseTransitions: 0 }
        })
        heldVersion = created.metadata?.resourceVersion
        observe(created, at)
        return true
      }
      observe(lease, at)
      const holder: string = lease.spec?.holderIdentity ?? ""
      const duration = (lease.spec?.leaseDurationSeconds ?? options.leaseDurationSeconds) * 1000
      const ours = holder === options.identity
      if (!ours && holder !== "" && observed!.at + duration > at) return false
      const replaced = yield* kube.replaceLease(options.namespace, options.name, {
        ...lease,
        spec: {
          ...lease.spec,
          ...spec,
          acquireTime: ours ? lease.spec.acquireTime : stamp,
          leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + (ours ? 0 : 1)
        }
      })
      heldVersion = replaced.metadata?.resourceVersion
      observe(replaced, at)
      lastError = undefined
      return true
    }).pipe(
      // 409 (another replica won the race): normal. Anything else (403, the API down) is worth a warning,
      // once per distinct error.
      Effect.catch((error: KubeError) => {
        const repeated = lastError === error.message
        lastError = error.message
        const log = error.status === 409 || repeated ? Effect.logDebug("lease not taken") : Effect.logWarning("lease request failed")
        return log.pipe(Effect.annotateLogs({ error: error.message, lease: `${options.namespace}/${options.name}` }), Effect.as(false))
      })
    )

    const release = Effect.gen(function*() {
      const lease = yield* kube.readLease(options.namespace, options.name)
      if (lease === undefined || lease.spec?.holderIdentity !== options.identity) return
      yield* kube.replaceLease(options.namespace, options.name, {
        ...lease,
        // As client-go's ReleaseOnCancel: no holder, and a lease that expires at once.
        spec: { ...lease.spec, holderIdentity: "", leaseDurationSeconds: 1, renewTime: wallTime() }
      })
      yield* Effect.logInfo("released the lease")
    }).pipe(
      // Shutdown must not wait on a hanging API: the lease then expires on its own.
      Effect.timeoutOption(Math.min(options.renewDeadlineMs, 5_000)),
      Effect.ignore
    )

    while (true) {
      // Candidate: wait for the Lease.
      let renewedAt = yield* now
      while (!(yield* tryAcquireOrRenew)) {
        yield* Effect.sleep(options.retryMs)
        renewedAt = yield* now
      }
      yield* Effect.logInfo(`leading (lease ${options.namespace}/${options.name})`).pipe(
        Effect.annotateLogs({ identity: options.identity, leaseVersion: heldVersion })
      )
      options.onLeading?.(true)
      const working = yield* Effect.forkChild(work)
      // Renew until the renew deadline passes without a renewal.
      const lost = yield* Effect.gen(function*() {
        while (true) {
          yield* Effect.sleep(options.retryMs)
          if (working.pollUnsafe() !== undefined) return false
          const startedAt = yield* now
          const left = options.renewDeadlineMs - (startedAt - renewedAt)
          if (left <= 0) return true
          const renewed = yield* Effect.timeoutOption(tryAcquireOrRenew, left)
          if (Option.isSome(renewed) && renewed.value) renewedAt = startedAt
          else if ((yield* now) - renewedAt >= options.renewDeadlineMs) return true
        }
      }).pipe(Effect.onInterrupt(() => Fiber.interrupt(working).pipe(Effect.andThen(release))))
      yield* Fiber.interrupt(working)
      options.onLeading?.(false)
      const exit = working.pollUnsafe()
      if (!lost && exit !== undefined && Exit.isFailure(exit) && !Exit.hasInterrupts(exit)) {
        return yield* Effect.failCause(exit.cause)
      }
      yield* Effect.logWarning(`lost the lease: no renewal within ${options.renewDeadlineMs} ms; stopped reconciling; standing as a candidate again`)
    }
  })
