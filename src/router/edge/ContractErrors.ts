/**
 * The router's errors written straight to Node: a whole JSON answer on a
 * response, or the envelope on a socket before there is a request to answer.
 */
import { type ServerResponse, STATUS_CODES } from "node:http"
import { requestIdHeader } from "../../api/Headers.ts"

/** Writes `body` as the whole JSON response. */
export const writeJson = (
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>>
): void => {
  const text = JSON.stringify(body)
  response.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

/**
 * The envelope written straight to a socket, for errors Node reports before
 * there is a request to answer (its `clientError` event): the connection
 * closes after it, as Node's own answer would.
 */
export const rawErrorResponse = (status: number, errorBody: unknown, requestId: string, extra: Readonly<Record<string, string>> = {}): string => {
  const body = JSON.stringify(errorBody)
  const more = Object.entries(extra).map(([name, value]) => `${name}: ${value}\r\n`).join("")
  return `HTTP/1.1 ${status} ${STATUS_CODES[status] ?? ""}\r\ncontent-type: application/json\r\ncontent-length: ${
    Buffer.byteLength(body)
  }\r\n${requestIdHeader}: ${requestId}\r\n${more}connection: close\r\n\r\n${body}`
}
