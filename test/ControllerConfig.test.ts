import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit } from "effect"
import { loadControllerSettings } from "../src/controller/ControllerConfig.ts"
import { InvalidSetting } from "../src/shared/Settings.ts"

const load = (env: Record<string, string>) =>
  Effect.exit(Effect.provide(loadControllerSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))

describe("controller settings", () => {
  it.effect("defaults", () =>
    Effect.gen(function*() {
      const exit = yield* load({ POD_NAME: "c-0" })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      assert.deepInclude(exit.value, {
        routerImage: "inference-router:0.1.0",
        watchNamespaces: [],
        leaderElection: true,
        leaseName: "inference-router-controller",
        leaseNamespace: "default",
        identity: "c-0",
        leaseDurationSeconds: 15,
        renewDeadlineMs: 10_000,
        leaderRetryMs: 2_000,
        maxParallelReconciles: 4,
        resyncSeconds: 300,
        watchIdleTimeoutMs: 180_000,
        port: 8081
      })
    }))

  it.effect("reads every variable; the lease lives in POD_NAMESPACE unless LEASE_NAMESPACE says otherwise", () =>
    Effect.gen(function*() {
      const exit = yield* load({
        ROUTER_IMAGE: "reg/router:2",
        WATCH_NAMESPACES: " team-a, team-b ,",
        LEADER_ELECTION: "false",
        POD_NAMESPACE: "ops",
        LEASE_DURATION_SECONDS: "30",
        RENEW_DEADLINE_MS: "20000",
        LEADER_RETRY_MS: "500",
        MAX_PARALLEL_RECONCILES: "8",
        RESYNC_SECONDS: "60",
        WATCH_IDLE_TIMEOUT_MS: "90000",
        PORT: "9000"
      })
      assert.isTrue(Exit.isSuccess(exit))
      if (!Exit.isSuccess(exit)) return
      assert.deepInclude(exit.value, {
        routerImage: "reg/router:2",
        watchNamespaces: ["team-a", "team-b"],
        leaderElection: false,
        leaseNamespace: "ops",
        leaseDurationSeconds: 30,
        renewDeadlineMs: 20_000,
        leaderRetryMs: 500,
        maxParallelReconciles: 8,
        resyncSeconds: 60,
        watchIdleTimeoutMs: 90_000,
        port: 9000
      })
    }))

  it.effect.each([
    ["WATCH_NAMESPACES", "Team_A"],
    ["LEADER_ELECTION", "yes"],
    ["LEASE_NAME", "Bad Name"],
    ["LEASE_DURATION_SECONDS", "0"],
    ["RENEW_DEADLINE_MS", "15000"],
    ["MAX_PARALLEL_RECONCILES", "0"],
    ["MAX_PARALLEL_RECONCILES", "0x4"],
    ["RESYNC_SECONDS", "1e3"],
    ["WATCH_IDLE_TIMEOUT_MS", "50"],
    ["PORT", "70000"],
    ["LOG_LEVEL", "loud"]
  ] as const)("rejects %s=%s naming it", ([variable, value]) =>
    Effect.gen(function*() {
      const exit = yield* load({ [variable]: value })
      assert.isTrue(Exit.isFailure(exit))
      const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as any).error : undefined
      assert.instanceOf(error, InvalidSetting)
      assert.strictEqual(error.variable, variable)
      assert.include(error.message, "expected")
    }))
})
