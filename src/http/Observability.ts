/**
 * Per-request observability, outermost in the pipeline so it sees the final
 * answer: the `x-request-id` (the caller's, or a new one) on every response and
 * every log line, request metrics, and one access-log line per `/infer`.
 * Probes and `/metrics` are not traffic: they are neither counted nor logged.
 */
import { Cause, Effect, Exit } from "effect"
import { type HttpServerRequest, HttpServerResponse } from "effect/http"
import { randomUUID } from "node:crypto"
import { rejectReasonHeader } from "../api/Errors.ts"
import { metricsPath, modelTime, queueWait, requestDuration, requestsBy, shedBy } from "../Metrics.ts"
import type { AllowedMethods } from "./ErrorEnvelope.ts"

export const requestIdHeader = "x-request-id"

/** A caller's id is echoed only if it is short, printable ASCII: it ends up in logs. */
const validRequestId = /^[\x21-\x7e]{1,128}$/

/** nginx's status for a request whose client closed the connection first. */
const clientClosedRequest = 499

const untracked = new Set(["/healthz", "/readyz", metricsPath])

const serverTiming = /queue;dur=(\d+), model;dur=(\d+)/

const pathOf = (url: string) => {
  const end = url.search(/[?#]/)
  return end === -1 ? url : url.slice(0, end)
}

export const withObservability = (options: { readonly allowed: AllowedMethods }) =>
  <E, R>(
    request: HttpServerRequest.HttpServerRequest,
    httpEffect: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
  ): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R> => {
    const given = request.headers[requestIdHeader]
    const requestId = given !== undefined && validRequestId.test(given) ? given : randomUUID()
    const path = pathOf(request.url)
    const tracked = !untracked.has(path)
    // Wall time for the latency histogram; logic that tests drive uses Effect's Clock.
    const startedAt = performance.now()

    const record = (status: number, response: HttpServerResponse.HttpServerResponse | undefined) =>
      Effect.withFiber((fiber) => {
        if (!tracked) return Effect.void
        const context = fiber.context
        const endpoint = options.allowed.has(path) ? path : "unmatched"
        const durationMs = performance.now() - startedAt
        requestsBy(endpoint, String(status)).updateUnsafe(1, context)
        requestDuration.updateUnsafe(durationMs / 1000, context)
        const reason = response?.headers[rejectReasonHeader]
        if (reason !== undefined) shedBy(reason).updateUnsafe(1, context)
        if (path !== "/infer") return Effect.void
        // The handler reports its queue and model time in Server-Timing.
        const timing = serverTiming.exec(response?.headers["server-timing"] ?? "")
        if (timing !== null) {
          queueWait.updateUnsafe(Number(timing[1]) / 1000, context)
          modelTime.updateUnsafe(Number(timing[2]) / 1000, context)
        }
        return Effect.logInfo("request").pipe(Effect.annotateLogs({
          method: request.method,
          path,
          status,
          ...(reason === undefined ? {} : { reason }),
          ...(timing === null ? {} : { queueMs: Number(timing[1]), modelMs: Number(timing[2]) }),
          durationMs: Math.round(durationMs * 10) / 10
        }))
      })

    return httpEffect.pipe(
      Effect.map(HttpServerResponse.setHeader(requestIdHeader, requestId)),
      Effect.onExit((exit) =>
        Exit.isSuccess(exit)
          ? record(exit.value.status, exit.value)
          : record(Cause.hasInterruptsOnly(exit.cause) ? clientClosedRequest : 500, undefined)
      ),
      Effect.annotateLogs({ requestId })
    )
  }
