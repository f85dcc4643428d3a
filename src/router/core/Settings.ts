/**
 * The router's settings contract: every variable's name and documentation
 * (docs/settings.md is generated from `settingDocs`; a test fails on drift),
 * one defaults object, and the parser. No layer, no I/O beyond reading the
 * environment through Effect's `Config` (so tests swap the `ConfigProvider`)
 * and API_KEYS_FILE: the controller validates specs with the same parser.
 *
 * An invalid value fails with `InvalidSetting`, whose message is the one line
 * an operator sees: the variable, the value and what is expected.
 */
import { Effect, Redacted, Schema } from "effect"
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
import { maskCredentials, maskValue } from "../../shared/Credentials.ts"
import { parseTargets, type UpstreamTarget, upstreamsExpected } from "../upstream/Targets.ts"
import { defaultRouting, LoadBound, type RoutingSettings, routingSettingDocs, schedulerNames, SharedScope } from "../routing/RoutingSettings.ts"

export { InvalidSetting, maskCredentials }

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
  /** Step length multiplier reached when every running slot is busy (1 = load has no effect). */
  readonly loadFactor: number
  /** Tokens per KV-cache block (vLLM's block_size). */
  readonly blockSize: number
  /** KV-cache blocks (vLLM's num_gpu_blocks). */
  readonly kvBlocks: number
  /** Most tokens one step computes (vLLM's max_num_batched_tokens: chunked prefill). */
  readonly maxBatchedTokens: number
  /** Microseconds a step lasts longer per prompt token it prefills (0: prefill costs nothing). */
  readonly prefillUsPerToken: number
  /** ZeroMQ endpoint the KV events are published on (`tcp://*:5557` binds); unset: none. */
  readonly kvEventsEndpoint: string | undefined
  /** The events' ZeroMQ topic; unset: `kv@<pod>@<model>`, as llm-d's subscribers parse it. */
  readonly kvEventsTopic: string | undefined
  /** The events' msgpack layout: vLLM 0.26's named fields (`map`), or the positional arrays of older versions. */
  readonly kvEventsFormat: "map" | "array" | "array-legacy"
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
  /** Below this share of upstreams in rotation, ejections are ignored (Envoy's panic threshold; 0: never). */
  readonly panicThresholdPercent: number
  /** Most bytes of a non-streamed upstream answer the router buffers. */
  readonly maxBodyBytes: number
  /** Most bytes of one SSE event of an upstream's stream. */
  readonly maxEventBytes: number
  /** From forwarding a request to the end of the upstream's answer, retries included. */
  readonly requestTimeoutMs: number
  /** UPSTREAM_SCHEDULER and the cache-aware scheduler's settings (docs/routing.md). */
  readonly routing: RoutingSettings
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
  /** A client that takes none of its answer this long (its socket full) is cut off; 0: never. */
  readonly clientStallTimeoutMs: number
  readonly port: number
  readonly host: string | undefined
  /** Listening sockets sharing `port` (SO_REUSEPORT): edge/NodeServer.ts says why. */
  readonly listenSockets: number
  readonly podName: string | undefined
  readonly logLevel: LogLevelName
  readonly logFormat: LogFormat
  /** Bearer tokens accepted on /infer, /v1/* and the simulator's routes; empty = no authentication. */
  readonly apiKeys: ReadonlyArray<Redacted.Redacted<string>>
}


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
    if (url.hostname === "") return false
    // What the Redis client parses at start-up: percent-escapes in the credentials, a database number as the path.
    decodeURIComponent(url.username)
    decodeURIComponent(url.password)
    if (url.port === "0") return false
    return url.protocol !== "redis:" || /^\/?(\d{1,9})?$/.test(url.pathname)
  } catch {
    return false
  }
}

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
          // The item alone when nothing in the value can be a secret; else the whole value, masked: a
          // secret with a `,` in it is split into items, any of them a piece of it.
          value: /[@?#]/.test(raw ?? "") ? maskValue(raw ?? "") : bad,
          expected: "comma-separated items, each host:port (port 1-65535) or an http(s):// or redis:// URL"
        })
      )
  }))

const splitKeys = (text: string, separator: RegExp) =>
  text.split(separator).map((key) => key.trim()).filter((key) => key !== "")

/**
 * A client sends a key as `Authorization: Bearer <key>`: one with a blank or a control character in
 * it could never be presented, so it is refused at start-up rather than never matching. The key
 * itself is not shown, only its place.
 */
const unusableKey = (variable: string, keys: ReadonlyArray<string>): InvalidSetting | undefined => {
  const index = keys.findIndex((key) => !/^[\x21-\x7e]+$/.test(key))
  return index === -1 ? undefined : new InvalidSetting({
    variable,
    value: `<key ${index + 1} not shown>`,
    expected: "keys of visible ASCII characters, without blanks (a client sends one as Authorization: Bearer <key>)"
  })
}

/**
 * API_KEYS (comma-separated) and API_KEYS_FILE (one key per line, `#` comment lines)
 * together: several keys at once let clients rotate without downtime. Keys are
 * `Redacted` from here on, so they never reach a log line.
 */
const loadApiKeys: Effect.Effect<ReadonlyArray<Redacted.Redacted<string>>, SettingError> = Effect.gen(function*() {
  const keys = splitKeys((yield* rawSetting("API_KEYS")) ?? "", /,/)
  const unusable = unusableKey("API_KEYS", keys)
  if (unusable !== undefined) return yield* unusable
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
    // A comment is a line that starts with `#`, or a `#` after a blank (keys have none): a `#` inside a
    // key is part of it (cutting the key there made its prefix a key).
    const fromFile = splitKeys(
      text.split(/\r?\n/).filter((line) => !line.trimStart().startsWith("#")).map((line) => line.replace(/\s+#.*$/, "")).join("\n"),
      /\n/
    )
    if (fromFile.length === 0) {
      return yield* new InvalidSetting({ variable: "API_KEYS_FILE", value: file, expected: "a file with at least one key" })
    }
    const unusableInFile = unusableKey("API_KEYS_FILE", fromFile)
    if (unusableInFile !== undefined) return yield* unusableInFile
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
  blockSize: 16,
  kvBlocks: 32_768,
  maxBatchedTokens: 2048,
  prefillUsPerToken: 0,
  kvEventsEndpoint: undefined,
  kvEventsTopic: undefined,
  kvEventsFormat: "map",
  maxTokens: 64,
  maxModelLen: 4096,
  failureRate: 0,
  failureTypes
}

const loadSimulation: Effect.Effect<SimulationSettings, SettingError> = Effect.gen(function*() {
  const mode = yield* setting("SIM_MODE", oneOf(["echo", "random"]), "echo or random", () => defaultSimulation.mode)
  const seed = yield* setting("SIM_SEED", decimalBetween(0, 4294967295), "an integer from 0 to 4294967295", () => defaultSimulation.seed)
  const ttftMs = yield* ms("SIM_TTFT_MS", () => undefined)
  const ttftStdDevMs = (yield* ms("SIM_TTFT_STDDEV_MS", () => defaultSimulation.ttftStdDevMs)) ?? 0
  const itlMs = yield* ms("SIM_ITL_MS", () => undefined)
  const itlStdDevMs = (yield* ms("SIM_ITL_STDDEV_MS", () => defaultSimulation.itlStdDevMs)) ?? 0
  const loadFactor = yield* setting(
    "SIM_LOAD_FACTOR",
    DecimalNumber.check(Schema.isBetween({ minimum: 1, maximum: 1000 })),
    "a number from 1 to 1000",
    () => defaultSimulation.loadFactor
  )
  const blockSize = yield* setting("SIM_BLOCK_SIZE", decimalBetween(1, 1024), "an integer from 1 to 1024 (tokens)", () => defaultSimulation.blockSize)
  const kvBlocks = yield* setting("SIM_KV_BLOCKS", decimalBetween(1, 10_000_000), "an integer from 1 to 10000000 (blocks)", () => defaultSimulation.kvBlocks)
  const maxBatchedTokens = yield* setting(
    "SIM_MAX_BATCHED_TOKENS",
    decimalBetween(1, 10_000_000),
    "an integer from 1 to 10000000 (tokens)",
    () => defaultSimulation.maxBatchedTokens
  )
  const prefillUsPerToken = yield* setting(
    "SIM_PREFILL_US_PER_TOKEN",
    DecimalNumber.check(Schema.isBetween({ minimum: 0, maximum: 100_000 })),
    "a number from 0 to 100000 (microseconds)",
    () => defaultSimulation.prefillUsPerToken
  )
  const kvEventsEndpoint = yield* optionalString("SIM_KV_EVENTS_ENDPOINT")
  if (kvEventsEndpoint !== undefined && !/^(tcp|ipc|inproc):\/\/\S+$/.test(kvEventsEndpoint)) {
    return yield* new InvalidSetting({
      variable: "SIM_KV_EVENTS_ENDPOINT",
      value: kvEventsEndpoint,
      expected: "a ZeroMQ endpoint: tcp://*:5557 (bind), tcp://host:port (connect), ipc://path"
    })
  }
  // libzmq takes a port past 65535 modulo 65536 instead of refusing it.
  const kvEventsPort = kvEventsEndpoint?.startsWith("tcp://") ? /:([^:\]]*)$/.exec(kvEventsEndpoint)?.[1] : undefined
  if (kvEventsPort !== undefined && kvEventsPort !== "*" && !(/^[0-9]{1,5}$/.test(kvEventsPort) && Number(kvEventsPort) >= 1 && Number(kvEventsPort) <= 65535)) {
    return yield* new InvalidSetting({
      variable: "SIM_KV_EVENTS_ENDPOINT",
      value: kvEventsEndpoint!,
      expected: "a tcp:// endpoint whose port is * or 1 to 65535"
    })
  }
  const kvEventsTopic = yield* optionalString("SIM_KV_EVENTS_TOPIC")
  const kvEventsFormat = yield* setting(
    "SIM_KV_EVENTS_FORMAT",
    oneOf(["map", "array", "array-legacy"]),
    "map (vLLM 0.26 on), array (positional with lora_name, vLLM before 0.26) or array-legacy (positional, 7 fields, before lora_name)",
    () => defaultSimulation.kvEventsFormat
  )
  const maxModelLen = yield* setting("SIM_MAX_MODEL_LEN", decimalBetween(1, 10_000_000), "an integer from 1 to 10000000 (tokens)", () => defaultSimulation.maxModelLen)
  const maxTokens = yield* setting(
    "SIM_MAX_TOKENS",
    decimalBetween(1, maxModelLen),
    `an integer from 1 to SIM_MAX_MODEL_LEN (${maxModelLen}) (tokens)`,
    () => Math.min(defaultSimulation.maxTokens, maxModelLen)
  )
  const failureRate = yield* setting("SIM_FAILURE_RATE", decimalBetween(0, 100), "an integer from 0 to 100 (percent)", () => defaultSimulation.failureRate)
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
    blockSize,
    kvBlocks,
    maxBatchedTokens,
    prefillUsPerToken,
    kvEventsEndpoint,
    kvEventsTopic,
    kvEventsFormat,
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
  dnsRefreshMs: 5_000,
  panicThresholdPercent: 50,
  maxBodyBytes: 16 * 1024 * 1024,
  maxEventBytes: 1024 * 1024,
  requestTimeoutMs: 600_000,
  routing: defaultRouting
}

/** The router's defaults: the one place each is written (the parser and docs/settings.md read them here). */
export const defaults = {
  modelRef: "demo-model",
  maxConcurrency: 10,
  /** MAX_QUEUE's default is this many per slot. */
  queuePerSlot: 10,
  queueTimeoutMs: 30_000,
  overloadStatus: 429 as const,
  backend: "simulated" as const,
  simLatencyMs: 100,
  maxBodyBytes: 1024 * 1024,
  shutdownDelayMs: 0,
  shutdownTimeoutMs: 25_000,
  requestTimeoutMs: 30_000,
  clientStallTimeoutMs: 60_000,
  /** Capped at REQUEST_TIMEOUT_MS. */
  headersTimeoutMs: 10_000,
  port: 8080,
  /** LISTEN_SOCKETS on Linux; elsewhere 1 (macOS does not spread connections over SO_REUSEPORT sockets; other systems untried). */
  listenSockets: 16,
  logLevel: "info" as const,
  logFormat: "json" as const
}

/** One row of docs/settings.md. */
export interface SettingDoc {
  readonly variable: string
  readonly meaning: string
  /** Markdown; "—" when unset means absent. */
  readonly default: string
  readonly valid: string
}

const code = (value: unknown) => `\`${value}\``

/**
 * Every environment variable the router reads, in documentation order: the
 * source of docs/settings.md's table (`settingsTableMarkdown`) and of
 * `settingNames`, which the controller decides a value for one by one.
 */
export const settingDocs: ReadonlyArray<SettingDoc> = [
  { variable: "MODEL_REF", meaning: "logical model name served", default: `${code(defaults.modelRef)} (logs a warning)`, valid: "any" },
  { variable: "MAX_CONCURRENCY", meaning: "most requests in the model at once (`/infer` and `/v1/*` share the slots)", default: code(defaults.maxConcurrency), valid: "integer ≥ 1" },
  { variable: "MAX_QUEUE", meaning: "most requests waiting for a slot; `0` = answer at once when all slots are busy", default: `${code(`${defaults.queuePerSlot} × MAX_CONCURRENCY`)}`, valid: "integer ≥ 0" },
  { variable: "QUEUE_TIMEOUT_MS", meaning: "longest a request may wait for a slot (a client's `x-queue-timeout-ms` may lower it)", default: code(defaults.queueTimeoutMs), valid: "integer ≥ 1" },
  { variable: "OVERLOAD_STATUS", meaning: "status for shed requests: `503` suits meshes that retry on 5xx", default: code(defaults.overloadStatus), valid: "`429` or `503`" },
  { variable: "KV_ENDPOINTS", meaning: "comma-separated KV store nodes; items trimmed, empty items dropped. A URL's credentials (`redis://user:pass@…`: everything up to its last `@`, so a password with an unencoded `/`, `?`, `#` or `@` stays hidden; query values) are masked (`redis://***@…`, `?token=***`) in `/infer` answers, logs and error lines (an invalid item of a value with an `@`, `?` or `#` is shown as the whole value, masked from its first scheme to its last `@`: a secret with a `,` splits into items). The value is split at every `,`: write one inside a password or query value as `%2C`; the full value stays inside the process. A token in a URL's path is not masked. `redis://` items hold the routing state router replicas share with `UPSTREAM_SCHEDULER=cache-aware` (docs/routing.md); other items are not used by it", default: "none (`[]`)", valid: "each `host:port` (port 1–65535) or an `http://`, `https://` or `redis://` URL (a `redis://` path is a database number; percent-escapes in credentials must decode)" },
  { variable: "MODEL_BACKEND", meaning: "`simulated`: the built-in simulation; `upstream`: forward to the model servers in `UPSTREAMS`", default: code(defaults.backend), valid: "`simulated`, `upstream`" },
  { variable: "UPSTREAMS", meaning: "the model servers (only with `MODEL_BACKEND=upstream`, and required then): comma-separated base URLs, each optionally followed by `;weight=<1-1000>`, `;version=<label>` and `;kv-events=<port or tcp://host:port>` (its KV events, for `UPSTREAM_SCHEDULER=cache-aware`: [routing.md](routing.md)); `dns+http://name:port` uses every address the name resolves to (a headless Service), re-resolved every `UPSTREAM_DNS_REFRESH_MS`, the item's weight split among them. A base URL's path prefixes every request; a trailing `/v1` is the OpenAI-style base URL and means the root. A URL's credentials (user information, query values) are masked wherever it is shown; a token in its path is not, and each upstream's `host:port` reaches clients in `x-inference-upstream`", default: "—", valid: "e.g. `http://vllm-a:8000;weight=90;version=v1,http://vllm-b:8000;weight=10;version=v2`" },
  { variable: "UPSTREAM_MAX_CONCURRENCY", meaning: "most requests in flight to one upstream (`MAX_CONCURRENCY` bounds the total first; keep it ≤ the sum of the caps, or the excess gets 503 `upstreams_saturated`)", default: `${code(defaultUpstream.maxConcurrency)} (no cap of its own)`, valid: "integer ≥ 0" },
  { variable: "UPSTREAM_CONNECT_TIMEOUT_MS", meaning: "connecting to an upstream", default: code(defaultUpstream.connectTimeoutMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_FIRST_BYTE_TIMEOUT_MS", meaning: "from sending a request to the upstream's response headers (also bounds retries)", default: code(defaultUpstream.firstByteTimeoutMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_IDLE_TIMEOUT_MS", meaning: "longest silence between two chunks of an upstream's body", default: code(defaultUpstream.idleTimeoutMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_HEALTH_INTERVAL_MS", meaning: "active checks: `GET <base>/health` (vLLM's) this often; `0` = no checks (every upstream counts as healthy). Until its first check passes an upstream takes no requests", default: code(defaultUpstream.healthIntervalMs), valid: "integer ≥ 0" },
  { variable: "UPSTREAM_HEALTH_TIMEOUT_MS", meaning: "a check passes on a 2xx within this", default: code(defaultUpstream.healthTimeoutMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_EJECT_AFTER", meaning: "passive ejection: this many consecutive failures (5xx, timeouts, broken bodies) take an upstream out; a refused connection takes it out at once, until a check passes (docs/upstreams.md)", default: code(defaultUpstream.ejectAfter), valid: "1–1000" },
  { variable: "UPSTREAM_EJECT_BASE_MS", meaning: "an ejection lasts this × the upstream's ejection count (at most 10×)", default: code(defaultUpstream.ejectBaseMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_MAX_EJECTED_PERCENT", meaning: "never more than this share of the pool ejected at once (at least one of two or more)", default: code(defaultUpstream.maxEjectedPercent), valid: "0–100" },
  { variable: "UPSTREAM_RETRIES", meaning: "further attempts, each on another upstream, after a 429/503 before any byte, or (at most one, outside the budget) after a connection broke once the whole request was written (the model may have it); never after a byte reached the client; a request that never reached a model server is retried besides, without the budget (docs/upstreams.md)", default: code(defaultUpstream.retries), valid: "0–10" },
  { variable: "UPSTREAM_RETRY_BUDGET_PERCENT", meaning: "retries of 429/503 in flight may be this share of the requests in flight, or `UPSTREAM_RETRY_BUDGET_MIN`, whichever is more (Envoy's retry budget); the one resend after a crash takes no place in it", default: code(defaultUpstream.retryBudgetPercent), valid: "0–100" },
  { variable: "UPSTREAM_RETRY_BUDGET_MIN", meaning: "retries in flight always allowed, whatever the share", default: code(defaultUpstream.retryBudgetMin), valid: "integer ≥ 0" },
  { variable: "UPSTREAM_DNS_REFRESH_MS", meaning: "how often `dns+` names are resolved again (a failed lookup keeps the addresses it had)", default: code(defaultUpstream.dnsRefreshMs), valid: "integer ≥ 1" },
  { variable: "UPSTREAM_PANIC_THRESHOLD_PERCENT", meaning: "when fewer than this share of the upstreams are in rotation, ejections are ignored and every healthy upstream is a candidate (Envoy's panic threshold); `0` = never", default: code(defaultUpstream.panicThresholdPercent), valid: "0–100" },
  { variable: "UPSTREAM_MAX_BODY_BYTES", meaning: "most bytes of a non-streamed upstream answer the router buffers; a longer one is answered 502 `upstream_body_too_large` and logged", default: code(defaultUpstream.maxBodyBytes), valid: "integer ≥ 1024" },
  { variable: "UPSTREAM_MAX_EVENT_BYTES", meaning: "most bytes of one SSE event of an upstream's stream; a longer one ends the stream with an error frame (`upstream_event_too_large`) and `[DONE]`", default: code(defaultUpstream.maxEventBytes), valid: "integer ≥ 1024" },
  { variable: "UPSTREAM_REQUEST_TIMEOUT_MS", meaning: "a forwarded request's whole time, from forwarding to the end of the answer, retries included; past it: 504 `upstream_timeout` (or an error frame and `[DONE]` on a started stream)", default: code(defaultUpstream.requestTimeoutMs), valid: "integer ≥ 1" },
  ...routingSettingDocs,
  { variable: "SIM_LATENCY_MS", meaning: "simulated model time per `/infer` request (and the time to first token on `/v1/*` when `SIM_TTFT_MS` is unset)", default: code(defaults.simLatencyMs), valid: "integer ≥ 0" },
  { variable: "SIM_MODE", meaning: "the simulated model's text: `random` (seeded words) or `echo` (the prompt / last user message)", default: code(defaultSimulation.mode), valid: "`random`, `echo`" },
  { variable: "SIM_SEED", meaning: "mixed into every request's seed (a request's `seed`, else a hash of its prompt): the same request gives the same text", default: code(defaultSimulation.seed), valid: "0 – 4294967295" },
  { variable: "SIM_TTFT_MS", meaning: "time to first token of a request alone on the engine with its prefill free (the step that prefills it included; [simulator.md](simulator.md) has the formula with prefill)", default: "`SIM_LATENCY_MS`", valid: "integer ≥ 0" },
  { variable: "SIM_TTFT_STDDEV_MS", meaning: "its standard deviation (normal, clipped at 0)", default: code(defaultSimulation.ttftStdDevMs), valid: "integer ≥ 0" },
  { variable: "SIM_ITL_MS", meaning: "inter-token latency: an engine step's fixed length (prefill adds to it). Setting `SIM_TTFT_MS` or `SIM_ITL_MS` makes `/infer` a whole generation too (`processingMs` = its time)", default: "`0`", valid: "integer ≥ 0" },
  { variable: "SIM_ITL_STDDEV_MS", meaning: "its standard deviation (normal, clipped at 0)", default: code(defaultSimulation.itlStdDevMs), valid: "integer ≥ 0" },
  { variable: "SIM_LOAD_FACTOR", meaning: "step length multiplier reached when every other running slot is busy (linear in between; 1 = load has no effect): the batch slowing its own decode steps, beside what prefill costs them", default: code(defaultSimulation.loadFactor), valid: "number 1 – 1000" },
  { variable: "SIM_BLOCK_SIZE", meaning: "tokens per KV-cache block (vLLM's `block_size`); full blocks are keyed by a hash chained from the model's name", default: code(defaultSimulation.blockSize), valid: "1 – 1024" },
  { variable: "SIM_KV_BLOCKS", meaning: "KV-cache blocks (vLLM's `num_gpu_blocks`): a request waits until its blocks fit; a prompt longer than the whole cache is a 400", default: code(defaultSimulation.kvBlocks), valid: "1 – 10000000" },
  { variable: "SIM_MAX_BATCHED_TOKENS", meaning: "most tokens one engine step computes (vLLM's `max_num_batched_tokens`): longer prompts are prefilled in chunks over several steps", default: code(defaultSimulation.maxBatchedTokens), valid: "1 – 10000000" },
  { variable: "SIM_PREFILL_US_PER_TOKEN", meaning: "microseconds a step lasts longer per uncached prompt token it prefills (0: prefill is free, timings as before the prefix cache)", default: code(defaultSimulation.prefillUsPerToken), valid: "number 0 – 100000" },
  { variable: "SIM_KV_EVENTS_ENDPOINT", meaning: "publish vLLM's KV events (BlockStored, BlockRemoved, AllBlocksCleared) over ZeroMQ PUB here; `*` in the host binds, else connects", default: "— (none)", valid: "`tcp://…`, `ipc://…`" },
  { variable: "SIM_KV_EVENTS_TOPIC", meaning: "the KV events' ZeroMQ topic", default: "`kv@<POD_NAME>@<MODEL_REF>` (llm-d's format)", valid: "any" },
  { variable: "SIM_KV_EVENTS_FORMAT", meaning: "the KV events' msgpack layout: vLLM 0.26's named fields, or the positional arrays of earlier vLLM, with `lora_name` (`array`) or before it was added (`array-legacy`) (docs/simulator.md)", default: "`map`", valid: "`map`, `array`, `array-legacy`" },
  { variable: "SIM_MAX_TOKENS", meaning: "most tokens generated when the request sets no `max_tokens` (and never more than the prompt leaves of `SIM_MAX_MODEL_LEN`)", default: code(defaultSimulation.maxTokens), valid: "1 – `SIM_MAX_MODEL_LEN`" },
  { variable: "SIM_MAX_MODEL_LEN", meaning: "context length: prompt tokens + `max_tokens` above it (without `max_tokens`, a prompt that leaves no token) is a 400 `context_length_exceeded`; `/v1/models` reports it as `max_model_len`", default: code(defaultSimulation.maxModelLen), valid: "1 – 10000000" },
  { variable: "SIM_FAILURE_RATE", meaning: "percent of `/v1/*` requests failed on purpose (for testing clients' retry paths)", default: code(defaultSimulation.failureRate), valid: "0 – 100" },
  { variable: "SIM_FAILURE_TYPES", meaning: "which failures: `rate_limit` (429), `invalid_api_key` (401), `context_length` (400), `invalid_request` (400), `model_not_found` (404), `server_error` (500)", default: "all", valid: "comma-separated, of those" },
  { variable: "MAX_BODY_BYTES", meaning: "largest request body, enforced while reading", default: `${code(defaults.maxBodyBytes)} (1 MiB)`, valid: "integer ≥ 1" },
  { variable: "SHUTDOWN_DELAY_MS", meaning: "after SIGTERM, keep serving this long (readiness already 503) so endpoints stop routing here", default: code(defaults.shutdownDelayMs), valid: "integer ≥ 0, < `SHUTDOWN_TIMEOUT_MS`" },
  { variable: "SHUTDOWN_TIMEOUT_MS", meaning: "bounds the whole drain; requests still running then are answered 503", default: code(defaults.shutdownTimeoutMs), valid: "integer ≥ 1" },
  { variable: "HEADERS_TIMEOUT_MS", meaning: "a client must send its request headers within this (else 408)", default: `${code(`min(${defaults.headersTimeoutMs}, REQUEST_TIMEOUT_MS)`)}`, valid: "1 … `REQUEST_TIMEOUT_MS`" },
  { variable: "REQUEST_TIMEOUT_MS", meaning: "a client must send its whole request within this (else 408)", default: code(defaults.requestTimeoutMs), valid: "integer ≥ 1" },
  { variable: "CLIENT_STALL_TIMEOUT_MS", meaning: "a client that takes none of its answer this long (a stream it stopped reading: the router waits on its full socket) is cut off, its slot freed (logged as 499, reason `client_stalled`); `0` = never", default: code(defaults.clientStallTimeoutMs), valid: "0 – 2147483647" },
  { variable: "PORT", meaning: "the port to listen on", default: code(defaults.port), valid: "1–65535" },
  { variable: "HOST", meaning: "the address to listen on", default: "all interfaces", valid: "an address of this machine, or a name resolving to one" },
  { variable: "LISTEN_SOCKETS", meaning: "listening sockets sharing `PORT` (Linux's `SO_REUSEPORT`), each handing its connections to the one server: Node accepts one connection per socket per event-loop turn, so with one socket a burst of new connections waits behind the requests of the open ones (docs/operations.md). `1`: one socket, as plain Node. The port is bound alone first, so a port another process holds still fails; a process of the same user can still join it later (docs/operations.md)", default: `${code(defaults.listenSockets)} on Linux, \`1\` elsewhere`, valid: "1 – 64 (only `1` off Linux)" },
  { variable: "POD_NAME", meaning: "pod name (downward API), returned as `routerPod`; omitted when neither it nor `HOSTNAME` is set", default: "—", valid: "any" },
  { variable: "HOSTNAME", meaning: "`POD_NAME`'s fallback (Kubernetes sets it to the pod name)", default: "—", valid: "any" },
  { variable: "LOG_LEVEL", meaning: "least severe level logged; `info` includes one access-log line per inference request", default: code(defaults.logLevel), valid: "`debug`, `info`, `warn`, `error`" },
  { variable: "LOG_FORMAT", meaning: "`json` (one object per line) or `pretty` (for humans)", default: code(defaults.logFormat), valid: "`json`, `pretty`" },
  { variable: "API_KEYS", meaning: "comma-separated bearer tokens accepted on `/infer` and `/v1/*`; unset = no authentication", default: "—", valid: "visible ASCII, no blanks, each" },
  { variable: "API_KEYS_FILE", meaning: "file with more keys, one per line (`#` starts a comment at the start of a line or after a blank; a `#` inside a key is part of it); combined with `API_KEYS`", default: "—", valid: "a readable, non-empty file; keys as `API_KEYS`" }
]

/** The environment variables the router reads, in documentation order. */
export const settingNames: ReadonlyArray<string> = settingDocs.map((doc) => doc.variable)

/** docs/settings.md's table, as generated from `settingDocs`. */
export const settingsTableMarkdown = (): string =>
  [
    "| variable | meaning | default | valid |",
    "|---|---|---|---|",
    ...settingDocs.map((doc) => `| \`${doc.variable}\` | ${doc.meaning} | ${doc.default} | ${doc.valid} |`)
  ].join("\n")

const positiveMs = (variable: string, fallback: number) =>
  setting(variable, decimalAtLeast(1), "an integer >= 1 (milliseconds)", () => fallback)

/** MODEL_BACKEND and, for `upstream`, UPSTREAMS and the UPSTREAM_* settings. */
const loadBackend: Effect.Effect<{ backend: ModelBackend; upstream: UpstreamSettings | undefined }, SettingError> = Effect.gen(function*() {
  const backend = yield* setting("MODEL_BACKEND", oneOf(["simulated", "upstream"]), "simulated or upstream", () => defaults.backend)
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
  const panicThresholdPercent = yield* setting("UPSTREAM_PANIC_THRESHOLD_PERCENT", decimalBetween(0, 100), "an integer from 0 to 100 (percent)", () => d.panicThresholdPercent)
  const maxBodyBytes = yield* setting("UPSTREAM_MAX_BODY_BYTES", decimalAtLeast(1024), "an integer >= 1024 (bytes)", () => d.maxBodyBytes)
  const maxEventBytes = yield* setting("UPSTREAM_MAX_EVENT_BYTES", decimalAtLeast(1024), "an integer >= 1024 (bytes)", () => d.maxEventBytes)
  const requestTimeoutMs = yield* positiveMs("UPSTREAM_REQUEST_TIMEOUT_MS", d.requestTimeoutMs)
  const sharedScope = yield* setting("UPSTREAM_SHARED_SCOPE", SharedScope, "text without whitespace, up to 512 characters", () => "")
  const routing: RoutingSettings = {
    scheduler: yield* setting("UPSTREAM_SCHEDULER", oneOf(schedulerNames), "least-request or cache-aware", () => defaultRouting.scheduler),
    loadBound: yield* setting("UPSTREAM_LOAD_BOUND", LoadBound, "a number from 1 to 10 (times the pool's mean in flight), e.g. 1.25", () => defaultRouting.loadBound),
    metricsIntervalMs: (yield* ms("UPSTREAM_METRICS_INTERVAL_MS", () => defaultRouting.metricsIntervalMs)) ?? defaultRouting.metricsIntervalMs,
    ...(sharedScope === "" ? {} : { sharedScope }),
    routeHeaderCachedTokens: (yield* setting("UPSTREAM_ROUTE_HEADER_CACHED_TOKENS", oneOf(["true", "false"]), "true or false", () => "false")) === "true"
  }
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
      dnsRefreshMs,
      panicThresholdPercent,
      maxBodyBytes,
      maxEventBytes,
      requestTimeoutMs,
      routing
    }
  }
})

export const loadSettings: Effect.Effect<RouterSettings, SettingError> = Effect.gen(function*() {
  const modelRefRaw = yield* optionalString("MODEL_REF")
  const maxConcurrency = yield* setting("MAX_CONCURRENCY", decimalAtLeast(1), "an integer >= 1", () => defaults.maxConcurrency)
  const maxQueue = yield* setting("MAX_QUEUE", decimalAtLeast(0), "an integer >= 0", () => defaults.queuePerSlot * maxConcurrency)
  const queueTimeoutMs = yield* setting("QUEUE_TIMEOUT_MS", decimalAtLeast(1), "an integer >= 1 (milliseconds)", () => defaults.queueTimeoutMs)
  const overloadStatus = yield* setting(
    "OVERLOAD_STATUS",
    DecimalInt.pipe(Schema.decodeTo(Schema.Literals([429, 503]))),
    "429 or 503",
    () => defaults.overloadStatus
  )
  const kvEndpoints = yield* parseKvEndpoints("KV_ENDPOINTS")
  const { backend, upstream } = yield* loadBackend
  const simLatencyMs = yield* setting("SIM_LATENCY_MS", decimalAtLeast(0), "an integer >= 0 (milliseconds)", () => defaults.simLatencyMs)
  const simulation = yield* loadSimulation
  const maxBodyBytes = yield* setting("MAX_BODY_BYTES", decimalAtLeast(1), "an integer >= 1 (bytes)", () => defaults.maxBodyBytes)
  const shutdownDelayMs = yield* setting("SHUTDOWN_DELAY_MS", decimalAtLeast(0), "an integer >= 0 (milliseconds)", () => defaults.shutdownDelayMs)
  const shutdownTimeoutMs = yield* setting(
    "SHUTDOWN_TIMEOUT_MS",
    decimalAtLeast(1),
    "an integer >= 1 (milliseconds)",
    () => defaults.shutdownTimeoutMs
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
    () => defaults.requestTimeoutMs
  )
  const headersTimeoutMs = yield* setting(
    "HEADERS_TIMEOUT_MS",
    decimalBetween(1, requestTimeoutMs),
    `an integer from 1 to REQUEST_TIMEOUT_MS (${requestTimeoutMs}) (milliseconds)`,
    () => Math.min(defaults.headersTimeoutMs, requestTimeoutMs)
  )
  // At most what Node's timers take (2^31 - 1 ms, ~24.8 days): a longer delay fires after 1 ms.
  const clientStallTimeoutMs = yield* setting(
    "CLIENT_STALL_TIMEOUT_MS",
    decimalBetween(0, 2_147_483_647),
    "an integer from 0 to 2147483647 (milliseconds; 0 = never)",
    () => defaults.clientStallTimeoutMs
  )
  const port = yield* setting("PORT", decimalBetween(1, 65535), "a port number 1-65535", () => defaults.port)
  const host = yield* optionalString("HOST")
  const listenSockets = process.platform === "linux"
    ? yield* setting("LISTEN_SOCKETS", decimalBetween(1, 64), "an integer from 1 to 64", () => defaults.listenSockets)
    : yield* setting("LISTEN_SOCKETS", decimalBetween(1, 1), "1 (sharing a port between sockets needs Linux)", () => 1)
  const podName = (yield* optionalString("POD_NAME")) ?? (yield* optionalString("HOSTNAME"))
  const logLevel = yield* logLevelSetting
  const logFormat = yield* logFormatSetting
  const apiKeys = yield* loadApiKeys
  return {
    modelRef: modelRefRaw ?? defaults.modelRef,
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
    clientStallTimeoutMs,
    port,
    host,
    listenSockets,
    podName,
    logLevel,
    logFormat,
    apiKeys
  }
})
