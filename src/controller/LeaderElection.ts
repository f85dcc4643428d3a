/**
 * Leader election on a `coordination.k8s.io/v1` Lease, as client-go's
 * leaderelection: a candidate takes the Lease when it is free or its holder
 * has not renewed it for `leaseDurationSeconds`, and renews it every
 * `retryMs`. Writes carry the Lease's resourceVersion, so of two replicas
 * racing, one gets 409 Conflict and stays a candidate: two never lead at once.
 * A leader that cannot renew within `renewDeadlineMs` stops leading (its work
 * is interrupted) before the Lease can expire for the others. On shutdown the
 * leader releases the Lease, so a successor takes over at once.
 */
import { Clock, Effect, Exit, Fiber } from "effect"
import { KubeApi } from "./KubeApi.ts"

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

export const runWhileLeader = <E, R>(options: LeaderElectionOptions, work: Effect.Effect<void, E, R>) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const clock = yield* Clock.Clock
    let heldVersion: string | undefined

    /** One attempt to take or renew the Lease; true when we hold it afterwards. */
    const tryAcquireOrRenew = Effect.gen(function*() {
      const now = clock.currentTimeMillisUnsafe()
      const lease = yield* kube.readLease(options.namespace, options.name)
      const spec = {
        holderIdentity: options.identity,
        leaseDurationSeconds: options.leaseDurationSeconds,
        renewTime: microTime(now)
      }
      if (lease === undefined) {
        const created = yield* kube.createLease(options.namespace, {
          apiVersion: "coordination.k8s.io/v1",
          kind: "Lease",
          metadata: { name: options.name, namespace: options.namespace },
          spec: { ...spec, acquireTime: microTime(now), leaseTransitions: 0 }
        })
        heldVersion = created.metadata?.resourceVersion
        return true
      }
      const holder: string = lease.spec?.holderIdentity ?? ""
      const renewedAt = lease.spec?.renewTime === undefined ? 0 : new Date(lease.spec.renewTime).getTime()
      const duration = (lease.spec?.leaseDurationSeconds ?? options.leaseDurationSeconds) * 1000
      const ours = holder === options.identity
      if (!ours && holder !== "" && renewedAt + duration > now) return false
      const replaced = yield* kube.replaceLease(options.namespace, options.name, {
        ...lease,
        spec: {
          ...lease.spec,
          ...spec,
          acquireTime: ours ? lease.spec.acquireTime : microTime(now),
          leaseTransitions: (lease.spec?.leaseTransitions ?? 0) + (ours ? 0 : 1)
        }
      })
      heldVersion = replaced.metadata?.resourceVersion
      return true
    }).pipe(
      // 409 (another replica won the race), the API down: not leading, try again later.
      Effect.catch((error) => Effect.logDebug("lease not taken").pipe(Effect.annotateLogs({ error: error.message }), Effect.as(false)))
    )

    const release = Effect.gen(function*() {
      const lease = yield* kube.readLease(options.namespace, options.name)
      if (lease === undefined || lease.spec?.holderIdentity !== options.identity) return
      yield* kube.replaceLease(options.namespace, options.name, {
        ...lease,
        // As client-go's ReleaseOnCancel: no holder, and a lease that expires at once.
        spec: { ...lease.spec, holderIdentity: "", leaseDurationSeconds: 1, renewTime: microTime(clock.currentTimeMillisUnsafe()) }
      })
      yield* Effect.logInfo("released the lease")
    }).pipe(Effect.ignore)

    while (true) {
      // Candidate: wait for the Lease.
      while (!(yield* tryAcquireOrRenew)) yield* Effect.sleep(options.retryMs)
      yield* Effect.logInfo(`leading (lease ${options.namespace}/${options.name})`).pipe(
        Effect.annotateLogs({ identity: options.identity, leaseVersion: heldVersion })
      )
      options.onLeading?.(true)
      const working = yield* Effect.forkChild(work)
      // Renew until a renewal fails for longer than the deadline.
      let renewedAt = clock.currentTimeMillisUnsafe()
      const lost = yield* Effect.gen(function*() {
        while (true) {
          yield* Effect.sleep(options.retryMs)
          if (working.pollUnsafe() !== undefined) return false
          if (yield* tryAcquireOrRenew) renewedAt = clock.currentTimeMillisUnsafe()
          else if (clock.currentTimeMillisUnsafe() - renewedAt >= options.renewDeadlineMs) return true
        }
      }).pipe(Effect.onInterrupt(() => Fiber.interrupt(working).pipe(Effect.andThen(release))))
      yield* Fiber.interrupt(working)
      options.onLeading?.(false)
      const exit = working.pollUnsafe()
      if (!lost && exit !== undefined && Exit.isFailure(exit) && !Exit.hasInterrupts(exit)) {
        return yield* Effect.failCause(exit.cause)
      }
      yield* Effect.logWarning("lost the lease: stopped reconciling; standing as a candidate again")
    }
  })
