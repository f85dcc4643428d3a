/**
 * The heart of the controller, and pure: from an InferenceService (and the
 * controller's settings) to the objects that serve it. Same input, same
 * output, byte for byte; no clock, no randomness, no API calls. `render` prints
 * it, the reconciler applies it, `deploy/base` is its output for the example.
 */
import { settingNames } from "../router/core/Settings.ts"
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
  /** The kubelet's SIGKILL comes this long after SHUTDOWN_TIMEOUT_MS, so the drain always ends first. */
  graceMarginSeconds: 5
}

export const routerPort = 8080

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
  | { readonly variable: string; readonly from: "secret"; readonly field: string; readonly why: string }
  | { readonly variable: string; readonly from: "router"; readonly why: string }

/** Settings the Deployment leaves unset (the router's default), each named: a new one gets a decision only when someone makes one. */
const leftToRouter = (why: string, ...variables: ReadonlyArray<string>): Array<EnvDecision> =>
  variables.map((variable) => ({ variable, from: "router", why }))

const rarelyPerService = "rarely differs per service; set it through `spec.env`"

const upstreamField = (variable: string, field: keyof NonNullable<InferenceServiceSpec["upstreamPolicy"]>): EnvDecision => ({
  variable,
  from: "spec",
  field: `upstreamPolicy.${field}`,
  value: (spec) => {
    const value = spec.upstreamPolicy?.[field]
    return value === undefined || spec.upstreams === undefined || spec.upstreams.length === 0 ? undefined : String(value)
  }
})

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
    from: "spec",
    field: "kvEndpoints",
    unset: "none (`[]`)",
    value: (spec) => spec.kvEndpoints === undefined || spec.kvEndpoints.length === 0 ? undefined : spec.kvEndpoints.join(",")
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
    value: (spec) =>
      spec.upstreams === undefined || spec.upstreams.length === 0
        ? undefined
        : spec.upstreams.map((u) => [u.url, ...(u.weight === undefined ? [] : [`weight=${u.weight}`]), ...(u.version === undefined ? [] : [`version=${u.version}`])].join(";")).join(",")
  },
  upstreamField("UPSTREAM_MAX_CONCURRENCY", "maxConcurrency"),
  upstreamField("UPSTREAM_CONNECT_TIMEOUT_MS", "connectTimeoutMs"),
  upstreamField("UPSTREAM_FIRST_BYTE_TIMEOUT_MS", "firstByteTimeoutMs"),
  upstreamField("UPSTREAM_IDLE_TIMEOUT_MS", "idleTimeoutMs"),
  upstreamField("UPSTREAM_HEALTH_INTERVAL_MS", "healthIntervalMs"),
  ...leftToRouter(rarelyPerService, "UPSTREAM_HEALTH_TIMEOUT_MS"),
  upstreamField("UPSTREAM_EJECT_AFTER", "ejectAfter"),
  upstreamField("UPSTREAM_EJECT_BASE_MS", "ejectBaseMs"),
  upstreamField("UPSTREAM_MAX_EJECTED_PERCENT", "maxEjectedPercent"),
  upstreamField("UPSTREAM_RETRIES", "retries"),
  ...leftToRouter(rarelyPerService, "UPSTREAM_RETRY_BUDGET_PERCENT", "UPSTREAM_RETRY_BUDGET_MIN", "UPSTREAM_DNS_REFRESH_MS"),
  routerField("SIM_LATENCY_MS", "simLatencyMs"),
  ...leftToRouter(
    "tuning of the simulated model, not a property of the service; set it through `spec.env`",
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
  { variable: "PORT", from: "fixed", value: String(routerPort), why: "the container port the Service and probes use" },
  { variable: "HOST", from: "router", why: "all interfaces, IPv4 and IPv6: what a pod needs" },
  { variable: "POD_NAME", from: "downward", fieldPath: "metadata.name", why: "returned as routerPod" },
  { variable: "HOSTNAME", from: "router", why: "set by Kubernetes to the pod name; POD_NAME's fallback" },
  routerField("LOG_LEVEL", "logLevel"),
  { variable: "LOG_FORMAT", from: "fixed", value: "json", why: "one JSON object per line, for log collectors" },
  { variable: "API_KEYS", from: "secret", field: "apiKeysSecretRef", why: "set only when the spec names a Secret (key default `keys`); no Secret: no authentication" },
  { variable: "API_KEYS_FILE", from: "router", why: "keys come from the Secret through API_KEYS" }
]

/** The decision for every setting the router reads, in the router's order; a test fails when one is missing. */
export const undecidedSettings = (): ReadonlyArray<string> =>
  settingNames.filter((name) => !envDecisions.some((decision) => decision.variable === name))

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
      case "secret":
        return `| \`${decision.variable}\` | Secret | \`spec.${decision.field}\`: ${decision.why} |`
      case "router":
        return `| \`${decision.variable}\` | router default | not set: ${decision.why} |`
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

/** The label every child carries and selects its pods by. */
export const ownerLabel = "inference-router.dev/inferenceservice"

export const selectorLabels = (isvcName: string): Record<string, string> => ({
  [ownerLabel]: isvcName,
  "app.kubernetes.io/component": "router"
})

export const autoscales = (spec: InferenceServiceSpec) => spec.maxReplicas !== undefined

/** The router container's env, in the table's order, then the spec's extra env. */
export const routerEnv = (spec: InferenceServiceSpec): Array<Record<string, unknown>> => {
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
      case "downward":
        env.push({ name: decision.variable, valueFrom: { fieldRef: { apiVersion: "v1", fieldPath: decision.fieldPath } } })
        break
      case "secret":
        if (spec.apiKeysSecretRef !== undefined) {
          env.push({
            name: decision.variable,
            valueFrom: {
              secretKeyRef: { name: spec.apiKeysSecretRef.name, key: spec.apiKeysSecretRef.key ?? defaults.apiKeysSecretKey }
            }
          })
        }
        break
      case "router":
        break
    }
  }
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
    "app.kubernetes.io/managed-by": "inference-router-controller",
    ...selector
  }
  const metadata = {
    name,
    namespace: owner.namespace,
    labels,
    ownerReferences: [{ apiVersion, kind, name: owner.name, uid: owner.uid, controller: true, blockOwnerDeletion: true }]
  }
  const image = spec.image ?? settings.routerImage
  const env = routerEnv(spec)
  const shutdownTimeoutMs = spec.router?.shutdownTimeoutMs ?? defaults.shutdownTimeoutMs
  const resources = {
    requests: spec.resources?.requests ?? defaults.resources.requests,
    limits: spec.resources?.limits ?? defaults.resources.limits
  }
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
