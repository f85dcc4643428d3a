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
 *   next run, unless something else adds it sooner (an event means new state).
 */
import { Duration, Effect, Queue, type Scope } from "effect"

export interface WorkQueueOptions {
  readonly parallelism: number
  readonly backoffBase: Duration.Input
  readonly backoffMax: Duration.Input
}

export interface WorkQueue {
  /** Enqueues a key; synchronous, so watch callbacks can call it. */
  readonly add: (key: string) => void
  /** Keys waiting (not counting those being reconciled): the queue-depth gauge. */
  readonly depth: () => number
  /** Failures in a row per key, for tests and logs. */
  readonly failures: (key: string) => number
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
    const waiting = new Set<string>()
    const running = new Set<string>()
    const dirty = new Set<string>()
    const failureCounts = new Map<string, number>()

    const add = (key: string) => {
      if (running.has(key)) {
        dirty.add(key)
        return
      }
      if (waiting.has(key)) return
      waiting.add(key)
      Queue.offerUnsafe(queue, key)
    }

    const runOne = (key: string) =>
      Effect.gen(function*() {
        waiting.delete(key)
        running.add(key)
        const exit = yield* Effect.exit(reconcile(key))
        running.delete(key)
        if (exit._tag === "Success") {
          failureCounts.delete(key)
          if (onResult) yield* onResult(key, "success")
        } else {
          const failures = (failureCounts.get(key) ?? 0) + 1
          failureCounts.set(key, failures)
          const error = exit.cause.reasons.find((reason) => reason._tag === "Fail")
          if (onResult) yield* onResult(key, "error", error?._tag === "Fail" ? error.error : undefined)
          // Retried after the backoff unless an event adds it first.
          yield* Effect.sleep(backoffDelay(options, failures)).pipe(
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
      failures: (key) => failureCounts.get(key) ?? 0
    }
  })
