/**
 * The router's settings, read once from the environment at start-up.
 *
 * Every variable is read through Effect's `Config` (so tests swap the
 * `ConfigProvider`) and validated with `Schema`. An invalid value fails the
 * layer with `InvalidSetting`, whose message is the one line an operator sees:
 * the variable, the value and what is expected.
 */
import { Context, Effect, Layer, Redacted, Schema } from "effect"
import { readFileSync } from "node:fs"
import {
  decimalAtLeast,
  decimalBetween,
  DecimalInt,
  InvalidSetting,
  type LogFormat,
  logFormatSetting,
  type LogLevelName,
  logLevelSetting,
  oneOf,
  optionalString,
  rawSetting,
  setting,
  type SettingError
} from "../../shared/Settings.ts"
import { parseTargets, type UpstreamTarget, upstreamsExpected } from "../upstream/Targets.ts"

export { InvalidSetting }

/** Failures the simulated model can inject, as llm-d-inference-sim does. */
export const failureTypes = ["rate_limit", "invalid_api_key", "context_length", "invalid_request", "model_not_found", "server_error"] as const
export type FailureType = typeof failureTypes[number]

export interface SimulationSettings {
  /** echo: the output repeats the prompt (the last user message); random: seeded random words. */
  readonly mode: "echo" | "random"
  readonly seed: number
  /** Time to first token; unset: SIM_LATENCY_MS. */
  readonly ttftMs: number | undefined
  readonly ttftStdDevMs: number
  /** Inter-token latency; unset: 0 (every token at once after the first). */
  readonly itlMs: number | undefined
  readonly itlStdDevMs: number
  /** Latency multiplier reached when every slot is busy (1 = load has no effect). */
  readonly loadFactor: number
  /** Most tokens generated when the request sets no max_tokens. */
  readonly maxTokens: number
  /** Context length: prompt tokens plus max_tokens may not exceed it. */
  readonly maxModelLen: number
  /** Percent of requests failed on purpose. */
  readonly failureRate: number
  readonly failureTypes: ReadonlyArray<FailureType>
}

/** How the router reaches model servers when MODEL_BACKEND=upstream. */
export interface UpstreamSettings {
  readonly targets: ReadonlyArray<UpstreamTarget>
  /** Most requests in flight to one upstream (0 = only MAX_CONCURRENCY bounds it). */
  readonly maxConcurrency: number
  readonly connectTimeoutMs: number
  /** From sending the request to the upstream's response headers. */
  readonly firstByteTimeoutMs: number
  /** Longest silence between two chunks of an upstream's body. */
  readonly idleTimeoutMs: number
  /** Active checks (`GET /health`) every this often; 0 = none (every upstream counts as healthy). */
  readonly healthIntervalMs: number
  readonly healthTimeoutMs: number
  /** Consecutive failures (connect failures, 5xx, timeouts) that eject an upstream. */
  readonly ejectAfter: number
  /** The first ejection's length; each further one is longer, up to 10 times this. */
  readonly ejectBaseMs: number
  /** At most this share of the upstreams is ejected at once (at least one may be). */
  readonly maxEjectedPercent: number
  /** Further attempts after a connect failure or a 429/503 before any byte, per request. */
  readonly retries: number
  /** Retries in flight may be this share of the requests in flight... */
  readonly retryBudgetPercent: number
  /** ...or this many, whichever is more. */
  readonly retryBudgetMin: number
  /** How often `dns+` names are resolved again. */
  readonly dnsRefreshMs: number
}

export type ModelBackend = "simulated" | "upstream"

export interface RouterSettings {
  readonly modelRef: string
  /** True when MODEL_REF was not set and `modelRef` is the demo default. */
  readonly modelRefDefaulted: boolean
  readonly maxConcurrency: number
  readonly maxQueue: number
  readonly queueTimeoutMs: number
  readonly overloadStatus: 429 | 503
  readonly kvEndpoints: ReadonlyArray<KvEndpoint>
  readonly backend: ModelBackend
  /** Set exactly when `backend` is "upstream". */
  readonly upstream: UpstreamSettings | undefined
  readonly simLatencyMs: number
  /** The simulated model's token-level behaviour (the OpenAI-compatible API). */
  readonly simulation: SimulationSettings
  readonly maxBodyBytes: number
  readonly shutdownDelayMs: number
  readonly shutdownTimeoutMs: number
  readonly headersTimeoutMs: number
  readonly requestTimeoutMs: number
  readonly port: number
  readonly host: string | undefined
  readonly podName: string | undefined
  readonly logLevel: LogLevelName
  readonly logFormat: LogFormat
  /** Bearer tokens accepted on /infer; empty = no authentication. */
  readonly apiKeys: ReadonlyArray<Redacted.Redacted<string>>
}

/** The environment variables the router reads, in documentation order. */
export const settingNames = [
  "MODEL_REF",
  "MAX_CONCURRENCY",
  "MAX_QUEUE",
  "QUEUE_TIMEOUT_MS",
  "OVERLOAD_STATUS",
  "KV_ENDPOINTS",
  "MODEL_BACKEND",
  "UPSTREAMS",
  "UPSTREAM_MAX_CONCURRENCY",
  "UPSTREAM_CONNECT_TIMEOUT_MS",
  "UPSTREAM_FIRST_BYTE_TIMEOUT_MS",
  "UPSTREAM_IDLE_TIMEOUT_MS",
  "UPSTREAM_HEALTH_INTERVAL_MS",
  "UPSTREAM_HEALTH_TIMEOUT_MS",
  "UPSTREAM_EJECT_AFTER",
  "UPSTREAM_EJECT_BASE_MS",
  "UPSTREAM_MAX_EJECTED_PERCENT",
  "UPSTREAM_RETRIES",
  "UPSTREAM_RETRY_BUDGET_PERCENT",
  "UPSTREAM_RETRY_BUDGET_MIN",
  "UPSTREAM_DNS_REFRESH_MS",
  "SIM_LATENCY_MS",
  "SIM_MODE",
  "SIM_SEED",
  "SIM_TTFT_MS",
  "SIM_TTFT_STDDEV_MS",
  "SIM_ITL_MS",
  "SIM_ITL_STDDEV_MS",
  "SIM_LOAD_FACTOR",
  "SIM_MAX_TOKENS",
  "SIM_MAX_MODEL_LEN",
  "SIM_FAILURE_RATE",
  "SIM_FAILURE_TYPES",
  "MAX_BODY_BYTES",
  "SHUTDOWN_DELAY_MS",
  "SHUTDOWN_TIMEOUT_MS",
  "HEADERS_TIMEOUT_MS",
  "REQUEST_TIMEOUT_MS",
  "PORT",
  "HOST",
  "POD_NAME",
  "HOSTNAME",
  "LOG_LEVEL",
  "LOG_FORMAT",
  "API_KEYS",
  "API_KEYS_FILE"
] as const

/**
 * One `KV_ENDPOINTS` item. A URL may carry credentials (`redis://user:pass@…`,
 * `?password=…`): `shown`, the only form that appears in responses and logs,
 * masks them; the full value stays `Redacted` inside the process.
 */
export interface KvEndpoint {
  readonly shown: string
  readonly value: Redacted.Redacted<string>
}

/** `host:port` with a port in 1..65535, or an http(s):// or redis:// URL. */
const hostPort = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):([0-9]{1,5})$/
export const isKvEndpoint = (item: string): boolean => {
  const match = hostPort.exec(item)
  if (match !== null) {
    const port = Number(match[1])
    return port >= 1 && port <= 65535
  }
  if (!/^(https?|redis):\/\//.test(item)) return false
  try {
    const url = new URL(item)
    return url.hostname !== ""
  } catch {
    return false
  }
}

/** The item with a URL's user information and query values masked, as written otherwise. */
export const maskCredentials = (item: string): string =>
  item
    .replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, "$1***@")
    .replace(/([?&][^=&#]*=)[^&#]*/g, "$1***")

export const kvEndpoint = (item: string): KvEndpoint => ({ shown: maskCredentials(item), value: Redacted.make(item) })

const parseKvEndpoints = (variable: string): Effect.Effect<ReadonlyArray<KvEndpoint>, SettingError> =>
  optionalString(variable).pipe(Effect.flatMap((raw) => {
    const items = (raw ?? "").split(",").map((item) => item.trim()).filter((item) => item !== "")
    const bad = items.find((item) => !isKvEndpoint(item))
    return bad === undefined
      ? Effect.succeed(items.map(kvEndpoint))
      : Effect.fail(
        new InvalidSetting({
          variable,
          value: maskCredentials(bad),
          expected: "comma-separated items, each host:port (port 1-65535) or an http(s):// or redis:// URL"
        })
      )
  }))

const splitKeys = (text: string, separator: RegExp) =>
  text.split(separator).map((key) => key.trim()).filter((key) => key !== "")

/**
 * API_KEYS (comma-separated) and API_KEYS_FILE (one key per line, `#` comments)
 * together: several keys at once let clients rotate without downtime. Keys are
 * `Redacted` from here on, so they never reach a log line.
 */
const loadApiKeys: Effect.Effect<ReadonlyArray<Redacted.Redacted<string>>, SettingError> = Effect.gen(function*() {
  const keys = splitKeys((yield* rawSetting("API_KEYS")) ?? "", /,/)
  const file = yield* optionalString("API_KEYS_FILE")
  if (file !== undefined) {
    const text = yield* Effect.try({
      try: () => readFileSync(file, "utf8"),
      catch: (error) =>
        new InvalidSetting({
          variable: "API_KEYS_FILE",
          value: file,
          expected: `a readable file of API keys, one per line (${(error as NodeJS.ErrnoException).code ?? error})`
        })
    })
    const fromFile = splitKeys(text.replace(/#.*$/gm, ""), /\r?\n/)
    if (fromFile.length === 0) {
      return yield* new InvalidSetting({ variable: "API_KEYS_FILE", value: file, expected: "a file with at least one key" })
    }
    keys.push(...fromFile)
  }
  return keys.map((key) => Redacted.make(key, { label: "api-key" }))
})

const ms = (variable: string, fallback: () => number | undefined) =>
  setting(variable, decimalAtLeast(0), "an integer >= 0 (milliseconds)", fallback)

/** A decimal number as people write one: digits, an optional fraction. */
const DecimalNumber = Schema.Trim.pipe(
  Schema.check(Schema.isPattern(/^[0-9]{1,6}(\.[0-9]{1,6})?$/, { expected: "a decimal number" })),
  Schema.decodeTo(Schema.NumberFromString)
)

export const defaultSimulation: SimulationSettings = {
  mode: "random",
  seed: 0,
  ttftMs: undefined,
  ttftStdDevMs: 0,
  itlMs: undefined,
  itlStdDevMs: 0,
  loadFactor: 1,
  maxTokens: 64,
  maxModelLen: 4096,
  failureRate: 0,
  failureTypes
}

const loadSimulation: Effect.Effect<SimulationSettings, SettingError> = Effect.gen(function*() {
  const mode = yield* setting("SIM_MODE", oneOf(["echo", "random"]), "echo or random", () => defaultSimulation.mode)
  const seed = yield* setting("SIM_SEED", decimalBetween(0, 4294967295), "an integer from 0 to 4294967295", () => 0)
  const ttftMs = yield* ms("SIM_TTFT_MS", () => undefined)
  const ttftStdDevMs = (yield* ms("SIM_TTFT_STDDEV_MS", () => 0)) ?? 0
  const itlMs = yield* ms("SIM_ITL_MS", () => undefined)
  const itlStdDevMs = (yield* ms("SIM_ITL_STDDEV_MS", () => 0)) ?? 0
  const loadFactor = yield* setting(
    "SIM_LOAD_FACTOR",
    DecimalNumber.check(Schema.isBetween({ minimum: 1, maximum: 1000 })),
    "a number from 1 to 1000",
    () => 1
  )
  const maxModelLen = yield* setting("SIM_MAX_MODEL_LEN", decimalBetween(1, 10_000_000), "an integer from 1 to 10000000 (tokens)", () => 4096)
  const maxTokens = yield* setting(
    "SIM_MAX_TOKENS",
    decimalBetween(1, maxModelLen),
    `an integer from 1 to SIM_MAX_MODEL_LEN (${maxModelLen}) (tokens)`,
    () => Math.min(64, maxModelLen)
  )
  const failureRate = yield* setting("SIM_FAILURE_RATE", decimalBetween(0, 100), "an integer from 0 to 100 (percent)", () => 0)
  const typesRaw = yield* optionalString("SIM_FAILURE_TYPES")
  const types = typesRaw === undefined ? [...failureTypes] : typesRaw.split(",").map((t) => t.trim()).filter((t) => t !== "")
  const unknown = types.find((t) => !(failureTypes as ReadonlyArray<string>).includes(t))
  if (unknown !== undefined || types.length === 0) {
    return yield* new InvalidSetting({
      variable: "SIM_FAILURE_TYPES",
      value: typesRaw ?? "",
      expected: `comma-separated, each one of ${failureTypes.join(", ")}`
    })
  }
  return {
    mode,
    seed,
    ttftMs,
    ttftStdDevMs,
    itlMs,
    itlStdDevMs,
    loadFactor,
    maxTokens,
    maxModelLen,
    failureRate,
    failureTypes: types as Array<FailureType>
  }
})

export const defaultUpstream: Omit<UpstreamSettings, "targets"> = {
  maxConcurrency: 0,
  connectTimeoutMs: 2_000,
  firstByteTimeoutMs: 60_000,
  idleTimeoutMs: 30_000,
  healthIntervalMs: 5_000,
  healthTimeoutMs: 2_000,
  ejectAfter: 5,
  ejectBaseMs: 30_000,
  maxEjectedPercent: 50,
  retries: 2,
  retryBudgetPercent: 20,
  retryBudgetMin: 3,
  dnsRefreshMs: 5_000
}

const positiveMs = (variable: string, fallback: number) =>
  setting(variable, decimalAtLeast(1), "an integer >= 1 (milliseconds)", () => fallback)

/** MODEL_BACKEND and, for `upstream`, UPSTREAMS and the UPSTREAM_* settings. */
const loadBackend: Effect.Effect<{ backend: ModelBackend; upstream: UpstreamSettings | undefined }, SettingError> = Effect.gen(function*() {
  const backend = yield* setting("MODEL_BACKEND", oneOf(["simulated", "upstream"]), "simulated or upstream", () => "simulated" as const)
  const raw = yield* optionalString("UPSTREAMS")
  if (backend === "simulated") {
    if (raw !== undefined) {
      return yield* new InvalidSetting({ variable: "MODEL_BACKEND", value: "simulated", expected: "upstream when UPSTREAMS is set (or unset UPSTREAMS)" })
    }
    return { backend, upstream: undefined }
  }
  if (raw === undefined) return yield* new InvalidSetting({ variable: "UPSTREAMS", value: "", expected: `${upstreamsExpected} (required when MODEL_BACKEND=upstream)` })
  const parsed = parseTargets(raw)
  if ("bad" in parsed) return yield* new InvalidSetting({ variable: "UPSTREAMS", value: parsed.bad, expected: `${upstreamsExpected}; ${parsed.reason}` })
  if (parsed.targets.length === 0) return yield* new InvalidSetting({ variable: "UPSTREAMS", value: raw, expected: upstreamsExpected })
  const d = defaultUpstream
  const maxConcurrency = yield* setting("UPSTREAM_MAX_CONCURRENCY", decimalAtLeast(0), "an integer >= 0 (0: no cap per upstream)", () => d.maxConcurrency)
  const connectTimeoutMs = yield* positiveMs("UPSTREAM_CONNECT_TIMEOUT_MS", d.connectTimeoutMs)
  const firstByteTimeoutMs = yield* positiveMs("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", d.firstByteTimeoutMs)
  const idleTimeoutMs = yield* positiveMs("UPSTREAM_IDLE_TIMEOUT_MS", d.idleTimeoutMs)
  const healthIntervalMs = (yield* ms("UPSTREAM_HEALTH_INTERVAL_MS", () => d.healthIntervalMs)) ?? d.healthIntervalMs
  const healthTimeoutMs = yield* positiveMs("UPSTREAM_HEALTH_TIMEOUT_MS", d.healthTimeoutMs)
  const ejectAfter = yield* setting("UPSTREAM_EJECT_AFTER", decimalBetween(1, 1000), "an integer from 1 to 1000 (consecutive failures)", () => d.ejectAfter)
  const ejectBaseMs = yield* positiveMs("UPSTREAM_EJECT_BASE_MS", d.ejectBaseMs)
  const maxEjectedPercent = yield* setting("UPSTREAM_MAX_EJECTED_PERCENT", decimalBetween(0, 100), "an integer from 0 to 100 (percent)", () => d.maxEjectedPercent)
  const retries = yield* setting("UPSTREAM_RETRIES", decimalBetween(0, 10), "an integer from 0 to 10", () => d.retries)
  const retryBudgetPercent = yield* setting("UPSTREAM_RETRY_BUDGET_PERCENT", decimalBetween(0, 100), "an integer from 0 to 100 (percent)", () => d.retryBudgetPercent)
  const retryBudgetMin = yield* setting("UPSTREAM_RETRY_BUDGET_MIN", decimalAtLeast(0), "an integer >= 0 (retries in flight)", () => d.retryBudgetMin)
  const dnsRefreshMs = yield* positiveMs("UPSTREAM_DNS_REFRESH_MS", d.dnsRefreshMs)
  return {
    backend,
    upstream: {
      targets: parsed.targets,
      maxConcurrency,
      connectTimeoutMs,
      firstByteTimeoutMs,
      idleTimeoutMs,
      healthIntervalMs,
      healthTimeoutMs,
      ejectAfter,
      ejectBaseMs,
      maxEjectedPercent,
      retries,
      retryBudgetPercent,
      retryBudgetMin,
      dnsRefreshMs
    }
  }
})

export const loadSettings: Effect.Effect<RouterSettings, SettingError> = Effect.gen(function*() {
  const modelRefRaw = yield* optionalString("MODEL_REF")
  const maxConcurrency = yield* setting("MAX_CONCURRENCY", decimalAtLeast(1), "an integer >= 1", () => 10)
  const maxQueue = yield* setting("MAX_QUEUE", decimalAtLeast(0), "an integer >= 0", () => 10 * maxConcurrency)
  const queueTimeoutMs = yield* setting("QUEUE_TIMEOUT_MS", decimalAtLeast(1), "an integer >= 1 (milliseconds)", () => 30_000)
  const overloadStatus = yield* setting(
    "OVERLOAD_STATUS",
    DecimalInt.pipe(Schema.decodeTo(Schema.Literals([429, 503]))),
    "429 or 503",
    () => 429 as const
  )
  const kvEndpoints = yield* parseKvEndpoints("KV_ENDPOINTS")
  const { backend, upstream } = yield* loadBackend
  const simLatencyMs = yield* setting("SIM_LATENCY_MS", decimalAtLeast(0), "an integer >= 0 (milliseconds)", () => 100)
  const simulation = yield* loadSimulation
  const maxBodyBytes = yield* setting("MAX_BODY_BYTES", decimalAtLeast(1), "an integer >= 1 (bytes)", () => 1024 * 1024)
  const shutdownDelayMs = yield* setting("SHUTDOWN_DELAY_MS", decimalAtLeast(0), "an integer >= 0 (milliseconds)", () => 0)
  const shutdownTimeoutMs = yield* setting(
    "SHUTDOWN_TIMEOUT_MS",
    decimalAtLeast(1),
    "an integer >= 1 (milliseconds)",
    () => 25_000
  )
  if (shutdownDelayMs >= shutdownTimeoutMs) {
    return yield* new InvalidSetting({
      variable: "SHUTDOWN_DELAY_MS",
      value: String(shutdownDelayMs),
      expected: `less than SHUTDOWN_TIMEOUT_MS (${shutdownTimeoutMs}), which bounds the whole drain`
    })
  }
  const requestTimeoutMs = yield* setting(
    "REQUEST_TIMEOUT_MS",
    decimalAtLeast(1),
    "an integer >= 1 (milliseconds)",
    () => 30_000
  )
  const headersTimeoutMs = yield* setting(
    "HEADERS_TIMEOUT_MS",
    decimalBetween(1, requestTimeoutMs),
    `an integer from 1 to REQUEST_TIMEOUT_MS (${requestTimeoutMs}) (milliseconds)`,
    () => Math.min(10_000, requestTimeoutMs)
  )
  const port = yield* setting("PORT", decimalBetween(1, 65535), "a port number 1-65535", () => 8080)
  const host = yield* optionalString("HOST")
  const podName = (yield* optionalString("POD_NAME")) ?? (yield* optionalString("HOSTNAME"))
  const logLevel = yield* logLevelSetting
  const logFormat = yield* logFormatSetting
  const apiKeys = yield* loadApiKeys
  return {
    modelRef: modelRefRaw ?? "demo-model",
    modelRefDefaulted: modelRefRaw === undefined,
    maxConcurrency,
    maxQueue,
    queueTimeoutMs,
    overloadStatus,
    kvEndpoints,
    backend,
    upstream,
    simLatencyMs,
    simulation,
    maxBodyBytes,
    shutdownDelayMs,
    shutdownTimeoutMs,
    headersTimeoutMs,
    requestTimeoutMs,
    port,
    host,
    podName,
    logLevel,
    logFormat,
    apiKeys
  }
})

export class RouterConfig extends Context.Service<RouterConfig, RouterSettings>()("inference-router/RouterConfig") {
  /** Reads the settings from the current `ConfigProvider` (the environment by default). */
  static readonly layer: Layer.Layer<RouterConfig, SettingError> = Layer.effect(RouterConfig, loadSettings)

  /** Fixed settings for tests: defaults overridden by `overrides`. */
  static readonly layerWith = (overrides: Partial<RouterSettings> = {}): Layer.Layer<RouterConfig> =>
    Layer.succeed(RouterConfig, {
      modelRef: "test-model",
      modelRefDefaulted: false,
      maxConcurrency: 2,
      maxQueue: 20,
      queueTimeoutMs: 30_000,
      overloadStatus: 429,
      kvEndpoints: [],
      backend: "simulated",
      upstream: undefined,
      simLatencyMs: 100,
      simulation: defaultSimulation,
      maxBodyBytes: 1024 * 1024,
      shutdownDelayMs: 0,
      shutdownTimeoutMs: 25_000,
      headersTimeoutMs: 10_000,
      requestTimeoutMs: 30_000,
      port: 8080,
      host: undefined,
      podName: undefined,
      logLevel: "info",
      logFormat: "json",
      apiKeys: [],
      ...overrides
    })
}
