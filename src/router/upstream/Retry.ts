/**
 * The retry loop, as a decorator over single attempts (as undici's
 * RetryHandler wraps a dispatch handler): it picks an upstream, starts an
 * attempt (Attempt.ts), and from the attempt's classified outcome decides
 * whether another one follows. The caller has written nothing to its client
 * until `onResponse`, so every retry happens before that:
 *
 * - `Unreached` (nothing reached a model server): retried on another
 *   upstream without spending the retry budget (gRPC's transparent retry),
 *   until every upstream was tried or the first-byte deadline passed;
 * - `Unanswered` (the model may have the request: its server read it and
 *   died, or closed the connection): resent once, on another upstream, when
 *   UPSTREAM_RETRIES allows any retry, outside the concurrent budget. Once per
 *   request bounds what a crash costs (a request that crashes model servers
 *   reaches two; a killed server's requests are sent twice at most), and a
 *   budget would lose the requests in flight on a killed server beyond it;
 * - `Refused` (429/503 before any body byte): retried within UPSTREAM_RETRIES
 *   and the retry budget (retries in flight at most
 *   UPSTREAM_RETRY_BUDGET_PERCENT of the requests in flight, or
 *   UPSTREAM_RETRY_BUDGET_MIN): those retries add load to a pool that refuses;
 * - anything else: the client gets it.
 *
 * A failed attempt holds its upstream's in-flight count for as long as a
 * success typically takes (an average of recent successes), so an upstream
 * that fails at once never looks idle to least request.
 *
 * A request never goes back to an upstream it tried. Every attempt shares the
 * request's first-byte deadline (a retry gets what is left of it, not a fresh
 * timeout), and the whole request its total deadline.
 */
import type { Route } from "../routing/Route.ts"
import type { Endpoint, NoUpstream } from "./Balancer.ts"
import { type AnswerHeaders, type AttemptControl, type AttemptHandler, type AttemptRequest, healthOf, type Outcome, retryOf } from "./Attempt.ts"
import { failureOf, UpstreamFailure } from "./Failure.ts"

/** A request to an upstream: a completion (POST), or `GET /v1/models`. */
export interface ForwardRequest {
  /** POST unless said. */
  readonly method?: "GET" | "POST"
  /** The path after the upstream's prefix, e.g. `/v1/chat/completions`. */
  readonly path: string
  readonly body: string | undefined
  /** Headers sent as they are (content type, request id, the simulator's failure header). */
  readonly headers: Record<string, string>
}

/** An upstream's answer as its headers arrive; the body follows through the handler. */
export interface UpstreamResponse {
  readonly status: number
  readonly headers: AnswerHeaders
  /** `host:port` of the upstream that answered. */
  readonly upstream: string
  readonly version: string | undefined
  /** The `x-inference-route` header of a request a scheduler routed (routing/). */
  readonly route?: string | undefined
  /** Backpressure: stop and restart the upstream's body (its socket). */
  pause(): void
  resume(): void
  /**
   * Refuses the answer as it comes (too large, not JSON, an event too
   * large): the upstream request stops, counts as the upstream's failure,
   * and the handler hears `onError` with a 502 of this code and message.
   */
  reject(code: string, message: string): void
}

/**
 * Receives one forwarded request's outcome: either `onError` alone (no
 * usable answer), or `onResponse`, then `onData` for each body chunk, then
 * `onEnd` or `onError` (the body broke off, went silent, was refused, or the
 * request's deadline passed).
 */
export interface ForwardHandler {
  onResponse(response: UpstreamResponse): void
  onData(chunk: Buffer): void
  /**
   * The answer came whole: a rejection (a 2xx body that is not JSON, a stream
   * ended inside an event) turns it into the upstream's failure, heard as
   * `onError` with a 502 of that code, instead of `onEnd`.
   */
  verify?(): { readonly code: string; readonly message: string } | undefined
  onEnd(): void
  onError(failure: UpstreamFailure): void
}

export interface RetrySettings {
  readonly retries: number
  readonly retryBudgetPercent: number
  readonly retryBudgetMin: number
  readonly firstByteTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly requestTimeoutMs: number
}

/** `resend`: the one resend of a request a model server may have had (counted against UPSTREAM_RETRIES, not the budget). */
export type AttemptKind = "first" | "transparent" | "budgeted" | "resend"

/** What the loop works with: the balancer, single attempts, the clock, and where results go. */
export interface RetryDeps {
  /** The endpoint for the next attempt, none of `tried`; `route` chooses among the candidates when given. */
  pick(tried: ReadonlySet<Endpoint> | undefined, route: Route | undefined): Endpoint | NoUpstream
  /** A request's route (a scheduler other than least request), asked once per request. */
  route?(request: ForwardRequest): Route | undefined
  /** Starts one attempt (Attempt.sendAttempt with the pool's dispatch). */
  start(endpoint: Endpoint, request: AttemptRequest, handler: AttemptHandler): AttemptControl
  /** Each attempt's outcome but `Aborted`, once, with when it started: metrics and the balancer's health. */
  observe(endpoint: Endpoint, outcome: Outcome, startedAt: number): void
  /** A retry is about to start on `endpoint`. */
  retrying(endpoint: Endpoint, kind: AttemptKind): void
  now(): number
  /** Calls `fire` after `ms`; returns what cancels it. */
  setTimer(ms: number, fire: () => void): () => void
}

const unavailable = (reason: NoUpstream) =>
  new UpstreamFailure({
    status: 503,
    code: reason,
    message: reason === "no_healthy_upstream" ? "no model server is healthy now" : "every healthy model server is at UPSTREAM_MAX_CONCURRENCY",
    retryAfterSeconds: 1
  })

export interface Forwarder {
  /** Forwards one request, reporting to `handler`; returns the function that aborts it, after which the handler hears nothing more. */
  forwardUnsafe(request: ForwardRequest, handler: ForwardHandler): () => void
  /** Requests and budgeted retries in flight now. */
  inFlight(): { readonly requests: number; readonly retries: number }
}

/** Longest a failed attempt keeps counting as in flight. */
const maxHoldMs = 10_000

export const withRetries = (deps: RetryDeps, settings: RetrySettings): Forwarder => {
  let requestsInFlight = 0
  let retriesInFlight = 0
  /** How long a successful attempt typically takes (a moving average), in ms. */
  let typicalMs = 0

  /** Ends an attempt's hold on its upstream: at once, or for a failure as late as a success would have ended. */
  const release = (endpoint: Endpoint, outcome: Outcome, startedAt: number) => {
    const elapsed = deps.now() - startedAt
    const health = healthOf(outcome)
    if (health === "success" && outcome._tag === "Completed") typicalMs += (elapsed - typicalMs) / 10
    const hold = health === "failure" || health === "unreachable" ? Math.min(maxHoldMs, typicalMs - elapsed) : 0
    if (hold >= 1) deps.setTimer(hold, () => endpoint.inFlight--)
    else endpoint.inFlight--
  }

  const forwardUnsafe = (request: ForwardRequest, handler: ForwardHandler): () => void => {
    const startedAt = deps.now()
    const firstByteDeadline = startedAt + settings.firstByteTimeoutMs
    let tried: Set<Endpoint> | undefined
    let budgetedRetries = 0
    /** A request that may have been processed is resent at most once: one that crashes servers reaches two, not 1 + UPSTREAM_RETRIES. */
    let resent = false
    let refused: UpstreamFailure | undefined
    /** The last attempt's failure that said something of the model server (not "unreachable"): the answer when none is left to try. */
    let lastFailure: UpstreamFailure | undefined
    let finished = false
    let current: AttemptControl | undefined
    const route = deps.route?.(request)
    requestsInFlight++

    // One timer at a time: at the first-byte deadline (undici's own headers timeout ticks every
    // half second, too coarse to share a deadline between attempts), then at the total one.
    const totalDeadline = startedAt + settings.requestTimeoutMs
    let answeredAny = false
    const onTimer = () => {
      if (finished) return
      if (!answeredAny && deps.now() >= firstByteDeadline && firstByteDeadline < totalDeadline) {
        return current?.stop({ _tag: "FirstByteTimeout", timeoutMs: settings.firstByteTimeoutMs })
      }
      if (deps.now() >= totalDeadline) return current?.stop({ _tag: "Deadline", timeoutMs: settings.requestTimeoutMs })
      cancelTimer = deps.setTimer(totalDeadline - deps.now(), onTimer)
    }
    let cancelTimer = deps.setTimer(Math.min(settings.firstByteTimeoutMs, settings.requestTimeoutMs), onTimer)
    const finish = () => {
      if (finished) return false
      finished = true
      requestsInFlight--
      cancelTimer()
      return true
    }
    const fail = (failure: UpstreamFailure) => {
      if (finish()) handler.onError(failure)
    }
    const budgetAllows = () =>
      budgetedRetries < settings.retries && deps.now() < firstByteDeadline &&
      retriesInFlight < Math.max(settings.retryBudgetMin, requestsInFlight * settings.retryBudgetPercent / 100)

    const start = (kind: AttemptKind): void => {
      const picked = deps.pick(tried, route)
      // Nothing left to pick after attempts that failed: their real failure, not a claim that no server is healthy.
      if (typeof picked === "string") return fail(refused ?? lastFailure ?? unavailable(picked))
      const endpoint = picked
      if (kind !== "first") deps.retrying(endpoint, kind)
      // A budgeted retry holds its place in the budget until its answer starts or it ends.
      let holdsBudget = kind === "budgeted"
      if (holdsBudget) {
        budgetedRetries++
        retriesInFlight++
      }
      if (kind === "resend") budgetedRetries++
      const releaseBudget = () => {
        if (!holdsBudget) return
        holdsBudget = false
        retriesInFlight--
      }
      endpoint.inFlight++
      const attemptStartedAt = deps.now()
      route?.sent(endpoint, attemptStartedAt)
      let answered = false
      let retryRefusal = false
      let ended = false
      const control = deps.start(endpoint, {
        method: request.method ?? "POST",
        path: `${endpoint.target.prefix}${request.path}`,
        body: request.body,
        headers: request.headers,
        headersTimeoutMs: firstByteDeadline - deps.now()
      }, {
        onRefusal: () => {
          releaseBudget()
          retryRefusal = budgetAllows()
          return retryRefusal
        },
        onResponse: (status, headers, control) => {
          releaseBudget()
          answered = true
          answeredAny = true
          handler.onResponse({
            status,
            headers,
            upstream: endpoint.id,
            version: endpoint.target.version,
            route: route?.header(),
            pause: control.pause,
            resume: control.resume,
            reject: (code, message) => control.stop({ _tag: "Rejected", code, message })
          })
        },
        onData: (chunk) => {
          route?.data(chunk, deps.now())
          if (!finished) handler.onData(chunk)
        },
        onEnd: (ending) => {
          ended = true
          const rejected = answered && ending._tag === "Completed" && !finished ? handler.verify?.() : undefined
          const outcome: Outcome = rejected === undefined ? ending : { _tag: "Rejected", ...rejected }
          release(endpoint, outcome, attemptStartedAt)
          route?.ended(endpoint, deps.now())
          releaseBudget()
          current = undefined
          if (outcome._tag !== "Aborted") deps.observe(endpoint, outcome, attemptStartedAt)
          if (finished) return
          if (answered) {
            if (outcome._tag === "Completed") {
              if (finish()) handler.onEnd()
              return
            }
            // The body broke off, went silent or was refused: never retried, a byte may have reached the client.
            return fail(failureOf(endpoint.id, outcome, settings))
          }
          ;(tried ??= new Set()).add(endpoint)
          if (outcome._tag === "Refused") {
            refused = failureOf(endpoint.id, outcome, settings)
            if (retryRefusal) return start("budgeted")
          }
          const retry = retryOf(outcome)
          if (outcome._tag !== "Unreached" && outcome._tag !== "Refused") lastFailure = failureOf(endpoint.id, outcome, settings)
          if (retry === "transparent" && deps.now() < firstByteDeadline) return start("transparent")
          if (retry === "budgeted" && outcome._tag === "Unanswered" && !resent && budgetedRetries < settings.retries && deps.now() < firstByteDeadline) {
            resent = true
            return start("resend")
          }
          // Out of attempts after others refused with Retry-After: that is the answer a client can act on.
          if (refused !== undefined && outcome._tag === "Unreached") return fail(refused)
          fail(failureOf(endpoint.id, outcome, settings))
        }
      })
      // An attempt may end before `start` returns (a fake dispatcher, a synchronous error): then the next one is current.
      if (!ended) current = control
    }

    start("first")
    return () => {
      if (!finish()) return
      current?.stop()
    }
  }

  return { forwardUnsafe, inFlight: () => ({ requests: requestsInFlight, retries: retriesInFlight }) }
}
