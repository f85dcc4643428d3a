/**
 * The controller's pure function, over random valid InferenceServices: every
 * object passes the Kubernetes schemas, the env reaches the pod exactly as the
 * decision table says and the router's own parser accepts it, output is
 * deterministic, selectors match labels, owners are set.
 */
import { assert, describe, it } from "@effect/vitest"
import { ConfigProvider, Effect, Exit, Schema } from "effect"
import { Deployment } from "kubernetes-models/apps/v1/Deployment"
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler"
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget"
import { Service } from "kubernetes-models/v1/Service"
import { readFileSync } from "node:fs"
import { minMetricsIntervalMs, RouterSpec, RoutingSpec, UpstreamPolicySpec } from "../src/api/InferenceService.ts"
import {
  defaults,
  deniedEnvNames,
  desiredObjects,
  quantityValue,
  routerMemoryMi,
  type EnvDecision,
  envDecisions,
  envTableMarkdown,
  loadBoundSetting,
  ownerLabel,
  undecidedSettings
} from "../src/controller/Desired.ts"
import { checkSpec, kvEventsPublisher } from "../src/controller/SpecCheck.ts"
import { loadSettings, settingNames } from "../src/router/core/Config.ts"
import { defaultRouting, LoadBound } from "../src/router/routing/RoutingSettings.ts"
import { admit } from "./support/CrdValidator.ts"

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** Specs as users write them: valid KV endpoints, any router settings, either scaling mode. */
const SpecPlan = Schema.Struct({
  modelRef: Schema.Literals(["llama-3-8b", "mistral/7b:v0.2", "m"]),
  kv: Schema.Array(Schema.Struct({
    scheme: Schema.Literals(["", "redis://", "http://"]),
    host: Schema.Literals(["kv-0", "kv.ns.svc.cluster.local", "10.0.0.7"]),
    port: int(1, 65535)
  })).check(Schema.isMaxLength(4)),
  router: RouterSpec,
  scaling: Schema.Union([
    Schema.Struct({ replicas: int(0, 20) }),
    Schema.Struct({ minReplicas: int(1, 3), maxReplicas: int(3, 20), scaleMetric: Schema.Literals(["cpu", "queue"]), scaleTarget: int(1, 100) }),
    Schema.Struct({})
  ]),
  secret: Schema.optionalKey(Schema.Literals(["keys-a", "keys-b"])),
  /** KV_ENDPOINTS from a Secret (refused together with a non-empty kvEndpoints). */
  kvSecret: Schema.optionalKey(Schema.Literals(["redis-endpoints"])),
  image: Schema.optionalKey(Schema.Literals(["registry.local/router:1.2.3", "router@sha256:" + "a".repeat(64)])),
  podLabels: Schema.optionalKey(Schema.Record(Schema.Literals(["team", "tier"]), Schema.Literals(["a", "b-c"]))),
  extraEnv: Schema.optionalKey(Schema.Literals(["NODE_OPTIONS", "TZ"])),
  // Empty: the simulated model.
  upstreams: Schema.Array(Schema.Struct({
    url: Schema.Literals(["http://vllm-0:8000", "https://gw.example/v1", "dns+http://model-pods.models.svc:8000", "http://[fd00::7]:8000"]),
    weight: Schema.optionalKey(int(1, 1000)),
    version: Schema.optionalKey(Schema.Literals(["v1", "v2.1-rc"])),
    kvEvents: Schema.optionalKey(Schema.Literals([5557, "tcp://kv-pub.models.svc:5557", "tcp://[fd00::9]:5557"]))
  })).check(Schema.isMaxLength(3)),
  upstreamPolicy: Schema.optionalKey(UpstreamPolicySpec),
  // None, the cache-aware scheduler with its options, or anything the contract allows.
  routing: Schema.Union([
    Schema.Literal("none"),
    Schema.Struct({ scheduler: Schema.Literal("cache-aware"), loadBoundPercent: Schema.optionalKey(int(100, 1000)), metricsIntervalMs: Schema.optionalKey(int(0, 1000)) }),
    RoutingSpec
  ]),
  /** `routing` without upstreams too (refused), not only with them. */
  strayRouting: Schema.Boolean
})

const toSpec = (plan: typeof SpecPlan.Type): Record<string, unknown> => ({
  modelRef: plan.modelRef,
  kvEndpoints: plan.kv.map(({ host, port, scheme }) => `${scheme}${host}:${port}`),
  router: plan.router,
  ...plan.scaling,
  ...(plan.secret === undefined ? {} : { apiKeysSecretRef: { name: plan.secret } }),
  ...(plan.kvSecret === undefined ? {} : { kvEndpointsSecretRef: { name: plan.kvSecret, key: "endpoints" } }),
  ...(plan.image === undefined ? {} : { image: plan.image }),
  ...(plan.podLabels === undefined ? {} : { podLabels: plan.podLabels }),
  ...(plan.extraEnv === undefined ? {} : { env: [{ name: plan.extraEnv, value: "x" }] }),
  ...(plan.upstreams.length === 0 ? {} : { upstreams: plan.upstreams }),
  ...(plan.upstreamPolicy === undefined ? {} : { upstreamPolicy: plan.upstreamPolicy }),
  ...(plan.routing === "none" || (plan.upstreams.length === 0 && !plan.strayRouting) ? {} : { routing: plan.routing })
})

/** What the Secrets the specs name hold, as the kubelet would put them in the pod's env. */
const secretValues: Record<string, string> = { API_KEYS: "key-1,key-2", KV_ENDPOINTS: "redis://:s3cret@redis-0.redis:6379" }

const decisionOf = (variable: string) => envDecisions.find((d) => d.variable === variable && d.from === "secret") as Extract<EnvDecision, { from: "secret" }>

const owner = { name: "llama", namespace: "models", uid: "0b6c4f3e-1d9a-4b8e-9f1e-6a7c2d3e4f50" }
const settings = { routerImage: "inference-router:0.1.0" }

/** The spec as the API server stores it (defaulted), or undefined when it would refuse it. */
const admitted = (spec: Record<string, unknown>) => {
  const result = admit({ apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", metadata: { name: owner.name }, spec })
  return result.ok ? result.object.spec : undefined
}

describe("desired objects", () => {
  it("every router setting has a recorded decision", () => {
    assert.deepStrictEqual(undecidedSettings(), [])
    assert.deepStrictEqual(envDecisions.map((d) => d.variable), [...settingNames])
  })

  it("deploy/README.md shows the decision table the code uses", () => {
    const readme = readFileSync(new URL("../deploy/README.md", import.meta.url), "utf8")
    assert.include(readme, envTableMarkdown())
  })

  it.prop("for any valid InferenceService: schemas, env, parser, determinism, selectors, owners", [SpecPlan], ([plan]) => {
    const spec = toSpec(plan)
    // The only rules a plan can break are the CRD's cross-field ones; a plan that breaks one must be
    // refused by the CRD and by the controller alike (asserted, never skipped).
    const router = plan.router
    const upstreams = plan.upstreams
    const routing = spec.routing as RoutingSpec | undefined
    const cacheAware = routing?.scheduler === "cache-aware"
    const breaks = (router.shutdownDelayMs ?? 5_000) >= (router.shutdownTimeoutMs ?? 25_000) ||
      (router.headersTimeoutMs !== undefined && router.headersTimeoutMs > (router.requestTimeoutMs ?? 30_000)) ||
      (routing !== undefined && upstreams.length === 0) ||
      (!cacheAware && (routing?.loadBoundPercent !== undefined || routing?.metricsIntervalMs !== undefined)) ||
      (!cacheAware && upstreams.some((u) => u.kvEvents !== undefined)) ||
      upstreams.some((u) => u.url.startsWith("dns+") && typeof u.kvEvents === "string") ||
      (plan.kvSecret !== undefined && plan.kv.length > 0) ||
      (routing?.metricsIntervalMs !== undefined && routing.metricsIntervalMs > 0 && routing.metricsIntervalMs < minMetricsIntervalMs) ||
      upstreams.some((u, i) => typeof u.kvEvents === "number" && upstreams.some((v, j) => j !== i && v.url === u.url && v.kvEvents === u.kvEvents))
    const stored = admitted(spec)
    assert.strictEqual(stored === undefined, breaks, `the CRD on ${JSON.stringify(spec)}`)
    if (stored === undefined) {
      const refused = checkSpec(spec, owner.name)
      assert.strictEqual(refused._tag, "Invalid")
      if (refused._tag === "Invalid") {
        // Naming the field: a cross-field rule by its path first, a bound of one field by the schema's path last.
        assert.match(
          refused.message,
          /spec\.(router\.(shutdownDelayMs|headersTimeoutMs)|routing(\.loadBoundPercent|\.metricsIntervalMs)?|upstreams\[\d\]\.kvEvents|kvEndpointsSecretRef): |at \["routing"\]\["metricsIntervalMs"\]$/
        )
      }
      return
    }
    const check = checkSpec(stored, owner.name)
    // One KV events publisher named twice in forms the CRD cannot compare: the controller refuses it.
    const publishers = upstreams.map(kvEventsPublisher).filter((p) => p !== undefined)
    if (new Set(publishers).size < publishers.length) {
      assert.include(check._tag === "Invalid" ? check.message : "", "name one KV events publisher")
      return
    }
    assert.strictEqual(check._tag, "Valid", check._tag === "Invalid" ? check.message : "")
    if (check._tag !== "Valid") return
    const objects = desiredObjects(owner, check.spec, settings)
    const recheck = checkSpec(structuredClone(stored))
    assert.strictEqual(recheck._tag, "Valid")
    const again = desiredObjects(owner, (recheck as typeof check).spec, settings)
    assert.strictEqual(JSON.stringify(objects), JSON.stringify(again), "deterministic")

    new Deployment(objects.deployment as any).validate()
    new Service(objects.service as any).validate()
    new PodDisruptionBudget(objects.podDisruptionBudget as any).validate()
    if (objects.horizontalPodAutoscaler !== undefined) new HorizontalPodAutoscaler(objects.horizontalPodAutoscaler as any).validate()

    const deployment = objects.deployment as any
    const podLabels = deployment.spec.template.metadata.labels
    for (const [key, value] of Object.entries(deployment.spec.selector.matchLabels)) assert.strictEqual(podLabels[key], value)
    for (const [key, value] of Object.entries((objects.service.spec as any).selector)) assert.strictEqual(podLabels[key], value)
    for (const [key, value] of Object.entries((objects.podDisruptionBudget.spec as any).selector.matchLabels)) {
      assert.strictEqual(podLabels[key], value)
    }
    assert.strictEqual(podLabels[ownerLabel], owner.name)

    const children = [objects.deployment, objects.service, objects.podDisruptionBudget, objects.horizontalPodAutoscaler]
    for (const child of children) {
      if (child === undefined) continue
      assert.deepStrictEqual(child.metadata.ownerReferences, [{
        apiVersion: "inference-router.dev/v1alpha1",
        kind: "InferenceService",
        name: owner.name,
        uid: owner.uid,
        controller: true,
        blockOwnerDeletion: true
      }])
      assert.strictEqual(child.metadata.namespace, owner.namespace)
    }

    // An HPA owns the count exactly when the spec autoscales.
    assert.strictEqual(objects.horizontalPodAutoscaler !== undefined, "replicas" in deployment.spec === false)
    assert.strictEqual(objects.horizontalPodAutoscaler !== undefined, stored.maxReplicas !== undefined)
    assert.deepStrictEqual(
      decisionOf("API_KEYS").ref(check.spec),
      stored.apiKeysSecretRef === undefined ? undefined : { name: stored.apiKeysSecretRef.name, key: "keys" }
    )
    assert.deepStrictEqual(decisionOf("KV_ENDPOINTS").ref(check.spec), stored.kvEndpointsSecretRef)

    // The env, exactly as the table says.
    const container = deployment.spec.template.spec.containers[0]
    const env = new Map<string, any>(container.env.map((e: any) => [e.name, e]))
    for (const decision of envDecisions) {
      const item = env.get(decision.variable)
      switch (decision.from) {
        case "spec":
          assert.strictEqual(item?.value, decision.value(check.spec), decision.variable)
          break
        case "fixed":
          assert.strictEqual(item?.value, decision.value, decision.variable)
          break
        case "identity":
          assert.strictEqual(item?.value, decision.value(owner, check.spec), decision.variable)
          break
        case "downward":
          assert.strictEqual(item?.valueFrom?.fieldRef?.fieldPath, decision.fieldPath)
          break
        case "secret":
          // From the Secret when the spec names one (never also as text), else the plain field's value, if any.
          assert.deepStrictEqual(item?.valueFrom?.secretKeyRef, decision.ref(check.spec), decision.variable)
          assert.strictEqual(item?.value, decision.ref(check.spec) === undefined ? decision.plain?.value(check.spec) : undefined, decision.variable)
          break
        case "router":
          assert.isUndefined(item, decision.variable)
      }
    }
    assert.strictEqual(container.image, stored.image ?? settings.routerImage)
    assert.strictEqual(
      deployment.spec.template.spec.terminationGracePeriodSeconds,
      Math.ceil(stored.router.shutdownTimeoutMs / 1000) + defaults.graceMarginSeconds
    )

    // The router's own parser accepts the pod's env (downward API resolved as a kubelet would).
    const podEnv: Record<string, string> = { POD_NAME: `${owner.name}-router-abc12`, HOSTNAME: `${owner.name}-router-abc12` }
    for (const item of container.env) {
      if (typeof item.value === "string") podEnv[item.name] = item.value
      else if (item.valueFrom?.secretKeyRef !== undefined) podEnv[item.name] = secretValues[item.name]
    }
    const parsed = Effect.runSyncExit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: podEnv }))))
    assert.isTrue(Exit.isSuccess(parsed), JSON.stringify(podEnv))
    if (Exit.isSuccess(parsed)) {
      assert.strictEqual(parsed.value.modelRef, stored.modelRef)
      assert.deepStrictEqual(
        parsed.value.kvEndpoints.map((e) => e.shown),
        stored.kvEndpointsSecretRef === undefined ? stored.kvEndpoints : ["redis://***@redis-0.redis:6379"]
      )
      assert.strictEqual(parsed.value.maxConcurrency, stored.router.maxConcurrency ?? 10)
      assert.strictEqual(parsed.value.podName, podEnv.POD_NAME)
      assert.strictEqual(parsed.value.apiKeys.length, stored.apiKeysSecretRef === undefined ? 0 : 2)
      // The scheduler and each upstream's KV events, as the spec says, through the router's own parser.
      const upstream = parsed.value.upstream
      assert.strictEqual(upstream === undefined, upstreams.length === 0)
      if (upstream !== undefined) {
        assert.deepStrictEqual(upstream.routing, {
          scheduler: stored.routing?.scheduler ?? defaultRouting.scheduler,
          loadBound: stored.routing?.loadBoundPercent === undefined ? defaultRouting.loadBound : stored.routing.loadBoundPercent / 100,
          metricsIntervalMs: stored.routing?.metricsIntervalMs ?? defaultRouting.metricsIntervalMs,
          routeHeaderCachedTokens: false,
          // The replicas of this InferenceService share routing state under its own name, not its model's.
          ...(stored.routing?.scheduler === "cache-aware" ? { sharedScope: `${owner.namespace}/${owner.name}` } : {})
        })
        assert.deepStrictEqual(upstream.targets.map((t) => t.kvEvents), upstreams.map((u) => u.kvEvents))
      }
    }
  }, { arbitrary: { runs: 150 } })

  it("two InferenceServices of one modelRef do not share routing state: UPSTREAM_SHARED_SCOPE is <namespace>/<name>, set where the cache-aware scheduler reads it", () => {
    const spec = { modelRef: "llama-3-8b", kvEndpoints: ["redis://redis-0:6379"], upstreams: [{ url: "http://vllm-0:8000" }], routing: { scheduler: "cache-aware" } }
    const scopes = [{ namespace: "team-a", name: "chat" }, { namespace: "team-b", name: "chat" }, { namespace: "team-a", name: "batch" }].map((who) => {
      const check = checkSpec(spec, who.name)
      assert.strictEqual(check._tag, "Valid")
      const env = desiredObjects({ ...who, uid: "u" }, (check as Extract<typeof check, { _tag: "Valid" }>).spec, settings).env
      return env.find((e) => e.name === "UPSTREAM_SHARED_SCOPE")?.value
    })
    assert.deepStrictEqual(scopes, ["team-a/chat", "team-b/chat", "team-a/batch"])
    // Not set where nothing reads it: the least-request scheduler, or no upstreams.
    for (const other of [{ ...spec, routing: { scheduler: "least-request" } }, { ...spec, routing: undefined }, { modelRef: "m" }]) {
      const check = checkSpec(JSON.parse(JSON.stringify(other)))
      assert.strictEqual(check._tag, "Valid")
      if (check._tag === "Valid") assert.notInclude(desiredObjects(owner, check.spec, settings).env.map((e) => e.name), "UPSTREAM_SHARED_SCOPE")
    }
    // The router reads it as the scope of its shared state; unset, MODEL_REF.
    const read = (env: Record<string, string>) =>
      Effect.runSync(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MODEL_BACKEND: "upstream", UPSTREAMS: "http://a:1", ...env } }))))
    assert.strictEqual(read({ UPSTREAM_SHARED_SCOPE: "team-a/chat" }).upstream?.routing.sharedScope, "team-a/chat")
    assert.isUndefined(read({}).upstream?.routing.sharedScope)
    const bad = Effect.runSyncExit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: { MODEL_BACKEND: "upstream", UPSTREAMS: "http://a:1", UPSTREAM_SHARED_SCOPE: "a b" } }))))
    assert.isTrue(Exit.isFailure(bad))
  })

  it("KV endpoints from a Secret: KV_ENDPOINTS through valueFrom.secretKeyRef, never as text; not together with kvEndpoints", () => {
    const spec = { modelRef: "m", kvEndpointsSecretRef: { name: "redis-auth", key: "endpoints" } }
    assert.isDefined(admitted(spec))
    const check = checkSpec(spec)
    assert.strictEqual(check._tag, "Valid", check._tag === "Invalid" ? check.message : "")
    if (check._tag !== "Valid") return
    const objects = desiredObjects(owner, check.spec, settings)
    const kv = objects.env.filter((e) => e.name === "KV_ENDPOINTS")
    assert.deepStrictEqual(kv, [{ name: "KV_ENDPOINTS", valueFrom: { secretKeyRef: { name: "redis-auth", key: "endpoints" } } }])
    assert.deepStrictEqual((objects.deployment.spec as any).template.spec.containers[0].env.filter((e: any) => e.name === "KV_ENDPOINTS"), kv)
    // Plain kvEndpoints are still plain text, as before.
    const plain = checkSpec({ modelRef: "m", kvEndpoints: ["redis://redis-0:6379"] })
    assert.strictEqual(plain._tag, "Valid")
    if (plain._tag === "Valid") {
      assert.deepInclude(desiredObjects(owner, plain.spec, settings).env, { name: "KV_ENDPOINTS", value: "redis://redis-0:6379" })
    }
    // Both: refused by the CRD and by the controller, naming the field.
    const both = { ...spec, kvEndpoints: ["redis://redis-0:6379"] }
    assert.isUndefined(admitted(both))
    const refused = checkSpec(both)
    assert.strictEqual(refused._tag, "Invalid")
    if (refused._tag === "Invalid") assert.include(refused.message, "spec.kvEndpointsSecretRef: set kvEndpoints or kvEndpointsSecretRef, not both")
    // An empty kvEndpoints list beside the Secret says nothing: accepted.
    assert.isDefined(admitted({ ...spec, kvEndpoints: [] }))
    assert.strictEqual(checkSpec({ ...spec, kvEndpoints: [] })._tag, "Valid")
    // The key is required (a Secret holds many).
    assert.isUndefined(admitted({ modelRef: "m", kvEndpointsSecretRef: { name: "redis-auth" } }))
    assert.strictEqual(checkSpec({ modelRef: "m", kvEndpointsSecretRef: { name: "redis-auth" } })._tag, "Invalid")
  })

  it("a spec the router would reject is reported with the router's own message", () => {
    const check = checkSpec({ modelRef: "m", kvEndpoints: ["kv:70000"] })
    assert.strictEqual(check._tag, "Invalid")
    if (check._tag === "Invalid") assert.include(check.message, "KV_ENDPOINTS")
  })

  it("upstreams become MODEL_BACKEND=upstream and UPSTREAMS; a bad one is the router's own message", () => {
    const check = checkSpec({
      modelRef: "m",
      upstreams: [{ url: "http://vllm-v1:8000", weight: 90, version: "v1" }, { url: "dns+http://canary-pods.models.svc:8000", weight: 10, version: "v2" }],
      upstreamPolicy: { retries: 1, idleTimeoutMs: 5000 }
    })
    assert.strictEqual(check._tag, "Valid")
    if (check._tag !== "Valid") return
    const env = Object.fromEntries(desiredObjects(owner, check.spec, settings).env.map((e) => [e.name, e.value]))
    assert.deepInclude(env, {
      MODEL_BACKEND: "upstream",
      UPSTREAMS: "http://vllm-v1:8000;weight=90;version=v1,dns+http://canary-pods.models.svc:8000;weight=10;version=v2",
      UPSTREAM_RETRIES: "1",
      UPSTREAM_IDLE_TIMEOUT_MS: "5000"
    })
    const bad = checkSpec({ modelRef: "m", upstreams: [{ url: "dns+http://10.0.0.1:8000" }] })
    assert.strictEqual(bad._tag, "Invalid")
    if (bad._tag === "Invalid") assert.include(bad.message, "dns+ needs a host name")
  })

  it("routing and KV events become UPSTREAM_SCHEDULER, UPSTREAM_LOAD_BOUND, UPSTREAM_METRICS_INTERVAL_MS and ;kv-events= items", () => {
    const check = checkSpec({
      modelRef: "m",
      kvEndpoints: ["redis://redis-0.redis:6379"],
      upstreams: [
        { url: "http://vllm-0:8000", kvEvents: 5557 },
        { url: "http://vllm-1:8000", weight: 2, kvEvents: "tcp://kv-pub.models.svc:5557" },
        { url: "dns+http://vllm-pods.models.svc:8000", version: "v2", kvEvents: 5557 },
        { url: "http://vllm-3:8000" }
      ],
      routing: { scheduler: "cache-aware", loadBoundPercent: 150, metricsIntervalMs: 50 }
    }, owner.name)
    assert.strictEqual(check._tag, "Valid", check._tag === "Invalid" ? check.message : "")
    if (check._tag !== "Valid") return
    const env = Object.fromEntries(desiredObjects(owner, check.spec, settings).env.map((e) => [e.name, e.value]))
    assert.deepInclude(env, {
      KV_ENDPOINTS: "redis://redis-0.redis:6379",
      UPSTREAMS: "http://vllm-0:8000;kv-events=5557,http://vllm-1:8000;weight=2;kv-events=tcp://kv-pub.models.svc:5557," +
        "dns+http://vllm-pods.models.svc:8000;version=v2;kv-events=5557,http://vllm-3:8000",
      UPSTREAM_SCHEDULER: "cache-aware",
      UPSTREAM_LOAD_BOUND: "1.5",
      UPSTREAM_METRICS_INTERVAL_MS: "50",
      // Shared routing state in that Redis under this InferenceService's own name, not its modelRef's.
      UPSTREAM_SHARED_SCOPE: "models/llama"
    })
    const parsed = Effect.runSyncExit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))
    assert.isTrue(Exit.isSuccess(parsed))
    if (Exit.isSuccess(parsed)) {
      assert.deepStrictEqual(parsed.value.upstream?.routing, { scheduler: "cache-aware", loadBound: 1.5, metricsIntervalMs: 50, sharedScope: "models/llama", routeHeaderCachedTokens: false })
      assert.deepStrictEqual(parsed.value.upstream?.targets.map((t) => t.kvEvents), [5557, "tcp://kv-pub.models.svc:5557", 5557, undefined])
    }
    // Unset: the router's defaults (nothing rendered).
    const plain = checkSpec({ modelRef: "m", upstreams: [{ url: "http://vllm-0:8000" }] })
    assert.strictEqual(plain._tag, "Valid")
    if (plain._tag === "Valid") {
      const names = desiredObjects(owner, plain.spec, settings).env.map((e) => e.name)
      for (const name of ["UPSTREAM_SCHEDULER", "UPSTREAM_LOAD_BOUND", "UPSTREAM_METRICS_INTERVAL_MS"]) assert.notInclude(names, name)
    }
  })

  it("every load bound percentage renders a value the router reads back as that percentage / 100", () => {
    for (let percent = 100; percent <= 1000; percent++) {
      assert.strictEqual(Schema.decodeUnknownSync(LoadBound)(loadBoundSetting(percent)), percent / 100, String(percent))
    }
    assert.strictEqual(loadBoundSetting(Math.round(defaultRouting.loadBound * 100)), String(defaultRouting.loadBound))
  })

  it("routing fields where the router does not read them are refused, naming the field", () => {
    const upstream = { url: "http://vllm-0:8000" }
    for (const [spec, words] of [
      [{ routing: { scheduler: "cache-aware" } }, "spec.routing: routing needs upstreams"],
      [{ upstreams: [upstream], routing: { loadBoundPercent: 150 } }, "spec.routing.loadBoundPercent: "],
      [{ upstreams: [upstream], routing: { scheduler: "least-request", metricsIntervalMs: 50 } }, "spec.routing.metricsIntervalMs: "],
      [{ upstreams: [upstream, { ...upstream, kvEvents: 5557 }] }, "spec.upstreams[1].kvEvents: upstreams[].kvEvents needs routing.scheduler: cache-aware"],
      [{ upstreams: [{ url: "dns+http://pods.ns.svc:8000", kvEvents: "tcp://kv:5557" }], routing: { scheduler: "cache-aware" } }, "spec.upstreams[0].kvEvents: kvEvents of a dns+ url must be a port"],
      [{ upstreams: [{ ...upstream, kvEvents: 70000 }], routing: { scheduler: "cache-aware" } }, "kvEvents"],
      [{ upstreams: [{ ...upstream, kvEvents: "tcp://*:5557" }], routing: { scheduler: "cache-aware" } }, "kvEvents"]
    ] as const) {
      const check = checkSpec({ modelRef: "m", ...spec }, owner.name)
      assert.strictEqual(check._tag, "Invalid", JSON.stringify(spec))
      if (check._tag === "Invalid") assert.include(check.message, words)
    }
    // Both set: one problem naming both, not the same sentence twice.
    const both = checkSpec({ modelRef: "m", upstreams: [upstream], routing: { loadBoundPercent: 150, metricsIntervalMs: 50 } }, owner.name)
    assert.strictEqual(
      both._tag === "Invalid" ? both.message : "",
      "invalid spec: spec.routing.loadBoundPercent: loadBoundPercent and metricsIntervalMs need scheduler: cache-aware (the least-request scheduler reads neither loadBoundPercent nor metricsIntervalMs)"
    )
  })

  it("a spec the contract's schema rejects is reported, naming the field", () => {
    const check = checkSpec({ modelRef: 7 })
    assert.strictEqual(check._tag, "Invalid")
    if (check._tag === "Invalid") assert.include(check.message, "modelRef")
  })

  describe("resources", () => {
    const resourcesOf = (spec: Record<string, unknown>) => {
      const check = checkSpec({ modelRef: "m", ...spec }, owner.name)
      assert.strictEqual(check._tag, "Valid", check._tag === "Invalid" ? check.message : "")
      return (desiredObjects(owner, (check as any).spec, settings).deployment.spec as any).template.spec.containers[0].resources
    }
    const fits = (resources: any) => {
      for (const [name, request] of Object.entries(resources.requests)) {
        const limit = resources.limits[name]
        if (limit !== undefined) assert.isAtMost(quantityValue(request as string), quantityValue(limit), `${name}: ${request} <= ${limit}`)
      }
    }

    it("any of cpu, memory may be set alone, the others keep the defaults", () => {
      const resources = resourcesOf({ resources: { requests: { cpu: "500m", memory: "256Mi" } } })
      assert.deepStrictEqual(resources.requests, { cpu: "500m", memory: "256Mi" })
      assert.deepStrictEqual(resources.limits, { cpu: "1", memory: "256Mi" })
      assert.deepStrictEqual(resourcesOf({ resources: { limits: { memory: "1Gi" } } }).limits, { cpu: "1", memory: "1Gi" })
    })

    it("a request over a default limit raises the limit; a limit under a default request lowers the request: never requests > limits", () => {
      const raised = resourcesOf({ resources: { requests: { cpu: "2" } } })
      assert.strictEqual(raised.limits.cpu, "2")
      fits(raised)
      const lowered = resourcesOf({ resources: { limits: { cpu: "100m", memory: "128Mi" } } })
      assert.deepStrictEqual(lowered.requests, { cpu: "100m", memory: "128Mi" })
      fits(lowered)
    })

    it("requests over limits, both set in the spec: refused, naming the field", () => {
      const check = checkSpec({ modelRef: "m", resources: { requests: { cpu: "2" }, limits: { cpu: "1" } } })
      assert.strictEqual(check._tag, "Invalid")
      if (check._tag === "Invalid") assert.include(check.message, "spec.resources.requests.cpu")
    })

    it("the default memory follows maxConcurrency: the fixed defaults up to the router's default, then 256 KiB a slot", () => {
      assert.deepStrictEqual(resourcesOf({}).requests, defaults.resources.requests)
      assert.deepStrictEqual(resourcesOf({}).limits, defaults.resources.limits)
      assert.deepStrictEqual(routerMemoryMi(10), { request: 160, limit: 256 })
      assert.deepStrictEqual(routerMemoryMi(2_000), { request: 64 + 500, limit: 96 + 500 })
      const big = resourcesOf({ router: { maxConcurrency: 2_000 } })
      assert.deepStrictEqual(big.limits, { cpu: "1", memory: "596Mi" })
      assert.deepStrictEqual(big.requests, { cpu: "250m", memory: "564Mi" })
      // A limit the spec sets is kept as it is (the docs say what it should be).
      assert.strictEqual(resourcesOf({ router: { maxConcurrency: 2_000 }, resources: { limits: { memory: "2Gi" } } }).limits.memory, "2Gi")
    })
  })

  describe("spec.env", () => {
    it("may set none of the settings the controller sets or decides: the deny list is the decision table's", () => {
      for (const name of ["MODEL_BACKEND", "UPSTREAMS", "UPSTREAM_RETRIES", "UPSTREAM_MAX_CONCURRENCY", "UPSTREAM_SCHEDULER", "UPSTREAM_LOAD_BOUND", "UPSTREAM_METRICS_INTERVAL_MS", "MAX_CONCURRENCY", "PORT", "HOST", "API_KEYS_FILE"]) {
        assert.include(deniedEnvNames(), name)
        const check = checkSpec({ modelRef: "m", env: [{ name, value: "x" }] })
        assert.strictEqual(check._tag, "Invalid", name)
        if (check._tag === "Invalid") assert.include(check.message, "spec.env[0].name")
      }
      for (const decision of envDecisions) {
        if (decision.from !== "router" || !decision.viaEnv) assert.include(deniedEnvNames(), decision.variable)
      }
      assert.strictEqual(checkSpec({ modelRef: "m", env: [{ name: "SIM_SEED", value: "7" }, { name: "NODE_OPTIONS", value: "" }] })._tag, "Valid")
    })

    it("a name listed twice is refused (server-side apply refuses duplicate list-map keys)", () => {
      const check = checkSpec({ modelRef: "m", env: [{ name: "TZ", value: "UTC" }, { name: "TZ", value: "CET" }] })
      assert.strictEqual(check._tag, "Invalid")
      if (check._tag === "Invalid") assert.include(check.message, "spec.env[1].name: TZ is listed twice")
    })
  })

  it("names: a DNS-1035 label of at most 56 characters (its Service is <name>-router)", () => {
    for (const name of ["llama.v3", "3b-model", "Llama", "x".repeat(57)]) {
      const check = checkSpec({ modelRef: "m" }, name)
      assert.strictEqual(check._tag, "Invalid", name)
      if (check._tag === "Invalid") assert.include(check.message, "metadata.name")
    }
    assert.strictEqual(checkSpec({ modelRef: "m" }, "llama-v3")._tag, "Valid")
  })
})
