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
import { outcomeOf, type RequestOutcome, type Serving, servingOf, startServing, stopServing } from "../core/RequestOutcome.ts"
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
            durationMs
          })
        }

        return RequestObserver.of({
          observe: (request, response, path) => {
            const given = request.headers[requestIdHeader]
            // Responses get it from the pipeline's answer headers or the error envelope: a
            // `setHeader` here would push Node's writeHead off its fast path
            // (measured: about 2.5 µs per request).
            if (typeof given !== "string" || !validRequestId.test(given)) {
              request.headers[requestIdHeader] = randomUUID()
            }
            // Per connection, the request it serves now, emptied when the response closes
            // (core/RequestOutcome.ts): a finished request kept until the connection's next one
            // was promoted out of the young generation at 256 connections (BENCHMARKS.md section 12).
            startServing(request, response)
            if (untracked.has(path)) {
              response.on("close", () => stopServing(request, response))
              return
            }
            const startedAt = performance.now()
            open++
            // A response closes once: `on` spares the wrapper `once` allocates.
            response.on("close", () => {
              open--
              finished(request, response, path, startedAt)
              stopServing(request, response)
              if (open === 0 && onAllClosed !== undefined) onAllClosed()
            })
          },
          unparsed: (status) => requestsBy(unmatchedEndpoint, String(status)).updateUnsafe(1, metrics),
          serving: servingOf
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
  /** Unrounded: the line shows it to a tenth of a millisecond. */
  readonly durationMs: number
}

type AccessLogLine = (entry: AccessEntry) => void

/** Where JSON access-log lines go: stdout, like every other log line. Each write is whole lines of ASCII. */
export const AccessLogOutput = Context.Reference<(chunk: Uint8Array) => void>("inference-router/AccessLogOutput", {
  defaultValue: () => (chunk) => void process.stdout.write(chunk)
})

/**
 * Access-log lines in the JSON logger's shape, written in batches: at most
 * every `accessLogFlushMs`, or as soon as `accessLogBatchBytes` are waiting.
 * A write to stdout costs much the same whatever its size: writing per time
 * window bounds the writes at any load, where a write per event-loop turn
 * carries only a line or two at light load. Effect's logger (a fiber, the
 * structured formatter and a console write per line) cost about 10 µs per
 * request. Envoy batches its access log the same way.
 *
 * Each line is copied at once into a buffer outside V8's heap: a batch of
 * strings waiting for the flush would survive young-generation collections
 * (copied at each, then promoted), and be flattened and encoded again at the
 * write. The lines are ASCII (request ids are visible ASCII by rule, paths
 * are the inference routes, the other strings are JSON-escaped to ASCII).
 * Pending lines are flushed when the layer is released, so a drain loses none.
 */
const accessLogFlushMs = 100
const accessLogBatchBytes = 64 * 1024
/** More than the longest line (a 128-character request id, every field). */
const maxLineBytes = 1024

/** JSON text of the few strings a line repeats (methods, paths, reasons) in ASCII, each made once. */
const quotedCache = new Map<string, string>()
export const quoted = (text: string): string => {
  let json = quotedCache.get(text)
  if (json === undefined) {
    json = JSON.stringify(text).replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
    // Bounded: only inference paths are logged, but methods and reasons come from outside.
    if (quotedCache.size < 64) quotedCache.set(text, json)
  }
  return json
}

/** A request id as JSON: ids are visible ASCII (RequestObserver's rule), so only `"` and `\` need escaping. */
export const quotedId = (id: string): string => id.includes("\"") || id.includes("\\") ? JSON.stringify(id) : `"${id}"`

/**
 * Milliseconds to a tenth, as `Math.round(ms * 10) / 10` prints (`15.3`,
 * `4`): by integer arithmetic, since printing a fractional double is V8's slow
 * path.
 */
export const tenths = (ms: number): string => {
  const total = Math.round(ms * 10)
  const whole = Math.floor(total / 10)
  const fraction = total - whole * 10
  return fraction === 0 ? `${whole}` : `${whole}.${fraction}`
}

const jsonLines: Effect.Effect<AccessLogLine, never, Scope.Scope> = Effect.gen(function*() {
  const write = yield* AccessLogOutput
  // One batch buffer for the life of the layer; each write gets a copy of its
  // lines, which the writer may keep (an asynchronous pipe). A fresh batch
  // buffer per write lived ~100 ms, long enough to be promoted, and the old
  // generation freed them only at its collections: +60 MiB peak RSS under load
  // (BENCHMARKS.md section 12). A copy handed over and dropped dies young.
  const batch = Buffer.allocUnsafeSlow(accessLogBatchBytes)
  let used = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  // Once released, a line is written at once: nothing may wait for a timer the exit cancels.
  let released = false
  const flush = () => {
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (used === 0) return
    const chunk = Buffer.from(batch.subarray(0, used))
    used = 0
    write(chunk)
  }
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      released = true
      flush()
    })
  )
  // Formatting a Date costs about 0.4 µs: lines in the same millisecond share one, in the line's fixed head.
  let stampedAt = 0
  let head = ""
  return (entry) => {
    // Unref'd: pending lines never keep the process alive; the finalizer writes them.
    if (timer === undefined) timer = setTimeout(flush, accessLogFlushMs).unref()
    const now = Date.now()
    if (now !== stampedAt) {
      stampedAt = now
      head = `{"message":"request","level":"INFO","timestamp":"${new Date(now).toISOString()}","annotations":{"requestId":`
    }
    // By hand, in the JSON logger's shape: a third of the cost of JSON.stringify on the nested object.
    const { outcome } = entry
    let line = head + quotedId(entry.requestId) + ",\"method\":" + quoted(entry.method) + ",\"path\":" + quoted(entry.path) +
      ",\"status\":" + entry.status
    if (outcome !== undefined) {
      if (outcome.queueMs !== undefined) line += ",\"queueMs\":" + outcome.queueMs
      if (outcome.modelMs !== undefined) line += ",\"modelMs\":" + outcome.modelMs
      if (outcome.reason !== undefined) line += ",\"reason\":" + quoted(outcome.reason)
    }
    line += ",\"durationMs\":" + tenths(entry.durationMs) + "},\"spans\":{}}\n"
    used += batch.write(line, used, "latin1")
    if (used > accessLogBatchBytes - maxLineBytes || released) flush()
  }
})

/** For LOG_FORMAT=pretty (people reading, not the hot path): Effect's own logger. */
const effectLogger = (context: Context.Context<never>): AccessLogLine => {
  const run = Effect.runForkWith(context)
  return ({ durationMs, outcome, ...entry }) =>
    void run(Effect.logInfo("request").pipe(Effect.annotateLogs({ ...entry, ...outcome, durationMs: Math.round(durationMs * 10) / 10 })))
}
