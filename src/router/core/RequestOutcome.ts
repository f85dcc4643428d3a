/**
 * What the pipeline tells the RequestObserver about a request beyond its
 * status: queue and model time, or why it was shed. The observer sees Node's
 * events, not the pipeline, and reading response headers back would cost
 * Node's writeHead fast path.
 *
 * It is kept per connection, with the request the connection serves now (one
 * holder per connection, reused by each request on it), not on Node's request
 * object: a property added to every `IncomingMessage` changed its hidden class
 * on each request (and allocated its out-of-object properties), and the
 * holder is emptied when the response closes, so a keep-alive connection
 * keeps nothing of its last request (test/Retention.test.ts).
 */
import type { IncomingMessage, ServerResponse } from "node:http"
import type { Socket } from "node:net"

export interface RequestOutcome {
  readonly queueMs?: number
  readonly modelMs?: number
  /** The `x-router-reject-reason` of a shed request. */
  readonly reason?: string
  /** The model server that answered (`host:port`, upstream mode), as Envoy's access log names the upstream host. */
  readonly upstream?: string | undefined
  /** The status written to the socket when the response object could not send one (Node's request timeout). */
  readonly status?: number
  /**
   * When it joined the queue (`performance.now()`), while it waits for a slot: one that leaves
   * unserved (its client hung up, the drain ended) is logged with the wait, which is not
   * observed as an admitted request's (`router_queue_wait_seconds` counts the admitted).
   */
  readonly queuedAt?: number
}

/** The request a connection serves now, its response, and what the pipeline noted about it. */
export interface Serving {
  request: IncomingMessage | undefined
  response: ServerResponse | undefined
  outcome: RequestOutcome | undefined
}

const servingOn = new WeakMap<Socket, Serving>()
/** The outcomes of requests a connection received while serving a later one (HTTP/1.1 pipelining: rare). */
const pipelined = new WeakMap<IncomingMessage, RequestOutcome>()

/** Call when a connection starts serving `request` (the RequestObserver does, first). */
export const startServing = (request: IncomingMessage, response: ServerResponse): void => {
  const serving = servingOn.get(request.socket)
  if (serving === undefined) servingOn.set(request.socket, { request, response, outcome: undefined })
  else {
    // A request still open on it (pipelining) keeps what was noted about it.
    if (serving.request !== undefined && serving.outcome !== undefined) pipelined.set(serving.request, serving.outcome)
    serving.request = request
    serving.response = response
    serving.outcome = undefined
  }
}

/** Call when `response` closes: the connection keeps nothing of the request. */
export const stopServing = (request: IncomingMessage, response: ServerResponse): void => {
  const serving = servingOn.get(request.socket)
  if (serving !== undefined && serving.response === response) {
    serving.request = undefined
    serving.response = undefined
    serving.outcome = undefined
  }
}

/** The request `socket` serves now, if its response has not finished. */
export const servingOf = (socket: Socket): Serving | undefined => {
  const serving = servingOn.get(socket)
  return serving?.response === undefined || serving.response.writableFinished ? undefined : serving
}

const ownServing = (request: IncomingMessage): Serving | undefined => {
  // A stand-in request in a unit test may have no socket.
  const serving = request.socket == null ? undefined : servingOn.get(request.socket)
  return serving !== undefined && serving.request === request ? serving : undefined
}

export const noteOutcome = (request: IncomingMessage, outcome: RequestOutcome): void => {
  const serving = ownServing(request)
  if (serving !== undefined) serving.outcome = outcome
  else pipelined.set(request, outcome)
}

/** Adds to what is noted (the status of a request cut short keeps its queue time, say). */
export const addOutcome = (request: IncomingMessage, outcome: RequestOutcome): void =>
  noteOutcome(request, { ...outcomeOf(request), ...outcome })

export const outcomeOf = (request: IncomingMessage): RequestOutcome | undefined => {
  const serving = ownServing(request)
  return serving !== undefined ? serving.outcome : pipelined.get(request)
}
