/**
 * The upstream pool's own timing, on TestClock: `dns+` names re-resolved
 * every UPSTREAM_DNS_REFRESH_MS (a headless Service's pods coming and going),
 * a failed lookup keeping the addresses it had, and a weight split among a
 * name's addresses so a canary's share holds however many pods it has.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { defaultUpstream } from "../src/router/core/Config.ts"
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
