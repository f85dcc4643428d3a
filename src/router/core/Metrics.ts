/**
 * The router's Prometheus metrics: their definitions only, on Effect's Metric
 * registry (the route that exports them is app/MetricsRoute.ts). A leaf of the
 * router's import graph but for Admission's reject reasons, so every part may
 * record into it.
 */
import { type Context, Metric } from "effect"
import { labelled, secondsHistogram } from "../../shared/Metrics.ts"
import { type AdmissionStats, rejectReasons } from "./Admission.ts"

// The five per-request metrics below (`requestsTotal` to `shedTotal`) are updated only through
// edge/MetricSeries.ts, which holds their state: an Effect update to them would be ignored.
export const requestsTotal = Metric.counter("router_requests_total", {
  description: "HTTP requests served, by endpoint and status (probes and /metrics excluded)",
  incremental: true
})
export const requestDuration = secondsHistogram(
  "router_request_duration_seconds",
  "Time from request start to response, in seconds"
)
export const queueWait = Metric.histogram("router_queue_wait_seconds", {
  description: "Time admitted requests (/infer and /v1/*) waited for a slot, in seconds",
  // Beyond a minute too: QUEUE_TIMEOUT_MS may be minutes, and the alert compares the p99 with 80% of it.
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600]
})
export const modelTime = secondsHistogram("router_model_seconds", "Time the model took per request (/infer and /v1/*), in seconds")
export const shedTotal = Metric.counter("router_shed_total", {
  description: "Requests (/infer and /v1/*) the router answered without running the model, by reason",
  incremental: true
})

/** Admission's count (`AdmissionStats.nearTimeout`), brought up to date at scrape time. */
export const queueWaitsNearTimeout = Metric.counter("router_queue_waits_near_timeout_total", {
  description: "Requests granted a slot after waiting at least 80% of their queue budget (QUEUE_TIMEOUT_MS, or less by x-queue-timeout-ms)",
  incremental: true
})

export const gauges = {
  running: Metric.gauge("router_requests_running", { description: "Requests (/infer and /v1/*) in the model now" }),
  waiting: Metric.gauge("router_requests_waiting", { description: "Requests (/infer and /v1/*) waiting for a slot now" }),
  maxConcurrency: Metric.gauge("router_max_concurrency", { description: "Configured MAX_CONCURRENCY" }),
  maxQueue: Metric.gauge("router_max_queue", { description: "Configured MAX_QUEUE" }),
  queueTimeout: Metric.gauge("router_queue_timeout_seconds", { description: "Configured QUEUE_TIMEOUT_MS, in seconds" }),

  // The names inference gateways' endpoint pickers read from vLLM servers (labelled model_name at scrape).
  vllmRunning: Metric.gauge("vllm:num_requests_running", { description: "Requests in the model now (vLLM's name)" }),
  vllmWaiting: Metric.gauge("vllm:num_requests_waiting", { description: "Requests waiting for a slot now (vLLM's name)" }),
  vllmKvCache: Metric.gauge("vllm:kv_cache_usage_perc", {
    description: "KV-cache use, 0..1 (vLLM's name): simulated, the blocks running requests hold / SIM_KV_BLOCKS; upstream, the share of slots in use"
  })
}

/**
 * vLLM's per-request metrics, for the OpenAI-compatible API, each labelled
 * `model_name` (the MODEL_REF). Seconds, in vLLM's own buckets
 * (vllm/v1/metrics/loggers.py), so that dashboards and quantiles read alike.
 */
export const vllmBuckets = {
  timeToFirstToken: [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160, 640, 2560],
  /** Inter-token latency and a request's time per output token. */
  perToken: [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80],
  /** End-to-end latency and queue time (vLLM's request_latency_buckets). */
  requestLatency: [0.3, 0.5, 0.8, 1, 1.5, 2, 2.5, 5, 10, 15, 20, 30, 40, 50, 60, 120, 240, 480, 960, 1920, 7680]
} as const

const vllmHistogram = (name: string, description: string, boundaries: ReadonlyArray<number>) =>
  Metric.histogram(name, { description, boundaries })

export const vllm = {
  timeToFirstToken: vllmHistogram("vllm:time_to_first_token_seconds", "From the request's arrival to its first token, in seconds", vllmBuckets.timeToFirstToken),
  interTokenLatency: vllmHistogram("vllm:inter_token_latency_seconds", "Between consecutive tokens of a request, in seconds", vllmBuckets.perToken),
  e2eLatency: vllmHistogram("vllm:e2e_request_latency_seconds", "From the request's arrival to its last token, in seconds", vllmBuckets.requestLatency),
  queueTime: vllmHistogram("vllm:request_queue_time_seconds", "Time a request waited for a slot, in seconds", vllmBuckets.requestLatency),
  promptTokens: Metric.counter("vllm:prompt_tokens_total", { description: "Prompt tokens processed", incremental: true }),
  generationTokens: Metric.counter("vllm:generation_tokens_total", { description: "Tokens generated", incremental: true }),
  requestSuccess: Metric.counter("vllm:request_success_total", {
    description: "Requests finished, by finished_reason",
    incremental: true
  })
}

/** The simulated server's prefix cache and KV-cache configuration, as vLLM names them (Gateway API Inference Extension's model-server protocol). */
export const vllmCache = {
  prefixQueries: Metric.counter("vllm:prefix_cache_queries_total", { description: "Prompt tokens looked up in the prefix cache", incremental: true }),
  prefixHits: Metric.counter("vllm:prefix_cache_hits_total", { description: "Prompt tokens found in the prefix cache", incremental: true }),
  preemptions: Metric.counter("vllm:num_preemptions_total", {
    description: "Requests preempted: their KV blocks taken back, they compute their tokens again when readmitted",
    incremental: true
  }),
  cacheConfig: Metric.gauge("vllm:cache_config_info", { description: "The KV cache's configuration, in its labels (block_size, num_gpu_blocks); the value is 1" }),
  loraRequests: Metric.gauge("vllm:lora_requests_info", {
    description: "LoRA adapters running and waiting, in its labels (none: this server serves no adapters); the value is the scrape time"
  }),
  timePerOutputToken: vllmHistogram(
    "vllm:request_time_per_output_token_seconds",
    "A request's mean time per output token after the first, in seconds",
    vllmBuckets.perToken
  )
}

/** vLLM's metrics with their `model_name` label (and `finished_reason` for successes). */
export const vllmMetrics = (modelName: string) => {
  const label = <M extends Metric.Metric<any, any>>(metric: M) => Metric.withAttributes(metric, { model_name: modelName }) as M
  return {
    running: label(gauges.vllmRunning),
    waiting: label(gauges.vllmWaiting),
    kvCache: label(gauges.vllmKvCache),
    timeToFirstToken: label(vllm.timeToFirstToken),
    interTokenLatency: label(vllm.interTokenLatency),
    e2eLatency: label(vllm.e2eLatency),
    queueTime: label(vllm.queueTime),
    promptTokens: label(vllm.promptTokens),
    generationTokens: label(vllm.generationTokens),
    requestSuccess: labelled(Metric.withAttributes(vllm.requestSuccess, { model_name: modelName }), "finished_reason"),
    prefixQueries: label(vllmCache.prefixQueries),
    prefixHits: label(vllmCache.prefixHits),
    preemptions: label(vllmCache.preemptions),
    timePerOutputToken: label(vllmCache.timePerOutputToken),
    cacheConfig: (blockSize: number, blocks: number) =>
      Metric.withAttributes(vllmCache.cacheConfig, {
        model_name: modelName,
        block_size: String(blockSize),
        num_gpu_blocks: String(blocks),
        enable_prefix_caching: "True"
      }),
    loraRequests: Metric.withAttributes(vllmCache.loraRequests, { max_lora: "0", running_lora_adapters: "", waiting_lora_adapters: "" })
  }
}

export type VllmMetrics = ReturnType<typeof vllmMetrics>

/**
 * vLLM's load gauges where the router runs no engine of its own (upstream mode, a stand-in model):
 * its slots in use as vLLM's running, its queue as waiting, the share of slots in use as the KV
 * cache's, so an endpoint picker scraping a router reads its load as a model server's.
 */
export const exportSlotsAsVllm = (vllm: VllmMetrics, admission: AdmissionStats, context: Context.Context<never>): void => {
  vllm.running.updateUnsafe(admission.running, context)
  vllm.waiting.updateUnsafe(admission.waiting, context)
  vllm.kvCache.updateUnsafe(admission.running / admission.slots, context)
}

/** Per upstream (MODEL_BACKEND=upstream), labelled `upstream` (host:port). */
export const upstreamMetrics = {
  requests: labelled(
    Metric.counter("router_upstream_requests_total", {
      description: "Attempts sent to each upstream, by its status code, or how it ended without one (connect_error: never reached it; error: reset before an answer; timeout: no first byte; broken, idle_timeout: the body failed mid-way; rejected: too large or unusable; deadline: UPSTREAM_REQUEST_TIMEOUT_MS)",
      incremental: true
    }),
    "upstream",
    "version",
    "status"
  ),
  duration: labelled(
    secondsHistogram("router_upstream_request_duration_seconds", "From forwarding a request to the end of the upstream's answer, in seconds"),
    "upstream"
  ),
  ejections: labelled(
    Metric.counter("router_upstream_ejections_total", { description: "Times each upstream was ejected after consecutive failures", incremental: true }),
    "upstream"
  ),
  retries: labelled(
    Metric.counter("router_upstream_retries_total", { description: "Retried attempts sent to each upstream", incremental: true }),
    "upstream"
  ),
  inFlight: labelled(Metric.gauge("router_upstream_in_flight", { description: "Requests in flight to each upstream now" }), "upstream"),
  available: labelled(
    Metric.gauge("router_upstream_available", { description: "1 while the upstream is healthy and not ejected, else 0" }),
    "upstream"
  ),
  connections: labelled(
    Metric.gauge("router_upstream_connections", { description: "Open keep-alive connections to each upstream" }),
    "upstream"
  ),
  // One series per router whatever its pool: an empty pool (a dns+ name that never resolved) is 0, not absent.
  healthy: Metric.gauge("router_upstreams_healthy", { description: "Upstreams in the pool now healthy and not ejected (0 with an empty pool)" }),
  // What /readyz answers by: 0 pages (an ejected upstream still chosen in panic serves, though none is healthy).
  poolReady: Metric.gauge("router_upstream_pool_ready", {
    description: "1 while some upstream can be chosen (one in rotation, or in panic any reachable one): /readyz's rule; else 0"
  })
}

/** Every reason the router sheds for, exported as 0 before the first one happens. */
export const shedReasons = [...rejectReasons, "shutting_down"] as const

/**
 * The upstream pool's own rejections (MODEL_BACKEND=upstream): no model server could be asked. Shed
 * as the router's, exported as 0 from the start in upstream mode. Other backend failures (a model
 * server's refusal or fault: `upstream_*`) are in the access log, not shed.
 */
export const poolShedReasons = ["no_healthy_upstream", "upstreams_saturated"] as const
export type PoolShedReason = typeof poolShedReasons[number]

/** Whether `reason` is one of the router's own rejections (counted in `router_shed_total`, named by `x-router-reject-reason`). */
export const isShedReason = (reason: string): boolean =>
  (shedReasons as ReadonlyArray<string>).includes(reason) || (poolShedReasons as ReadonlyArray<string>).includes(reason)
