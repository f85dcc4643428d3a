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
