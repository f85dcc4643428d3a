/**
 * Relays one forwarded completion's answer to the client: JSON as one whole
 * response, SSE as it arrives (only whole events, so an error frame after a
 * broken upstream stands alone), pausing the upstream while the client's
 * socket is full. The edge hands in the client's response (any object with
 * ServerResponse's few methods used here) and formats errors; this module owns
 * what crosses from the upstream to the client.
 *
 * Plain callbacks for the same reason as Upstreams.forwardUnsafe: it runs
 * once per request.
 */
import type { IncomingHttpHeaders } from "node:http"
import type { UpstreamFailure, UpstreamResponse, Upstreams } from "./Upstreams.ts"
import { upstreamHeader, upstreamVersionHeader } from "./Upstreams.ts"

/** What the relay writes to: the subset of Node's ServerResponse it uses. */
export interface ClientResponse {
  readonly headersSent: boolean
  readonly destroyed: boolean
  writeHead(status: number, headers: Record<string, string | number>): unknown
  flushHeaders(): void
  write(chunk: Buffer | string): boolean
  end(chunk?: Buffer | string): unknown
  once(event: "drain", listener: () => void): unknown
}

export interface RelayRequest {
  /** The path after the upstream's prefix, e.g. `/v1/chat/completions`. */
  readonly path: string
  readonly body: string
  /** Headers sent to the upstream as they are. */
  readonly headers: Record<string, string>
  /** The router's own answer headers (request id, `Connection: close` while draining), read when the answer starts. */
  readonly answerHeaders: () => Record<string, string | number>
}

export interface RelayCallbacks {
  /** The first body byte of a stream reached the router (time to first token). */
  onFirstByte(): void
  /** Answers `failure` before any header was written (a plain error response). */
  failBeforeHeaders(failure: UpstreamFailure): void
  /** Ends a started stream with one error frame and `[DONE]`. */
  endWithErrorFrame(failure: UpstreamFailure): void
  /** The client has its answer (with the failure, if the upstream gave none). */
  done(failure: UpstreamFailure | undefined): void
}

/** Headers of the upstream's answer the client sees, beside the router's own. */
const passedOn = ["content-type", "retry-after", "x-inference-pod"] as const

const isEventStream = (headers: IncomingHttpHeaders) => String(headers["content-type"]).startsWith("text/event-stream")

/** Forwards `request` and relays the answer to `response`; returns the function that aborts the upstream request. */
export const relayUnsafe = (
  upstreams: Upstreams["Service"],
  request: RelayRequest,
  response: ClientResponse,
  callbacks: RelayCallbacks
): () => void => {
  let streaming = false
  let pending: Buffer | undefined
  let chunks: Array<Buffer> | undefined
  let answer: UpstreamResponse | undefined
  let headers: Record<string, string | number> | undefined
  let firstChunk = true
  const onDrain = () => answer?.resume()
  return upstreams.forwardUnsafe({ path: request.path, body: request.body, headers: request.headers }, {
    onResponse: (upstream) => {
      answer = upstream
      headers = { ...request.answerHeaders(), [upstreamHeader]: upstream.upstream }
      if (upstream.version !== undefined) headers[upstreamVersionHeader] = upstream.version
      for (const name of passedOn) {
        const value = upstream.headers[name]
        if (typeof value === "string") headers[name] = value
      }
      streaming = upstream.status === 200 && isEventStream(upstream.headers)
      if (!streaming) {
        chunks = []
        return
      }
      response.writeHead(200, { ...headers, "cache-control": "no-cache", "x-accel-buffering": "no" })
      response.flushHeaders()
    },
    onData: (chunk) => {
      if (!streaming) return void chunks!.push(chunk)
      if (firstChunk) {
        firstChunk = false
        callbacks.onFirstByte()
      }
      const data = pending === undefined ? chunk : Buffer.concat([pending, chunk])
      const end = data.lastIndexOf("\n\n")
      if (end === -1) {
        pending = data
        return
      }
      const whole = end + 2 === data.length
      pending = whole ? undefined : data.subarray(end + 2)
      if (!response.write(whole ? data : data.subarray(0, end + 2))) {
        answer!.pause()
        response.once("drain", onDrain)
      }
    },
    onEnd: () => {
      if (streaming) {
        response.end(pending)
      } else if (!response.headersSent) {
        const text = Buffer.concat(chunks!)
        headers!["content-length"] = text.length
        response.writeHead(answer!.status, headers!)
        response.end(text)
      }
      callbacks.done(undefined)
    },
    onError: (failure) => {
      if (!response.headersSent) callbacks.failBeforeHeaders(failure)
      else callbacks.endWithErrorFrame(failure)
      callbacks.done(failure)
    }
  })
}
