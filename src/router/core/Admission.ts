/**
 * Admission control: at most `slots` units of work run at once; the rest wait
 * first-come-first-served in a bounded queue, each for at most its wait budget,
 * and are rejected with a reason a client can act on when there is no room.
 *
 * Slots are an Effect `Semaphore` (FIFO for single permits, and its waiters
 * leave the queue when interrupted). This service adds what the semaphore does
 * not know: the queue bound, the wait deadline, the counts that probes and
 * metrics read, and the Retry-After estimate. `enterUnsafe` takes a free slot
 * without a fiber, for the request pipeline's common case (edge/Pipeline.ts):
 * while nobody waits, such a slot is only counted (borrowed), and the
 * semaphore is told of the borrowed slots (their permits taken) by the first
 * `admit` after them, before it can queue or be granted a permit.
 */
import { Cause, Clock, Context, Data, Effect, Exit, Layer, Semaphore } from "effect"
import { RouterConfig } from "./Config.ts"

/** Why admission turns a request away. */
export const rejectReasons = ["queue_full", "queue_timeout"] as const
export type RejectReason = typeof rejectReasons[number]

export class Rejected extends Data.TaggedError("Rejected")<{
  readonly reason: RejectReason
  readonly message: string
  /** Whole seconds (>= 1) after which a retry has a fair chance of a slot. */
  readonly retryAfterSeconds: number
}> {}

export interface AdmissionLimits {
  /** Most units of work running at once (MAX_CONCURRENCY). */
  readonly slots: number
  /** Most units of work waiting for a slot (MAX_QUEUE); 0 rejects at once when all slots are busy. */
  readonly maxQueue: number
  /** Longest wait for a slot (QUEUE_TIMEOUT_MS). */
  readonly queueTimeoutMs: number
}

export interface AdmissionOptions extends AdmissionLimits {
  /**
   * What a unit of work is expected to hold its slot for before any has
   * finished (the configured model time): the first Retry-After estimates.
   */
  readonly expectedHoldMs?: number | undefined
}

export interface AdmissionStats extends AdmissionLimits {
  /** Units of work holding a slot now. */
  readonly running: number
  /** Units of work waiting for a slot now. */
  readonly waiting: number
  /**
   * Units of work granted a slot after waiting at least `nearTimeoutShare` of
   * their wait budget, since start: more than 1 % of the admitted means the
   * p99 wait is that near the timeout, counted exactly (a histogram's quantile
   * is interpolated inside buckets far wider than that margin).
   */
  readonly nearTimeout: number
}

/** The share of its wait budget after which a granted unit of work counts as `nearTimeout`. */
export const nearTimeoutShare = 0.8

export interface Grant {
  /** Milliseconds spent waiting for the slot (0 when one was free). */
  readonly waitedMs: number
}

export interface AdmitOptions {
  /** Lowers (never raises) the wait budget for this unit of work; 0 means "run now or reject". */
  readonly maxWaitMs?: number | undefined
}

/** Weight of the newest observation in the moving average of slot hold time. */
const holdTimeSmoothing = 0.2

export class Admission extends Context.Service<Admission, {
  readonly limits: AdmissionLimits
  /**
   * Runs `work` once it holds a slot, or fails with `Rejected` without running
   * it. Interrupting the returned effect (a client hanging up) leaves the queue
   * or interrupts the work; either way the slot and queue place are released.
   */
  admit<A, E, R>(work: (grant: Grant) => Effect.Effect<A, E, R>, options?: AdmitOptions): Effect.Effect<A, E | Rejected, R>
  /**
   * For a caller outside a fiber: takes a slot at once if one is free and
   * nobody is waiting (when `admit` would grant one without queueing), else
   * returns undefined and the caller uses `admit`. Call the returned `leave`
   * exactly once, with how the work ended; an interrupted exit is a hang-up.
   */
  enterUnsafe(): ((exit: Exit.Exit<unknown, unknown>) => void) | undefined
  /** Current counts, read synchronously so metrics and probes cost nothing. */
  statsUnsafe(): AdmissionStats
}>()("inference-router/Admission") {
  static readonly make = (options: AdmissionOptions): Effect.Effect<Admission["Service"]> =>
    Effect.gen(function*() {
      const limits: AdmissionLimits = { slots: options.slots, maxQueue: options.maxQueue, queueTimeoutMs: options.queueTimeoutMs }
      const semaphore = yield* Semaphore.make(limits.slots)
      // Taking or releasing free permits never suspends, so running it as a
      // fiber completes at once (a new fiber yields only after 2,048 operations).
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const releasePermit = semaphore.release(1)
      /**
       * Slots taken by `enterUnsafe` whose permits the semaphore has not taken:
       * the fast path takes none (a fiber each to take and release one cost
       * about 0.35 µs per request in process, 0.8 µs in the router), and only
       * while nobody waits. `admit` takes their permits (`takeBorrowedPermits`) before
       * it can queue or be granted one, so the semaphore never grants a slot
       * that is borrowed; while anyone waits, nothing is borrowed.
       */
      let borrowed = 0
      const takeBorrowedPermits = () => {
        if (borrowed === 0) return
        // The semaphore has them free: every slot in use is borrowed or holds a permit, and at most `slots` are in use.
        const fiber = runFork(semaphore.takeIfAvailable(borrowed))
        const taken = fiber.pollUnsafe()
        if (taken === undefined || !Exit.isSuccess(taken) || !taken.value) {
          if (taken === undefined) fiber.interruptUnsafe()
          throw new Error(`admission: the semaphore had no ${borrowed} free permits for the borrowed slots`)
        }
        borrowed = 0
      }
      // The clock of the context the service is made in (TestClock in tests),
      // read once rather than on every request.
      const clock = yield* Clock.Clock
      let running = 0
      // Admitted but not yet granted a slot: includes requests about to be granted.
      let waiting = 0
      let nearTimeout = 0
      // Learnt from the work that finishes; until then, what the settings say.
      let holdTimeMs = options.expectedHoldMs ?? 0

      /** Rejects the request that would stand at `position` in the queue. */
      const reject = (reason: RejectReason, message: string, position: number) =>
        new Rejected({
          reason,
          message,
          retryAfterSeconds: Math.max(1, Math.ceil((Math.ceil(position / limits.slots) * holdTimeMs) / 1000))
        })

      /** Frees the slot of work granted at `grantedAt`, and learns from how long it held it. */
      const leave = (exit: Exit.Exit<unknown, unknown>, grantedAt: number) => {
        running--
        // Work cut short by a hang-up says nothing about how long work takes.
        if (!(Exit.isFailure(exit) && Cause.hasInterrupts(exit.cause))) {
          const heldMs = clock.currentTimeMillisUnsafe() - grantedAt
          holdTimeMs += holdTimeSmoothing * (heldMs - holdTimeMs)
        }
      }

      const enterUnsafe = () => {
        // Never while anyone waits: a woken waiter's permit is not reserved for it,
        // and nothing may be borrowed while a waiter could still take it.
        if (waiting > 0 || running >= limits.slots) return undefined
        borrowed++
        running++
        const grantedAt = clock.currentTimeMillisUnsafe()
        let left = false
        return (exit: Exit.Exit<unknown, unknown>) => {
          if (left) return
          left = true
          // Borrowed slots are alike: one still borrowed is given back by count, else one whose permit `admit` took.
          if (borrowed > 0) borrowed--
          else runFork(releasePermit)
          leave(exit, grantedAt)
        }
      }

      const admit = <A, E, R>(
        work: (grant: Grant) => Effect.Effect<A, E, R>,
        options?: AdmitOptions
      ): Effect.Effect<A, E | Rejected, R> =>
        Effect.suspend(() => {
          takeBorrowedPermits()
          const maxWaitMs = Math.min(limits.queueTimeoutMs, options?.maxWaitMs ?? Infinity)
          const mustWait = running + waiting >= limits.slots
          if (mustWait) {
            const queued = running + waiting - limits.slots
            if (queued >= limits.maxQueue) {
              return Effect.fail(reject(
                "queue_full",
                limits.maxQueue === 0
                  ? `all ${limits.slots} slots are busy and queueing is disabled`
                  : `all ${limits.slots} slots are busy and the queue is full (${limits.maxQueue} waiting)`,
                queued + 1
              ))
            }
            if (maxWaitMs <= 0) {
              return Effect.fail(reject(
                "queue_timeout",
                `all ${limits.slots} slots are busy and the request's queue budget is 0 ms`,
                queued + 1
              ))
            }
          }
          const arrivedAt = clock.currentTimeMillisUnsafe()
          let grantedAt: number | undefined
          waiting++
          // Bookkeeping is synchronous inside the permit, and undone in one
          // place on exit, so no interleaving of interruptions can skew it.
          const run = semaphore.withPermit(Effect.suspend(() => {
            grantedAt = clock.currentTimeMillisUnsafe()
            waiting--
            running++
            if (mustWait && grantedAt - arrivedAt >= nearTimeoutShare * maxWaitMs) nearTimeout++
            return work({ waitedMs: grantedAt - arrivedAt })
          })).pipe(Effect.onExit((exit) =>
            Effect.sync(() => {
              if (grantedAt === undefined) waiting--
              else leave(exit, grantedAt)
            })
          ))
          if (!mustWait) return run
          // The deadline only bounds the wait: once granted, the timer never fires.
          const deadline = Effect.sleep(maxWaitMs).pipe(Effect.flatMap(() =>
            grantedAt !== undefined ? Effect.never : Effect.fail(reject(
              "queue_timeout",
              `no slot became free within ${maxWaitMs} ms`,
              Math.max(1, running + waiting - limits.slots)
            ))
          ))
          return Effect.raceFirst(run, deadline)
        })

      return Admission.of({
        limits,
        admit,
        enterUnsafe,
        statsUnsafe: () => ({ ...limits, running, waiting, nearTimeout })
      })
    })

  static readonly layer: Layer.Layer<Admission, never, RouterConfig> = Layer.effect(
    Admission,
    RouterConfig.use((config) =>
      Admission.make({
        slots: config.maxConcurrency,
        maxQueue: config.maxQueue,
        queueTimeoutMs: config.queueTimeoutMs,
        expectedHoldMs: config.simLatencyMs
      }))
  )
}
