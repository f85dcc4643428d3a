/**
 * One attempt on one upstream, and how it ended, as one classified result
 * (`Outcome`): what drives the upstream metrics, the balancer's health and
 * the error a client gets, as Envoy's outlier detector receives a classified
 * result rather than raw socket events. The retry loop (Retry.ts) decides
 * from the same result whether another attempt may follow.
 *
 * Which failures reached the model (gRPC's transparent retry, proposal A6):
 * - `Unreached`: provably nothing reached the model server: the connection
 *   was refused or timed out, the name did not resolve, or the socket broke
 *   before the whole request was handed to it (undici had not finished the
 *   write, or bytes of it were still queued on the socket: a write that met
 *   an idle connection the server had closed). Retried elsewhere without
 *   spending the retry budget; the upstream leaves rotation at once.
 * - `Unanswered`: the connection broke after the whole request was written
 *   and before any answer byte, fresh or reused alike: the model may have it
 *   (the server read it and died, or closed a connection it had not read;
 *   HTTP/1.1 gives no way to tell these apart, unlike HTTP/2's
 *   REFUSED_STREAM or GOAWAY). Bytes a reused connection read earlier prove
 *   only that it served earlier answers, not that this request went unread.
 *   Never retried transparently: only within UPSTREAM_RETRIES and the retry
 *   budget (Envoy's `retry_on: reset`), since a resend may make a model
 *   generate the same completion twice, or a request that crashes model
 *   servers crash the next one.
 *
 * Plain callbacks on undici's dispatch handler API, no Effect per attempt:
 * see Upstreams.ts for the measurement.
 */
import type { Dispatcher } from "undici"
import type { Endpoint } from "./Balancer.ts"

export type AnswerHeaders = Record<string, string | Array<string> | undefined>

/** How one attempt ended. */
export type Outcome =
  /** Nothing reached the upstream (see above). */
  | { readonly _tag: "Unreached"; readonly code: string }
  /** The request was written whole, and the connection broke before any answer byte: the model may have it. */
  | { readonly _tag: "Unanswered"; readonly code: string }
  /** No answer headers before the first-byte deadline. */
  | { readonly _tag: "FirstByteTimeout"; readonly timeoutMs: number }
  /** 429 or 503 before any body byte: the upstream asked for the request to go elsewhere or later. */
  | { readonly _tag: "Refused"; readonly status: 429 | 503; readonly retryAfterSeconds: number | undefined }
  /** An answer no client can act on: a status outside 100-599, a redirect (the router follows none). */
  | { readonly _tag: "Malformed"; readonly status: number; readonly detail: string }
  /** The answer came whole. */
  | { readonly _tag: "Completed"; readonly status: number }
  /** The body broke off after the headers. */
  | { readonly _tag: "Broken"; readonly code: string }
  /** The body went silent for the idle timeout. */
  | { readonly _tag: "Idle"; readonly timeoutMs: number }
  /** The router refused the answer as it came: too large, not JSON, an event too large. */
  | { readonly _tag: "Rejected"; readonly code: string; readonly message: string }
  /** The whole request outlived UPSTREAM_REQUEST_TIMEOUT_MS. */
  | { readonly _tag: "Deadline"; readonly timeoutMs: number }
  /** The caller stopped it (a client hang-up, a drain): says nothing about the upstream. */
  | { readonly _tag: "Aborted" }

/** What an outcome means for the upstream's health. */
export type Health = "success" | "failure" | "unreachable" | "none"

/** How an outcome may be retried: transparently (no budget), within the retry budget, or not at all. */
export type Retry = "transparent" | "budgeted" | "never"

/** The status label of `router_upstream_requests_total`. */
export const metricStatus = (outcome: Outcome): string => {
  switch (outcome._tag) {
    case "Unreached":
      return "connect_error"
    case "Unanswered":
      return "error"
    case "FirstByteTimeout":
      return "timeout"
    case "Refused":
    case "Completed":
    case "Malformed":
      return String(outcome.status)
    case "Broken":
      return "broken"
    case "Idle":
      return "idle_timeout"
    case "Rejected":
      return "rejected"
    case "Deadline":
      return "deadline"
    case "Aborted":
      return "aborted"
  }
}

export const healthOf = (outcome: Outcome): Health => {
  switch (outcome._tag) {
    case "Unreached":
      return "unreachable"
    case "Completed":
      return outcome.status >= 500 ? "failure" : "success"
    case "Refused":
      return outcome.status === 503 ? "failure" : "success"
    case "Aborted":
    case "Deadline":
      // A deadline is the request's length, not a fault of the upstream.
      return "none"
    default:
      return "failure"
  }
}

export const retryOf = (outcome: Outcome): Retry =>
  outcome._tag === "Unreached" ? "transparent" : outcome._tag === "Refused" || outcome._tag === "Unanswered" ? "budgeted" : "never"

/** Error codes of a connection that was never made. */
const connectFailures = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT"])

export const errorCode = (error: unknown): string | undefined => {
  const e = error as { code?: unknown; cause?: { code?: unknown } }
  return typeof e?.code === "string" ? e.code : typeof e?.cause?.code === "string" ? e.cause.code : undefined
}

/**
 * Bytes of the request still queued on the socket when it broke (not yet
 * handed to the kernel): the connector (Upstreams.ts) adds them to the error.
 */
const unflushedBytes = (error: unknown): number => {
  const queued = (error as { unflushedBytes?: unknown })?.unflushedBytes
  return typeof queued === "number" ? queued : 0
}

/** The longest Retry-After the router honours or passes on, in seconds: an upstream's larger value is read as this. */
export const maxRetryAfterSeconds = 60

const day = "(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
const month = "(?:Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec)"
const time = "[0-9]{2}:[0-9]{2}:[0-9]{2}"
/** RFC 9110's HTTP-date: IMF-fixdate, and the obsolete RFC 850 and asctime forms a recipient must read. */
const httpDate = new RegExp(
  `^(?:${day}, [0-9]{2} ${month} [0-9]{4} ${time} GMT|(?:Mon|Tues|Wednes|Thurs|Fri|Satur|Sun)day, [0-9]{2}-${month}-[0-9]{2} ${time} GMT|${day} ${month} [ 0-9][0-9] ${time} [0-9]{4})$`
)

/**
 * Retry-After in seconds (RFC 9110: a number of seconds, or an HTTP date), at
 * most `maxRetryAfterSeconds`; undefined when absent or unreadable (`-5`,
 * `1.5`, any other date format: `Date.parse` alone would read them as dates).
 */
export const retryAfterSeconds = (value: string | Array<string> | undefined, nowMs: number): number | undefined => {
  const text = (Array.isArray(value) ? value[0] : value)?.trim()
  if (text === undefined) return undefined
  // Digits beyond 2^53 are still a number here (1e20): only the cap makes it one a client can act on.
  if (/^[0-9]+$/.test(text)) return Math.min(maxRetryAfterSeconds, Number(text))
  if (!httpDate.test(text)) return undefined
  // asctime has no zone: it is GMT by definition.
  const date = Date.parse(text.endsWith("GMT") ? text : `${text} GMT`)
  return Number.isNaN(date) ? undefined : Math.min(maxRetryAfterSeconds, Math.max(0, Math.ceil((date - nowMs) / 1000)))
}

/**
 * An error before any answer header, classified. `sent`: the request was
 * written; `answerStarted`: a byte of the answer arrived.
 */
export const classifyError = (
  error: Error,
  progress: { readonly sent: boolean; readonly answerStarted: boolean },
  timeouts: { readonly firstByteMs: number }
): Outcome => {
  // undici's parser errors often carry no code: named by their class, with the parser's reason.
  const code = errorCode(error) ?? (error.name === "HTTPParserError" ? `HPE: ${error.message}` : error.message)
  if (code === "UND_ERR_HEADERS_TIMEOUT") return { _tag: "FirstByteTimeout", timeoutMs: timeouts.firstByteMs }
  // undici's answer to a 101 the router did not ask for: an answer, and no client can act on it.
  if (code === "UND_ERR_SOCKET" && error.message === "bad upgrade") return { _tag: "Malformed", status: 101, detail: "a protocol switch (101) the router did not ask for" }
  if (connectFailures.has(code) || !progress.sent || (!progress.answerStarted && unflushedBytes(error) > 0)) return { _tag: "Unreached", code }
  // Written whole, then broken with no answer byte: the model may have it, on a fresh or a reused connection.
  return { _tag: "Unanswered", code }
}

/** The answer's headers, classified: undefined for an answer the caller may relay. */
export const classifyHeaders = (status: number, headers: AnswerHeaders, nowMs: number): Outcome | undefined => {
  if (status === 429 || status === 503) return { _tag: "Refused", status, retryAfterSeconds: retryAfterSeconds(headers["retry-after"], nowMs) }
  if (status < 100 || status > 599) return { _tag: "Malformed", status, detail: `status ${status} is not an HTTP status` }
  if (status >= 300 && status < 400) {
    const location = headers.location
    return {
      _tag: "Malformed",
      status,
      detail: location === undefined ? `a redirect (${status}) without a Location` : `a redirect (${status}); the router follows none`
    }
  }
  return undefined
}

/** The request one attempt sends. */
export interface AttemptRequest {
  readonly method: "GET" | "POST"
  /** The full path on the upstream (its prefix included). */
  readonly path: string
  readonly body: string | undefined
  readonly headers: Record<string, string>
  /** What is left of the request's first-byte deadline. */
  readonly headersTimeoutMs: number
}

/** Controls an attempt whose answer is being relayed. */
export interface AttemptControl {
  pause(): void
  resume(): void
  /** Stops the attempt; with an outcome, the attempt ends with it (a rejection, the deadline), else as `Aborted`. */
  stop(outcome?: Outcome): void
}

/**
 * Hears one attempt: `onRefusal` (may drop the answer to retry), then
 * `onResponse` and `onData`, and always exactly one `onEnd`, unless the
 * caller stopped the attempt without an outcome.
 */
export interface AttemptHandler {
  /**
   * A 429/503 arrived: true drops it and ends the attempt (its body is read and discarded, keeping the
   * connection, when it has a content-length of at most maxDrainBytes and ends within maxDrainMs; else the
   * connection is closed).
   */
  onRefusal(outcome: Outcome & { readonly _tag: "Refused" }): boolean
  onResponse(status: number, headers: AnswerHeaders, control: AttemptControl): void
  onData(chunk: Buffer): void
  onEnd(outcome: Outcome): void
}

/** Sends a request to one endpoint: the pool's `dispatch` in production, a fake in tests. */
export type Dispatch = (endpoint: Endpoint, options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => void

export interface AttemptSettings {
  readonly firstByteTimeoutMs: number
  readonly idleTimeoutMs: number
}

/**
 * A dropped refusal's body is read to keep its connection only while it is
 * small and quick: past this many bytes, or this long, the connection is
 * closed instead (as Envoy resets the upstream stream on a retry), so an
 * endless or dripping body cannot hold a connection nobody counts.
 */
export const maxDrainBytes = 4096
export const maxDrainMs = 1000

/** Calls `fire` after `ms`; returns what cancels it. */
export type SetTimer = (ms: number, fire: () => void) => () => void

const realTimer: SetTimer = (ms, fire) => {
  const timer = setTimeout(fire, ms)
  timer.unref()
  return () => clearTimeout(timer)
}

/** One error for every stop: building an Error (its stack) per request measured as a tenth of the forwarding CPU. */
const stopError = new Error("aborted by the router")

/** Sends one attempt and classifies how it ended (`handler.onEnd`, exactly once). */
export const sendAttempt = (
  dispatch: Dispatch,
  endpoint: Endpoint,
  request: AttemptRequest,
  settings: AttemptSettings,
  now: () => number,
  handler: AttemptHandler,
  setTimer: SetTimer = realTimer
): AttemptControl => {
  let sent = false
  let answerStarted = false
  let over = false
  let dropping = false
  let drained = 0
  let cancelDrain: (() => void) | undefined
  let controller: Dispatcher.DispatchController | undefined
  let stopped = false
  /** The status of the answer being relayed (0 before one). */
  let answerStatus = 0

  const end = (outcome: Outcome) => {
    if (over) return
    over = true
    handler.onEnd(outcome)
  }

  const control: AttemptControl = {
    pause: () => controller?.pause(),
    resume: () => controller?.resume(),
    stop: (outcome) => {
      if (over) return
      over = true
      stopped = true
      if (controller !== undefined) controller.abort(stopError)
      handler.onEnd(outcome ?? { _tag: "Aborted" })
    }
  }

  dispatch(endpoint, {
    method: request.method,
    path: request.path,
    headers: request.headers,
    body: request.body,
    headersTimeout: Math.max(1, request.headersTimeoutMs),
    bodyTimeout: settings.idleTimeoutMs
  }, {
    onRequestStart: (dispatchController) => {
      controller = dispatchController
      if (stopped) dispatchController.abort(stopError)
    },
    onRequestSent: () => {
      sent = true
    },
    onResponseStarted: () => {
      answerStarted = true
    },
    onResponseStart: (dispatchController, status, headers) => {
      controller = dispatchController
      if (over) return
      answerStarted = true
      const classified = classifyHeaders(status, headers as AnswerHeaders, now())
      if (classified !== undefined) {
        if (classified._tag === "Refused") {
          if (handler.onRefusal(classified)) {
            end(classified)
            // Read to its end and dropped, keeping the connection, if small and quick; else the connection goes.
            const length = Number((headers as AnswerHeaders)["content-length"])
            if (!(length <= maxDrainBytes)) return dispatchController.abort(stopError)
            dropping = true
            cancelDrain = setTimer(maxDrainMs, () => dispatchController.abort(stopError))
            return
          }
        } else {
          // Ended first: undici may report the abort at once, and it must not read as a broken connection.
          end(classified)
          return dispatchController.abort(stopError)
        }
      }
      answerStatus = status
      handler.onResponse(status, headers as AnswerHeaders, control)
    },
    onResponseData: (dispatchController, chunk) => {
      if (dropping) {
        drained += chunk.length
        if (drained > maxDrainBytes) dispatchController.abort(stopError)
        return
      }
      if (!over) handler.onData(chunk)
    },
    onResponseEnd: () => {
      cancelDrain?.()
      if (dropping || over) return
      end({ _tag: "Completed", status: answerStatus })
    },
    onResponseError: (_, error) => {
      cancelDrain?.()
      if (over) return
      const code = errorCode(error)
      if (answerStatus !== 0) {
        return end(code === "UND_ERR_BODY_TIMEOUT" ? { _tag: "Idle", timeoutMs: settings.idleTimeoutMs } : { _tag: "Broken", code: code ?? error.message })
      }
      end(classifyError(error, { sent, answerStarted }, { firstByteMs: settings.firstByteTimeoutMs }))
    }
  })
  return control
}
