/**
 * The InferenceService resource: the controller's contract with its users,
 * as an Effect Schema. `deploy/controller/crd.yaml` is the same contract for
 * the API server (a test generates specs from this schema and checks the
 * CRD accepts them, and checks the CRD rejects what this schema rejects).
 *
 * Names follow KServe's `v1beta1` where it has the concept (`minReplicas`,
 * `maxReplicas`, `scaleMetric`, `scaleTarget`, `resources`), in an API group
 * of the project's own so both can live in one cluster.
 */
import { Schema } from "effect"

export const group = "inference-router.dev"
export const version = "v1alpha1"
export const apiVersion = `${group}/${version}`
export const kind = "InferenceService"
export const plural = "inferenceservices"

const int = (minimum: number, maximum = 2_147_483_647) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

/** Kubernetes resource quantities, as strings or numbers ("500m", "1Gi", 2). */
const Quantity = Schema.Union([Schema.String.check(Schema.isPattern(/^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$/)), Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))])

/** Any of the three may be set alone (the others keep the controller's defaults), as the CRD allows. */
const ResourceList = Schema.Struct({
  cpu: Schema.optionalKey(Quantity),
  memory: Schema.optionalKey(Quantity),
  "ephemeral-storage": Schema.optionalKey(Quantity)
})

/** The router's settings that can differ per InferenceService; unset ones are the router's defaults. */
export const RouterSpec = Schema.Struct({
  maxConcurrency: Schema.optionalKey(int(1, 100_000)),
  maxQueue: Schema.optionalKey(int(0, 1_000_000)),
  queueTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  overloadStatus: Schema.optionalKey(Schema.Literals([429, 503])),
  simLatencyMs: Schema.optionalKey(int(0, 3_600_000)),
  maxBodyBytes: Schema.optionalKey(int(1, 1_073_741_824)),
  shutdownDelayMs: Schema.optionalKey(int(0, 600_000)),
  shutdownTimeoutMs: Schema.optionalKey(int(1, 600_000)),
  headersTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  requestTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  logLevel: Schema.optionalKey(Schema.Literals(["debug", "info", "warn", "error"]))
})
export type RouterSpec = typeof RouterSpec.Type

/**
 * Label and annotation keys are qualified names, as the API server checks
 * them (apimachinery's IsQualifiedName): an optional DNS-subdomain prefix of
 * at most 253 characters and `/`, then a name of 1-63 characters. Annotation
 * keys are checked lower-cased (their prefix may have capitals). The CRD's
 * CEL rules use these patterns (`[.]`, not an escaped dot, inside CEL strings).
 */
const subdomain = "[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
const qualifiedNameEnd = "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
export const labelKeyPattern = `^(${subdomain}/)?${qualifiedNameEnd}$`
export const annotationKeyPattern = `^(${subdomain.replaceAll("a-z0-9", "A-Za-z0-9")}/)?${qualifiedNameEnd}$`
/** The API server's limit on all of an object's annotations together (keys and values, in bytes). */
export const annotationsMaxBytes = 256 * 1024

/** Why `key` is not a qualified name (the API server's words), or undefined. */
export const qualifiedNameProblem = (key: string, what: "label" | "annotation"): string | undefined => {
  const slash = key.lastIndexOf("/")
  if (slash > 253) return `${JSON.stringify(key)} is not a valid ${what} key: its prefix must be at most 253 characters`
  const pattern = what === "label" ? labelKeyPattern : annotationKeyPattern
  return new RegExp(pattern).test(key)
    ? undefined
    : `${JSON.stringify(key)} is not a valid ${what} key: an optional DNS-subdomain prefix and '/', then 1-63 characters: letters, digits, '-', '_' or '.', starting and ending with a letter or digit`
}

/**
 * A map whose every key must be a qualified name, each bad key an issue at its
 * own path: a key schema on `Schema.Record` would drop a bad key silently.
 */
const keyedByQualifiedNames = (what: "label" | "annotation") =>
  Schema.makeFilter<Readonly<Record<string, string>>>((map) => {
    const issues: Array<{ readonly path: ReadonlyArray<PropertyKey>; readonly issue: string }> = []
    for (const key of Object.keys(map)) {
      const problem = qualifiedNameProblem(key, what)
      if (problem !== undefined) issues.push({ path: [key], issue: problem })
    }
    return issues.length === 0 ? undefined : issues
  })

/** The API server refuses an object whose annotations together exceed 256 KiB. */
const annotationsWithinLimit = Schema.makeFilter<Readonly<Record<string, string>>>((map) => {
  const encoder = new TextEncoder()
  let bytes = 0
  for (const [key, value] of Object.entries(map)) bytes += encoder.encode(key).length + encoder.encode(value).length
  return bytes <= annotationsMaxBytes ? undefined : `annotations total ${bytes} bytes; the API server allows at most ${annotationsMaxBytes} (256 KiB)`
})

const LabelValue = Schema.String.check(Schema.isPattern(/^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$/))
const EnvName = Schema.String.check(Schema.isPattern(/^[A-Za-z_][A-Za-z0-9_]*$/))
const DnsName = Schema.String.check(Schema.isPattern(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/))
  .check(Schema.isMaxLength(253))

/**
 * The shape of a KV endpoint the API server can check (the CRD has the same
 * pattern); the router's full rules (port range, URL parsing) are checked by
 * the controller with the router's own parser.
 */
export const kvEndpointPattern = "^([^\\s,:/]+|\\[[0-9A-Fa-f:.]+\\]):[0-9]{1,5}$|^(https?|redis)://[^\\s,]+$"

/** The shape of an upstream URL the API server can check (the CRD has the same pattern); the router's parser checks the rest. */
export const upstreamUrlPattern = "^(dns\\+)?https?://[^\\s,;?#@]+$"

/** A port number, 1-65535, as a regular expression (no leading zeros). */
const portPattern = "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])"

/**
 * An upstream's KV events publisher elsewhere than on its own address (the
 * router's `;kv-events=tcp://host:port`); the CRD has the same pattern. A
 * host name or a bracketed IPv6 address: the router connects to it (vLLM's
 * `tcp://*:5557` is the server's bind address, not one to connect to).
 */
export const kvEventsEndpointPattern = `^tcp://([A-Za-z0-9]([-A-Za-z0-9.]*[A-Za-z0-9])?|\\[[0-9A-Fa-f:.]+\\]):${portPattern}$`

/** One model server (or a DNS name of several) the router forwards to: an item of the router's UPSTREAMS. */
export const UpstreamSpec = Schema.Struct({
  /** A base URL; `dns+http://name:port` uses every address of the name (a headless Service). */
  url: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(2048), Schema.isPattern(new RegExp(upstreamUrlPattern))),
  weight: Schema.optionalKey(int(1, 1000)),
  version: Schema.optionalKey(Schema.String.check(Schema.isPattern(/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/))),
  /**
   * Where the server publishes its KV events (vLLM's `--kv-events-config`,
   * ZeroMQ): a port on each of the upstream's addresses, or `tcp://host:port`
   * (not for a `dns+` url). Read by the cache-aware scheduler only.
   */
  kvEvents: Schema.optionalKey(Schema.Union([
    int(1, 65535),
    Schema.String.check(Schema.isPattern(new RegExp(kvEventsEndpointPattern), { expected: "a port number 1-65535, or a string tcp://host:port (a host name or [IPv6 address])" }))
  ]))
})
export type UpstreamSpec = typeof UpstreamSpec.Type

/** How the router treats its upstreams; unset ones are the router's defaults. */
export const UpstreamPolicySpec = Schema.Struct({
  maxConcurrency: Schema.optionalKey(int(0, 100_000)),
  connectTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  firstByteTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  idleTimeoutMs: Schema.optionalKey(int(1, 3_600_000)),
  healthIntervalMs: Schema.optionalKey(int(0, 3_600_000)),
  ejectAfter: Schema.optionalKey(int(1, 1000)),
  ejectBaseMs: Schema.optionalKey(int(1, 3_600_000)),
  maxEjectedPercent: Schema.optionalKey(int(0, 100)),
  retries: Schema.optionalKey(int(0, 10))
})
export type UpstreamPolicySpec = typeof UpstreamPolicySpec.Type

/** The router's UPSTREAM_SCHEDULER values (a test checks them against the router's). */
export const schedulers = ["least-request", "cache-aware"] as const

/**
 * The shortest `routing.metricsIntervalMs` besides 0 (not read): below it each
 * router replica would read every model server's /metrics back to back (the
 * CRD's rule says the same).
 */
export const minMetricsIntervalMs = 10

/**
 * How the router picks an upstream for each request (docs/routing.md); unset
 * ones are the router's defaults. Only with `upstreams`; the load bound and
 * the metrics interval only with the cache-aware scheduler, which alone reads
 * them (the CRD's rules and the spec check refuse them otherwise).
 */
export const RoutingSpec = Schema.Struct({
  /** UPSTREAM_SCHEDULER (router default least-request). */
  scheduler: Schema.optionalKey(Schema.Literals(schedulers)),
  /** UPSTREAM_LOAD_BOUND in percent (an integer, as Kubernetes APIs avoid floats): 125 is 1.25 x the pool's mean in flight. */
  loadBoundPercent: Schema.optionalKey(int(100, 1000)),
  /** UPSTREAM_METRICS_INTERVAL_MS: each upstream's /metrics read this often; 0: never; else at least `minMetricsIntervalMs`. */
  metricsIntervalMs: Schema.optionalKey(int(0, 3_600_000).check(Schema.makeFilter((ms: number) =>
    ms === 0 || ms >= minMetricsIntervalMs
      ? undefined
      : `metricsIntervalMs must be 0 (not read) or at least ${minMetricsIntervalMs}: a shorter interval has every router read each server's /metrics back to back`
  )))
})
export type RoutingSpec = typeof RoutingSpec.Type

export const InferenceServiceSpec = Schema.Struct({
  /** The model this InferenceService serves (the router's MODEL_REF). */
  modelRef: Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(253)),
  /** KV store nodes, each `host:port` or an http(s):// or redis:// URL (the router's rules). */
  kvEndpoints: Schema.optionalKey(
    Schema.Array(Schema.String.check(Schema.isMinLength(1), Schema.isMaxLength(2048), Schema.isPattern(new RegExp(kvEndpointPattern))))
      .check(Schema.isMaxLength(64))
  ),
  /**
   * The same list from a key of a Secret in the namespace (the router's
   * KV_ENDPOINTS through `valueFrom.secretKeyRef`), for `redis://` URLs that
   * carry a password; not with `kvEndpoints`. The controller never reads it.
   */
  kvEndpointsSecretRef: Schema.optionalKey(Schema.Struct({
    name: DnsName,
    key: Schema.String.check(Schema.isPattern(/^[-._a-zA-Z0-9]+$/), Schema.isMaxLength(253))
  })),
  router: Schema.optionalKey(RouterSpec),
  /** Model servers to forward to (the router's MODEL_BACKEND=upstream); unset or empty: the simulated model. */
  upstreams: Schema.optionalKey(Schema.Array(UpstreamSpec).check(Schema.isMaxLength(64))),
  upstreamPolicy: Schema.optionalKey(UpstreamPolicySpec),
  /** How the router picks among the upstreams (its scheduler); only with `upstreams`. */
  routing: Schema.optionalKey(RoutingSpec),
  /** Fixed replica count; leave unset and set maxReplicas to autoscale. */
  replicas: Schema.optionalKey(int(0, 1000)),
  minReplicas: Schema.optionalKey(int(1, 1000)),
  maxReplicas: Schema.optionalKey(int(1, 1000)),
  /** What the HPA scales on: CPU utilization, or the router's queue (needs a metrics adapter). */
  scaleMetric: Schema.optionalKey(Schema.Literals(["cpu", "queue"])),
  /** cpu: target utilization in percent; queue: target requests waiting per pod. */
  scaleTarget: Schema.optionalKey(int(1, 1000)),
  resources: Schema.optionalKey(Schema.Struct({
    requests: Schema.optionalKey(ResourceList),
    limits: Schema.optionalKey(ResourceList)
  })),
  /** A Secret whose key holds comma-separated API keys (the router's API_KEYS). */
  apiKeysSecretRef: Schema.optionalKey(Schema.Struct({
    name: DnsName,
    key: Schema.optionalKey(Schema.String.check(Schema.isPattern(/^[-._a-zA-Z0-9]+$/)))
  })),
  /** The router image; default: the controller's own image (or its ROUTER_IMAGE). */
  image: Schema.optionalKey(Schema.String.check(Schema.isMinLength(1), Schema.isPattern(/^\S+$/))),
  podLabels: Schema.optionalKey(Schema.Record(Schema.String, LabelValue).check(keyedByQualifiedNames("label"), Schema.isMaxProperties(64))),
  podAnnotations: Schema.optionalKey(
    Schema.Record(Schema.String, Schema.String).check(keyedByQualifiedNames("annotation"), annotationsWithinLimit, Schema.isMaxProperties(64))
  ),
  /** Extra environment for the router container; router settings are set through the fields above. */
  env: Schema.optionalKey(Schema.Array(Schema.Struct({ name: EnvName, value: Schema.String })).check(Schema.isMaxLength(64)))
})
export type InferenceServiceSpec = typeof InferenceServiceSpec.Type

/** `metav1.Condition`. */
export const Condition = Schema.Struct({
  type: Schema.String,
  status: Schema.Literals(["True", "False", "Unknown"]),
  reason: Schema.String,
  message: Schema.String,
  lastTransitionTime: Schema.String,
  observedGeneration: Schema.optionalKey(Schema.Int)
})
export type Condition = typeof Condition.Type

export const InferenceServiceStatus = Schema.Struct({
  observedGeneration: Schema.optionalKey(Schema.Int),
  conditions: Schema.optionalKey(Schema.Array(Condition)),
  url: Schema.optionalKey(Schema.String),
  replicas: Schema.optionalKey(Schema.Int),
  readyReplicas: Schema.optionalKey(Schema.Int),
  routerImage: Schema.optionalKey(Schema.String)
})
export type InferenceServiceStatus = typeof InferenceServiceStatus.Type
