/**
 * `GET /metrics` in the Prometheus text format (Effect's formatter). Gauges of
 * current state (slots in use, queue length, upstreams) are read at scrape
 * time, so they are never stale.
 */
import { Effect } from "effect"
import { HttpRouter } from "effect/http"
import { metricsPath } from "../../api/RouterApi.ts"
import { prometheusResponse } from "../../shared/Metrics.ts"
import { Admission } from "../core/Admission.ts"
import { gauges, queueWaitsNearTimeout } from "../core/Metrics.ts"
import { Backend } from "../core/Backend.ts"

/** `GET /metrics` in the Prometheus text format. */
export const MetricsRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const admission = yield* Admission
  const backend = yield* Backend
  // Admission counts in a plain number; the counter gets what it gained since the last scrape.
  let exportedNearTimeout = 0
  const handler = Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const stats = admission.statsUnsafe()
    gauges.running.updateUnsafe(stats.running, context)
    gauges.waiting.updateUnsafe(stats.waiting, context)
    gauges.maxConcurrency.updateUnsafe(stats.slots, context)
    gauges.maxQueue.updateUnsafe(stats.maxQueue, context)
    gauges.queueTimeout.updateUnsafe(stats.queueTimeoutMs / 1000, context)
    queueWaitsNearTimeout.updateUnsafe(stats.nearTimeout - exportedNearTimeout, context)
    exportedNearTimeout = stats.nearTimeout
    // vLLM's series and the pool's: each backend sets its own.
    backend.exportMetrics(stats, context)
    return prometheusResponse(context)
  })
  yield* router.add("GET", metricsPath, handler)
}))
