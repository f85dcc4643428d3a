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
import { RouterConfig } from "../core/Config.ts"
import { gauges, shedBy, shedReasons, upstreamMetrics, vllmMetrics } from "../core/Metrics.ts"
import { Upstreams } from "../upstream/Upstreams.ts"

/** `GET /metrics` in the Prometheus text format. */
export const MetricsRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const admission = yield* Admission
  const upstreams = yield* Upstreams
  const config = yield* RouterConfig
  const labelledVllm = vllmMetrics(config.modelRef)
  const context = yield* Effect.context<never>()
  for (const reason of shedReasons) shedBy(reason).updateUnsafe(0, context)
  const handler = Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const stats = admission.statsUnsafe()
    gauges.running.updateUnsafe(stats.running, context)
    gauges.waiting.updateUnsafe(stats.waiting, context)
    labelledVllm.running.updateUnsafe(stats.running, context)
    labelledVllm.waiting.updateUnsafe(stats.waiting, context)
    labelledVllm.kvCache.updateUnsafe(stats.running / stats.slots, context)
    gauges.maxConcurrency.updateUnsafe(stats.slots, context)
    gauges.maxQueue.updateUnsafe(stats.maxQueue, context)
    gauges.queueTimeout.updateUnsafe(stats.queueTimeoutMs / 1000, context)
    for (const upstream of upstreams.view()) {
      upstreamMetrics.inFlight(upstream.id).updateUnsafe(upstream.inFlight, context)
      upstreamMetrics.available(upstream.id).updateUnsafe(upstream.available ? 1 : 0, context)
      upstreamMetrics.connections(upstream.id).updateUnsafe(upstream.connections, context)
    }
    return prometheusResponse(context)
  })
  yield* router.add("GET", metricsPath, handler)
}))
