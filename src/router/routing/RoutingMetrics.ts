/**
 * The cache-aware scheduler's metrics (on the router's /metrics with the
 * rest): why it decided as it did, how right its cache predictions were, and
 * whether its signals and shared state are live.
 */
import { Metric } from "effect"
import { labelled } from "../../shared/Metrics.ts"

export const routingMetrics = {
  decisions: labelled(
    Metric.counter("router_routing_decisions_total", {
      description: "Cache-aware decisions by reason: cache (sent where its prefix is cached), load (nothing cached made the difference), spill (its prefix's upstream was over UPSTREAM_LOAD_BOUND), only-healthy (one candidate: the others unhealthy, ejected or at UPSTREAM_MAX_CONCURRENCY)",
      incremental: true
    }),
    "reason"
  ),
  decisionSeconds: Metric.histogram("router_routing_decision_seconds", {
    description: "Time to decide one request (prompt parse, tokens, block keys, the choice), in seconds",
    boundaries: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025]
  }),
  predictedCachedTokens: Metric.counter("router_routing_predicted_cached_tokens_total", {
    description: "Prompt tokens the scheduler predicted cached, over answers that reported cached_tokens, in the upstream's tokens (the router's count scaled by the answer's usage.prompt_tokens)",
    incremental: true
  }),
  reportedCachedTokens: Metric.counter("router_routing_reported_cached_tokens_total", {
    description: "Prompt tokens the upstreams reported cached (usage.prompt_tokens_details.cached_tokens)",
    incremental: true
  }),
  cachedTokensError: Metric.counter("router_routing_cached_tokens_error_total", {
    description: "Sum of |predicted - reported| cached tokens: divided by the reported total, the index's error rate",
    incremental: true
  }),
  ttftPredictionError: Metric.histogram("router_routing_ttft_prediction_error_seconds", {
    description: "|predicted - observed| time to first token of streamed answers, in seconds (the prediction the decision was made on)",
    boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5]
  }),
  ttftPredictedSeconds: Metric.counter("router_routing_ttft_predicted_seconds_total", {
    description: "Predicted time to first token summed over the answers in router_routing_ttft_prediction_error_seconds: against router_routing_ttft_observed_seconds_total, the predictor's bias",
    incremental: true
  }),
  ttftObservedSeconds: Metric.counter("router_routing_ttft_observed_seconds_total", {
    description: "Observed time to first token summed over the same answers",
    incremental: true
  }),
  indexBlocks: labelled(
    Metric.gauge("router_routing_index_blocks", { description: "Blocks the prefix index holds for the upstream (KV events and decisions, this replica's and, with Redis, the others')" }),
    "upstream"
  ),
  signalsFresh: labelled(
    Metric.gauge("router_routing_upstream_signals_fresh", { description: "1 while the upstream's scraped /metrics are fresh (within three UPSTREAM_METRICS_INTERVAL_MS), else 0" }),
    "upstream"
  ),
  kvEventGaps: labelled(
    Metric.counter("router_routing_kv_event_gaps_total", { description: "Gaps in an upstream's KV event sequence (batches lost, or the publisher restarted)", incremental: true }),
    "upstream"
  ),
  kvEventBatches: labelled(
    Metric.counter("router_routing_kv_event_batches_total", {
      description: "KV event batches received from the upstream (0 from subscribing: a wrong or unreachable endpoint stays at 0, ZeroMQ retries silently)",
      incremental: true
    }),
    "upstream"
  ),
  kvEventsMatching: labelled(
    Metric.gauge("router_routing_kv_events_matching", {
      description: "1 once the upstream's KV events named a block key the router computes (its index is exact), else 0 (approximate: from decisions; a real vLLM's hashes never match)"
    }),
    "upstream"
  ),
  kvEventsMalformed: labelled(
    Metric.counter("router_routing_kv_events_malformed_total", { description: "KV event messages from an upstream that could not be read", incremental: true }),
    "upstream"
  ),
  sharedUp: labelled(
    Metric.gauge("router_routing_shared_state_up", { description: "1 while the KV_ENDPOINTS Redis endpoint is connected, else 0 (the replica goes on with its local state)" }),
    "endpoint"
  ),
  sharedWritesDropped: Metric.counter("router_routing_shared_writes_dropped_total", {
    description: "Writes to the shared state not sent because Redis was down or slow",
    incremental: true
  })
}
