/**
 * What the pipeline tells the RequestObserver about a request beyond its
 * status: queue and model time, or why it was shed. Carried on the Node request
 * object, because the observer sees Node's events, not the pipeline, and
 * reading response headers back would cost Node's writeHead fast path.
 */
import type { IncomingMessage } from "node:http"

export interface RequestOutcome {
  readonly queueMs?: number
  readonly modelMs?: number
  /** The `x-router-reject-reason` of a shed request. */
  readonly reason?: string
  /** The status written to the socket when the response object could not send one (Node's request timeout). */
  readonly status?: number
}

const outcomeKey = Symbol.for("inference-router/RequestOutcome")

export const noteOutcome = (request: IncomingMessage, outcome: RequestOutcome): void => {
  ;(request as unknown as Record<symbol, RequestOutcome>)[outcomeKey] = outcome
}

/** Adds to what is noted (the status of a request cut short keeps its queue time, say). */
export const addOutcome = (request: IncomingMessage, outcome: RequestOutcome): void =>
  noteOutcome(request, { ...outcomeOf(request), ...outcome })

export const outcomeOf = (request: IncomingMessage): RequestOutcome | undefined =>
  (request as unknown as Record<symbol, RequestOutcome | undefined>)[outcomeKey]
