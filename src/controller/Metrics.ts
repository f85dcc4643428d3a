/**
 * The controller's Prometheus metrics.
 */
import { Metric } from "effect"
import { labelled, secondsHistogram } from "../shared/Metrics.ts"

export const reconcilesTotal = Metric.counter("inference_router_controller_reconciles_total", {
  description: "Reconciles by result: success, invalid (spec reported, children left as they were), error (retried with backoff)",
  incremental: true
})
export const reconcilesBy = labelled(reconcilesTotal, "result")

export const reconcileDuration = secondsHistogram(
  "inference_router_controller_reconcile_duration_seconds",
  "Time one reconcile took, in seconds"
)

export const watchRestartsTotal = Metric.counter("inference_router_controller_watch_restarts_total", {
  description: "Watches started again, by resource and reason (closed by the server, expired 410, silent, error)",
  incremental: true
})
export const watchRestartsBy = labelled(watchRestartsTotal, "resource", "reason")

export const apiWritesTotal = Metric.counter("inference_router_controller_api_writes_total", {
  description: "Writes to the API (applies, status, deletes, events), by kind",
  incremental: true
})
export const apiWritesBy = labelled(apiWritesTotal, "kind")

export const queueDepth = Metric.gauge("inference_router_controller_queue_depth", {
  description: "InferenceServices waiting to be reconciled"
})
export const isLeader = Metric.gauge("inference_router_controller_leader", {
  description: "1 while this replica holds the lease (or leader election is off)"
})
