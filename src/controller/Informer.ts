/**
 * A cache of one resource kind kept current by list-then-watch, as client-go's
 * reflector: list, then watch from the list's resourceVersion (with
 * bookmarks), and on every way a watch can end, start again without losing or
 * repeating state and without a storm:
 * - the server ends the stream (its timeout): watch again from the last
 *   resourceVersion seen;
 * - 410 Gone (the resourceVersion is too old), as an ERROR event or as the
 *   watch request's HTTP status: list again;
 * - the connection fails, or the API is down: back off exponentially (with
 *   jitter, capped) and retry, from the last resourceVersion;
 * - no event, not even a bookmark, for `idleTimeoutMs`: the watch is presumed
 *   dead (a silent TCP half-open), aborted and started again.
 * No error ends the loop or the process: it is logged, counted, and retried.
 */
import { Clock, Effect, Random, type Scope } from "effect"
import { KubeApi, type KubeError, type ResourceRef, type WatchExpired } from "./KubeApi.ts"

export type RestartReason = "closed" | "expired" | "silent" | "error"

export interface Informer {
  /** Objects by `namespace/name`. */
  readonly store: ReadonlyMap<string, any>
  /** True once every namespace has been listed once. */
  readonly isSynced: () => boolean
}

export interface InformerOptions {
  readonly resource: ResourceRef
  /** Empty: all namespaces, one cluster-wide watch. */
  readonly namespaces: ReadonlyArray<string>
  /** Only objects with these labels (`k=v,k2=v2`). */
  readonly labelSelector?: string | undefined
  readonly idleTimeoutMs: number
  /** An object was added, changed or removed (`object` is the last known state). */
  readonly onChange: (key: string, object: any, deleted: boolean) => void
  readonly onRestart?: (reason: RestartReason) => void
  /** Backoff after failures: base and cap in milliseconds. */
  readonly backoffMs?: { readonly base: number; readonly max: number }
}

export const keyOf = (object: any) => `${object.metadata.namespace}/${object.metadata.name}`

class Silent {
  readonly _tag = "Silent"
}

export const makeInformer = (options: InformerOptions): Effect.Effect<Informer, never, KubeApi | Scope.Scope> =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const clock = yield* Clock.Clock
    const store = new Map<string, any>()
    const scopes = options.namespaces.length === 0 ? [undefined] : options.namespaces
    const synced = new Set<string | undefined>()
    const backoff = options.backoffMs ?? { base: 200, max: 30_000 }

    const upsert = (object: any) => {
      const key = keyOf(object)
      const previous = store.get(key)
      store.set(key, object)
      if (previous?.metadata.resourceVersion !== object.metadata.resourceVersion) options.onChange(key, object, false)
    }
    const remove = (object: any) => {
      const key = keyOf(object)
      if (store.delete(key)) options.onChange(key, object, true)
    }

    const run = (namespace: string | undefined) =>
      Effect.gen(function*() {
        let resourceVersion: string | undefined
        let failures = 0
        const pause = Effect.gen(function*() {
          failures++
          const cap = Math.min(backoff.max, backoff.base * 2 ** Math.min(failures - 1, 20))
          // Full jitter: replicas that lost the API together do not return together.
          yield* Effect.sleep(Math.round(cap / 2 + (yield* Random.next) * cap / 2))
        })
        const restarted = (reason: RestartReason) => Effect.sync(() => options.onRestart?.(reason))

        while (true) {
          if (resourceVersion === undefined) {
            const listed = yield* Effect.result(kube.list(options.resource, namespace, options.labelSelector))
            if (listed._tag === "Failure") {
              yield* Effect.logWarning(`list ${options.resource.kind} failed; retrying`).pipe(
                Effect.annotateLogs({ error: listed.failure.message, namespace: namespace ?? "(all)" })
              )
              yield* restarted("error")
              yield* pause
              continue
            }
            const seen = new Set<string>()
            for (const object of listed.success.items) {
              seen.add(keyOf(object))
              upsert(object)
            }
            for (const [key, object] of store) {
              if ((namespace === undefined || object.metadata.namespace === namespace) && !seen.has(key)) remove(object)
            }
            resourceVersion = listed.success.resourceVersion
            synced.add(namespace)
          }

          let lastActivity = clock.currentTimeMillisUnsafe()
          let events = 0
          let bookmarks = 0
          const startedAt = lastActivity
          const watch = kube.watch(options.resource, namespace, resourceVersion, (type, object) => {
            lastActivity = clock.currentTimeMillisUnsafe()
            const version = object?.metadata?.resourceVersion
            if (type === "BOOKMARK") bookmarks++
            else events++
            if (type === "ADDED" || type === "MODIFIED") upsert(object)
            else if (type === "DELETED") remove(object)
            if (typeof version === "string" && version !== "") resourceVersion = version
          }, options.labelSelector)
          const watchdog = Effect.gen(function*() {
            while (true) {
              const idleFor = clock.currentTimeMillisUnsafe() - lastActivity
              if (idleFor >= options.idleTimeoutMs) return new Silent()
              yield* Effect.sleep(options.idleTimeoutMs - idleFor)
            }
          })
          const ended: void | Silent | KubeError | WatchExpired = yield* Effect.raceFirst(
            Effect.catch(watch, (error) => Effect.succeed(error)),
            watchdog
          )
          // A watch that brought events or bookmarks, or lasted, shows the API healthy again: the
          // backoff of an earlier outage is over (else every later watch restart would wait it out).
          const healthy = events > 0 || bookmarks > 0 || clock.currentTimeMillisUnsafe() - startedAt >= 1_000
          if (healthy) failures = 0
          if (ended === undefined) {
            // The server ended the stream. One that ends at once and empty, again and again, is backed off.
            yield* restarted("closed")
            if (!healthy) yield* pause
          } else if (ended._tag === "Silent") {
            yield* Effect.logWarning(`watch ${options.resource.kind} silent for ${options.idleTimeoutMs} ms; restarting it`)
            yield* restarted("silent")
          } else if (ended._tag === "WatchExpired" || ended.status === 410) {
            // 410 Gone as an ERROR event in the stream, or as the HTTP status of the watch request.
            yield* Effect.logInfo(`watch ${options.resource.kind}: resourceVersion expired (410); listing again`)
            yield* restarted("expired")
            resourceVersion = undefined
            // A server that answers 410 to every fresh list's version would otherwise loop at full speed.
            if (!healthy) yield* pause
          } else {
            yield* Effect.logWarning(`watch ${options.resource.kind} failed; retrying`).pipe(
              Effect.annotateLogs({ error: ended.message, namespace: namespace ?? "(all)" })
            )
            yield* restarted("error")
            yield* pause
          }
        }
      })

    for (const namespace of scopes) yield* Effect.forkScoped(run(namespace))
    return { store, isSynced: () => synced.size === scopes.length }
  })
