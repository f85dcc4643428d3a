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
import { Backend } from "../core/Backend.ts"

/** `GET /metrics` in the Prometheus text format. */
export const MetricsRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const admission = yield* Admission
  const upstreams = yield* Upstreams
  const config = yield* RouterConfig
  const labelledVllm = vllmMetrics(config.modelRef)
  const simulation = (yield* Backend).simulation
  // The prefix-cache counters follow the engine's totals: each scrape adds what grew since the last.
  let countedQueries = 0
  let countedHits = 0
  let countedPreemptions = 0
  const context = yield* Effect.context<never>()
  if (simulation !== undefined) {
    const { blockSize, kvBlocks } = simulation.stats()
    labelledVllm.cacheConfig(blockSize, kvBlocks).updateUnsafe(1, context)
    labelledVllm.prefixQueries.updateUnsafe(0, context)
    labelledVllm.prefixHits.updateUnsafe(0, context)
    labelledVllm.preemptions.updateUnsafe(0, context)
  }
  for (const reason of shedReasons) shedBy(reason).updateUnsafe(0, context)
  const handler = Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const stats = admission.statsUnsafe()
    gauges.running.updateUnsafe(stats.running, context)
    gauges.waiting.updateUnsafe(stats.waiting, context)
    if (simulation === undefined) {
      labelledVllm.running.updateUnsafe(stats.running, context)
      labelledVllm.waiting.updateUnsafe(stats.waiting, context)
      labelledVllm.kvCache.updateUnsafe(stats.running / stats.slots, context)
    } else {
      // As vLLM counts: running = in the engine's batch; waiting = for a slot, or admitted and waiting for KV blocks.
      const engine = simulation.stats()
      labelledVllm.running.updateUnsafe(Math.max(0, stats.running - engine.waiting), context)
      labelledVllm.waiting.updateUnsafe(stats.waiting + engine.waiting, context)
      labelledVllm.kvCache.updateUnsafe(engine.usedBlocks / engine.kvBlocks, context)
      labelledVllm.prefixQueries.updateUnsafe(engine.prefixQueries - countedQueries, context)
      labelledVllm.prefixHits.updateUnsafe(engine.prefixHits - countedHits, context)
      countedQueries = engine.prefixQueries
      countedHits = engine.prefixHits
      labelledVllm.preemptions.updateUnsafe(engine.preemptions - countedPreemptions, context)
      countedPreemptions = engine.preemptions
      labelledVllm.loraRequests.updateUnsafe(Date.now() / 1000, context)
    }
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
