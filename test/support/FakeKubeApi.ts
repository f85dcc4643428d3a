/**
 * A stand-in for the Kubernetes API server, for the controller's tests: an
 * HTTP server on 127.0.0.1 speaking the parts of the real wire protocol the
 * controller uses, reached through a kubeconfig with the same client code as
 * a real cluster (`@kubernetes/client-node`), and as strict as kube-apiserver
 * where the controller depends on it (test/FakeKubeApi.test.ts pins each rule).
 *
 * Modelled:
 * - discovery; list with label selectors and a collection resourceVersion;
 *   watch streams (newline-delimited JSON, replay from a resourceVersion,
 *   a filtered watch sent ADDED/DELETED when an object starts/stops matching
 *   its selector, bookmarks only with `allowWatchBookmarks` and about once a
 *   minute unless `bookmarkMs` says otherwise, `timeoutSeconds`, 410 `Expired` as an ERROR event for a
 *   resourceVersion older than the retained history); get, create (409
 *   AlreadyExists), replace, JSON merge patch and apply (409 Conflict when the
 *   body names a resourceVersion no longer stored: a precondition), the status
 *   subresource, `metadata.generation` bumped on spec changes only, Leases,
 *   Events; bearer tokens recorded per request.
 * - Server-side apply with managed fields per field manager (fieldsV1 as the
 *   server writes it): a manager owns the fields it applied; applying a
 *   field another manager owns with a different value is a 409 conflict
 *   unless `force`, which takes it over; the same value is shared ownership;
 *   a field a manager stops applying is removed only when no other manager
 *   owns it; list-maps (`containers`, `env`, `ports`, `ownerReferences`,
 *   conditions) merge by key, duplicate keys refused; other lists are atomic;
 *   an apply that changes nothing changes nothing (no resourceVersion bump, no
 *   watch event). Updates (PUT, merge patch, `put`, `scale`) take ownership of
 *   the fields whose value they change, as the HPA writing `spec.replicas` does.
 * - Defaulting of the built-in fields the controller depends on (Deployment
 *   `spec.replicas` = 1 when no manager sets it, strategy, protocols, a
 *   Service's clusterIP and targetPort, ...) and the CRD's `default:`s;
 *   containers' resource quantities and HPA metric targets stored in
 *   canonical form ("0.5" as "500m", "1024Mi" as "1Gi", "1000" as "1k");
 *   structural pruning of unknown fields in
 *   InferenceServices.
 * - Write-time validation: DNS-1035 Service names, DNS-1123 names, label
 *   keys and values, annotations (qualified-name keys, 256 KiB in all), a
 *   container's requests <= limits, a Deployment's selector matching its
 *   template and immutable, the CRD's schema and CEL rules (CrdValidator).
 * - Faults on demand (`fault`): slow requests, stale answers delivered late, hanging requests, any HTTP
 *   status (409, 410 on a watch, 429 with Retry-After, 403, 503), per method,
 *   path, token; plus down (503 to everything), dropped watches, silent
 *   watches, compaction (old resourceVersions gone).
 *
 * Not modelled: the garbage collector (owner references do not cascade), the
 * deployment controller (tests write a Deployment's status themselves),
 * admission webhooks, RBAC (ControllerRbac.test.ts compares what was used
 * with what is granted), pagination, quantity canonicalisation outside
 * containers' resources and HPA targets (and its rarer forms: exponents, nano units),
 * `oldSelf` rules, the exact wording of the server's messages.
 */
import { randomUUID } from "node:crypto"
import { once } from "node:events"
import { mkdtempSync, writeFileSync } from "node:fs"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { isDeepStrictEqual } from "node:util"
import { parse as parseYaml } from "yaml"
import { admit, prune } from "./CrdValidator.ts"

interface ResourceType {
  readonly group: string
  readonly version: string
  readonly plural: string
  readonly kind: string
  readonly subresources?: ReadonlyArray<string>
}

const resourceTypes: ReadonlyArray<ResourceType> = [
  { group: "", version: "v1", plural: "services", kind: "Service" },
  { group: "", version: "v1", plural: "pods", kind: "Pod", subresources: ["status"] },
  { group: "", version: "v1", plural: "events", kind: "Event" },
  { group: "", version: "v1", plural: "secrets", kind: "Secret" },
  { group: "apps", version: "v1", plural: "deployments", kind: "Deployment", subresources: ["status", "scale"] },
  { group: "policy", version: "v1", plural: "poddisruptionbudgets", kind: "PodDisruptionBudget" },
  { group: "autoscaling", version: "v2", plural: "horizontalpodautoscalers", kind: "HorizontalPodAutoscaler" },
  { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease" },
  { group: "inference-router.dev", version: "v1alpha1", plural: "inferenceservices", kind: "InferenceService", subresources: ["status"] }
]

const apiVersionOf = (type: ResourceType) => type.group === "" ? type.version : `${type.group}/${type.version}`

/** The list-maps of the built-in types and the CRD, by field path (list items add no segment): their keys. */
const listMapKeys: Record<string, ReadonlyArray<string>> = {
  "metadata.ownerReferences": ["uid"],
  "spec.template.spec.containers": ["name"],
  "spec.template.spec.initContainers": ["name"],
  "spec.template.spec.containers.env": ["name"],
  "spec.template.spec.containers.ports": ["containerPort", "protocol"],
  "spec.template.spec.volumes": ["name"],
  "spec.ports": ["port", "protocol"],
  "status.conditions": ["type"]
}
const keyDefaults: Record<string, unknown> = { protocol: "TCP" }

/** Metadata the server keeps, never a manager's field. */
const serverMetadata = new Set(["name", "namespace", "resourceVersion", "uid", "managedFields", "creationTimestamp", "generation", "deletionTimestamp"])

interface WatchEvent {
  readonly rv: number
  readonly type: "ADDED" | "MODIFIED" | "DELETED"
  readonly object: any
  /** For MODIFIED: the object before, so a filtered watch sees it enter or leave its selector. */
  readonly previous?: any
}

interface Watcher {
  readonly type: ResourceType
  readonly namespace: string | undefined
  readonly selector: Record<string, string>
  readonly response: ServerResponse
  readonly silent: boolean
  /** The watch asked for bookmarks (`allowWatchBookmarks=true`). */
  readonly bookmarks: boolean
}

export interface RecordedRequest {
  readonly method: string
  readonly path: string
  readonly token: string | undefined
  readonly contentType: string | undefined
  readonly watch: boolean
  /** When the request arrived (Date.now()). */
  readonly at: number
  /** The status answered (set when the answer is written). */
  status?: number
  /** When it was answered. */
  answeredAt?: number
  /** An answer held back by a fault's `answerLateMs`: when it was made (it holds the state of that moment). */
  heldAt?: number
}

/** A fault: requests it matches are delayed, left hanging, or answered with `status`. */
export interface Fault {
  readonly method?: string
  /** A substring of the path, or a pattern. */
  readonly path?: string | RegExp
  readonly token?: string
  readonly watch?: boolean
  /** Answer after this long (then normally, or with `status`). */
  readonly delayMs?: number
  /**
   * Answer at once but deliver the answer this much later: it holds the state of its arrival,
   * and writes and watch events made meanwhile overtake it (a read that is stale when it lands).
   */
  readonly answerLateMs?: number
  /** Never answer (the connection stays open until the client gives up or the server stops). */
  readonly hang?: boolean
  readonly status?: number
  readonly retryAfterSeconds?: number
  /** How many requests it applies to; unset: until removed. */
  times?: number
}

export class ApiError extends Error {
  readonly code: number
  readonly reason: string
  constructor(code: number, reason: string, message: string) {
    super(message)
    this.code = code
    this.reason = reason
  }
}

const reasons: Record<number, string> = {
  400: "BadRequest",
  403: "Forbidden",
  404: "NotFound",
  409: "Conflict",
  410: "Expired",
  422: "Invalid",
  429: "TooManyRequests",
  500: "InternalError",
  503: "ServiceUnavailable"
}

const status = (code: number, reason: string, message: string) => ({
  kind: "Status",
  apiVersion: "v1",
  metadata: {},
  status: "Failure",
  message,
  reason,
  code
})

/**
 * A write (PUT, merge patch, server-side apply) naming a `metadata.resourceVersion` is conditional
 * on it, as kube-apiserver's precondition: another resourceVersion stored means 409 Conflict.
 */
const stale = (written: any, existing: any) =>
  written?.metadata?.resourceVersion !== undefined && written.metadata.resourceVersion !== existing.metadata.resourceVersion
const modified = (plural: string, name: string) =>
  status(409, "Conflict", `Operation cannot be fulfilled on ${plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`)

const isObject = (value: unknown): value is Record<string, any> =>
  value !== null && typeof value === "object" && !Array.isArray(value)

// ---------------------------------------------------------------- field sets

/** A field path as a string: segments `f:<name>`, `k:<key json>` (a list-map item) and `.` (the item itself). */
type FieldSet = Set<string>
const pathKey = (segments: ReadonlyArray<string>) => JSON.stringify(segments)
const pathOf = (key: string): Array<string> => JSON.parse(key)

const itemKey = (item: any, keys: ReadonlyArray<string>) =>
  `k:${JSON.stringify(Object.fromEntries(keys.map((k) => [k, item?.[k] ?? keyDefaults[k]])))}`

/** The fields `value` sets, as the server's field sets have them; throws 422 on a duplicate list-map key. */
const fieldSet = (value: unknown, generic = "", prefix: Array<string> = [], out: FieldSet = new Set()): FieldSet => {
  if (isObject(value)) {
    const entries = Object.entries(value).filter(([k, v]) => v !== undefined && !(generic === "metadata" && serverMetadata.has(k)))
    if (entries.length === 0 && prefix.length > 0) out.add(pathKey(prefix))
    for (const [k, v] of entries) {
      if (prefix.length === 0 && (k === "apiVersion" || k === "kind")) continue
      fieldSet(v, generic === "" ? k : `${generic}.${k}`, [...prefix, `f:${k}`], out)
    }
    return out
  }
  const keys = listMapKeys[generic]
  if (Array.isArray(value) && keys !== undefined) {
    const seen = new Set<string>()
    for (const item of value) {
      const key = itemKey(item, keys)
      if (seen.has(key)) {
        throw new ApiError(422, "Invalid", `.${generic}: duplicate entries for key [${key.slice(2)}]`)
      }
      seen.add(key)
      out.add(pathKey([...prefix, key, "."]))
      fieldSet(item, generic, [...prefix, key], out)
    }
    return out
  }
  out.add(pathKey(prefix))
  return out
}

const genericOf = (segments: ReadonlyArray<string>) =>
  segments.filter((s) => s.startsWith("f:")).map((s) => s.slice(2)).join(".")

/** The value at a field path, or undefined. */
const valueAt = (object: unknown, segments: ReadonlyArray<string>): unknown => {
  let node: any = object
  for (const segment of segments) {
    if (node === undefined || node === null) return undefined
    if (segment === ".") return node
    if (segment.startsWith("f:")) node = isObject(node) ? node[segment.slice(2)] : undefined
    else {
      const wanted = JSON.parse(segment.slice(2))
      node = Array.isArray(node)
        ? node.find((item) => Object.entries(wanted).every(([k, v]) => (item?.[k] ?? keyDefaults[k]) === v))
        : undefined
    }
  }
  return node
}

/** Removes the field (or list item, for a path ending in `.`) at a path. */
const removeAt = (object: any, segments: ReadonlyArray<string>) => {
  const last = segments[segments.length - 1] === "." ? segments.length - 2 : segments.length - 1
  const parent = valueAt(object, segments.slice(0, last))
  const segment = segments[last]
  if (segment.startsWith("f:")) {
    if (isObject(parent)) delete parent[segment.slice(2)]
  } else if (Array.isArray(parent)) {
    const item = valueAt(parent, [segment])
    const index = parent.indexOf(item)
    if (index >= 0) parent.splice(index, 1)
  }
}

/** Merges an applied configuration into an object: maps by field, list-maps by key, everything else replaced. */
const mergeApplied = (target: Record<string, any>, applied: Record<string, any>, generic = "") => {
  for (const [key, value] of Object.entries(applied)) {
    const path = generic === "" ? key : `${generic}.${key}`
    const keys = listMapKeys[path]
    if (isObject(value) && isObject(target[key])) mergeApplied(target[key], value, path)
    else if (Array.isArray(value) && keys !== undefined && Array.isArray(target[key])) {
      const merged: Array<any> = []
      for (const item of value) {
        const live = valueAt(target[key], [itemKey(item, keys)])
        if (isObject(live) && isObject(item)) {
          mergeApplied(live, item, path)
          merged.push(live)
        } else merged.push(structuredClone(item))
      }
      for (const item of target[key]) if (!merged.includes(item) && valueAt(value, [itemKey(item, keys)]) === undefined) merged.push(item)
      target[key] = merged
    } else target[key] = structuredClone(value)
  }
}

const mergePatch = (target: Record<string, any>, patch: Record<string, any>) => {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete target[key]
    else if (isObject(value) && isObject(target[key])) mergePatch(target[key], value)
    else target[key] = structuredClone(value)
  }
}

/** fieldsV1 as the server writes it: nested `f:`/`k:` keys, `.` for a list item itself. */
const fieldsV1 = (set: FieldSet) => {
  const root: Record<string, any> = {}
  for (const key of [...set].sort()) {
    let node = root
    for (const segment of pathOf(key)) node = node[segment] ??= {}
  }
  return root
}

interface Manager {
  readonly manager: string
  readonly operation: "Apply" | "Update"
  readonly subresource: string
  fields: FieldSet
  time: string
}

// ---------------------------------------------------------------- defaulting and validation

const dns1035 = /^[a-z]([-a-z0-9]*[a-z0-9])?$/
const dns1123Subdomain = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/
const labelValue = /^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$/
const labelName = /^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$/

/** apimachinery's IsQualifiedName: the prefix (a DNS subdomain) at most 253 characters. */
const qualifiedName = (key: string) => labelName.test(key) && (key.lastIndexOf("/") <= 253)

/** apimachinery's ValidateAnnotations: keys are qualified names (checked lower-cased), all together at most 256 KiB. */
const annotationErrors = (path: string, annotations: unknown): Array<string> => {
  const errors: Array<string> = []
  let bytes = 0
  for (const [key, value] of Object.entries((annotations ?? {}) as Record<string, unknown>)) {
    if (!qualifiedName(key.toLowerCase())) errors.push(`${path}: Invalid value: ${JSON.stringify(key)}: name part must consist of alphanumeric characters, '-', '_' or '.'`)
    bytes += Buffer.byteLength(key) + Buffer.byteLength(String(value))
  }
  if (bytes > 256 * 1024) errors.push(`${path}: Too long: must have at most 262144 bytes`)
  return errors
}

const suffixes: Record<string, number> = {
  "": 1,
  m: 1e-3,
  k: 1e3,
  M: 1e6,
  G: 1e9,
  T: 1e12,
  P: 1e15,
  E: 1e18,
  Ki: 2 ** 10,
  Mi: 2 ** 20,
  Gi: 2 ** 30,
  Ti: 2 ** 40,
  Pi: 2 ** 50,
  Ei: 2 ** 60
}

/** A resource quantity's value, or undefined when it is not one. */
export const quantityValue = (quantity: unknown): number | undefined => {
  if (typeof quantity === "number") return quantity
  const match = typeof quantity === "string" ? /^([+-]?[0-9.]+)(e[+-]?[0-9]+|[a-zA-Z]*)$/.exec(quantity) : null
  if (match === null) return undefined
  const number = Number(match[1])
  if (Number.isNaN(number)) return undefined
  if (match[2].startsWith("e")) return number * 10 ** Number(match[2].slice(1))
  const factor = suffixes[match[2]]
  return factor === undefined ? undefined : number * factor
}

const decimalSuffixes = ["", "k", "M", "G", "T", "P", "E"]
const binarySuffixes = ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"]

/**
 * A quantity as the API server stores it (its canonical form, roughly as
 * resource.Quantity's): binary suffixes stay binary, the largest that keeps the
 * number whole ("1024Mi" is "1Gi"); decimals likewise ("1000" is "1k"), and a
 * fraction in milli-units ("0.5" is "500m").
 */
export const canonicalQuantity = (quantity: unknown): unknown => {
  const value = quantityValue(quantity)
  if (value === undefined || value < 0) return quantity
  const binary = typeof quantity === "string" && /[KMGTPE]i$/.test(quantity)
  if (binary && Number.isInteger(value)) {
    let index = 0
    while (index < binarySuffixes.length - 1 && value % 2 ** (10 * (index + 1)) === 0 && value !== 0) index++
    return `${value / 2 ** (10 * index)}${binarySuffixes[index]}`
  }
  if (Number.isInteger(value)) {
    let index = 0
    while (index < decimalSuffixes.length - 1 && value % 10 ** (3 * (index + 1)) === 0 && value !== 0) index++
    return `${value / 10 ** (3 * index)}${decimalSuffixes[index]}`
  }
  const milli = Math.round(value * 1000)
  return `${milli}m`
}

const canonicalResources = (container: any) => {
  for (const list of ["requests", "limits"]) {
    const quantities = container.resources?.[list]
    if (isObject(quantities)) for (const [name, quantity] of Object.entries(quantities)) quantities[name] = canonicalQuantity(quantity)
  }
}

/** The quantities of an HPA's metric targets (`value`, `averageValue`), canonical as a container's resources. */
const canonicalMetricTargets = (spec: any) => {
  for (const metric of spec.metrics ?? []) {
    for (const source of ["pods", "resource", "object", "external", "containerResource"]) {
      const target = metric?.[source]?.target
      if (!isObject(target)) continue
      for (const field of ["value", "averageValue"]) if ((target as any)[field] !== undefined) (target as any)[field] = canonicalQuantity((target as any)[field])
    }
  }
}

const defaultPodTemplate = (template: any) => {
  const spec = template?.spec
  if (!isObject(spec)) return
  spec.restartPolicy ??= "Always"
  spec.dnsPolicy ??= "ClusterFirst"
  spec.schedulerName ??= "default-scheduler"
  spec.terminationGracePeriodSeconds ??= 30
  spec.securityContext ??= {}
  for (const container of spec.containers ?? []) {
    container.terminationMessagePath ??= "/dev/termination-log"
    container.terminationMessagePolicy ??= "File"
    container.imagePullPolicy ??= String(container.image ?? "").endsWith(":latest") || !String(container.image ?? "").includes(":") ? "Always" : "IfNotPresent"
    container.resources ??= {}
    canonicalResources(container)
    for (const port of container.ports ?? []) port.protocol ??= "TCP"
    // The Go struct's round trip: EnvVar.Value is `omitempty`, so an empty value is not stored.
    for (const variable of container.env ?? []) if (variable?.value === "") delete variable.value
  }
}

/** The built-in defaults the controller's objects meet on a real server. */
const applyDefaults = (kind: string, object: any) => {
  const spec = object.spec
  if (!isObject(spec)) return
  switch (kind) {
    case "Deployment":
      spec.replicas ??= 1
      spec.revisionHistoryLimit ??= 10
      spec.progressDeadlineSeconds ??= 600
      spec.strategy ??= { type: "RollingUpdate" }
      if (spec.strategy.type === "RollingUpdate") spec.strategy.rollingUpdate ??= { maxUnavailable: "25%", maxSurge: "25%" }
      defaultPodTemplate(spec.template)
      break
    case "HorizontalPodAutoscaler":
      canonicalMetricTargets(spec)
      break
    case "Service":
      spec.type ??= "ClusterIP"
      spec.sessionAffinity ??= "None"
      spec.clusterIP ??= `10.96.${Math.floor(Math.random() * 250)}.${1 + Math.floor(Math.random() * 250)}`
      spec.clusterIPs ??= [spec.clusterIP]
      spec.ipFamilies ??= ["IPv4"]
      spec.ipFamilyPolicy ??= "SingleStack"
      spec.internalTrafficPolicy ??= "Cluster"
      for (const port of spec.ports ?? []) {
        port.protocol ??= "TCP"
        port.targetPort ??= port.port
      }
      break
  }
}

/** What the API server refuses at write time for the kinds the controller writes (422 Invalid). */
const validationErrors = (kind: string, object: any): Array<string> => {
  const errors: Array<string> = []
  const name: string = object.metadata?.name ?? ""
  if (kind === "Service") {
    if (name.length > 63 || !dns1035.test(name)) {
      errors.push(`metadata.name: Invalid value: ${JSON.stringify(name)}: a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character`)
    }
  } else if (kind !== "Event" && (name.length > 253 || !dns1123Subdomain.test(name))) {
    errors.push(`metadata.name: Invalid value: ${JSON.stringify(name)}: a lowercase RFC 1123 subdomain`)
  }
  const labelMaps: Array<[string, unknown]> = [["metadata.labels", object.metadata?.labels]]
  if (kind === "Deployment") labelMaps.push(["spec.template.metadata.labels", object.spec?.template?.metadata?.labels])
  errors.push(...annotationErrors("metadata.annotations", object.metadata?.annotations))
  if (kind === "Deployment") errors.push(...annotationErrors("spec.template.metadata.annotations", object.spec?.template?.metadata?.annotations))
  for (const [path, labels] of labelMaps) {
    for (const [key, value] of Object.entries((labels ?? {}) as Record<string, unknown>)) {
      if (!qualifiedName(key)) errors.push(`${path}: Invalid value: ${JSON.stringify(key)}: not a label key`)
      if (typeof value !== "string" || value.length > 63 || !labelValue.test(value)) errors.push(`${path}: Invalid value: ${JSON.stringify(value)}: not a label value`)
    }
  }
  if (kind === "Deployment") {
    const spec = object.spec ?? {}
    if (typeof spec.replicas === "number" && spec.replicas < 0) errors.push("spec.replicas: must be >= 0")
    const template = spec.template?.metadata?.labels ?? {}
    for (const [key, value] of Object.entries(spec.selector?.matchLabels ?? {})) {
      if (template[key] !== value) errors.push("spec.template.metadata.labels: Invalid value: `selector` does not match template `labels`")
    }
    const containers: Array<any> = spec.template?.spec?.containers ?? []
    if (containers.length === 0) errors.push("spec.template.spec.containers: Required value")
    containers.forEach((container, i) => {
      const requests = container.resources?.requests ?? {}
      const limits = container.resources?.limits ?? {}
      for (const [resource, request] of Object.entries(requests)) {
        const value = quantityValue(request)
        if (value === undefined) {
          errors.push(`spec.template.spec.containers[${i}].resources.requests[${resource}]: Invalid value: ${JSON.stringify(request)}: not a quantity`)
          continue
        }
        const limit = quantityValue(limits[resource])
        if (limit !== undefined && value > limit) {
          errors.push(`spec.template.spec.containers[${i}].resources.requests: Invalid value: ${JSON.stringify(request)}: must be less than or equal to ${resource} limit of ${limits[resource]}`)
        }
      }
    })
  }
  if (kind === "HorizontalPodAutoscaler") {
    const spec = object.spec ?? {}
    if ((spec.minReplicas ?? 1) > spec.maxReplicas) errors.push("spec.minReplicas: must be less than or equal to maxReplicas")
  }
  return errors
}

/** What the stand-in refuses of an object at write time, after defaulting (empty: it would store it). */
export const writeErrors = (object: any): Array<string> => {
  const copy = structuredClone(object)
  applyDefaults(copy.kind, copy)
  return validationErrors(copy.kind, copy)
}

const specOf = (object: any) => JSON.stringify({ ...object, metadata: undefined, status: undefined })

// ---------------------------------------------------------------- the server

export class FakeKubeApi {
  readonly server: Server
  readonly requests: Array<RecordedRequest> = []
  /** Objects by `plural/namespace/name`. */
  readonly objects = new Map<string, any>()
  private readonly log: Array<WatchEvent & { readonly plural: string }> = []
  private readonly watchers = new Set<Watcher>()
  /** Field managers by object key. */
  private readonly managers = new Map<string, Array<Manager>>()
  private readonly faults = new Set<Fault>()
  private readonly hanging = new Set<ServerResponse>()
  private revision = 100
  private oldestRetained = 0
  private bookmarkTimer: ReturnType<typeof setInterval> | undefined
  /** 503 to every request while set. */
  down = false
  /** New watches receive nothing at all (no events, no bookmarks) while set. */
  silentWatches = false

  readonly options: { readonly bookmarkMs?: number }

  constructor(options: { readonly bookmarkMs?: number } = {}) {
    this.options = options
    this.server = createServer((request, response) => {
      this.handle(request, response).catch((error) => {
        if (!response.headersSent) this.json(response, 500, status(500, "InternalError", String(error)))
      })
    })
  }

  async start(): Promise<number> {
    this.server.listen(0, "127.0.0.1")
    await once(this.server, "listening")
    // A real server sends a bookmark about once a minute (to watches that ask for them); tests may ask for more.
    this.bookmarkTimer = setInterval(() => this.bookmarks(), this.options.bookmarkMs ?? 60_000)
    return this.port
  }

  get port() {
    return (this.server.address() as AddressInfo).port
  }

  async stop() {
    clearInterval(this.bookmarkTimer)
    this.dropWatches()
    for (const response of this.hanging) response.destroy()
    this.server.closeAllConnections()
    this.server.close()
  }

  /** A kubeconfig file pointing at this server, with `token` as the user's bearer token. */
  kubeconfig(token = "controller"): string {
    const dir = mkdtempSync(join(tmpdir(), "fake-kube-"))
    const file = join(dir, "kubeconfig")
    writeFileSync(
      file,
      JSON.stringify({
        apiVersion: "v1",
        kind: "Config",
        // Plain HTTP on loopback: client-node allows it only with TLS verification off.
        clusters: [{ name: "fake", cluster: { server: `http://127.0.0.1:${this.port}`, "insecure-skip-tls-verify": true } }],
        users: [{ name: "controller", user: { token } }],
        contexts: [{ name: "fake", context: { cluster: "fake", user: "controller", namespace: "default" } }],
        "current-context": "fake"
      })
    )
    return file
  }

  /** Adds a fault; returns a function that removes it. */
  fault(fault: Fault): () => void {
    this.faults.add(fault)
    return () => {
      this.faults.delete(fault)
    }
  }

  /** Answers every request left hanging by a fault with 504 (as if the server came back). */
  releaseHanging() {
    for (const response of this.hanging) response.destroy()
    this.hanging.clear()
  }

  /** Ends every open watch stream, as a dropped connection or an API server restart would. */
  dropWatches() {
    for (const watcher of this.watchers) watcher.response.destroy()
    this.watchers.clear()
  }

  /** Forgets history: watches resuming from an older resourceVersion get 410 Expired. */
  compact() {
    // Everything up to now is gone: a watch from any resourceVersion seen so far gets 410; a new
    // list returns a version past the compaction, which can be watched.
    this.revision++
    this.oldestRetained = this.revision
    this.log.length = 0
  }

  get resourceVersion() {
    return this.revision
  }

  get openWatches() {
    return this.watchers.size
  }

  /** Writes (anything but GET) recorded, optionally by token. */
  writes(token?: string): Array<RecordedRequest> {
    return this.requests.filter((r) => r.method !== "GET" && (token === undefined || r.token === token))
  }

  get(plural: string, namespace: string, name: string): any {
    return this.objects.get(`${plural}/${namespace}/${name}`)
  }

  list(plural: string): Array<any> {
    return [...this.objects.entries()].filter(([key]) => key.startsWith(`${plural}/`)).map(([, object]) => object)
  }

  /** The field managers of an object: manager name to the fields it owns (fieldsV1), by operation. */
  managedFields(plural: string, namespace: string, name: string): Array<any> {
    return this.get(plural, namespace, name)?.metadata.managedFields ?? []
  }

  /**
   * Creates or replaces an object directly, as another client's update
   * (`manager`, default `test-client`) would: defaulted, validated (throws
   * ApiError), ownership of the fields whose value it changes moves to it.
   */
  put(plural: string, object: any, manager = "test-client"): any {
    return this.putDirect(plural, object, manager, true)
  }

  /**
   * An object stored under an older CRD, before a rule it breaks was added: stored without
   * the current schema's check. Writes to it (its status included) are checked as usual, as
   * the API server does without validation ratcheting (Kubernetes < 1.30).
   */
  putStoredEarlier(plural: string, object: any, manager = "test-client"): any {
    return this.putDirect(plural, object, manager, false)
  }

  private putDirect(plural: string, object: any, manager: string, admitIt: boolean): any {
    const type = resourceTypes.find((t) => t.plural === plural)!
    const stored = structuredClone(object)
    stored.apiVersion ??= apiVersionOf(type)
    stored.kind ??= type.kind
    stored.metadata.namespace ??= "default"
    const key = `${plural}/${stored.metadata.namespace}/${stored.metadata.name}`
    return this.update(type, key, stored, this.objects.get(key), manager, "", admitIt)
  }

  /** What the HPA does: writes a Deployment's replicas through the scale subresource. */
  scale(namespace: string, name: string, replicas: number, manager = "kube-controller-manager"): any {
    const type = resourceTypes.find((t) => t.plural === "deployments")!
    const key = `deployments/${namespace}/${name}`
    const existing = this.objects.get(key)
    if (existing === undefined) throw new ApiError(404, "NotFound", `deployments "${name}" not found`)
    const next = structuredClone(existing)
    next.spec.replicas = replicas
    return this.update(type, key, next, existing, manager, "scale", false)
  }

  delete(plural: string, namespace: string, name: string) {
    const key = `${plural}/${namespace}/${name}`
    const existing = this.objects.get(key)
    if (existing === undefined) return
    this.objects.delete(key)
    this.managers.delete(key)
    this.revision++
    this.emit(plural, { rv: this.revision, type: "DELETED", object: { ...existing, metadata: { ...existing.metadata, resourceVersion: String(this.revision) } } })
  }

  // ------------------------------------------------------------ writes

  /** Defaults, prunes and validates an object the way the API server does before it stores it. */
  private admitObject(type: ResourceType, object: any, existing?: any): any {
    if (type.kind === "Deployment" && existing !== undefined && !isDeepStrictEqual(existing.spec?.selector, object.spec?.selector)) {
      throw new ApiError(422, "Invalid", `Deployment.apps "${object.metadata.name}" is invalid: spec.selector: Invalid value: ${JSON.stringify(object.spec?.selector)}: field is immutable`)
    }
    if (type.kind === "InferenceService") {
      const pruned: any = prune(object)
      const result = admit({ ...pruned, spec: pruned.spec ?? {}, metadata: object.metadata })
      if (!result.ok) {
        throw new ApiError(422, "Invalid", `InferenceService.inference-router.dev "${object.metadata.name}" is invalid: ${result.errors.join(", ")}`)
      }
      return { ...result.object, metadata: object.metadata, ...(object.status === undefined ? {} : { status: result.object.status }) }
    }
    applyDefaults(type.kind, object)
    const errors = validationErrors(type.kind, object)
    if (errors.length > 0) throw new ApiError(422, "Invalid", `${type.kind} "${object.metadata.name}" is invalid: ${errors.join(", ")}`)
    return object
  }

  private managersOf(key: string): Array<Manager> {
    let list = this.managers.get(key)
    if (list === undefined) this.managers.set(key, list = [])
    return list
  }

  /** An update's ownership: the fields whose value it changes (or adds) become its own and no one else's. */
  private update(type: ResourceType, key: string, next: any, existing: any, manager: string, subresource: string, admitIt: boolean): any {
    next.metadata = { ...(existing?.metadata ?? {}), ...next.metadata, managedFields: undefined }
    if (admitIt) next = this.admitObject(type, next, existing)
    const before = existing === undefined ? new Set<string>() : this.allFields(existing)
    const after = fieldSet({ metadata: next.metadata, spec: next.spec, status: next.status, data: next.data })
    const changed = [...after].filter((path) => !before.has(path) || !isDeepStrictEqual(valueAt(existing, pathOf(path)), valueAt(next, pathOf(path))))
    const gone = [...before].filter((path) => !after.has(path))
    const managers = existing === undefined ? [] : structuredClone(this.managersOf(key))
    for (const other of managers) for (const path of [...changed, ...gone]) other.fields.delete(path)
    let mine = managers.find((m) => m.manager === manager && m.operation === "Update" && m.subresource === subresource)
    if (mine === undefined && changed.length > 0) {
      managers.push(mine = { manager, operation: "Update", subresource, fields: new Set(), time: new Date().toISOString() })
    }
    for (const path of changed) mine!.fields.add(path)
    return this.commit(type, key, next, existing, managers.filter((m) => m.fields.size > 0), subresource === "status")
  }

  private allFields(object: any): FieldSet {
    return fieldSet({ metadata: object.metadata, spec: object.spec, status: object.status, data: object.data })
  }

  /** Server-side apply. */
  private apply(type: ResourceType, key: string, applied: any, existing: any, manager: string, subresource: string, force: boolean): any {
    if (!isObject(applied)) throw new ApiError(400, "BadRequest", "the applied configuration is not an object")
    const config = subresource === "status"
      ? { status: applied.status ?? {} }
      : { metadata: applied.metadata ?? {}, spec: applied.spec, data: applied.data }
    for (const field of Object.keys(config)) if ((config as any)[field] === undefined) delete (config as any)[field]
    const configFields = fieldSet(config)
    const managers = existing === undefined ? [] : structuredClone(this.managersOf(key))
    const mine = managers.find((m) => m.manager === manager && m.operation === "Apply" && m.subresource === subresource)
    const conflicts: Array<string> = []
    for (const path of configFields) {
      const segments = pathOf(path)
      if (segments[segments.length - 1] === ".") continue
      for (const other of managers) {
        if (other === mine || !other.fields.has(path)) continue
        if (isDeepStrictEqual(valueAt(existing, segments), valueAt(config, segments))) continue
        if (force) other.fields.delete(path)
        else conflicts.push(`conflict with "${other.manager}"${other.operation === "Update" ? " using " + apiVersionOf(type) : ""}: .${genericOf(segments)}`)
      }
    }
    if (conflicts.length > 0) {
      throw new ApiError(409, "Conflict", `Apply failed with ${conflicts.length} conflict${conflicts.length === 1 ? "" : "s"}: ${conflicts.join("\n")}`)
    }
    const next: any = existing === undefined
      ? { apiVersion: apiVersionOf(type), kind: type.kind, metadata: { name: applied.metadata?.name, namespace: applied.metadata?.namespace } }
      : structuredClone(existing)
    // Fields this manager no longer applies go, unless another manager owns them (or, for a list item, a field in it).
    const ownedByOthers = new Set(managers.filter((m) => m !== mine).flatMap((m) => [...m.fields]))
    const dropped = [...(mine?.fields ?? [])].filter((path) => !configFields.has(path) && !ownedByOthers.has(path))
    for (const path of dropped.sort((a, b) => b.length - a.length)) {
      const segments = pathOf(path)
      if (segments[segments.length - 1] === ".") {
        const item = pathKey(segments.slice(0, -1)).slice(0, -1)
        if ([...ownedByOthers].some((other) => other.startsWith(item))) continue
      }
      removeAt(next, segments)
    }
    mergeApplied(next, config)
    const others = managers.filter((m) => m !== mine)
    const now = new Date().toISOString()
    const updated = [...others, { manager, operation: "Apply" as const, subresource, fields: configFields, time: mine?.time ?? now }]
    const admitted = subresource === "status" ? this.admitObject(type, next, existing) : this.admitObject(type, { ...next, status: existing?.status }, existing)
    if (admitted.status === undefined) delete admitted.status
    return this.commit(type, key, admitted, existing, updated.filter((m) => m.fields.size > 0), subresource === "status")
  }

  /** Stores an object unless nothing changed (then no resourceVersion bump and no watch event). */
  private commit(type: ResourceType, key: string, object: any, existing: any, managers: Array<Manager>, statusOnly: boolean): any {
    const previous = this.managers.get(key) ?? []
    const sameManagers = previous.length === managers.length &&
      previous.every((m, i) => m.manager === managers[i].manager && m.operation === managers[i].operation && isDeepStrictEqual(m.fields, managers[i].fields))
    const strip = (o: any) => ({ ...o, metadata: { ...o.metadata, managedFields: undefined, resourceVersion: undefined } })
    if (existing !== undefined && sameManagers && isDeepStrictEqual(strip(existing), strip(object))) return existing
    for (const manager of managers) {
      const before = previous.find((m) => m.manager === manager.manager && m.operation === manager.operation && m.subresource === manager.subresource)
      if (before === undefined || !isDeepStrictEqual(before.fields, manager.fields)) manager.time = new Date().toISOString()
    }
    this.managers.set(key, managers)
    object.metadata.managedFields = managers.map((m) => ({
      manager: m.manager,
      operation: m.operation,
      apiVersion: apiVersionOf(type),
      time: m.time,
      fieldsType: "FieldsV1",
      fieldsV1: fieldsV1(m.fields),
      ...(m.subresource === "" ? {} : { subresource: m.subresource })
    }))
    return this.store(type, key, object, existing, statusOnly)
  }

  private store(type: ResourceType, key: string, object: any, existing: any, statusOnly = false): any {
    this.revision++
    const metadata = object.metadata
    metadata.resourceVersion = String(this.revision)
    metadata.uid = existing?.metadata.uid ?? metadata.uid ?? randomUUID()
    metadata.creationTimestamp = existing?.metadata.creationTimestamp ?? new Date().toISOString()
    const generation = existing?.metadata.generation ?? 0
    metadata.generation = existing === undefined ? 1 : !statusOnly && specOf(existing) !== specOf(object) ? generation + 1 : generation
    this.objects.set(key, object)
    this.emit(type.plural, existing === undefined ? { rv: this.revision, type: "ADDED", object } : { rv: this.revision, type: "MODIFIED", object, previous: existing })
    return object
  }

  private emit(plural: string, event: WatchEvent) {
    this.log.push({ ...event, plural })
    for (const watcher of this.watchers) {
      if (watcher.type.plural === plural) this.send(watcher, event)
    }
  }

  private matches(watcher: Pick<Watcher, "namespace" | "selector">, object: any) {
    if (watcher.namespace !== undefined && object.metadata.namespace !== watcher.namespace) return false
    return Object.entries(watcher.selector).every(([k, v]) => object.metadata.labels?.[k] === v)
  }

  /**
   * As the API server's watch cache: an object that starts matching a filtered watch
   * (a label added) is ADDED to it, one that stops matching is DELETED from it (its last
   * matching state, at the new resourceVersion).
   */
  private send(watcher: Watcher, event: WatchEvent) {
    if (watcher.silent) return
    const now = this.matches(watcher, event.object)
    const before = event.previous !== undefined && this.matches(watcher, event.previous)
    let sent: { type: string; object: any } | undefined
    if (event.type !== "MODIFIED" || event.previous === undefined) sent = now ? { type: event.type, object: event.object } : undefined
    else if (now) sent = { type: before ? "MODIFIED" : "ADDED", object: event.object }
    else if (before) {
      sent = { type: "DELETED", object: { ...event.previous, metadata: { ...event.previous.metadata, resourceVersion: event.object.metadata.resourceVersion } } }
    }
    if (sent !== undefined) watcher.response.write(JSON.stringify(sent) + "\n")
  }

  private bookmarks() {
    for (const watcher of this.watchers) {
      if (watcher.silent || !watcher.bookmarks) continue
      watcher.response.write(
        JSON.stringify({
          type: "BOOKMARK",
          object: { kind: watcher.type.kind, apiVersion: apiVersionOf(watcher.type), metadata: { resourceVersion: String(this.revision) } }
        }) + "\n"
      )
    }
  }

  private json(response: ServerResponse, code: number, body: unknown, headers: Record<string, string> = {}) {
    const text = JSON.stringify(body)
    response.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers })
    response.end(text)
  }

  private matchFault(recorded: RecordedRequest): Fault | undefined {
    for (const fault of this.faults) {
      if (fault.method !== undefined && fault.method !== recorded.method) continue
      if (fault.token !== undefined && fault.token !== recorded.token) continue
      if (fault.watch !== undefined && fault.watch !== recorded.watch) continue
      if (fault.path !== undefined && !(typeof fault.path === "string" ? recorded.path.includes(fault.path) : fault.path.test(recorded.path))) continue
      if (fault.times !== undefined) {
        if (fault.times <= 0) continue
        fault.times--
      }
      return fault
    }
    return undefined
  }

  private async handle(request: IncomingMessage, response: ServerResponse) {
    const url = new URL(request.url ?? "/", "http://fake")
    const authorization = request.headers.authorization
    const watch = url.searchParams.get("watch") === "true" || url.searchParams.get("watch") === "1"
    const recorded: RecordedRequest = {
      method: request.method ?? "GET",
      path: url.pathname,
      token: authorization?.startsWith("Bearer ") ? authorization.slice(7) : undefined,
      contentType: request.headers["content-type"],
      watch,
      at: Date.now()
    }
    this.requests.push(recorded)
    response.on("finish", () => {
      recorded.status = response.statusCode
      recorded.answeredAt = Date.now()
    })
    if (watch) recorded.status = 200
    const chunks: Array<Buffer> = []
    for await (const chunk of request) chunks.push(chunk as Buffer)
    const bodyText = Buffer.concat(chunks).toString("utf8")
    if (this.down) return this.json(response, 503, status(503, "ServiceUnavailable", "the API server is down (test fault)"))
    const fault = this.matchFault(recorded)
    if (fault !== undefined) {
      if (fault.hang === true) {
        this.hanging.add(response)
        response.on("close", () => this.hanging.delete(response))
        return
      }
      if (fault.delayMs !== undefined) await new Promise((resolve) => setTimeout(resolve, fault.delayMs))
      const lateMs = fault.answerLateMs
      if (lateMs !== undefined) {
        const end = response.end.bind(response) as (...args: Array<unknown>) => ServerResponse
        response.end = ((...args: Array<unknown>) => {
          recorded.heldAt = Date.now()
          setTimeout(() => end(...args), lateMs)
          return response
        }) as typeof response.end
      }
      if (fault.status !== undefined) {
        if (watch) recorded.status = fault.status
        return this.json(
          response,
          fault.status,
          status(fault.status, reasons[fault.status] ?? "Unknown", `test fault: ${fault.status}`),
          fault.retryAfterSeconds === undefined ? {} : { "retry-after": String(fault.retryAfterSeconds) }
        )
      }
    }
    try {
      this.route(request, response, url, watch, bodyText)
    } catch (error) {
      if (!(error instanceof ApiError)) throw error
      this.json(response, error.code, status(error.code, error.reason, error.message))
    }
  }

  private route(request: IncomingMessage, response: ServerResponse, url: URL, watch: boolean, bodyText: string) {
    const path = url.pathname
    if (path === "/api") return this.json(response, 200, { kind: "APIVersions", versions: ["v1"] })
    if (path === "/apis") {
      const groups = [...new Set(resourceTypes.filter((t) => t.group !== "").map((t) => t.group))]
      return this.json(response, 200, {
        kind: "APIGroupList",
        apiVersion: "v1",
        groups: groups.map((name) => {
          const version = resourceTypes.find((t) => t.group === name)!.version
          const gv = { groupVersion: `${name}/${version}`, version }
          return { name, versions: [gv], preferredVersion: gv }
        })
      })
    }
    const parts = path.split("/").filter((p) => p !== "")
    // /api/v1/... or /apis/<group>/<version>/...
    const [group, version, rest] = parts[0] === "api"
      ? ["", parts[1], parts.slice(2)]
      : parts[0] === "apis"
      ? [parts[1], parts[2], parts.slice(3)]
      : [undefined, undefined, []]
    if (group === undefined || version === undefined) return this.json(response, 404, status(404, "NotFound", `no route ${path}`))
    const types = resourceTypes.filter((t) => t.group === group && t.version === version)
    if (types.length === 0) return this.json(response, 404, status(404, "NotFound", `no API ${group}/${version}`))
    if (rest.length === 0) {
      return this.json(response, 200, {
        kind: "APIResourceList",
        apiVersion: "v1",
        groupVersion: group === "" ? version : `${group}/${version}`,
        resources: types.flatMap((t) => [
          { name: t.plural, singularName: t.kind.toLowerCase(), namespaced: true, kind: t.kind, verbs: ["create", "delete", "get", "list", "patch", "update", "watch"] },
          ...(t.subresources ?? []).map((sub) => ({ name: `${t.plural}/${sub}`, singularName: "", namespaced: true, kind: t.kind, verbs: ["get", "patch", "update"] }))
        ])
      })
    }
    let namespace: string | undefined
    let segments = rest
    if (segments[0] === "namespaces" && segments.length >= 3) {
      namespace = segments[1]
      segments = segments.slice(2)
    }
    const [plural, name, subresource] = segments
    const type = types.find((t) => t.plural === plural)
    if (type === undefined) return this.json(response, 404, status(404, "NotFound", `the server could not find the requested resource ${plural}`))

    if (name === undefined) {
      if (request.method === "GET") {
        const selector = Object.fromEntries(
          (url.searchParams.get("labelSelector") ?? "").split(",").filter((s) => s !== "").map((s) => s.split("=") as [string, string])
        )
        if (watch) return this.watch(type, namespace, selector, url, response)
        const items = [...this.objects.entries()]
          .filter(([key]) => key.startsWith(`${plural}/`))
          .map(([, object]) => object)
          .filter((object) => this.matches({ namespace, selector }, object))
        return this.json(response, 200, {
          kind: `${type.kind}List`,
          apiVersion: apiVersionOf(type),
          metadata: { resourceVersion: String(this.revision) },
          items
        })
      }
      if (request.method === "POST") {
        const object = JSON.parse(bodyText)
        const ns = namespace ?? object.metadata.namespace ?? "default"
        object.metadata.namespace = ns
        object.metadata.name ??= `${object.metadata.generateName ?? "obj-"}${randomUUID().slice(0, 5)}`
        const key = `${plural}/${ns}/${object.metadata.name}`
        if (this.objects.has(key)) {
          return this.json(response, 409, status(409, "AlreadyExists", `${plural} "${object.metadata.name}" already exists`))
        }
        object.apiVersion ??= apiVersionOf(type)
        object.kind ??= type.kind
        const manager = url.searchParams.get("fieldManager") ?? "unknown"
        return this.json(response, 201, this.update(type, key, object, undefined, manager, "", true))
      }
      return this.json(response, 405, status(405, "MethodNotAllowed", `${request.method} on a collection`))
    }

    const ns = namespace ?? "default"
    const key = `${plural}/${ns}/${name}`
    const existing = this.objects.get(key)
    if (subresource !== undefined && !(type.subresources ?? []).includes(subresource)) {
      return this.json(response, 404, status(404, "NotFound", `no subresource ${subresource} of ${plural}`))
    }
    if (request.method === "GET") {
      return existing === undefined
        ? this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
        : this.json(response, 200, existing)
    }
    if (request.method === "DELETE") {
      if (existing === undefined) return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
      this.delete(plural, ns, name)
      return this.json(response, 200, { kind: "Status", apiVersion: "v1", status: "Success" })
    }
    const manager = url.searchParams.get("fieldManager")
    if (request.method === "PUT") {
      if (existing === undefined) return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
      const object = JSON.parse(bodyText)
      if (stale(object, existing)) return this.json(response, 409, modified(plural, name))
      const next = subresource === "status" ? { ...structuredClone(existing), status: object.status } : { ...object, status: existing.status }
      return this.json(response, 200, this.update(type, key, next, existing, manager ?? "unknown", subresource ?? "", true))
    }
    if (request.method === "PATCH") {
      const contentType = (request.headers["content-type"] ?? "").split(";")[0].trim()
      if (contentType === "application/apply-patch+yaml") {
        if (manager === null || manager === "") {
          return this.json(response, 400, status(400, "BadRequest", "PATCH with apply requires a fieldManager"))
        }
        if (existing === undefined && subresource === "status") {
          return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
        }
        const applied = parseYaml(bodyText)
        if (applied?.metadata?.name !== undefined && applied.metadata.name !== name) {
          return this.json(response, 400, status(400, "BadRequest", "the name of the object does not match the name on the URL"))
        }
        if (existing !== undefined && stale(applied, existing)) return this.json(response, 409, modified(plural, name))
        const stored = this.apply(type, key, { ...applied, metadata: { ...applied?.metadata, name, namespace: ns } }, existing, manager, subresource ?? "", url.searchParams.get("force") === "true")
        return this.json(response, existing === undefined ? 201 : 200, stored)
      }
      if (contentType === "application/merge-patch+json" || contentType === "application/strategic-merge-patch+json") {
        if (existing === undefined) return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
        const patch = JSON.parse(bodyText)
        if (stale(patch, existing)) return this.json(response, 409, modified(plural, name))
        const next = structuredClone(existing)
        mergePatch(next, patch)
        return this.json(response, 200, this.update(type, key, next, existing, manager ?? "unknown", subresource ?? "", true))
      }
      return this.json(response, 415, status(415, "UnsupportedMediaType", `unsupported patch type ${contentType}`))
    }
    return this.json(response, 405, status(405, "MethodNotAllowed", `${request.method}`))
  }

  private watch(type: ResourceType, namespace: string | undefined, selector: Record<string, string>, url: URL, response: ServerResponse) {
    response.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" })
    const watcher: Watcher = { type, namespace, selector, response, silent: this.silentWatches, bookmarks: url.searchParams.get("allowWatchBookmarks") === "true" }
    const from = url.searchParams.get("resourceVersion")
    if (from !== null && from !== "" && from !== "0" && Number(from) < this.oldestRetained) {
      response.end(
        JSON.stringify({ type: "ERROR", object: status(410, "Expired", `too old resource version: ${from} (${this.oldestRetained})`) }) + "\n"
      )
      return
    }
    this.watchers.add(watcher)
    response.on("close", () => this.watchers.delete(watcher))
    if (!watcher.silent) {
      if (from === null || from === "" || from === "0") {
        for (const [key, object] of this.objects) if (key.startsWith(`${type.plural}/`)) this.send(watcher, { rv: this.revision, type: "ADDED", object })
      } else {
        for (const event of this.log) if (event.plural === type.plural && event.rv > Number(from)) this.send(watcher, event)
      }
    }
    const timeoutSeconds = Number(url.searchParams.get("timeoutSeconds") ?? 0)
    if (timeoutSeconds > 0) {
      const timer = setTimeout(() => response.end(), timeoutSeconds * 1000)
      response.on("close", () => clearTimeout(timer))
    }
  }
}
