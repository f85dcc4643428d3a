/**
 * The scheduler's settings (read with MODEL_BACKEND=upstream), their
 * documentation rows for docs/settings.md, and the parser: kept here, next to
 * what they control, and spliced into core/Settings.ts's table and parser.
 */
import { Effect, Schema } from "effect"
import { decimalAtLeast, oneOf, setting, type SettingError } from "../../shared/Settings.ts"

export type SchedulerName = "least-request" | "cache-aware"

export interface RoutingSettings {
  readonly scheduler: SchedulerName
  /** No upstream above this × the pool's mean in flight (cache-aware only). */
  readonly loadBound: number
  /** Upstream `/metrics` scraped this often (cache-aware only); 0: not scraped. */
  readonly metricsIntervalMs: number
}

export const defaultRouting: RoutingSettings = { scheduler: "least-request", loadBound: 1.25, metricsIntervalMs: 100 }

/** A decimal number from 1 to 10 with at most three decimals. */
const LoadBound = Schema.Trim.pipe(
  Schema.check(Schema.isPattern(/^(10(\.0{1,3})?|[1-9](\.[0-9]{1,3})?)$/, { expected: "a number from 1 to 10" })),
  Schema.decodeTo(Schema.NumberFromString)
)

export const loadRoutingSettings: Effect.Effect<RoutingSettings, SettingError> = Effect.gen(function*() {
  const d = defaultRouting
  const scheduler = yield* setting("UPSTREAM_SCHEDULER", oneOf(["least-request", "cache-aware"]), "least-request or cache-aware", () => d.scheduler)
  const loadBound = yield* setting("UPSTREAM_LOAD_BOUND", LoadBound, "a number from 1 to 10 (times the pool's mean in flight), e.g. 1.25", () => d.loadBound)
  const metricsIntervalMs = yield* setting("UPSTREAM_METRICS_INTERVAL_MS", decimalAtLeast(0), "an integer >= 0 (milliseconds; 0: not scraped)", () => d.metricsIntervalMs)
  return { scheduler, loadBound, metricsIntervalMs }
})

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
  }
]
