/**
 * The router's Prometheus metrics, on Effect's Metric registry and exported by
 * Effect's Prometheus formatter. Gauges of current state (slots in use, queue
 * length) are read from admission at scrape time, so they are never stale.
 */
import { Effect, Metric } from "effect"
import { HttpRouter } from "effect/http"
import { labelled, prometheusResponse, secondsHistogram } from "../shared/Metrics.ts"
import { metricsPath } from "../api/RouterApi.ts"
import { Admission, rejectReasons } from "./Admission.ts"

export const requestsTotal = Metric.counter("router_requests_total", {
  description: "HTTP requests served, by endpoint and status (probes and /metrics excluded)",
  incremental: true
})
export const requestDuration = secondsHistogram(
  "router_request_duration_seconds",
  "Time from request start to response, in seconds"
)
export const queueWait = secondsHistogram(
  "router_queue_wait_seconds",
  "Time admitted /infer requests waited for a slot, in seconds"
)
export const modelTime = secondsHistogram("router_model_seconds", "Time the model took per /infer request, in seconds")
export const shedTotal = Metric.counter("router_shed_total", {
  description: "/infer requests the router answered without running the model, by reason",
  incremental: true
})

const gauges = {
  running: Metric.gauge("router_requests_running", { description: "/infer requests in the model now" }),
  waiting: Metric.gauge("router_requests_waiting", { description: "/infer requests waiting for a slot now" }),
  maxConcurrency: Metric.gauge("router_max_concurrency", { description: "Configured MAX_CONCURRENCY" }),
  maxQueue: Metric.gauge("router_max_queue", { description: "Configured MAX_QUEUE" }),
  // The names inference gateways' endpoint pickers read from vLLM servers.
  vllmRunning: Metric.gauge("vllm:num_requests_running", { description: "Requests running (vLLM-compatible name)" }),
  vllmWaiting: Metric.gauge("vllm:num_requests_waiting", { description: "Requests waiting (vLLM-compatible name)" })
}

/** `router_requests_total` by endpoint and status. */
export const requestsBy = labelled(requestsTotal, "endpoint", "status")
/** `router_shed_total` by reason. */
export const shedBy = labelled(shedTotal, "reason")
/** Every reason the router sheds for, exported as 0 before the first one happens. */
export const shedReasons = [...rejectReasons, "shutting_down"] as const


/** `GET /metrics` in the Prometheus text format. */
export const MetricsRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const admission = yield* Admission
  const context = yield* Effect.context<never>()
  for (const reason of shedReasons) shedBy(reason).updateUnsafe(0, context)
  const handler = Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const stats = admission.statsUnsafe()
    gauges.running.updateUnsafe(stats.running, context)
    gauges.waiting.updateUnsafe(stats.waiting, context)
    gauges.vllmRunning.updateUnsafe(stats.running, context)
    gauges.vllmWaiting.updateUnsafe(stats.waiting, context)
    gauges.maxConcurrency.updateUnsafe(stats.slots, context)
    gauges.maxQueue.updateUnsafe(stats.maxQueue, context)
    return prometheusResponse(context)
  })
  yield* router.add("GET", metricsPath, handler)
}))
