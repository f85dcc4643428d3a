/**
 * `GET /metrics` in the Prometheus text format (Effect's formatter). Gauges of
 * current state (slots in use, queue length, upstreams) are read at scrape
 * time, so they are never stale.
 */
import { type Context, Effect, Metric } from "effect"
import { HttpRouter } from "effect/http"
import { metricsPath } from "../../api/RouterApi.ts"
import { prometheusResponse } from "../../shared/Metrics.ts"
import { Admission } from "../core/Admission.ts"
import { RouterConfig } from "../core/Config.ts"
import { gauges, upstreamMetrics, vllmMetrics } from "../core/Metrics.ts"
import { Upstreams, type UpstreamView } from "../upstream/Upstreams.ts"
import { Backend } from "../core/Backend.ts"

/**
 * Sets the upstream gauges from the pool's view at scrape time (upstream
 * mode only: a simulated router has no pool, not an empty one), and
 * removes the series of an upstream that left the pool (a `dns+` name's pod
 * went away): a stale `router_upstream_available 1` would keep the
 * no-healthy-upstream alert quiet for the life of the process.
 */
export const upstreamGauges = () => {
  let exported = new Set<string>()
  return (view: ReadonlyArray<UpstreamView>, context: Context.Context<never>) => {
    const current = new Set<string>()
    upstreamMetrics.healthy.updateUnsafe(view.filter((upstream) => upstream.available).length, context)
    for (const upstream of view) {
      current.add(upstream.id)
      upstreamMetrics.inFlight(upstream.id).updateUnsafe(upstream.inFlight, context)
      upstreamMetrics.available(upstream.id).updateUnsafe(upstream.available ? 1 : 0, context)
      upstreamMetrics.connections(upstream.id).updateUnsafe(upstream.connections, context)
    }
    for (const id of exported) {
      if (current.has(id)) continue
      Metric.removeUnsafe(upstreamMetrics.inFlight(id), context)
      Metric.removeUnsafe(upstreamMetrics.available(id), context)
      Metric.removeUnsafe(upstreamMetrics.connections(id), context)
    }
    exported = current
  }
}

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
  const exportUpstreams = upstreamGauges()
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
    if (upstreams.enabled) exportUpstreams(upstreams.view(), context)
    return prometheusResponse(context)
  })
  yield* router.add("GET", metricsPath, handler)
}))
