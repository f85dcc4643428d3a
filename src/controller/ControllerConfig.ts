/**
 * The controller's settings, from the environment, validated and failing fast
 * like the router's (one line naming the variable, exit 1). The cluster comes
 * from the kubeconfig (`KUBECONFIG`, `~/.kube/config`, or in-cluster), read
 * by `@kubernetes/client-node` as kubectl does.
 */
import { Context, Effect, Layer } from "effect"
import { hostname } from "node:os"
import {
  decimalAtLeast,
  decimalBetween,
  InvalidSetting,
  type LogFormat,
  logFormatSetting,
  type LogLevelName,
  logLevelSetting,
  oneOf,
  optionalString,
  setting,
  type SettingError
} from "../shared/Settings.ts"

export interface ControllerSettings {
  /**
   * The router image for InferenceServices that name none: ROUTER_IMAGE, or,
   * unset, the controller's own image (read from its Pod at start, so setting
   * the controller's image, by a kustomize `images:` entry or otherwise, sets
   * the routers' too; pinned to its digest; retried, never a fallback, in a
   * pod); `inference-router:0.1.0` outside a pod.
   */
  readonly routerImage: string
  /** Whether ROUTER_IMAGE set it (else the controller's own image is looked up). */
  readonly routerImageExplicit: boolean
  /** This pod, from the downward API (POD_NAME, POD_NAMESPACE), when the controller runs in one. */
  readonly pod: { readonly name: string; readonly namespace: string } | undefined
  /** Namespaces to watch; empty = all. */
  readonly watchNamespaces: ReadonlyArray<string>
  readonly leaderElection: boolean
  readonly leaseName: string
  readonly leaseNamespace: string
  /** This replica's identity in the Lease. */
  readonly identity: string
  readonly leaseDurationSeconds: number
  readonly renewDeadlineMs: number
  readonly leaderRetryMs: number
  readonly maxParallelReconciles: number
  /** Every API call but a watch is abandoned (its request aborted) after this long. */
  readonly apiTimeoutMs: number
  readonly resyncSeconds: number
  /** A watch with no event (bookmarks included) for this long is restarted. */
  readonly watchIdleTimeoutMs: number
  readonly port: number
  readonly host: string | undefined
  readonly logLevel: LogLevelName
  readonly logFormat: LogFormat
}

/** The environment variables the controller reads, in documentation order. */
export const controllerSettingNames = [
  "ROUTER_IMAGE",
  "WATCH_NAMESPACES",
  "LEADER_ELECTION",
  "LEASE_NAME",
  "LEASE_NAMESPACE",
  "POD_NAMESPACE",
  "POD_NAME",
  "LEASE_DURATION_SECONDS",
  "RENEW_DEADLINE_MS",
  "LEADER_RETRY_MS",
  "MAX_PARALLEL_RECONCILES",
  "API_TIMEOUT_MS",
  "RESYNC_SECONDS",
  "WATCH_IDLE_TIMEOUT_MS",
  "PORT",
  "HOST",
  "LOG_LEVEL",
  "LOG_FORMAT"
] as const

const dnsLabel = /^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$/

export const loadControllerSettings: Effect.Effect<ControllerSettings, SettingError> = Effect.gen(function*() {
  const explicitImage = yield* optionalString("ROUTER_IMAGE")
  const routerImage = explicitImage ?? "inference-router:0.1.0"
  const namespaces = ((yield* optionalString("WATCH_NAMESPACES")) ?? "").split(",").map((n) => n.trim()).filter((n) => n !== "")
  const badNamespace = namespaces.find((n) => !dnsLabel.test(n))
  if (badNamespace !== undefined) {
    return yield* new InvalidSetting({ variable: "WATCH_NAMESPACES", value: badNamespace, expected: "comma-separated namespace names (DNS labels)" })
  }
  const leaderElection = yield* setting("LEADER_ELECTION", oneOf(["true", "false"]), "true or false", () => "true" as const)
  const leaseName = (yield* optionalString("LEASE_NAME")) ?? "inference-router-controller"
  const leaseNamespace = (yield* optionalString("LEASE_NAMESPACE")) ?? (yield* optionalString("POD_NAMESPACE")) ?? "default"
  for (const [variable, value] of [["LEASE_NAME", leaseName], ["LEASE_NAMESPACE", leaseNamespace]] as const) {
    if (!dnsLabel.test(value)) return yield* new InvalidSetting({ variable, value, expected: "a DNS label" })
  }
  const identity = (yield* optionalString("POD_NAME")) ?? `${hostname()}-${process.pid}`
  const leaseDurationSeconds = yield* setting("LEASE_DURATION_SECONDS", decimalBetween(1, 3600), "an integer from 1 to 3600 (seconds)", () => 15)
  const renewDeadlineMs = yield* setting(
    "RENEW_DEADLINE_MS",
    decimalBetween(1, leaseDurationSeconds * 1000 - 1),
    `an integer from 1 to less than LEASE_DURATION_SECONDS (${leaseDurationSeconds} s) (milliseconds)`,
    () => Math.round(leaseDurationSeconds * 1000 * 2 / 3)
  )
  const leaderRetryMs = yield* setting(
    "LEADER_RETRY_MS",
    decimalBetween(1, renewDeadlineMs),
    `an integer from 1 to RENEW_DEADLINE_MS (${renewDeadlineMs}) (milliseconds)`,
    () => Math.max(1, Math.round(renewDeadlineMs / 5))
  )
  const maxParallelReconciles = yield* setting("MAX_PARALLEL_RECONCILES", decimalBetween(1, 256), "an integer from 1 to 256", () => 4)
  const apiTimeoutMs = yield* setting("API_TIMEOUT_MS", decimalBetween(100, 600_000), "an integer from 100 to 600000 (milliseconds)", () => 30_000)
  const resyncSeconds = yield* setting("RESYNC_SECONDS", decimalAtLeast(1), "an integer >= 1 (seconds)", () => 300)
  const watchIdleTimeoutMs = yield* setting("WATCH_IDLE_TIMEOUT_MS", decimalAtLeast(100), "an integer >= 100 (milliseconds)", () => 180_000)
  const port = yield* setting("PORT", decimalBetween(1, 65535), "a port number 1-65535", () => 8081)
  const host = yield* optionalString("HOST")
  const podName = yield* optionalString("POD_NAME")
  const podNamespace = yield* optionalString("POD_NAMESPACE")
  return {
    routerImage,
    routerImageExplicit: explicitImage !== undefined,
    pod: podName !== undefined && podNamespace !== undefined ? { name: podName, namespace: podNamespace } : undefined,
    watchNamespaces: namespaces,
    leaderElection: leaderElection === "true",
    leaseName,
    leaseNamespace,
    identity,
    leaseDurationSeconds,
    renewDeadlineMs,
    leaderRetryMs,
    maxParallelReconciles,
    apiTimeoutMs,
    resyncSeconds,
    watchIdleTimeoutMs,
    port,
    host,
    logLevel: yield* logLevelSetting,
    logFormat: yield* logFormatSetting
  }
})

export class ControllerConfig extends Context.Service<ControllerConfig, ControllerSettings>()("inference-router/ControllerConfig") {
  static readonly layer: Layer.Layer<ControllerConfig, SettingError> = Layer.effect(ControllerConfig, loadControllerSettings)
}
