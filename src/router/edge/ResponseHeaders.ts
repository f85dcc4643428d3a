/**
 * When an early answer closes the connection (the pipeline's answer headers
 * add the rest: the request id, `Connection: close` while draining).
 */
import type { IncomingMessage } from "node:http"

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
