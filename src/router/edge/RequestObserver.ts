/**
 * Per-request observability at the edge of the Node server, for every route
 * and every answer (Node's own 408s and hang-ups included): the `x-request-id`
 * (the caller's, or a new one, set on the request for the rest of the pipeline
 * to echo), request metrics, and one access-log line per `/infer`. Probes and `/metrics` are not
 * traffic: they are neither counted nor logged.
 *
 * It listens to Node's request and response events rather than wrapping the
 * Effect pipeline: it then costs no fiber work on the hot path, and it sees
 * exactly what went on the wire.
 */
import { Context, Effect, Layer, LogLevel, References, type Scope } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { chatCompletionsPath, completionsPath } from "../../api/OpenAiApi.ts"
import { InferenceGroup, metricsPath, ProbesGroup, requestIdHeader } from "../../api/RouterApi.ts"
import { RouterConfig } from "../core/Config.ts"
import { metricContext } from "../../shared/Metrics.ts"
import { modelTime, queueWait, requestDuration, requestsBy, shedBy } from "../core/Metrics.ts"
import { outcomeOf, type RequestOutcome } from "./RequestOutcome.ts"
import { type RouteTable, unmatchedEndpoint } from "../app/Routes.ts"

/** Inference requests: each gets one access-log line, whatever ends it. */
const inferencePaths = new Set([InferenceGroup.endpoints.infer.path, completionsPath, chatCompletionsPath])

/** A caller's id is echoed only if it is short, printable ASCII: it ends up in logs. */
const validRequestId = /^[\x21-\x7e]{1,128}$/

/** nginx's status for a request whose client closed the connection before the answer. */
const clientClosedRequest = 499

/** Probes and scrapes: not traffic. */
const untracked = new Set([...Object.values(ProbesGroup.endpoints).map((endpoint) => endpoint.path), metricsPath])

export class RequestObserver extends Context.Service<RequestObserver, {
  /** Call first for every request Node receives, with the path it is routed by. */
  observe(request: IncomingMessage, response: ServerResponse, path: string): void
  /** Counts an answer Node's parser made necessary before there was a request (a bad request line, oversized headers). */
  unparsed(status: number): void
}>()("inference-router/RequestObserver") {
  static readonly layer = (routes: RouteTable) =>
    Layer.effect(
      RequestObserver,
      Effect.gen(function*() {
        // Log level, log format and the metric registry, as the layers set them up.
        const context = yield* Effect.context<never>()
        const config = yield* RouterConfig
        const logsAccess = LogLevel.isGreaterThanOrEqualTo("Info", Context.get(context, References.MinimumLogLevel))
        const accessLog = config.logFormat === "json" ? yield* jsonLines : effectLogger(context)

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

        const metrics = metricContext(context)
        const finished = (request: IncomingMessage, response: ServerResponse, path: string, startedAt: number) => {
          const durationMs = performance.now() - startedAt
          const outcome = outcomeOf(request)
          // What the client got: the response's status, else what was written to
          // the socket instead (Node's 408 for a slow client), else nothing.
          const status = response.writableFinished ? response.statusCode : outcome?.status ?? clientClosedRequest
          requestsBy(routes.has(path) ? path : unmatchedEndpoint, String(status)).updateUnsafe(1, metrics)
          requestDuration.updateUnsafe(durationMs / 1000, metrics)
          if (outcome?.reason !== undefined) shedBy(outcome.reason).updateUnsafe(1, metrics)
          if (outcome?.queueMs !== undefined) queueWait.updateUnsafe(outcome.queueMs / 1000, metrics)
          if (outcome?.modelMs !== undefined) modelTime.updateUnsafe(outcome.modelMs / 1000, metrics)
          if (!logsAccess || !inferencePaths.has(path)) return
          accessLog({
            requestId: request.headers[requestIdHeader] as string,
            method: request.method ?? "",
            path,
            status,
            outcome,
            durationMs: Math.round(durationMs * 10) / 10
          })
        }

        return RequestObserver.of({
          observe: (request, response, path) => {
            const given = request.headers[requestIdHeader]
            // Responses get it from the /infer handler or the error envelope: a
            // \`setHeader\` here would push Node's writeHead off its fast path
            // (measured: about 2.5 µs per request).
            if (typeof given !== "string" || !validRequestId.test(given)) {
              request.headers[requestIdHeader] = randomUUID()
            }
            if (untracked.has(path)) return
            const startedAt = performance.now()
            open++
            // A response closes once: `on` spares the wrapper `once` allocates.
            response.on("close", () => {
              open--
              finished(request, response, path, startedAt)
              if (open === 0 && onAllClosed !== undefined) onAllClosed()
            })
          },
          unparsed: (status) => requestsBy(unmatchedEndpoint, String(status)).updateUnsafe(1, metrics)
        })
      })
    )
}

/** What one access-log line says. */
interface AccessEntry {
  readonly requestId: string
  readonly method: string
  readonly path: string
  readonly status: number
  readonly outcome: RequestOutcome | undefined
  readonly durationMs: number
}

type AccessLogLine = (entry: AccessEntry) => void

/** Where JSON access-log lines go: stdout, like every other log line. */
export const AccessLogOutput = Context.Reference<(text: string) => void>("inference-router/AccessLogOutput", {
  defaultValue: () => (text) => void process.stdout.write(text)
})

/**
 * Access-log lines in the JSON logger's shape, written in batches: at most
 * every `accessLogFlushMs`, or as soon as `accessLogBatchLines` are waiting.
 * A write to stdout costs much the same whatever its size: writing per time
 * window bounds the writes at any load, where a write per event-loop turn
 * carries only a line or two at light load (under the benchmark's load the
 * two measured alike). Effect's logger (a fiber, the structured formatter
 * and a console write per line) cost about 10 µs per request. Envoy batches
 * its access log the same way.
 * Pending lines are flushed when the layer is released, so a drain loses none.
 */
const accessLogFlushMs = 100
const accessLogBatchLines = 256

const jsonLines: Effect.Effect<AccessLogLine, never, Scope.Scope> = Effect.gen(function*() {
  const write = yield* AccessLogOutput
  let pending: Array<string> = []
  let timer: ReturnType<typeof setTimeout> | undefined
  // Once released, a line is written at once: nothing may wait for a timer the exit cancels.
  let released = false
  const flush = () => {
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (pending.length === 0) return
    const text = pending.join("\n") + "\n"
    pending = []
    write(text)
  }
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      released = true
      flush()
    })
  )
  // Formatting a Date costs about 0.4 µs: lines in the same millisecond share one.
  let stampedAt = 0
  let timestamp = ""
  return (entry) => {
    // Unref'd: pending lines never keep the process alive; the finalizer writes them.
    if (timer === undefined) timer = setTimeout(flush, accessLogFlushMs).unref()
    const now = Date.now()
    if (now !== stampedAt) {
      stampedAt = now
      timestamp = new Date(now).toISOString()
    }
    // By hand, in the JSON logger's shape: a third of the cost of JSON.stringify on the nested object.
    const { outcome } = entry
    pending.push(
      `{"message":"request","level":"INFO","timestamp":"${timestamp}","annotations":{"requestId":${
        JSON.stringify(entry.requestId)
      },"method":${JSON.stringify(entry.method)},"path":${JSON.stringify(entry.path)},"status":${entry.status}${
        outcome?.queueMs === undefined ? "" : `,"queueMs":${outcome.queueMs}`
      }${outcome?.modelMs === undefined ? "" : `,"modelMs":${outcome.modelMs}`}${
        outcome?.reason === undefined ? "" : `,"reason":${JSON.stringify(outcome.reason)}`
      },"durationMs":${entry.durationMs}},"spans":{}}`
    )
    if (pending.length >= accessLogBatchLines || released) flush()
  }
})

/** For LOG_FORMAT=pretty (people reading, not the hot path): Effect's own logger. */
const effectLogger = (context: Context.Context<never>): AccessLogLine => {
  const run = Effect.runForkWith(context)
  return ({ outcome, ...entry }) => void run(Effect.logInfo("request").pipe(Effect.annotateLogs({ ...entry, ...outcome })))
}
