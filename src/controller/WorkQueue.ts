/**
 * The reconcile queue: keys (`namespace/name`), deduplicated, at most
 * `parallelism` reconciled at once, never the same key twice at once, and a
 * key that failed retried after a per-key exponential backoff (reset by a
 * success). As client-go's rate-limited work queue, on Effect's Queue and
 * Clock (so TestClock drives it in tests).
 *
 * - `add` of a key already waiting does nothing; of a key being reconciled
 *   marks it dirty, and it runs once more after the current run.
 * - A failed key waits `base * 2^(failures-1)`, at most `max`, before its
 *   next run, unless something else adds it sooner (an event means new state),
 *   stretched by up to `jitter` of itself (keys that failed together, say on
 *   an API outage, do not return together), and never sooner than an overall
 *   token bucket allows (client-go's default controller rate limiter: the
 *   slower of per-key backoff and 10 retries/s with a burst of 100), so many
 *   failing keys cannot storm the API.
 */
import { Clock, Duration, Effect, Queue, Random, type Scope } from "effect"
import { workQueueMetrics } from "./Metrics.ts"

export interface WorkQueueOptions {
  readonly parallelism: number
  readonly backoffBase: Duration.Input
  readonly backoffMax: Duration.Input
  /** A retry's delay is stretched by a random fraction up to this (0.2: up to 20 % longer). Default 0. */
  readonly jitter?: number
  /** Retries of all keys together: at most `perSecond` on average, `burst` at once. Default: unlimited. */
  readonly retryRate?: { readonly perSecond: number; readonly burst: number }
}

/** A failure that says when to try again (the API server's Retry-After): the retry waits at least that. */
export interface RetryAfter {
  readonly retryAfterSeconds?: number | undefined
}

export interface WorkQueue {
  /** Enqueues a key; synchronous, so watch callbacks can call it. */
  readonly add: (key: string) => void
  /** Keys waiting (not counting those being reconciled): the queue-depth gauge. */
  readonly depth: () => number
  /** Failures in a row per key, for tests and logs. */
  readonly failures: (key: string) => number
  /** How long the longest reconcile in progress has run, in ms (0: none runs): liveness. */
  readonly longestRunningMs: () => number
}

/** The delay before the `failures`-th retry. */
export const backoffDelay = (options: WorkQueueOptions, failures: number): Duration.Duration => {
  const base = Duration.toMillis(Duration.fromInputUnsafe(options.backoffBase))
  const max = Duration.toMillis(Duration.fromInputUnsafe(options.backoffMax))
  return Duration.millis(Math.min(max, base * 2 ** Math.max(0, failures - 1)))
}

/**
 * Starts the workers in the current scope; `reconcile` fails to ask for a
 * retry with backoff, succeeds to reset it.
 */
export const makeWorkQueue = <E, R>(
  options: WorkQueueOptions,
  reconcile: (key: string) => Effect.Effect<void, E, R>,
  onResult?: (key: string, result: "success" | "error", error?: E) => Effect.Effect<void>
): Effect.Effect<WorkQueue, never, R | Scope.Scope> =>
  Effect.gen(function*() {
    const scope = yield* Effect.scope
    const queue = yield* Queue.unbounded<string>()
    const clock = yield* Clock.Clock
    const waiting = new Set<string>()
    /** Keys being reconciled, and since when. */
    const running = new Map<string, number>()
    const bucket = { tokens: options.retryRate?.burst ?? 0, at: clock.currentTimeMillisUnsafe() }
    /** The wait the overall bucket imposes on one more retry (its token reserved, as client-go's rate.Limiter). */
    const bucketDelay = (): number => {
      const rate = options.retryRate
      if (rate === undefined) return 0
      const now = clock.currentTimeMillisUnsafe()
      bucket.tokens = Math.min(rate.burst, bucket.tokens + (now - bucket.at) * rate.perSecond / 1000)
      bucket.at = now
      bucket.tokens -= 1
      return bucket.tokens >= 0 ? 0 : Math.ceil(-bucket.tokens * 1000 / rate.perSecond)
    }
    const dirty = new Set<string>()
    const failureCounts = new Map<string, number>()
    const metrics = yield* workQueueMetrics(options.parallelism)

    const add = (key: string) => {
      if (running.has(key)) {
        dirty.add(key)
        return
      }
      if (waiting.has(key)) return
      waiting.add(key)
      metrics.added(key, waiting.size)
      Queue.offerUnsafe(queue, key)
    }

    const runOne = (key: string) =>
      Effect.gen(function*() {
        waiting.delete(key)
        running.set(key, clock.currentTimeMillisUnsafe())
        metrics.started(key, waiting.size)
        const exit = yield* Effect.exit(reconcile(key))
        running.delete(key)
        metrics.finished(key, exit._tag === "Success" ? "success" : "error")
        if (exit._tag === "Success") {
          failureCounts.delete(key)
          if (onResult) yield* onResult(key, "success")
        } else {
          const failures = (failureCounts.get(key) ?? 0) + 1
          failureCounts.set(key, failures)
          const error = exit.cause.reasons.find((reason) => reason._tag === "Fail")
          if (onResult) yield* onResult(key, "error", error?._tag === "Fail" ? error.error : undefined)
          // Retried after the backoff unless an event adds it first.
          const backoff = Duration.toMillis(backoffDelay(options, failures)) * (1 + (options.jitter ?? 0) * (yield* Random.next))
          const told = error?._tag === "Fail" ? (error.error as RetryAfter | undefined)?.retryAfterSeconds : undefined
          const asked = typeof told === "number" ? told * 1000 : 0
          yield* Effect.sleep(Math.max(Math.round(backoff), bucketDelay(), asked)).pipe(
            Effect.andThen(Effect.sync(() => add(key))),
            Effect.forkIn(scope)
          )
        }
        if (dirty.delete(key)) add(key)
      })

    for (let i = 0; i < options.parallelism; i++) {
      yield* Effect.forkScoped(Effect.forever(Effect.flatMap(Queue.take(queue), runOne)))
    }

    return {
      add,
      depth: () => waiting.size,
      failures: (key) => failureCounts.get(key) ?? 0,
      longestRunningMs: () => {
        const now = clock.currentTimeMillisUnsafe()
        let longest = 0
        for (const since of running.values()) longest = Math.max(longest, now - since)
        return longest
      }
    }
  })
