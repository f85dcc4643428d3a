/**
 * The router's settings, read once from the environment at start-up.
 *
 * Every variable is read through Effect's `Config` (so tests swap the
 * `ConfigProvider`) and validated with `Schema`. An invalid value fails the
 * layer with `InvalidSetting`, whose message is the one line an operator sees:
 * the variable, the value and what is expected.
 */
import { Config, Context, Data, Effect, Layer, Option, Redacted, Schema } from "effect"
import { readFileSync } from "node:fs"

export type LogLevelName = "debug" | "info" | "warn" | "error"
export type LogFormat = "json" | "pretty"

export interface RouterSettings {
  readonly modelRef: string
  /** True when MODEL_REF was not set and `modelRef` is the demo default. */
  readonly modelRefDefaulted: boolean
  readonly maxConcurrency: number
  readonly maxQueue: number
  readonly queueTimeoutMs: number
  readonly overloadStatus: 429 | 503
  readonly kvEndpoints: ReadonlyArray<string>
  readonly simLatencyMs: number
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
  "SIM_LATENCY_MS",
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

export class InvalidSetting extends Data.TaggedError("InvalidSetting")<{
  readonly variable: string
  readonly value: string
  readonly expected: string
}> {
  override get message() {
    return `invalid configuration: ${this.variable}=${JSON.stringify(this.value)}: expected ${this.expected}`
  }
}

const IntFromString = Schema.Trim.pipe(Schema.decodeTo(Schema.NumberFromString), Schema.decodeTo(Schema.Int))

const intAtLeast = (min: number) => IntFromString.check(Schema.isGreaterThanOrEqualTo(min))
const intBetween = (min: number, max: number) => IntFromString.check(Schema.isBetween({ minimum: min, maximum: max }))

/** `host:port` with a port in 1..65535, or an http(s):// or redis:// URL. */
const hostPort = /^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?):(\d{1,5})$/
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

/**
 * Reads one optional variable and validates it. `fallback` is used when the
 * variable is unset or empty (an empty value is how manifests often "unset").
 */
const setting = <A>(
  variable: string,
  schema: Schema.Codec<A, string>,
  expected: string,
  fallback: () => A
): Effect.Effect<A, InvalidSetting> =>
  Config.option(Config.String(variable)).pipe(
    Effect.orElseSucceed(() => Option.none<string>()),
    Effect.flatMap((raw) => {
      if (Option.isNone(raw) || raw.value.trim() === "") return Effect.succeed(fallback())
      return Schema.decodeUnknownEffect(schema)(raw.value).pipe(
        Effect.mapError(() => new InvalidSetting({ variable, value: raw.value, expected }))
      )
    })
  )

const optionalString = (variable: string): Effect.Effect<string | undefined> =>
  Config.option(Config.String(variable)).pipe(
    Effect.map((raw) => Option.isSome(raw) && raw.value.trim() !== "" ? raw.value.trim() : undefined),
    Effect.orElseSucceed(() => undefined)
  )

const parseKvEndpoints = (variable: string): Effect.Effect<ReadonlyArray<string>, InvalidSetting> =>
  optionalString(variable).pipe(Effect.flatMap((raw) => {
    const items = (raw ?? "").split(",").map((item) => item.trim()).filter((item) => item !== "")
    const bad = items.find((item) => !isKvEndpoint(item))
    return bad === undefined ? Effect.succeed(items) : Effect.fail(
      new InvalidSetting({
        variable,
        value: bad,
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
const loadApiKeys: Effect.Effect<ReadonlyArray<Redacted.Redacted<string>>, InvalidSetting> = Effect.gen(function*() {
  const inline = Config.option(Config.Redacted("API_KEYS")).pipe(
    Effect.map(Option.match({ onNone: () => [], onSome: (keys) => splitKeys(Redacted.value(keys), /,/) })),
    Effect.orElseSucceed((): Array<string> => [])
  )
  const keys = [...yield* inline]
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

export const loadSettings: Effect.Effect<RouterSettings, InvalidSetting> = Effect.gen(function*() {
  const modelRefRaw = yield* optionalString("MODEL_REF")
  const maxConcurrency = yield* setting("MAX_CONCURRENCY", intAtLeast(1), "an integer >= 1", () => 10)
  const maxQueue = yield* setting("MAX_QUEUE", intAtLeast(0), "an integer >= 0", () => 10 * maxConcurrency)
  const queueTimeoutMs = yield* setting("QUEUE_TIMEOUT_MS", intAtLeast(1), "an integer >= 1 (milliseconds)", () => 30_000)
  const overloadStatus = yield* setting(
    "OVERLOAD_STATUS",
    Schema.Trim.pipe(Schema.decodeTo(Schema.NumberFromString), Schema.decodeTo(Schema.Literals([429, 503]))),
    "429 or 503",
    () => 429 as const
  )
  const kvEndpoints = yield* parseKvEndpoints("KV_ENDPOINTS")
  const simLatencyMs = yield* setting("SIM_LATENCY_MS", intAtLeast(0), "an integer >= 0 (milliseconds)", () => 100)
  const maxBodyBytes = yield* setting("MAX_BODY_BYTES", intAtLeast(1), "an integer >= 1 (bytes)", () => 1024 * 1024)
  const shutdownDelayMs = yield* setting("SHUTDOWN_DELAY_MS", intAtLeast(0), "an integer >= 0 (milliseconds)", () => 0)
  const shutdownTimeoutMs = yield* setting(
    "SHUTDOWN_TIMEOUT_MS",
    intAtLeast(1),
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
    intAtLeast(1),
    "an integer >= 1 (milliseconds)",
    () => 30_000
  )
  const headersTimeoutMs = yield* setting(
    "HEADERS_TIMEOUT_MS",
    intBetween(1, requestTimeoutMs),
    `an integer from 1 to REQUEST_TIMEOUT_MS (${requestTimeoutMs}) (milliseconds)`,
    () => Math.min(10_000, requestTimeoutMs)
  )
  const port = yield* setting("PORT", intBetween(1, 65535), "a port number 1-65535", () => 8080)
  const host = yield* optionalString("HOST")
  const podName = (yield* optionalString("POD_NAME")) ?? (yield* optionalString("HOSTNAME"))
  const logLevel = yield* setting(
    "LOG_LEVEL",
    Schema.Trim.pipe(Schema.decodeTo(Schema.Literals(["debug", "info", "warn", "error"]))),
    "one of debug, info, warn, error",
    () => "info" as const
  )
  const logFormat = yield* setting(
    "LOG_FORMAT",
    Schema.Trim.pipe(Schema.decodeTo(Schema.Literals(["json", "pretty"]))),
    "json or pretty",
    () => "json" as const
  )
  const apiKeys = yield* loadApiKeys
  return {
    modelRef: modelRefRaw ?? "demo-model",
    modelRefDefaulted: modelRefRaw === undefined,
    maxConcurrency,
    maxQueue,
    queueTimeoutMs,
    overloadStatus,
    kvEndpoints,
    simLatencyMs,
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
  static readonly layer: Layer.Layer<RouterConfig, InvalidSetting> = Layer.effect(RouterConfig, loadSettings)

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
      simLatencyMs: 100,
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
