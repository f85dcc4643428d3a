/**
 * Relays one forwarded completion's answer to the client:
 * - JSON as one whole response, at most UPSTREAM_MAX_BODY_BYTES buffered; a
 *   2xx whose body is not JSON is the upstream's fault (502
 *   `upstream_bad_answer`), not an answer;
 * - SSE as it arrives, whole events only (EventFramer.ts: any of the three
 *   line endings, linear time, one event at most UPSTREAM_MAX_EVENT_BYTES),
 *   so a stream cut anywhere ends with one error frame and `[DONE]` after
 *   the last whole event, never a fragment;
 * - pausing the upstream while the client's socket is full, so nothing piles
 *   up in the router. The edge hands in the client's response (any object with
 * ServerResponse's few methods used here) and formats the upstream's failures
 * (`RelayCallbacks`); this module owns what crosses from the upstream to the
 * client, and answers by itself only when a callback throws (`answerDespite`).
 *
 * Plain callbacks for the same reason as Upstreams.forwardUnsafe: it runs
 * once per request.
 */
import { type AnswerHeaders, retryAfterSeconds } from "./Attempt.ts"
import { openAiError, openAiErrorBody } from "../../api/OpenAiApi.ts"
import { accelBufferingHeader, inferencePodHeader } from "../../api/Headers.ts"
import { setServedBy } from "../core/ResponseHeaders.ts"
import { EventFramer } from "./EventFramer.ts"
import type { UpstreamFailure } from "./Failure.ts"
import type { ClientResponse } from "../core/Backend.ts"
import { defaultUpstream } from "../core/Config.ts"
import type { UpstreamResponse } from "./Retry.ts"
import type { Upstreams } from "./Upstreams.ts"
import { bodyTooLarge, unusableAnswer } from "./Upstreams.ts"

export interface RelayRequest {
  /** The path after the upstream's prefix, e.g. `/v1/chat/completions`. */
  readonly path: string
  readonly body: string
  /** Headers sent to the upstream as they are. */
  readonly headers: Record<string, string>
  /** The router's own answer headers (request id, `Connection: close` while draining), read when the answer starts. */
  readonly answerHeaders: () => Record<string, string | number>
  /** The client asked for a stream (`stream: true`). */
  readonly stream?: boolean
}

export interface RelayCallbacks {
  /** The first body byte of a stream reached the router (time to first token). */
  onFirstByte(): void
  /** Answers `failure` before any header was written (a plain error response). */
  failBeforeHeaders(failure: UpstreamFailure): void
  /** Ends a started stream with one error frame and `[DONE]`. */
  endWithErrorFrame(failure: UpstreamFailure): void
  /** The client has its answer (with the failure, if the upstream gave none). */
  /** `upstream`: the model server whose answer the client got, when one answered. */
  done(failure: UpstreamFailure | undefined, upstream: string | undefined): void
  /** Logs what an operator must see (a callback that threw). */
  log?(message: string): void
  /** Calls `resume` once the client's socket drained or closed (the edge's, which cuts off a client that stalls). */
  onceDrained(resume: () => void): void
}

/** Headers of the upstream's answer the client sees, beside the router's own. */
const passedOn = ["content-type", "retry-after", inferencePodHeader] as const

/** A header's value; of one sent twice, the first (as Node's own client keeps the first content-type). */
const headerValue = (value: string | Array<string> | undefined): string | undefined => Array.isArray(value) ? value[0] : value

const isEventStream = (headers: AnswerHeaders) => headerValue(headers["content-type"])?.startsWith("text/event-stream") === true

/** Whether the last event in `bytes` (whole events) is `data: [DONE]`, the end vLLM and OpenAI always send. */
const endsWithDone = (bytes: Buffer): boolean => {
  let end = bytes.length
  while (end > 0 && (bytes[end - 1] === 10 || bytes[end - 1] === 13)) end--
  const line = (length: number) => {
    const start = end - length
    return start >= 0 && (start === 0 || bytes[start - 1] === 10 || bytes[start - 1] === 13) ? bytes.toString("latin1", start, end) : ""
  }
  return line(12) === "data: [DONE]" || line(11) === "data:[DONE]"
}

/** Forwards `request` and relays the answer to `response`; returns the function that aborts the upstream request. */
export const relayUnsafe = (
  upstreams: Upstreams["Service"],
  request: RelayRequest,
  response: ClientResponse,
  callbacks: RelayCallbacks
): () => void => {
  const limits = upstreams.settings ?? defaultUpstream
  let streaming = false
  let framer: EventFramer | undefined
  let chunks: Array<Buffer> | undefined
  let length = 0
  /** The whole non-streamed body, joined once it came. */
  let body: Buffer | undefined
  let answer: UpstreamResponse | undefined
  let headers: Record<string, string | number> | undefined
  let firstChunk = true
  /** The last whole event relayed was `data: [DONE]`. */
  let sawDone = false
  /** Paused until the client's socket drains (undici may still hand over a chunk or two meanwhile). */
  let paused = false
  const onDrain = () => {
    paused = false
    // Called on the client's close too: a client gone is not read for (its hang-up aborts the upstream).
    if (!response.destroyed) answer?.resume()
  }
  /**
   * Answers the client whatever a callback threw (an error it could not
   * format, a socket already gone): a plain 502, or an error frame and
   * `[DONE]` on a started stream, and a log line; never a client left waiting.
   */
  const answerDespite = (error: unknown) => {
    callbacks.log?.(`the relay failed to answer a request forwarded to ${answer?.upstream ?? "an upstream"}: ${error instanceof Error ? error.stack ?? error.message : String(error)}`)
    const failed = openAiErrorBody(openAiError(502, "server_error", "upstream_relay_failed", "the router failed to relay the model server's answer"))
    try {
      if (!response.headersSent) {
        const text = JSON.stringify(failed)
        response.writeHead(502, { ...request.answerHeaders(), "content-type": "application/json", "content-length": Buffer.byteLength(text) })
        response.end(text)
      } else if (!response.destroyed) {
        response.end(streaming ? `data: ${JSON.stringify(failed)}\n\ndata: [DONE]\n\n` : undefined)
      }
    } catch {
      // The client's socket is gone: nothing left to tell it.
    }
  }
  return upstreams.forwardUnsafe({ path: request.path, body: request.body, headers: request.headers }, {
    onResponse: (upstream) => {
      answer = upstream
      headers = { ...request.answerHeaders() }
      setServedBy(headers, upstream)
      for (const name of passedOn) {
        const value = headerValue(upstream.headers[name])
        if (value !== undefined) headers[name] = value
      }
      // Passed on as the router reads it: whole seconds, at most maxRetryAfterSeconds (an HTTP date too).
      if (upstream.headers["retry-after"] !== undefined) {
        const seconds = retryAfterSeconds(upstream.headers["retry-after"], Date.now())
        if (seconds === undefined) delete headers["retry-after"]
        else headers["retry-after"] = seconds
      }
      const eventStream = isEventStream(upstream.headers)
      streaming = upstream.status === 200 && eventStream && request.stream !== false
      if (!streaming) {
        chunks = []
        // Events where JSON was asked for: a client would fail to parse it, as any other non-JSON 2xx.
        if (eventStream && upstream.status >= 200 && upstream.status < 300) {
          upstream.reject("upstream_bad_answer", `the model server ${upstream.upstream} answered a request that did not ask for a stream with an event stream`)
        }
        return
      }
      framer = new EventFramer(limits.maxEventBytes)
      response.writeHead(200, { ...headers, "cache-control": "no-cache", [accelBufferingHeader]: "no" })
      response.flushHeaders()
    },
    onData: (chunk) => {
      if (!streaming) {
        length += chunk.length
        if (length > limits.maxBodyBytes) {
          const { code, message } = bodyTooLarge(answer!.upstream, limits.maxBodyBytes)
          return answer!.reject(code, message)
        }
        return void chunks!.push(chunk)
      }
      if (firstChunk) {
        firstChunk = false
        callbacks.onFirstByte()
      }
      const framed = framer!.push(chunk)
      if (framed._tag === "TooLarge") {
        return answer!.reject(
          "upstream_event_too_large",
          `the model server ${answer!.upstream} sent an event over ${limits.maxEventBytes} bytes (UPSTREAM_MAX_EVENT_BYTES)`
        )
      }
      if (framed.bytes !== undefined) sawDone = endsWithDone(framed.bytes)
      if (framed.bytes !== undefined && !response.write(framed.bytes)) {
        if (paused) return
        paused = true
        answer!.pause()
        callbacks.onceDrained(onDrain)
      }
    },
    verify: () => {
      if (streaming) {
        if (framer!.cutMidEvent) return { code: "upstream_broken", message: `the model server ${answer!.upstream} ended its stream inside an event` }
        // vLLM and OpenAI always end with [DONE]: a stream that ends without it was cut between events.
        return sawDone ? undefined : { code: "upstream_broken", message: `the model server ${answer!.upstream} ended its stream without data: [DONE]` }
      }
      body = Buffer.concat(chunks!, length)
      return unusableAnswer(answer!.status, body, answer!.upstream)
    },
    onEnd: () => {
      try {
        if (streaming) {
          response.end()
        } else if (!response.headersSent) {
          const text = body!
          headers!["content-length"] = text.length
          response.writeHead(answer!.status, headers!)
          response.end(text)
        }
      } catch (error) {
        answerDespite(error)
      }
      callbacks.done(undefined, answer?.upstream)
    },
    onError: (failure) => {
      try {
        if (!response.headersSent) callbacks.failBeforeHeaders(failure)
        else callbacks.endWithErrorFrame(failure)
      } catch (error) {
        answerDespite(error)
      }
      callbacks.done(failure, answer?.upstream)
    }
  })
}
