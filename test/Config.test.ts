import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Redacted } from "effect"
import { mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { InvalidSetting, isKvEndpoint, kvEndpoint, loadSettings, maskCredentials } from "../src/router/core/Config.ts"
import { type SettingError, UnreadableSetting } from "../src/shared/Settings.ts"

const load = (env: Record<string, string>) =>
  Effect.exit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))

const invalid = (exit: Exit.Exit<unknown, SettingError>): InvalidSetting => {
  assert.isTrue(Exit.isFailure(exit), "expected the configuration to be rejected")
  const reason = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
  assert.strictEqual(reason?._tag, "Fail")
  return (reason as any).error
}

describe("Config", () => {
  it.effect("defaults", () =>
    Effect.gen(function*() {
      const exit = yield* load({})
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      assert.deepStrictEqual(exit.value, {
        modelRef: "demo-model",
        modelRefDefaulted: true,
        maxConcurrency: 10,
        maxQueue: 100,
        queueTimeoutMs: 30_000,
        overloadStatus: 429,
        kvEndpoints: [],
        backend: "simulated",
        upstream: undefined,
        simLatencyMs: 100,
        simulation: {
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
          failureTypes: ["rate_limit", "invalid_api_key", "context_length", "invalid_request", "model_not_found", "server_error"]
        },
        maxBodyBytes: 1_048_576,
        shutdownDelayMs: 0,
        shutdownTimeoutMs: 25_000,
        headersTimeoutMs: 10_000,
        requestTimeoutMs: 30_000,
        clientStallTimeoutMs: 60_000,
        port: 8080,
        host: undefined,
        listenSockets: 16,
        podName: undefined,
        logLevel: "info",
        logFormat: "json",
        apiKeys: []
      })
    }))

  it.effect("reads every variable", () =>
    Effect.gen(function*() {
      const exit = yield* load({
        MODEL_REF: "llama-3-8b",
        MAX_CONCURRENCY: "4",
        MAX_QUEUE: "0",
        QUEUE_TIMEOUT_MS: "1500",
        OVERLOAD_STATUS: "503",
        KV_ENDPOINTS: " kv-0:6379 , ,redis://kv-1:6379,http://kv-2.svc:8080/x,, [::1]:7000 ",
        SIM_LATENCY_MS: "0",
        SIM_MODE: "echo",
        SIM_SEED: "42",
        SIM_TTFT_MS: "50",
        SIM_TTFT_STDDEV_MS: "5",
        SIM_ITL_MS: "10",
        SIM_ITL_STDDEV_MS: "2",
        SIM_LOAD_FACTOR: "2.5",
        SIM_BLOCK_SIZE: "32",
        SIM_KV_BLOCKS: "1000",
        SIM_MAX_BATCHED_TOKENS: "512",
        SIM_PREFILL_US_PER_TOKEN: "12.5",
        SIM_KV_EVENTS_ENDPOINT: "tcp://*:5557",
        SIM_KV_EVENTS_TOPIC: "kv-events",
        SIM_KV_EVENTS_FORMAT: "array",
        SIM_MAX_TOKENS: "128",
        SIM_MAX_MODEL_LEN: "8192",
        SIM_FAILURE_RATE: "10",
        SIM_FAILURE_TYPES: "rate_limit, server_error",
        MAX_BODY_BYTES: "2048",
        SHUTDOWN_DELAY_MS: "5000",
        SHUTDOWN_TIMEOUT_MS: "20000",
        HEADERS_TIMEOUT_MS: "2000",
        REQUEST_TIMEOUT_MS: "4000",
        CLIENT_STALL_TIMEOUT_MS: "0",
        PORT: "9090",
        HOST: "127.0.0.1",
        LISTEN_SOCKETS: "4",
        POD_NAME: "router-7d9f",
        HOSTNAME: "ignored-when-pod-name-set",
        LOG_LEVEL: "debug",
        LOG_FORMAT: "pretty",
        API_KEYS: "key-one, key-two,"
      })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      const { apiKeys, ...settings } = exit.value
      assert.deepStrictEqual(apiKeys.map(Redacted.value), ["key-one", "key-two"])
      assert.notInclude(JSON.stringify(exit.value), "key-one", "keys never print")
      assert.deepStrictEqual(settings, {
        modelRef: "llama-3-8b",
        modelRefDefaulted: false,
        maxConcurrency: 4,
        maxQueue: 0,
        queueTimeoutMs: 1500,
        overloadStatus: 503,
        kvEndpoints: ["kv-0:6379", "redis://kv-1:6379", "http://kv-2.svc:8080/x", "[::1]:7000"].map(kvEndpoint),
        backend: "simulated",
        upstream: undefined,
        simLatencyMs: 0,
        simulation: {
          mode: "echo",
          seed: 42,
          ttftMs: 50,
          ttftStdDevMs: 5,
          itlMs: 10,
          itlStdDevMs: 2,
          loadFactor: 2.5,
          blockSize: 32,
          kvBlocks: 1000,
          maxBatchedTokens: 512,
          prefillUsPerToken: 12.5,
          kvEventsEndpoint: "tcp://*:5557",
          kvEventsTopic: "kv-events",
          kvEventsFormat: "array",
          maxTokens: 128,
          maxModelLen: 8192,
          failureRate: 10,
          failureTypes: ["rate_limit", "server_error"]
        },
        maxBodyBytes: 2048,
        shutdownDelayMs: 5000,
        shutdownTimeoutMs: 20000,
        headersTimeoutMs: 2000,
        requestTimeoutMs: 4000,
        clientStallTimeoutMs: 0,
        port: 9090,
        host: "127.0.0.1",
        listenSockets: 4,
        podName: "router-7d9f",
        logLevel: "debug",
        logFormat: "pretty"
      })
    }))

  it.effect("MAX_QUEUE defaults to 10 x MAX_CONCURRENCY", () =>
    Effect.gen(function*() {
      const exit = yield* load({ MAX_CONCURRENCY: "3" })
      assert.isTrue(Exit.isSuccess(exit) && exit.value.maxQueue === 30)
    }))

  it.effect("POD_NAME falls back to HOSTNAME", () =>
    Effect.gen(function*() {
      const exit = yield* load({ HOSTNAME: "router-host" })
      assert.isTrue(Exit.isSuccess(exit) && exit.value.podName === "router-host")
    }))

  it.effect.each([
    ["MAX_CONCURRENCY", "0"],
    ["MAX_CONCURRENCY", "-3"],
    ["MAX_CONCURRENCY", "2.5"],
    ["MAX_CONCURRENCY", "ten"],
    ["MAX_QUEUE", "-1"],
    ["MAX_QUEUE", "lots"],
    ["QUEUE_TIMEOUT_MS", "0"],
    ["OVERLOAD_STATUS", "500"],
    ["KV_ENDPOINTS", "kv-0"],
    ["KV_ENDPOINTS", "kv-0:0"],
    ["KV_ENDPOINTS", "kv-0:70000"],
    ["KV_ENDPOINTS", "ftp://kv-0:21"],
    ["KV_ENDPOINTS", "redis://kv-0:0"],
    ["KV_ENDPOINTS", "redis://kv-0:6379/99999999999"],
    ["SIM_LATENCY_MS", "-1"],
    ["SIM_LATENCY_MS", "fast"],
    ["MAX_BODY_BYTES", "0"],
    ["PORT", "0"],
    ["PORT", "65536"],
    ["PORT", "http"],
    ["LISTEN_SOCKETS", "0"],
    ["LISTEN_SOCKETS", "65"],
    ["LOG_LEVEL", "verbose"],
    ["LOG_FORMAT", "xml"],
    ["SHUTDOWN_DELAY_MS", "-1"],
    ["SHUTDOWN_TIMEOUT_MS", "0"],
    ["REQUEST_TIMEOUT_MS", "0"],
    ["CLIENT_STALL_TIMEOUT_MS", "-1"],
    // Node's timers fire a longer delay after 1 ms.
    ["CLIENT_STALL_TIMEOUT_MS", "2147483648"],
    ["HEADERS_TIMEOUT_MS", "0"],
    ["HEADERS_TIMEOUT_MS", "60000"],
    ["API_KEYS_FILE", "/nonexistent/keys"],
    // Decimal digits only: Number() would read each of these as a number.
    ["PORT", "0x1F9A"],
    ["PORT", "1e3"],
    ["MAX_CONCURRENCY", "0b11"],
    ["MAX_CONCURRENCY", "+7"],
    ["MAX_QUEUE", "0o7"],
    ["QUEUE_TIMEOUT_MS", "1_000"],
    ["OVERLOAD_STATUS", "0x1f5"],
    ["SIM_LATENCY_MS", "1.0"],
    ["MAX_BODY_BYTES", "99999999999999999999"],
    ["SIM_MODE", "chat"],
    ["SIM_TTFT_MS", "-1"],
    ["SIM_ITL_MS", "0x10"],
    ["SIM_LOAD_FACTOR", "0.5"],
    ["SIM_BLOCK_SIZE", "0"],
    ["SIM_KV_BLOCKS", "many"],
    ["SIM_PREFILL_US_PER_TOKEN", "-1"],
    ["SIM_KV_EVENTS_ENDPOINT", "localhost:5557"],
    ["SIM_KV_EVENTS_ENDPOINT", "tcp://*:99999"],
    ["SIM_KV_EVENTS_ENDPOINT", "tcp://127.0.0.1:0"],
    ["SIM_KV_EVENTS_FORMAT", "msgpack"],
    ["SIM_LOAD_FACTOR", "1e2"],
    ["SIM_MAX_TOKENS", "0"],
    ["SIM_MAX_TOKENS", "5000"],
    ["SIM_FAILURE_RATE", "101"],
    ["SIM_FAILURE_TYPES", "rate_limit,explode"]
  ] as const)("rejects %s=%s naming the variable, the value and what is expected", ([variable, value]) =>
    Effect.gen(function*() {
      const error = invalid(yield* load({ [variable]: variable === "KV_ENDPOINTS" ? `kv-ok:1,${value}` : value }))
      assert.instanceOf(error, InvalidSetting)
      assert.strictEqual(error.variable, variable)
      assert.include(error.message, variable)
      assert.include(error.message, JSON.stringify(value))
      assert.include(error.message, "expected")
      assert.notInclude(error.message, "\n")
    }))

  it.effect.each([
    ["MODEL_BACKEND", "vllm"],
    ["UPSTREAMS", "10.0.0.5:8000"],
    ["UPSTREAMS", "http://a:1;weight=0"],
    ["UPSTREAMS", "http://a:1;weight=5000"],
    ["UPSTREAMS", "http://a:1;zone=b"],
    ["UPSTREAMS", "dns+http://10.0.0.1:80"],
    ["UPSTREAM_MAX_CONCURRENCY", "-1"],
    ["UPSTREAM_CONNECT_TIMEOUT_MS", "0"],
    ["UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "soon"],
    ["UPSTREAM_IDLE_TIMEOUT_MS", "0x10"],
    ["UPSTREAM_HEALTH_INTERVAL_MS", "-5"],
    ["UPSTREAM_EJECT_AFTER", "0"],
    ["UPSTREAM_MAX_EJECTED_PERCENT", "101"],
    ["UPSTREAM_RETRIES", "11"],
    ["UPSTREAM_RETRY_BUDGET_PERCENT", "150"],
    ["UPSTREAM_DNS_REFRESH_MS", "0"]
  ] as const)("MODEL_BACKEND=upstream: rejects %s=%s naming the variable and what is expected", ([variable, value]) =>
    Effect.gen(function*() {
      const error = invalid(yield* load({ MODEL_BACKEND: "upstream", UPSTREAMS: "http://vllm:8000", [variable]: value }))
      assert.strictEqual(error.variable, variable)
      assert.include(error.message, JSON.stringify(value))
      assert.include(error.message, "expected")
    }))

  it.effect("reads the upstream settings; UPSTREAMS needs MODEL_BACKEND=upstream and the other way round", () =>
    Effect.gen(function*() {
      const exit = yield* load({
        MODEL_BACKEND: "upstream",
        UPSTREAMS: "http://vllm-a:8000/v1;weight=90;version=v1, dns+http://pods.ns.svc:8000;weight=10;version=v2",
        UPSTREAM_RETRIES: "1",
        UPSTREAM_HEALTH_INTERVAL_MS: "0"
      })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      assert.strictEqual(exit.value.backend, "upstream")
      const upstream = exit.value.upstream!
      assert.deepStrictEqual(upstream.targets.map((t) => [t.hostname, t.port, t.prefix, t.weight, t.version, t.resolve]), [
        ["vllm-a", 8000, "", 90, "v1", false],
        ["pods.ns.svc", 8000, "", 10, "v2", true]
      ])
      assert.deepInclude(upstream, { retries: 1, healthIntervalMs: 0, connectTimeoutMs: 2000, ejectAfter: 5 })
      const missing = invalid(yield* load({ MODEL_BACKEND: "upstream" }))
      assert.strictEqual(missing.variable, "UPSTREAMS")
      assert.include(missing.message, "required when MODEL_BACKEND=upstream")
      const unused = invalid(yield* load({ UPSTREAMS: "http://vllm:8000" }))
      assert.strictEqual(unused.variable, "MODEL_BACKEND")
      const simulated = yield* load({})
      assert.isTrue(Exit.isSuccess(simulated) && simulated.value.backend === "simulated" && simulated.value.upstream === undefined)
    }))

  it.effect("SHUTDOWN_DELAY_MS must leave time inside SHUTDOWN_TIMEOUT_MS", () =>
    Effect.gen(function*() {
      const error = invalid(yield* load({ SHUTDOWN_DELAY_MS: "5000", SHUTDOWN_TIMEOUT_MS: "5000" }))
      assert.strictEqual(error.variable, "SHUTDOWN_DELAY_MS")
      assert.include(error.message, "SHUTDOWN_TIMEOUT_MS")
    }))

  it.effect("API_KEYS_FILE adds one key per line, skipping blanks and comment lines (a # inside a key is part of it)", () =>
    Effect.gen(function*() {
      const dir = mkdtempSync(join(tmpdir(), "router-keys-"))
      const file = join(dir, "keys")
      // A `#` inside a key is part of it (cut there, its prefix `k` became a key that worked).
      writeFileSync(file, "# rotated 2026-11\nfile-key-1\n\n  file-key-2  \n  # old: gone\nk#SECRETTAIL\r\nfile-key-3   # prod, since March\n")
      const exit = yield* load({ API_KEYS: "inline", API_KEYS_FILE: file })
      rmSync(dir, { recursive: true })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      assert.deepStrictEqual(exit.value.apiKeys.map(Redacted.value), ["inline", "file-key-1", "file-key-2", "k#SECRETTAIL", "file-key-3"])
    }))

  it.effect("an API key no client could present (a blank, a control character) is refused at start-up, without showing it", () =>
    Effect.gen(function*() {
      const inline = invalid(yield* load({ API_KEYS: "ok-key,has s3cret space" }))
      assert.instanceOf(inline, InvalidSetting)
      assert.strictEqual(inline.variable, "API_KEYS")
      assert.include(inline.message, "key 2 not shown")
      assert.notInclude(inline.message, "s3cret")
      const dir = mkdtempSync(join(tmpdir(), "router-keys-"))
      const file = join(dir, "keys")
      writeFileSync(file, "fine-key\ntab\ts3cret\n")
      const fromFile = invalid(yield* load({ API_KEYS_FILE: file }))
      rmSync(dir, { recursive: true })
      assert.strictEqual(fromFile.variable, "API_KEYS_FILE")
      assert.notInclude(fromFile.message, "s3cret")
    }))

  it.effect("credentials in KV_ENDPOINTS are masked wherever the endpoints are shown, kept whole inside", () =>
    Effect.gen(function*() {
      const exit = yield* load({ KV_ENDPOINTS: "redis://admin:s3cret@kv-0:6379,https://kv-1/x?token=s3cret&db=2,kv-2:1" })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      const endpoints = exit.value.kvEndpoints
      assert.deepStrictEqual(endpoints.map((endpoint) => endpoint.shown), [
        "redis://***@kv-0:6379",
        "https://kv-1/x?token=***&db=***",
        "kv-2:1"
      ])
      assert.deepStrictEqual(endpoints.map((endpoint) => Redacted.value(endpoint.value)), [
        "redis://admin:s3cret@kv-0:6379",
        "https://kv-1/x?token=s3cret&db=2",
        "kv-2:1"
      ])
      assert.notInclude(JSON.stringify(exit.value), "s3cret")
      assert.notInclude(String(endpoints.map((endpoint) => endpoint.value)), "s3cret")
    }))

  it.effect("an invalid KV_ENDPOINTS item is quoted with its credentials masked", () =>
    Effect.gen(function*() {
      const error = invalid(yield* load({ KV_ENDPOINTS: "ftp://user:s3cret@kv:21" }))
      assert.notInclude(error.message, "s3cret")
      assert.include(error.message, "ftp://***@kv:21")
    }))

  it("maskCredentials leaves what carries none as written", () => {
    for (const plain of ["kv:6379", "redis://kv:6379", "http://kv:80/x", "[::1]:7000"]) {
      assert.strictEqual(maskCredentials(plain), plain)
    }
    // An @ in a path is masked as if it ended credentials: more than needed, never less.
    assert.strictEqual(maskCredentials("https://kv/a@b"), "https://***@b")
  })

  it("maskCredentials: a password with / ? # or @ in it, unencoded, is masked whole; an @ in a query value hides what follows", () => {
    for (const [item, shown] of [
      ["redis://user:p/ss@host:6379", "redis://***@host:6379"],
      // A ? or # before the last @: that @ may be a query value's, so nothing after the scheme shows.
      ["http://user:p?ss@host:8000", "http://***"],
      ["redis://:Pa#ss-Secret@redis:6379", "redis://***"],
      ["https://kv:443/?token=abc@SECRETSUFFIX", "https://***"],
      ["redis://h:6379/0?password=p@ssw0rd", "redis://***"],
      ["redis://u:p@ss@host:6379", "redis://***@host:6379"],
      ["redis://h:6379/0?password=se#cret&db=1", "redis://h:6379/0?password=***&db=***"]
    ]) assert.strictEqual(maskCredentials(item), shown)
  })

  it.effect("an invalid item never shows a piece of a password: with an @ in the value, the whole value is shown masked by URL", () =>
    Effect.gen(function*() {
      // A password with a comma splits into two items, the first without its @.
      for (const value of [
        "redis://:pa,ss-Secret@redis:6379",
        "redis://:Pa#ss-Secret@redis:6379",
        "redis://u:p/ss-Secret@h:6379",
        "kv:1,redis://:x,y-Secret,z@h:1",
        // A comma in a query secret (the first item valid, the tail the bad one), and one followed by something like a scheme.
        "https://kv-1/x?token=pa,Secret",
        "redis://u:pa, x://ssSecret@h:1",
        // An @ inside a query secret split at a comma: what follows that @ is the secret's tail.
        "kv:1,https://kv/x?token=a,b@SecretTail"
      ]) {
        const error = invalid(yield* load({ KV_ENDPOINTS: value }))
        assert.notInclude(error.message, "Secret", value)
        assert.notInclude(error.message, ":pa", value)
      }
      const upstream = invalid(yield* load({ MODEL_BACKEND: "upstream", UPSTREAMS: "http://u:pa,ss-Secret@model:8000" }))
      assert.notInclude(upstream.message, "Secret")
      assert.notInclude(upstream.message, ":pa")
    }))

  it.effect("KV_ENDPOINTS: a redis:// URL its client could not read is refused at once, naming the variable", () =>
    Effect.gen(function*() {
      for (const value of ["redis://:pw@host:6379/abc", "redis://:pw%zz@host:6379"]) {
        const error = invalid(yield* load({ KV_ENDPOINTS: value }))
        assert.include(error.message, "KV_ENDPOINTS")
        assert.notInclude(error.message, "pw")
      }
      const valid = yield* load({ KV_ENDPOINTS: "redis://:p%40w@host:6379/2" })
      assert.isTrue(Exit.isSuccess(valid) && valid.value.kvEndpoints.length === 1)
    }))

  it.effect("a provider that cannot be read fails naming the variable; it is not taken as unset", () =>
    Effect.gen(function*() {
      const failing = ConfigProvider.make((path) =>
        path[0] === "MAX_QUEUE"
          ? Effect.fail(new ConfigProvider.SourceError({ message: "vault unreachable" }))
          : Effect.succeed(undefined)
      )
      const exit = yield* Effect.exit(Effect.provide(loadSettings, ConfigProvider.layer(failing)))
      assert.isTrue(Exit.isFailure(exit))
      const reason = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
      const error = (reason as any)?.error
      assert.instanceOf(error, UnreadableSetting)
      assert.include(error.message, "MAX_QUEUE")
      assert.include(error.message, "vault unreachable")
    }))

  it("KV endpoint forms", () => {
    for (const ok of ["kv:6379", "10.0.0.1:1", "kv.ns.svc.cluster.local:65535", "[fe80::1]:80", "redis://kv:6379", "https://kv"]) {
      assert.isTrue(isKvEndpoint(ok), ok)
    }
    for (const bad of ["kv", ":6379", "kv:", "kv:abc", "kv:0", "kv:65536", "redis://", "tcp://kv:1", "kv :1"]) {
      assert.isFalse(isKvEndpoint(bad), bad)
    }
  })
})
