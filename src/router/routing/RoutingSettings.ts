/**
 * The scheduler's settings (read with MODEL_BACKEND=upstream by
 * core/Settings.ts's parser), their defaults and their documentation rows for
 * docs/settings.md: kept next to what they control.
 */
import { Schema } from "effect"

export type SchedulerName = "least-request" | "cache-aware"

export interface RoutingSettings {
  readonly scheduler: SchedulerName
  /** No upstream above this × the pool's mean in flight (cache-aware only). */
  readonly loadBound: number
  /** Upstream `/metrics` scraped this often (cache-aware only); 0: not scraped. */
  readonly metricsIntervalMs: number
  /** Names the shared state in Redis (cache-aware only); unset: MODEL_REF (routers of one model share it). */
  readonly sharedScope?: string | undefined
  /**
   * Whether `x-inference-route` names the predicted cached tokens (cache-aware only); unset: false.
   * Off by default: the number tells any client whether someone else's prompt prefix is cached there.
   */
  readonly routeHeaderCachedTokens?: boolean | undefined
}

export const defaultRouting: RoutingSettings = { scheduler: "least-request", loadBound: 1.25, metricsIntervalMs: 100 }

/** UPSTREAM_SHARED_SCOPE: any text without whitespace, up to 512 characters. */
export const SharedScope = Schema.Trim.pipe(Schema.check(Schema.isPattern(/^\S{1,512}$/, { expected: "text without whitespace" })))

/** UPSTREAM_LOAD_BOUND: a decimal number from 1 to 10 with at most three decimals. */
export const LoadBound = Schema.Trim.pipe(
  Schema.check(Schema.isPattern(/^(10(\.0{1,3})?|[1-9](\.[0-9]{1,3})?)$/, { expected: "a number from 1 to 10" })),
  Schema.decodeTo(Schema.NumberFromString)
)

export const schedulerNames = ["least-request", "cache-aware"] as const

const code = (value: unknown) => `\`${value}\``

/** Rows of docs/settings.md (same shape as core/Settings.ts's SettingDoc). */
export const routingSettingDocs: ReadonlyArray<{ readonly variable: string; readonly meaning: string; readonly default: string; readonly valid: string }> = [
  {
    variable: "UPSTREAM_SCHEDULER",
    meaning: "how an upstream is picked: `least-request` (weighted, two random choices) or `cache-aware` (lowest predicted time to first token from what each upstream has cached, under `UPSTREAM_LOAD_BOUND`; docs/routing.md)",
    default: code(defaultRouting.scheduler),
    valid: "`least-request`, `cache-aware`"
  },
  {
    variable: "UPSTREAM_LOAD_BOUND",
    meaning: "`cache-aware`: no upstream is given a request that takes it above this × the pool's mean requests in flight (a hot prefix spills to a second upstream)",
    default: code(defaultRouting.loadBound),
    valid: "1–10"
  },
  {
    variable: "UPSTREAM_METRICS_INTERVAL_MS",
    meaning: "`cache-aware`: each upstream's `/metrics` (vLLM's `vllm:num_requests_waiting`/`_running`, `vllm:cache_config_info`) is read this often; older than three intervals, it is not used; `0` = not read",
    default: code(defaultRouting.metricsIntervalMs),
    valid: "integer ≥ 0"
  },
  {
    variable: "UPSTREAM_SHARED_SCOPE",
    meaning: "`cache-aware` with a `redis://` item in `KV_ENDPOINTS`: names the state router replicas share there (prefix index, in-flight counts); routers with the same scope and the same Redis share it. The controller sets `<namespace>/<name>` of the InferenceService, so two services of one model do not share an index of different servers",
    default: "`MODEL_REF`",
    valid: "text without whitespace, up to 512 characters"
  },
  {
    variable: "UPSTREAM_ROUTE_HEADER_CACHED_TOKENS",
    meaning: "`cache-aware`: `true` adds `cached-tokens=<n>` (the prompt tokens predicted cached on the upstream picked) and `predicted-ttft-ms=<n>` to the `x-inference-route` answer header. Off by default: on a shared router the number tells any client whether another's prompt prefix is cached (a probe of what others asked); the scheduler and the reason are always there",
    default: "`false`",
    valid: "`true`, `false`"
  }
]
