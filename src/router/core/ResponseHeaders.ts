/**
 * The headers every answer of the router carries, built here for every path
 * (the pipeline's routes, the Node server's own 4xx, Effect's routes): the
 * request id (set by the RequestObserver), and `Connection: close` while
 * draining (keep-alive clients move on to another router) or when an early
 * answer leaves a large body unread.
 */
import type { IncomingMessage } from "node:http"
import { requestIdHeader, routeHeader, upstreamHeader, upstreamVersionHeader } from "../../api/Headers.ts"

/** The request id, and `Connection: close` when `close`. */
export const answerHeaders = (requestId: string, close: boolean): Record<string, string> =>
  close ? { [requestIdHeader]: requestId, connection: "close" } : { [requestIdHeader]: requestId }

/**
 * Which model server answered, its `version` label, and why the scheduler picked it (upstream
 * mode): set on `/infer`'s answers and relayed ones alike.
 */
export const setServedBy = (
  headers: Record<string, string | number>,
  served: { readonly upstream?: string | undefined; readonly version?: string | undefined; readonly route?: string | undefined }
): void => {
  if (served.upstream !== undefined) headers[upstreamHeader] = served.upstream
  if (served.version !== undefined) headers[upstreamVersionHeader] = served.version
  if (served.route !== undefined) headers[routeHeader] = served.route
}

/** Most unread body bytes Node may drain to keep a connection open after an early answer. */
const maxDrainBytes = 64 * 1024

/**
 * For an answer written before the whole body arrived (an error on the
 * headers or a body over the limit): Node reads and drops the rest to keep
 * the connection, which is fine for a small rest; a large or unknown one
 * closes the connection instead.
 */
export const closesEarly = (request: IncomingMessage): boolean => {
  if (request.complete) return false
  const length = request.headers["content-length"]
  // Neither a length nor a chunked body: HTTP/1.1 says there is no body (RFC 9112 §6.3), nothing to drain.
  if (length === undefined) return request.headers["transfer-encoding"] !== undefined
  return !(Number(length) <= maxDrainBytes)
}
