/**
 * The upstream pool's own timing, on TestClock: `dns+` names re-resolved
 * every UPSTREAM_DNS_REFRESH_MS (a headless Service's pods coming and going),
 * a failed lookup keeping the addresses it had, and a weight split among a
 * name's addresses so a canary's share holds however many pods it has.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit } from "effect"
import { TestClock } from "effect/testing"
import { defaultUpstream, InvalidSetting, loadSettings } from "../src/router/core/Config.ts"
import { parseTargets, type UpstreamTarget } from "../src/router/upstream/Targets.ts"
import { Upstreams } from "../src/router/upstream/Upstreams.ts"

const targets = (raw: string) => (parseTargets(raw) as { targets: ReadonlyArray<UpstreamTarget> }).targets

describe("upstream discovery", () => {
  it.effect("re-resolves dns+ names periodically; a failed lookup keeps the addresses it had", () =>
    Effect.gen(function*() {
      let answer: ReadonlyArray<string> | Error = ["10.0.0.2", "10.0.0.1"]
      const lookups: Array<string> = []
      const resolve = async (hostname: string) => {
        lookups.push(hostname)
        if (answer instanceof Error) throw answer
        return answer
      }
      const upstreams = yield* Upstreams.make(
        {
          ...defaultUpstream,
          healthIntervalMs: 0,
          dnsRefreshMs: 1000,
          targets: targets("dns+http://model-pods.ns.svc:8000;weight=90;version=v1,http://10.9.9.9:8000;weight=10;version=v2")
        },
        10,
        resolve
      )
      const view = () => upstreams.view().map(({ id, version, weight }) => `${id} ${version} ${weight}`).sort()
      assert.deepStrictEqual(view(), ["10.0.0.1:8000 v1 45", "10.0.0.2:8000 v1 45", "10.9.9.9:8000 v2 10"])
      assert.isTrue(upstreams.ready())

      answer = ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
      yield* TestClock.adjust(999)
      assert.deepStrictEqual(view(), ["10.0.0.1:8000 v1 45", "10.0.0.2:8000 v1 45", "10.9.9.9:8000 v2 10"])
      yield* TestClock.adjust(1)
      assert.deepStrictEqual(view(), ["10.0.0.2:8000 v1 30", "10.0.0.3:8000 v1 30", "10.0.0.4:8000 v1 30", "10.9.9.9:8000 v2 10"])

      answer = new Error("SERVFAIL")
      yield* TestClock.adjust(1000)
      assert.deepStrictEqual(view(), ["10.0.0.2:8000 v1 30", "10.0.0.3:8000 v1 30", "10.0.0.4:8000 v1 30", "10.9.9.9:8000 v2 10"])
      assert.deepStrictEqual(lookups, ["model-pods.ns.svc", "model-pods.ns.svc", "model-pods.ns.svc"])
    }).pipe(Effect.scoped))
})

describe("the upstream bounds' settings", () => {
  const load = (env: Record<string, string>) =>
    Effect.runSync(Effect.exit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MODEL_BACKEND: "upstream", UPSTREAMS: "http://10.0.0.1:8000", ...env } })))))

  it("reads them, with their defaults", () => {
    const defaults = load({})
    assert.isTrue(Exit.isSuccess(defaults))
    if (Exit.isSuccess(defaults)) {
      const { requestTimeoutMs, maxBodyBytes, maxEventBytes, panicThresholdPercent } = defaults.value.upstream!
      assert.deepStrictEqual([requestTimeoutMs, maxBodyBytes, maxEventBytes, panicThresholdPercent], [600_000, 16 * 1024 * 1024, 1024 * 1024, 50])
    }
    const set = load({ UPSTREAM_REQUEST_TIMEOUT_MS: "1000", UPSTREAM_MAX_BODY_BYTES: "2048", UPSTREAM_MAX_EVENT_BYTES: "4096", UPSTREAM_PANIC_THRESHOLD_PERCENT: "0" })
    assert.isTrue(Exit.isSuccess(set))
    if (Exit.isSuccess(set)) {
      const { requestTimeoutMs, maxBodyBytes, maxEventBytes, panicThresholdPercent } = set.value.upstream!
      assert.deepStrictEqual([requestTimeoutMs, maxBodyBytes, maxEventBytes, panicThresholdPercent], [1000, 2048, 4096, 0])
    }
  })

  it("refuses bad values, naming the variable", () => {
    for (const [variable, value] of [["UPSTREAM_REQUEST_TIMEOUT_MS", "0"], ["UPSTREAM_MAX_BODY_BYTES", "100"], ["UPSTREAM_MAX_EVENT_BYTES", "1e9"], ["UPSTREAM_PANIC_THRESHOLD_PERCENT", "101"]]) {
      const exit = load({ [variable]: value })
      assert.isTrue(Exit.isFailure(exit), variable)
      const error = Exit.isFailure(exit) ? exit.cause.reasons[0] : undefined
      const failure = error !== undefined && "error" in error ? error.error : undefined
      assert.instanceOf(failure, InvalidSetting)
      assert.strictEqual((failure as InvalidSetting).variable, variable)
    }
  })
})
