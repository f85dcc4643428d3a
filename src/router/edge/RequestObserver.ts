/**
 * Per-request observability at the edge of the Node server, for every route
 * and every answer (Node's own 408s and hang-ups included): the `x-request-id`
 * (the caller's, or a new one, set on the request for the rest of the pipeline
 * to echo), request metrics, and one access-log line per inference request
 * (`/infer`, `/v1/completions`, `/v1/chat/completions`). Probes and `/metrics` are not
 * traffic: they are neither counted nor logged.
 *
 * It listens to Node's request and response events rather than wrapping the
 * Effect pipeline: it then costs no fiber work on the hot path, and it sees
 * exactly what went on the wire.
 */
import { Context, Effect, Layer, LogLevel, References } from "effect"
import { randomUUID } from "node:crypto"
// The module binding: the global `performance` is a getter, called twice per request here.
import { performance } from "node:perf_hooks"
import type { IncomingMessage, ServerResponse } from "node:http"
import { chatCompletionsPath, completionsPath } from "../../api/OpenAiApi.ts"
import { requestIdHeader } from "../../api/Headers.ts"
import { InferenceGroup, metricsPath, ProbesGroup } from "../../api/RouterApi.ts"
import { RouterConfig } from "../core/Config.ts"
import { metricContext } from "../../shared/Metrics.ts"
import { isShedReason, modelTime, poolShedReasons, queueWait, requestDuration, requestsTotal, shedReasons, shedTotal } from "../core/Metrics.ts"
import { outcomeOf, type Serving, servingOf, startServing, stopServing } from "../core/RequestOutcome.ts"
import { type RouteTable, unmatchedEndpoint } from "../app/Routes.ts"
import { type AccessEntry, jsonAccessLog } from "./AccessLog.ts"
import { histogramSeries, labelledCounterSeries } from "./MetricSeries.ts"

/** Inference requests: each gets one access-log line, whatever ends it. */
const inferencePaths = new Set([InferenceGroup.endpoints.infer.path, completionsPath, chatCompletionsPath])

/** A caller's id is echoed only if it is short, printable ASCII: it ends up in logs. */
const validRequestId = /^[\x21-\x7e]{1,128}$/

/** The request id an answer carries: the caller's `x-request-id` when it is valid, else a new UUID. */
export const requestIdFor = (given: string | Array<string> | undefined): string =>
  typeof given === "string" && validRequestId.test(given) ? given : randomUUID()

/** nginx's status for a request whose client closed the connection before the answer. */
const clientClosedRequest = 499

/** Probes and scrapes: not traffic. */
const untracked = new Set([...Object.values(ProbesGroup.endpoints).map((endpoint) => endpoint.path), metricsPath])

export class RequestObserver extends Context.Service<RequestObserver, {
  /** Call first for every request Node receives, with the path it is routed by. */
  observe(request: IncomingMessage, response: ServerResponse, path: string): void
  /** Counts an answer Node's parser made necessary before there was a request (a bad request line, oversized headers). */
  unparsed(status: number): void
  /** The request `socket` is serving now (observed, its response not finished), for answers Node asks for on the socket. */
  serving(socket: import("node:net").Socket): Serving | undefined
}>()("inference-router/RequestObserver") {
  static readonly layer = (routes: RouteTable) =>
    Layer.effect(
      RequestObserver,
      Effect.gen(function*() {
        // Log level, log format and the metric registry, as the layers set them up.
        const context = yield* Effect.context<never>()
        const config = yield* RouterConfig
        const logsAccess = LogLevel.isGreaterThanOrEqualTo("Info", Context.get(context, References.MinimumLogLevel))
        const accessLog = config.logFormat === "json" ? yield* jsonAccessLog : effectLogger(context)

        // Responses observed and not yet closed. Released with the server, the
        // observer first waits for them (the 503s that end a drain are written
        // as the server stops), so every request's line is written before exit.
        let open = 0
        let onAllClosed: (() => void) | undefined
        yield* Effect.addFinalizer(() =>
          Effect.callback<void>((resume) => {
            if (open === 0) return resume(Effect.void)
            onAllClosed = () => resume(Effect.void)
          }).pipe(Effect.timeoutOrElse({ duration: config.shutdownTimeoutMs, orElse: () => Effect.void }))
        )

        // Per-request metrics kept in plain numbers and read at export (MetricSeries.ts: Effect's updates cost ~5 % per request).
        const metrics = metricContext(context)
        const requestsBy = labelledCounterSeries(requestsTotal, metrics, "endpoint", "status")
        const shedBy = labelledCounterSeries(shedTotal, metrics, "reason")
        for (const reason of shedReasons) shedBy(reason)(0)
        if (config.backend === "upstream") for (const reason of poolShedReasons) shedBy(reason)(0)
        const recordDuration = histogramSeries(requestDuration, metrics)
        const recordQueueWait = histogramSeries(queueWait, metrics)
        const recordModelTime = histogramSeries(modelTime, metrics)

        /** What a path means here, made once per path the router knows (one for every other path). */
        interface PathInfo {
          readonly tracked: boolean
          readonly logged: boolean
          /** Its `endpoint` label. */
          readonly label: string
        }
        const pathInfo = (path: string | undefined): PathInfo => ({
          tracked: path === undefined || !untracked.has(path),
          logged: path !== undefined && inferencePaths.has(path),
          label: path !== undefined && routes.has(path) ? path : unmatchedEndpoint
        })
        const known = new Map<string, PathInfo>()
        for (const path of [...routes.keys(), ...untracked, ...inferencePaths]) known.set(path, pathInfo(path))
        const unknown = pathInfo(undefined)

        const finished = (request: IncomingMessage, response: ServerResponse, path: string, info: PathInfo, startedAt: number) => {
          const now = performance.now()
          const durationMs = now - startedAt
          let outcome = outcomeOf(request)
          // What the client got: the response's status, else what was written to
          // the socket instead (Node's 408 for a slow client), else nothing.
          const status = response.writableFinished ? response.statusCode : outcome?.status ?? clientClosedRequest
          requestsBy(info.label, String(status))(1)
          recordDuration(durationMs / 1000)
          // Only the router's own rejections are shed; a model server's failure shows in the access log.
          if (outcome?.reason !== undefined && isShedReason(outcome.reason)) shedBy(outcome.reason)(1)
          if (outcome?.queueMs !== undefined) recordQueueWait(outcome.queueMs / 1000)
          // Left the queue unserved: its wait goes to the log line only.
          else if (outcome?.queuedAt !== undefined) outcome = { ...outcome, queueMs: Math.round(now - outcome.queuedAt) }
          if (outcome?.modelMs !== undefined) recordModelTime(outcome.modelMs / 1000)
          if (!logsAccess || !info.logged) return
          accessLog({
            requestId: request.headers[requestIdHeader] as string,
            method: request.method ?? "",
            path,
            status,
            outcome,
            durationMs
          })
        }

        return RequestObserver.of({
          observe: (request, response, path) => {
            const given = request.headers[requestIdHeader]
            // Responses get it from the pipeline's answer headers or the error envelope: a
            // `setHeader` here would push Node's writeHead off its fast path
            // (measured: about 2.5 µs per request).
            const id = requestIdFor(given)
            if (id !== given) request.headers[requestIdHeader] = id
            // Per connection, the request it serves now, emptied when the response closes
            // (core/RequestOutcome.ts): a finished request kept until the connection's next one
            // was promoted out of the young generation at 256 connections (BENCHMARKS.md section 12).
            startServing(request, response)
            const info = known.get(path) ?? unknown
            if (!info.tracked) {
              response.on("close", () => stopServing(request, response))
              return
            }
            const startedAt = performance.now()
            open++
            // A response closes once: `on` spares the wrapper `once` allocates.
            response.on("close", () => {
              open--
              finished(request, response, path, info, startedAt)
              stopServing(request, response)
              if (open === 0 && onAllClosed !== undefined) onAllClosed()
            })
          },
          unparsed: (status) => requestsBy(unmatchedEndpoint, String(status))(1),
          serving: servingOf
        })
      })
    )
}

type AccessLogLine = (entry: AccessEntry) => void

/** For LOG_FORMAT=pretty (people reading, not the hot path): Effect's own logger. */
const effectLogger = (context: Context.Context<never>): AccessLogLine => {
  const run = Effect.runForkWith(context)
  return ({ durationMs, outcome, ...entry }) =>
    void run(Effect.logInfo("request").pipe(Effect.annotateLogs({ ...entry, ...outcome, durationMs: Math.round(durationMs * 10) / 10 })))
}
