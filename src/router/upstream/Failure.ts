/**
 * What a client gets when no usable answer came from the upstreams: one
 * `UpstreamFailure` per classified outcome (Attempt.ts), whose status says
 * what the client should do (400: fix the request; 429/503: later; 502/504:
 * the model server's fault, named in the message).
 */
import { Data } from "effect"
import type { Outcome } from "./Attempt.ts"

export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly status: 400 | 429 | 502 | 503 | 504
  readonly code: string
  readonly message: string
  readonly retryAfterSeconds: number | undefined
}> {}

export interface FailureSettings {
  readonly firstByteTimeoutMs: number
  readonly idleTimeoutMs: number
  readonly requestTimeoutMs: number
}

/** The code of a model server's refusal (it answered 429 or 503): the client should come back later. */
export const refusalCode = (status: 429 | 503): string => status === 429 ? "upstream_rate_limited" : "upstream_unavailable"

const gatewayFailure = (status: 502 | 504, code: string, message: string) =>
  new UpstreamFailure({ status, code, message, retryAfterSeconds: undefined })

/** The failure a client gets for `outcome` on the upstream `id`. */
export const failureOf = (id: string, outcome: Outcome, settings: FailureSettings): UpstreamFailure => {
  switch (outcome._tag) {
    case "Unreached":
      return gatewayFailure(502, "upstream_connect_failed", `the model server ${id} could not be reached (${outcome.code})`)
    case "Unanswered":
      // Node's HTTP parser refused what came back (a bad status line, headers too large): an answer, not a silence.
      return outcome.code.startsWith("HPE") || outcome.code === "UND_ERR_HEADERS_OVERFLOW"
        ? gatewayFailure(502, "upstream_bad_answer", `the model server ${id} sent an answer that is not valid HTTP/1.1 (${outcome.code})`)
        : gatewayFailure(502, "upstream_failed", `the model server ${id} closed the connection before answering (${outcome.code})`)
    case "FirstByteTimeout":
      return gatewayFailure(504, "upstream_timeout", `the model server ${id} sent no response within ${settings.firstByteTimeoutMs} ms (UPSTREAM_FIRST_BYTE_TIMEOUT_MS)`)
    case "Refused":
      return new UpstreamFailure({
        status: outcome.status,
        code: refusalCode(outcome.status),
        message: `the model servers refused the request (${id} answered ${outcome.status})`,
        retryAfterSeconds: outcome.retryAfterSeconds ?? 1
      })
    case "Malformed":
      return gatewayFailure(502, "upstream_bad_answer", `the model server ${id} answered with ${outcome.detail}`)
    case "Broken":
      return gatewayFailure(502, "upstream_broken", `the model server ${id} broke off its answer (${outcome.code})`)
    case "Idle":
      return gatewayFailure(504, "upstream_timeout", `the model server ${id} sent nothing for ${settings.idleTimeoutMs} ms (UPSTREAM_IDLE_TIMEOUT_MS)`)
    case "Rejected":
      return gatewayFailure(502, outcome.code, outcome.message)
    case "Deadline":
      return gatewayFailure(504, "upstream_timeout", `the model server ${id} did not finish within ${settings.requestTimeoutMs} ms (UPSTREAM_REQUEST_TIMEOUT_MS)`)
    case "Completed":
    case "Aborted":
      return gatewayFailure(502, "upstream_failed", `the model server ${id} failed (${outcome._tag})`)
  }
}
