/**
 * The heart of the controller, and pure: from an InferenceService (and the
 * controller's settings) to the objects that serve it. Same input, same
 * output, byte for byte; no clock, no randomness, no API calls. `render` prints
 * it, the reconciler applies it, `deploy/base` is its output for the example.
 */
import { defaults as routerDefaults, settingNames } from "../router/core/Settings.ts"
import { apiVersion, type InferenceServiceSpec, kind } from "../api/InferenceService.ts"

/** The controller's own defaults; the CRD's `default:` values are the same (a test checks). */
export const defaults = {
  shutdownDelayMs: 5_000,
  shutdownTimeoutMs: 25_000,
  replicas: 1,
  minReplicas: 1,
  scaleMetric: "cpu" as const,
  scaleTarget: { cpu: 70, queue: 2 },
  apiKeysSecretKey: "keys",
  resources: { requests: { cpu: "250m", memory: "160Mi" }, limits: { cpu: "1", memory: "256Mi" } },
  /**
   * Memory the router is allowed per request slot (MAX_CONCURRENCY) on top of
   * a base, for the default memory request and limit. Conservative: 2,000
   * open streams were measured at 301-445 MB RSS (about 0.2 MiB a stream
   * over an idle router's ~60 MB); 256 KiB a slot leaves room for the bodies
   * and buffers a busy stream holds.
   */
  memoryPerSlotKi: 256,
  memoryBaseMi: { request: 64, limit: 96 },
  /** The kubelet's SIGKILL comes this long after SHUTDOWN_TIMEOUT_MS, so the drain always ends first. */
  graceMarginSeconds: 5
}

export const routerPort = 8080

const quantitySuffixes: Record<string, number> = {
  "": 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12, P: 1e15, E: 1e18,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40, Pi: 2 ** 50, Ei: 2 ** 60
}

/** A Kubernetes quantity's value ("500m" is 0.5, "1Gi" is 2^30), for comparing requests with limits. */
export const quantityValue = (quantity: string | number): number => {
  if (typeof quantity === "number") return quantity
  const match = /^([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)$/.exec(quantity)
  return match === null ? Number.NaN : Number(match[1]) * (quantitySuffixes[match[2]] ?? Number.NaN)
}

/**
 * The default memory request and limit for `maxConcurrency` request slots, in
 * MiB: the base plus `memoryPerSlotKi` a slot, never below the fixed defaults
 * (160Mi / 256Mi, which fit the router's default of 10 slots).
 */
export const routerMemoryMi = (maxConcurrency: number) => {
  const slots = Math.ceil(maxConcurrency * defaults.memoryPerSlotKi / 1024)
  return {
    request: Math.max(quantityValue(defaults.resources.requests.memory) / 2 ** 20, defaults.memoryBaseMi.request + slots),
    limit: Math.max(quantityValue(defaults.resources.limits.memory) / 2 ** 20, defaults.memoryBaseMi.limit + slots)
  }
}

type ResourceName = "cpu" | "memory" | "ephemeral-storage"
type Resources = { requests: Partial<Record<ResourceName, string | number>>; limits: Partial<Record<ResourceName, string | number>> }

/**
 * The router container's resources: the spec's, each filled in from the
 * defaults (memory following maxConcurrency). A default never contradicts
 * what the spec sets: a default limit below a request the spec sets is raised
 * to it, a default request above a limit the spec sets is lowered to it (the
 * API server refuses requests > limits). Both set by the spec and
 * contradictory: the spec check refuses it (`resourceProblems`).
 */
export const routerResources = (spec: InferenceServiceSpec): Resources => {
  const memory = routerMemoryMi(spec.router?.maxConcurrency ?? routerDefaults.maxConcurrency)
  const given = { requests: spec.resources?.requests ?? {}, limits: spec.resources?.limits ?? {} }
  const requests: Resources["requests"] = { cpu: defaults.resources.requests.cpu, memory: `${memory.request}Mi`, ...given.requests }
  const limits: Resources["limits"] = { cpu: defaults.resources.limits.cpu, memory: `${memory.limit}Mi`, ...given.limits }
  for (const name of ["cpu", "memory", "ephemeral-storage"] as const) {
    const request = requests[name]
    const limit = limits[name]
    if (request === undefined || limit === undefined || quantityValue(request) <= quantityValue(limit)) continue
    if (given.limits[name] === undefined) limits[name] = request
    else if (given.requests[name] === undefined) requests[name] = limit
  }
  return { requests, limits }
}

/** Requests over limits that the spec sets both of, with the field's path. */
export const resourceProblems = (spec: InferenceServiceSpec): ReadonlyArray<string> => {
  const { limits, requests } = spec.resources ?? {}
  const problems: Array<string> = []
  for (const name of ["cpu", "memory", "ephemeral-storage"] as const) {
    const request = requests?.[name]
    const limit = limits?.[name]
    if (request !== undefined && limit !== undefined && quantityValue(request) > quantityValue(limit)) {
      problems.push(`spec.resources.requests.${name}: ${request} is more than spec.resources.limits.${name} (${limit}); the API server refuses requests over limits`)
    }
  }
  return problems
}

/** Where each router setting comes from: the one table the code and deploy/README.md share. */
export type EnvDecision =
  | {
    readonly variable: string
    readonly from: "spec"
    readonly field: string
    readonly value: (spec: InferenceServiceSpec) => string | undefined
    /** What happens when the field is unset; default: the router's default applies. */
    readonly unset?: string
  }
  | { readonly variable: string; readonly from: "fixed"; readonly value: string; readonly why: string }
  | { readonly variable: string; readonly from: "downward"; readonly fieldPath: string; readonly why: string }
  | {
    readonly variable: string
    readonly from: "secret"
    readonly field: string
    /** The Secret's key the variable comes from (`valueFrom.secretKeyRef`), when the spec names one. */
    readonly ref: (spec: InferenceServiceSpec) => SecretKeyRef | undefined
    readonly why: string
    /** A plain value the spec may give instead, in the CR and the Deployment as text (never both: the CRD and the spec check refuse it). */
    readonly plain?: {
      readonly field: string
      readonly value: (spec: InferenceServiceSpec) => string | undefined
    }
  }
  | {
    readonly variable: string
    readonly from: "identity"
    /** From the InferenceService's namespace and name (and its spec: when the router reads it). */
    readonly value: (identity: Identity, spec: InferenceServiceSpec) => string | undefined
    readonly why: string
  }
  | {
    readonly variable: string
    readonly from: "router"
    readonly why: string
    /** Whether `spec.env` may set it (the CRD and the spec check refuse the others). */
    readonly viaEnv: boolean
  }

/** Which InferenceService: its namespace and name. */
export interface Identity {
  readonly namespace: string
  readonly name: string
}

/** A key of a Secret in the InferenceService's namespace (a container's `env[].valueFrom.secretKeyRef`). */
export interface SecretKeyRef {
  readonly name: string
  readonly key: string
}

/** Settings the Deployment leaves unset (the router's default), each named: a new one gets a decision only when someone makes one. */
const leftToRouter = (why: string, viaEnv: boolean, ...variables: ReadonlyArray<string>): Array<EnvDecision> =>
  variables.map((variable) => ({ variable, from: "router", why, viaEnv }))

const rarelyPerService = "rarely differs per service; set it through `spec.env`"

const hasUpstreams = (spec: InferenceServiceSpec) => spec.upstreams !== undefined && spec.upstreams.length > 0

const upstreamField = (variable: string, field: keyof NonNullable<InferenceServiceSpec["upstreamPolicy"]>): EnvDecision => ({
  variable,
  from: "spec",
  field: `upstreamPolicy.${field}`,
  value: (spec) => {
    const value = spec.upstreamPolicy?.[field]
    return value === undefined || !hasUpstreams(spec) ? undefined : String(value)
  }
})

/** `routing.loadBoundPercent` as the router's UPSTREAM_LOAD_BOUND: 125 is "1.25" (at most two decimals, as the router reads them). */
export const loadBoundSetting = (percent: number): string => String(percent / 100)

/** A `routing` field: only with upstreams (the router reads UPSTREAM_* only with MODEL_BACKEND=upstream). */
const routingField = (
  variable: string,
  field: keyof NonNullable<InferenceServiceSpec["routing"]>,
  format: (value: string | number) => string = String
): EnvDecision => ({
  variable,
  from: "spec",
  field: `routing.${field}`,
  value: (spec) => {
    const value = spec.routing?.[field]
    return value === undefined || !hasUpstreams(spec) ? undefined : format(value)
  }
})

/** One UPSTREAMS item: the router's `url;weight=…;version=…;kv-events=…` (upstream/Targets.ts). */
const upstreamItem = (upstream: NonNullable<InferenceServiceSpec["upstreams"]>[number]): string =>
  [
    upstream.url,
    ...(upstream.weight === undefined ? [] : [`weight=${upstream.weight}`]),
    ...(upstream.version === undefined ? [] : [`version=${upstream.version}`]),
    ...(upstream.kvEvents === undefined ? [] : [`kv-events=${upstream.kvEvents}`])
  ].join(";")

/** The router's UPSTREAM_SHARED_SCOPE for an InferenceService: names its shared routing state in Redis. */
export const sharedScopeOf = (identity: Identity): string => `${identity.namespace}/${identity.name}`

const routerField = (variable: string, field: keyof NonNullable<InferenceServiceSpec["router"]>, fallback?: number): EnvDecision => ({
  variable,
  from: "spec",
  field: `router.${field}`,
  ...(fallback === undefined ? {} : { unset: `the controller's default, ${fallback}` }),
  value: (spec) => {
    const value = spec.router?.[field] ?? fallback
    return value === undefined ? undefined : String(value)
  }
})

export const envDecisions: ReadonlyArray<EnvDecision> = [
  { variable: "MODEL_REF", from: "spec", field: "modelRef", unset: "not allowed, the field is required", value: (spec) => spec.modelRef },
  routerField("MAX_CONCURRENCY", "maxConcurrency"),
  routerField("MAX_QUEUE", "maxQueue"),
  routerField("QUEUE_TIMEOUT_MS", "queueTimeoutMs"),
  routerField("OVERLOAD_STATUS", "overloadStatus"),
  {
    variable: "KV_ENDPOINTS",
    from: "secret",
    field: "kvEndpointsSecretRef",
    ref: (spec) => spec.kvEndpointsSecretRef,
    why: "the key holds the comma-separated list (a `redis://` URL may carry a password); the controller never reads it. Or, as plain text in the InferenceService and the Deployment, `spec.kvEndpoints`; neither: none (`[]`)",
    plain: {
      field: "kvEndpoints",
      value: (spec) => spec.kvEndpoints === undefined || spec.kvEndpoints.length === 0 ? undefined : spec.kvEndpoints.join(",")
    }
  },
  {
    variable: "MODEL_BACKEND",
    from: "spec",
    field: "upstreams",
    unset: "the simulated model (`simulated`); `upstream` when the list has items",
    value: (spec) => spec.upstreams !== undefined && spec.upstreams.length > 0 ? "upstream" : undefined
  },
  {
    variable: "UPSTREAMS",
    from: "spec",
    field: "upstreams",
    unset: "none",
    value: (spec) => spec.upstreams === undefined || spec.upstreams.length === 0 ? undefined : spec.upstreams.map(upstreamItem).join(",")
  },
  upstreamField("UPSTREAM_MAX_CONCURRENCY", "maxConcurrency"),
  upstreamField("UPSTREAM_CONNECT_TIMEOUT_MS", "connectTimeoutMs"),
  upstreamField("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "firstByteTimeoutMs"),
  upstreamField("UPSTREAM_IDLE_TIMEOUT_MS", "idleTimeoutMs"),
  upstreamField("UPSTREAM_HEALTH_INTERVAL_MS", "healthIntervalMs"),
  ...leftToRouter(rarelyPerService, true, "UPSTREAM_HEALTH_TIMEOUT_MS"),
  upstreamField("UPSTREAM_EJECT_AFTER", "ejectAfter"),
  upstreamField("UPSTREAM_EJECT_BASE_MS", "ejectBaseMs"),
  upstreamField("UPSTREAM_MAX_EJECTED_PERCENT", "maxEjectedPercent"),
  upstreamField("UPSTREAM_RETRIES", "retries"),
  ...leftToRouter(rarelyPerService, true, "UPSTREAM_RETRY_BUDGET_PERCENT", "UPSTREAM_RETRY_BUDGET_MIN", "UPSTREAM_DNS_REFRESH_MS", "UPSTREAM_PANIC_THRESHOLD_PERCENT", "UPSTREAM_MAX_BODY_BYTES", "UPSTREAM_MAX_EVENT_BYTES", "UPSTREAM_REQUEST_TIMEOUT_MS"),
  routingField("UPSTREAM_SCHEDULER", "scheduler"),
  routingField("UPSTREAM_LOAD_BOUND", "loadBoundPercent", (percent) => loadBoundSetting(Number(percent))),
  routingField("UPSTREAM_METRICS_INTERVAL_MS", "metricsIntervalMs"),
  {
    variable: "UPSTREAM_SHARED_SCOPE",
    from: "identity",
    value: (identity, spec) => hasUpstreams(spec) && spec.routing?.scheduler === "cache-aware" ? sharedScopeOf(identity) : undefined,
    why: "`<namespace>/<name>`, with `spec.routing.scheduler: cache-aware` (the only reader): the replicas of one InferenceService share their routing state in a Redis of `kvEndpoints`, and another InferenceService of the same `modelRef` (other servers) does not"
  },
  ...leftToRouter(
    "whether answers show the predicted cached tokens (off: they tell a client about others' prompts); set it through `spec.env`",
    true,
    "UPSTREAM_ROUTE_HEADER_CACHED_TOKENS"
  ),
  routerField("SIM_LATENCY_MS", "simLatencyMs"),
  ...leftToRouter(
    "tuning of the simulated model, not a property of the service; set it through `spec.env`",
    true,
    "SIM_MODE",
    "SIM_SEED",
    "SIM_TTFT_MS",
    "SIM_TTFT_STDDEV_MS",
    "SIM_ITL_MS",
    "SIM_ITL_STDDEV_MS",
    "SIM_LOAD_FACTOR",
    "SIM_BLOCK_SIZE",
    "SIM_KV_BLOCKS",
    "SIM_MAX_BATCHED_TOKENS",
    "SIM_PREFILL_US_PER_TOKEN",
    "SIM_KV_EVENTS_ENDPOINT",
    "SIM_KV_EVENTS_TOPIC",
    "SIM_KV_EVENTS_FORMAT",
    "SIM_MAX_TOKENS",
    "SIM_MAX_MODEL_LEN",
    "SIM_FAILURE_RATE",
    "SIM_FAILURE_TYPES"
  ),
  routerField("MAX_BODY_BYTES", "maxBodyBytes"),
  routerField("SHUTDOWN_DELAY_MS", "shutdownDelayMs", defaults.shutdownDelayMs),
  routerField("SHUTDOWN_TIMEOUT_MS", "shutdownTimeoutMs", defaults.shutdownTimeoutMs),
  routerField("HEADERS_TIMEOUT_MS", "headersTimeoutMs"),
  routerField("REQUEST_TIMEOUT_MS", "requestTimeoutMs"),
  ...leftToRouter(rarelyPerService, true, "CLIENT_STALL_TIMEOUT_MS"),
  { variable: "PORT", from: "fixed", value: String(routerPort), why: "the container port the Service and probes use" },
  { variable: "HOST", from: "router", why: "all interfaces, IPv4 and IPv6: what a pod needs", viaEnv: false },
  ...leftToRouter("the router's default (16 sockets sharing the port) suits a pod whose other containers run as other users; `1` where one runs as the router's user (docs/operations.md); set it through `spec.env`", true, "LISTEN_SOCKETS"),
  { variable: "POD_NAME", from: "downward", fieldPath: "metadata.name", why: "returned as routerPod" },
  { variable: "HOSTNAME", from: "router", why: "set by Kubernetes to the pod name; POD_NAME's fallback", viaEnv: false },
  routerField("LOG_LEVEL", "logLevel"),
  { variable: "LOG_FORMAT", from: "fixed", value: "json", why: "one JSON object per line, for log collectors" },
  {
    variable: "API_KEYS",
    from: "secret",
    field: "apiKeysSecretRef",
    ref: (spec) =>
      spec.apiKeysSecretRef === undefined ? undefined : { name: spec.apiKeysSecretRef.name, key: spec.apiKeysSecretRef.key ?? defaults.apiKeysSecretKey },
    why: "set only when the spec names a Secret (key default `keys`); no Secret: no authentication"
  },
  { variable: "API_KEYS_FILE", from: "router", why: "keys come from the Secret through API_KEYS", viaEnv: false }
]

/** The decision for every setting the router reads, in the router's order; a test fails when one is missing. */
export const undecidedSettings = (): ReadonlyArray<string> =>
  settingNames.filter((name) => !envDecisions.some((decision) => decision.variable === name))

/**
 * The settings `spec.env` may not set: every one the controller sets or
 * decides, so a setting added to the router is refused until someone decides
 * it may come from `spec.env`. The CRD's CEL rule lists exactly these (a test
 * checks), and the spec check refuses them for objects stored before it.
 */
export const deniedEnvNames = (): ReadonlyArray<string> =>
  envDecisions.filter((decision) => decision.from !== "router" || !decision.viaEnv).map((decision) => decision.variable)

/** The table as deploy/README.md shows it. */
export const envTableMarkdown = (): string => {
  const rows = envDecisions.map((decision) => {
    switch (decision.from) {
      case "spec":
        return `| \`${decision.variable}\` | spec | \`spec.${decision.field}\`; unset: ${decision.unset ?? "the router's default"} |`
      case "fixed":
        return `| \`${decision.variable}\` | fixed | \`${decision.value}\`: ${decision.why} |`
      case "downward":
        return `| \`${decision.variable}\` | downward API | \`${decision.fieldPath}\`: ${decision.why} |`
      case "identity":
        return `| \`${decision.variable}\` | InferenceService | ${decision.why} |`
      case "secret":
        return `| \`${decision.variable}\` | Secret${decision.plain === undefined ? "" : " or spec"} | \`spec.${decision.field}\`: ${decision.why} |`
      case "router":
        return `| \`${decision.variable}\` | router default | not set: ${decision.why}${decision.viaEnv ? "" : " (not settable through `spec.env`)"} |`
    }
  })
  return ["| variable | from | value |", "|---|---|---|", ...rows].join("\n")
}

export interface ControllerDefaults {
  /** The router image when the spec names none. */
  readonly routerImage: string
}

export interface Owner {
  readonly name: string
  readonly namespace: string
  readonly uid: string
}

export type KubeObject = {
  readonly apiVersion: string
  readonly kind: string
  readonly metadata: {
    readonly name: string
    readonly namespace: string
    readonly labels: Record<string, string>
    readonly annotations?: Record<string, string>
    readonly ownerReferences: ReadonlyArray<Record<string, unknown>>
  }
  readonly spec: Record<string, unknown>
}

export interface DesiredObjects {
  readonly deployment: KubeObject
  readonly service: KubeObject
  readonly podDisruptionBudget: KubeObject
  /** Present only when the spec autoscales (maxReplicas set). */
  readonly horizontalPodAutoscaler: KubeObject | undefined
  /** The router container's environment, as the pod sees it. */
  readonly env: ReadonlyArray<Record<string, unknown>>
  readonly image: string
  /** The Service's in-cluster URL. */
  readonly url: string
}

export const childName = (isvcName: string) => `${isvcName}-router`

/** The label on every child (and router pod): what the controller's informers select by. */
export const managedByLabel = "app.kubernetes.io/managed-by"

/** The label every child carries and selects its pods by. */
export const ownerLabel = "inference-router.dev/inferenceservice"

export const selectorLabels = (isvcName: string): Record<string, string> => ({
  [ownerLabel]: isvcName,
  "app.kubernetes.io/component": "router"
})

export const autoscales = (spec: InferenceServiceSpec) => spec.maxReplicas !== undefined

/** The router container's env, in the table's order, then the spec's extra env. */
export const routerEnv = (spec: InferenceServiceSpec, identity: Identity): Array<Record<string, unknown>> => {
  const env: Array<Record<string, unknown>> = []
  for (const decision of envDecisions) {
    switch (decision.from) {
      case "spec": {
        const value = decision.value(spec)
        if (value !== undefined) env.push({ name: decision.variable, value })
        break
      }
      case "fixed":
        env.push({ name: decision.variable, value: decision.value })
        break
      case "identity": {
        const value = decision.value(identity, spec)
        if (value !== undefined) env.push({ name: decision.variable, value })
        break
      }
      case "downward":
        env.push({ name: decision.variable, valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: decision.fieldPath } } })
        break
      case "secret": {
        const ref = decision.ref(spec)
        const plain = decision.plain?.value(spec)
        if (ref !== undefined) env.push({ name: decision.variable, valueFrom: { secretKeyRef: { name: ref.name, key: ref.key } } })
        else if (plain !== undefined) env.push({ name: decision.variable, value: plain })
        break
      }
      case "router":
        break
    }
  }
  // An empty value stays in what is applied (the controller owns the field: another manager's value is
  // replaced), though the API server stores none (EnvVar.Value is omitempty): `contains` reads the two as equal.
  for (const extra of spec.env ?? []) env.push({ name: extra.name, value: extra.value })
  return env
}

/** The desired children of one InferenceService. */
export const desiredObjects = (owner: Owner, spec: InferenceServiceSpec, settings: ControllerDefaults): DesiredObjects => {
  const name = childName(owner.name)
  const selector = selectorLabels(owner.name)
  const labels = {
    "app.kubernetes.io/name": "inference-router",
    "app.kubernetes.io/instance": owner.name,
    [managedByLabel]: "inference-router-controller",
    ...selector
  }
  const metadata = {
    name,
    namespace: owner.namespace,
    labels,
    ownerReferences: [{ apiVersion, kind, name: owner.name, uid: owner.uid, controller: true, blockOwnerDeletion: true }]
  }
  const image = spec.image ?? settings.routerImage
  const env = routerEnv(spec, owner)
  const shutdownTimeoutMs = spec.router?.shutdownTimeoutMs ?? defaults.shutdownTimeoutMs
  const resources = routerResources(spec)
  const deployment: KubeObject = {
    apiVersion: "apps/v1",
    kind: "Deployment",
    metadata,
    spec: {
      // Left out when an HPA owns the count, so applying never fights it.
      ...(autoscales(spec) ? {} : { replicas: spec.replicas ?? defaults.replicas }),
      revisionHistoryLimit: 3,
      selector: { matchLabels: selector },
      strategy: { type: "RollingUpdate", rollingUpdate: { maxUnavailable: 0, maxSurge: 1 } },
      template: {
        metadata: {
          // The spec's labels never replace the ones the selector needs.
          labels: { ...spec.podLabels, ...labels },
          annotations: {
            ...spec.podAnnotations,
            "prometheus.io/scrape": "true",
            "prometheus.io/port": String(routerPort),
            "prometheus.io/path": "/metrics"
          }
        },
        spec: {
          // The kubelet's SIGKILL comes after the router's drain has ended.
          terminationGracePeriodSeconds: Math.ceil(shutdownTimeoutMs / 1000) + defaults.graceMarginSeconds,
          automountServiceAccountToken: false,
          enableServiceLinks: false,
          securityContext: {
            runAsNonRoot: true,
            runAsUser: 1000,
            runAsGroup: 1000,
            seccompProfile: { type: "RuntimeDefault" }
          },
          containers: [{
            name: "router",
            image,
            imagePullPolicy: "IfNotPresent",
            ports: [{ name: "http", containerPort: routerPort, protocol: "TCP" }],
            env,
            // A router that rejects a setting prints one line and exits 1: the
            // kubelet keeps it as the termination message, which the
            // controller surfaces in the InferenceService's status.
            terminationMessagePolicy: "FallbackToLogsOnError",
            startupProbe: { httpGet: { path: "/readyz", port: "http" }, periodSeconds: 1, failureThreshold: 30 },
            readinessProbe: { httpGet: { path: "/readyz", port: "http" }, periodSeconds: 2, failureThreshold: 1, timeoutSeconds: 1 },
            livenessProbe: { httpGet: { path: "/healthz", port: "http" }, periodSeconds: 10, failureThreshold: 3, timeoutSeconds: 2 },
            resources,
            securityContext: {
              allowPrivilegeEscalation: false,
              readOnlyRootFilesystem: true,
              privileged: false,
              capabilities: { drop: ["ALL"] }
            }
          }]
        }
      }
    }
  }
  const service: KubeObject = {
    apiVersion: "v1",
    kind: "Service",
    metadata,
    spec: {
      type: "ClusterIP",
      selector,
      ports: [{ name: "http", port: 80, targetPort: "http", protocol: "TCP" }]
    }
  }
  const podDisruptionBudget: KubeObject = {
    apiVersion: "policy/v1",
    kind: "PodDisruptionBudget",
    metadata,
    // Voluntary disruptions (node drains, upgrades) take at most one router pod at a time.
    spec: { maxUnavailable: 1, selector: { matchLabels: selector } }
  }
  const metric = spec.scaleMetric ?? defaults.scaleMetric
  const target = spec.scaleTarget ?? defaults.scaleTarget[metric]
  const horizontalPodAutoscaler: KubeObject | undefined = autoscales(spec)
    ? {
      apiVersion: "autoscaling/v2",
      kind: "HorizontalPodAutoscaler",
      metadata,
      spec: {
        scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name },
        minReplicas: spec.minReplicas ?? defaults.minReplicas,
        maxReplicas: spec.maxReplicas,
        metrics: [
          metric === "cpu"
            ? { type: "Resource", resource: { name: "cpu", target: { type: "Utilization", averageUtilization: target } } }
            : {
              type: "Pods",
              pods: {
                metric: { name: "router_requests_waiting" },
                target: { type: "AverageValue", averageValue: String(target) }
              }
            }
        ],
        behavior: { scaleDown: { stabilizationWindowSeconds: 300 } }
      }
    }
    : undefined
  return {
    deployment,
    service,
    podDisruptionBudget,
    horizontalPodAutoscaler,
    env,
    image,
    url: `http://${name}.${owner.namespace}.svc.cluster.local`
  }
}
