/**
 * The headers every answer of a Node-level handler carries: the request id
 * (set by the RequestObserver) and, while draining, `Connection: close` so
 * keep-alive clients move on to another router.
 */
import type { IncomingMessage } from "node:http"
import { requestIdHeader } from "../../api/RouterApi.ts"

export const makeCommonHeaders = (isDraining: () => boolean) => (request: IncomingMessage): Record<string, string> => {
  const requestId = request.headers[requestIdHeader] as string
  return isDraining() ? { [requestIdHeader]: requestId, connection: "close" } : { [requestIdHeader]: requestId }
}

/** Most unread body bytes Node may drain to keep a connection open after an early answer. */
const maxDrainBytes = 64 * 1024

/**
 * For an answer written before the whole body arrived (an error on the
 * headers or a body over the limit): Node reads and drops the rest to keep
 * the connection, which is fine for a small rest; a large or unknown one
 * closes the connection instead.
 */
export const closesEarly = (request: IncomingMessage): boolean =>
  !request.complete && !(Number(request.headers["content-length"]) <= maxDrainBytes)
