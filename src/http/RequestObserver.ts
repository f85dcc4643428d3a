/**
 * Per-request observability at the edge of the Node server, for every route
 * and every answer (Node's own 408s and hang-ups included): the `x-request-id`
 * (the caller's, or a new one) on the response and the request, request
 * metrics, and one access-log line per `/infer`. Probes and `/metrics` are not
 * traffic: they are neither counted nor logged.
 *
 * It listens to Node's request and response events rather than wrapping the
 * Effect pipeline: it then costs no fiber work on the hot path, and it sees
 * exactly what went on the wire.
 */
import { Context, Effect, Layer, LogLevel, References } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { rejectReasonHeader } from "../api/Errors.ts"
import { metricsPath, modelTime, queueWait, requestDuration, requestsBy, shedBy } from "../Metrics.ts"
import type { AllowedMethods } from "./ErrorEnvelope.ts"

export const requestIdHeader = "x-request-id"

/** A caller's id is echoed only if it is short, printable ASCII: it ends up in logs. */
const validRequestId = /^[\x21-\x7e]{1,128}$/

/** nginx's status for a request whose client closed the connection before the answer. */
const clientClosedRequest = 499

const untracked = new Set(["/healthz", "/readyz", metricsPath])

const serverTiming = /queue;dur=(\d+), model;dur=(\d+)/

export const pathOf = (url: string) => {
  const end = url.search(/[?#]/)
  return end === -1 ? url : url.slice(0, end)
}

export class RequestObserver extends Context.Service<RequestObserver, {
  /** Call first for every request Node receives. */
  observe(request: IncomingMessage, response: ServerResponse): void
}>()("inference-router/RequestObserver") {
  static readonly layer = (allowed: AllowedMethods) =>
    Layer.effect(
      RequestObserver,
      Effect.gen(function*() {
        // Loggers, log level and the metric registry, as the layers set them up.
        const context = yield* Effect.context<never>()
        const logsAccess = LogLevel.isGreaterThanOrEqualTo("Info", Context.get(context, References.MinimumLogLevel))
        const runLog = Effect.runForkWith(context)

        const finished = (request: IncomingMessage, response: ServerResponse, path: string, startedAt: number) => {
          const durationMs = performance.now() - startedAt
          const status = response.writableFinished ? response.statusCode : clientClosedRequest
          requestsBy(allowed.has(path) ? path : "unmatched", String(status)).updateUnsafe(1, context)
          requestDuration.updateUnsafe(durationMs / 1000, context)
          const reason = response.getHeader(rejectReasonHeader) as string | undefined
          if (reason !== undefined) shedBy(reason).updateUnsafe(1, context)
          if (path !== "/infer") return
          // The route reports its queue and model time in Server-Timing.
          const timing = serverTiming.exec((response.getHeader("server-timing") as string | undefined) ?? "")
          if (timing !== null) {
            queueWait.updateUnsafe(Number(timing[1]) / 1000, context)
            modelTime.updateUnsafe(Number(timing[2]) / 1000, context)
          }
          if (!logsAccess) return
          runLog(Effect.logInfo("request").pipe(Effect.annotateLogs({
            requestId: request.headers[requestIdHeader],
            method: request.method,
            path,
            status,
            ...(reason === undefined ? {} : { reason }),
            ...(timing === null ? {} : { queueMs: Number(timing[1]), modelMs: Number(timing[2]) }),
            durationMs: Math.round(durationMs * 10) / 10
          })))
        }

        return RequestObserver.of({
          observe: (request, response) => {
            const given = request.headers[requestIdHeader]
            let requestId: string
            if (typeof given === "string" && validRequestId.test(given)) {
              requestId = given
            } else {
              requestId = randomUUID()
              request.headers[requestIdHeader] = requestId
            }
            response.setHeader(requestIdHeader, requestId)
            const path = pathOf(request.url ?? "/")
            if (untracked.has(path)) return
            const startedAt = performance.now()
            response.once("close", () => finished(request, response, path, startedAt))
          }
        })
      })
    )
}
