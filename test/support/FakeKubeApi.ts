/**
 * A stand-in for the Kubernetes API server, for the controller's tests: an
 * HTTP server on 127.0.0.1 speaking the parts of the real wire protocol the
 * controller uses, reached through a kubeconfig with the same client code as
 * a real cluster (`@kubernetes/client-node`).
 *
 * Modelled: discovery (`/api`, `/apis`, group versions); list with label
 * selectors and a collection resourceVersion; watch streams (newline-delimited
 * JSON events, replay from a resourceVersion, bookmarks, `timeoutSeconds`, a
 * 410 `Expired` ERROR event for a resourceVersion older than the retained
 * history); get, create (409 AlreadyExists), replace (409 Conflict on a stale
 * resourceVersion), JSON merge patch (as `kubectl edit` does), server-side
 * apply (`application/apply-patch+yaml`, `fieldManager` required, a manager's
 * fields it no longer applies removed, `force`), the status subresource,
 * `metadata.generation` bumped on spec changes, Leases, Events; bearer tokens
 * recorded per request. Faults: down (503 to everything), dropped watches,
 * silent watches, compaction (old resourceVersions gone).
 *
 * Not modelled: the garbage collector (owner references do not cascade),
 * admission webhooks, CRD validation (tests use CrdValidator for that),
 * field-level conflicts between managers, defaulting, pagination, RBAC.
 */
import { randomUUID } from "node:crypto"
import { once } from "node:events"
import { mkdtempSync, writeFileSync } from "node:fs"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { parse as parseYaml } from "yaml"

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
  { group: "apps", version: "v1", plural: "deployments", kind: "Deployment", subresources: ["status"] },
  { group: "policy", version: "v1", plural: "poddisruptionbudgets", kind: "PodDisruptionBudget" },
  { group: "autoscaling", version: "v2", plural: "horizontalpodautoscalers", kind: "HorizontalPodAutoscaler" },
  { group: "coordination.k8s.io", version: "v1", plural: "leases", kind: "Lease" },
  { group: "inference-router.dev", version: "v1alpha1", plural: "inferenceservices", kind: "InferenceService", subresources: ["status"] }
]

const apiVersionOf = (type: ResourceType) => type.group === "" ? type.version : `${type.group}/${type.version}`

interface WatchEvent {
  readonly rv: number
  readonly type: "ADDED" | "MODIFIED" | "DELETED"
  readonly object: any
}

interface Watcher {
  readonly type: ResourceType
  readonly namespace: string | undefined
  readonly selector: Record<string, string>
  readonly response: ServerResponse
  readonly silent: boolean
}

export interface RecordedRequest {
  readonly method: string
  readonly path: string
  readonly token: string | undefined
  readonly contentType: string | undefined
  readonly watch: boolean
  /** The status answered (set when the answer is written). */
  status?: number
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

const isObject = (value: unknown): value is Record<string, any> =>
  value !== null && typeof value === "object" && !Array.isArray(value)

/** Leaf paths of an applied object (arrays are leaves: replaced whole, as atomic lists). */
const leafPaths = (value: unknown, prefix: Array<string> = []): Array<Array<string>> => {
  if (!isObject(value) || Object.keys(value).length === 0) return [prefix]
  return Object.entries(value).flatMap(([key, sub]) => leafPaths(sub, [...prefix, key]))
}

const deletePath = (target: any, path: ReadonlyArray<string>) => {
  const parents: Array<any> = []
  let node = target
  for (const key of path.slice(0, -1)) {
    if (!isObject(node[key])) return
    parents.push(node)
    node = node[key]
  }
  delete node[path[path.length - 1]]
}

const merge = (target: Record<string, any>, patch: Record<string, any>) => {
  for (const [key, value] of Object.entries(patch)) {
    if (value === null) delete target[key]
    else if (isObject(value) && isObject(target[key])) merge(target[key], value)
    else target[key] = structuredClone(value)
  }
}

const specOf = (object: any) => JSON.stringify({ ...object, metadata: undefined, status: undefined })

export class FakeKubeApi {
  readonly server: Server
  readonly requests: Array<RecordedRequest> = []
  /** Objects by `plural/namespace/name`. */
  readonly objects = new Map<string, any>()
  private readonly log: Array<WatchEvent & { readonly plural: string }> = []
  private readonly watchers = new Set<Watcher>()
  /** Fields each manager applied last, by object key and manager. */
  private readonly applied = new Map<string, Array<Array<string>>>()
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
    this.server = createServer((request, response) => this.handle(request, response))
  }

  async start(): Promise<number> {
    this.server.listen(0, "127.0.0.1")
    await once(this.server, "listening")
    this.bookmarkTimer = setInterval(() => this.bookmarks(), this.options.bookmarkMs ?? 1_000)
    return this.port
  }

  get port() {
    return (this.server.address() as AddressInfo).port
  }

  async stop() {
    clearInterval(this.bookmarkTimer)
    this.dropWatches()
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

  /** Creates or replaces an object directly (as another client would), emitting its watch event. */
  put(plural: string, object: any): any {
    const type = resourceTypes.find((t) => t.plural === plural)!
    const key = `${plural}/${object.metadata.namespace ?? "default"}/${object.metadata.name}`
    const existing = this.objects.get(key)
    const stored = structuredClone(object)
    stored.apiVersion ??= apiVersionOf(type)
    stored.kind ??= type.kind
    stored.metadata.namespace ??= "default"
    return this.store(type, key, stored, existing)
  }

  delete(plural: string, namespace: string, name: string) {
    const key = `${plural}/${namespace}/${name}`
    const existing = this.objects.get(key)
    if (existing === undefined) return
    this.objects.delete(key)
    this.revision++
    this.emit(plural, { rv: this.revision, type: "DELETED", object: { ...existing, metadata: { ...existing.metadata, resourceVersion: String(this.revision) } } })
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
    this.emit(type.plural, { rv: this.revision, type: existing === undefined ? "ADDED" : "MODIFIED", object })
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

  private send(watcher: Watcher, event: WatchEvent) {
    if (watcher.silent || !this.matches(watcher, event.object)) return
    watcher.response.write(JSON.stringify({ type: event.type, object: event.object }) + "\n")
  }

  private bookmarks() {
    for (const watcher of this.watchers) {
      if (watcher.silent) continue
      watcher.response.write(
        JSON.stringify({
          type: "BOOKMARK",
          object: { kind: watcher.type.kind, apiVersion: apiVersionOf(watcher.type), metadata: { resourceVersion: String(this.revision) } }
        }) + "\n"
      )
    }
  }

  private json(response: ServerResponse, code: number, body: unknown) {
    const text = JSON.stringify(body)
    response.writeHead(code, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
    response.end(text)
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
      watch
    }
    this.requests.push(recorded)
    response.on("finish", () => (recorded.status = response.statusCode))
    if (watch) recorded.status = 200
    const chunks: Array<Buffer> = []
    for await (const chunk of request) chunks.push(chunk as Buffer)
    const bodyText = Buffer.concat(chunks).toString("utf8")
    if (this.down) return this.json(response, 503, status(503, "ServiceUnavailable", "the API server is down (test fault)"))

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
        return this.json(response, 201, this.store(type, key, object, undefined))
      }
      return this.json(response, 405, status(405, "MethodNotAllowed", `${request.method} on a collection`))
    }

    const ns = namespace ?? "default"
    const key = `${plural}/${ns}/${name}`
    const existing = this.objects.get(key)
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
    if (request.method === "PUT") {
      if (existing === undefined) return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
      const object = JSON.parse(bodyText)
      if (object.metadata?.resourceVersion !== undefined && object.metadata.resourceVersion !== existing.metadata.resourceVersion) {
        return this.json(
          response,
          409,
          status(409, "Conflict", `Operation cannot be fulfilled on ${plural} "${name}": the object has been modified; please apply your changes to the latest version and try again`)
        )
      }
      object.metadata = { ...existing.metadata, ...object.metadata }
      const next = subresource === "status" ? { ...existing, status: object.status } : { ...object, status: existing.status }
      return this.json(response, 200, this.store(type, key, next, existing, subresource === "status"))
    }
    if (request.method === "PATCH") {
      const contentType = (request.headers["content-type"] ?? "").split(";")[0].trim()
      if (contentType === "application/apply-patch+yaml") {
        const manager = url.searchParams.get("fieldManager")
        if (manager === null || manager === "") {
          return this.json(response, 400, status(400, "BadRequest", "PATCH with apply requires a fieldManager"))
        }
        const applied = parseYaml(bodyText)
        const next: any = existing === undefined
          ? { apiVersion: apiVersionOf(type), kind: type.kind, metadata: { name, namespace: ns } }
          : structuredClone(existing)
        const target = subresource === "status" ? { status: applied.status ?? {} } : { ...applied, status: undefined }
        delete target.status
        const appliedSubtree = subresource === "status" ? { status: applied.status ?? {} } : target
        const ownerKey = `${key}#${manager}#${subresource ?? ""}`
        const paths = leafPaths(appliedSubtree).filter((p) => p[0] !== "metadata" || !["resourceVersion", "uid", "managedFields"].includes(p[1]))
        for (const previous of this.applied.get(ownerKey) ?? []) {
          if (!paths.some((p) => p.join("/") === previous.join("/"))) deletePath(next, previous)
        }
        merge(next, appliedSubtree)
        next.metadata.managedFields = [
          ...(next.metadata.managedFields ?? []).filter((m: any) => m.manager !== manager || (m.subresource ?? "") !== (subresource ?? "")),
          { manager, operation: "Apply", apiVersion: apiVersionOf(type), ...(subresource ? { subresource } : {}) }
        ]
        this.applied.set(ownerKey, paths)
        if (existing === undefined && subresource === "status") {
          return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
        }
        return this.json(response, existing === undefined ? 201 : 200, this.store(type, key, next, existing, subresource === "status"))
      }
      if (contentType === "application/merge-patch+json" || contentType === "application/strategic-merge-patch+json") {
        if (existing === undefined) return this.json(response, 404, status(404, "NotFound", `${plural} "${name}" not found`))
        const next = structuredClone(existing)
        merge(next, JSON.parse(bodyText))
        return this.json(response, 200, this.store(type, key, next, existing, subresource === "status"))
      }
      return this.json(response, 415, status(415, "UnsupportedMediaType", `unsupported patch type ${contentType}`))
    }
    return this.json(response, 405, status(405, "MethodNotAllowed", `${request.method}`))
  }

  private watch(type: ResourceType, namespace: string | undefined, selector: Record<string, string>, url: URL, response: ServerResponse) {
    response.writeHead(200, { "content-type": "application/json", "transfer-encoding": "chunked" })
    const watcher: Watcher = { type, namespace, selector, response, silent: this.silentWatches }
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
