/**
 * The Kubernetes API as the controller uses it, through
 * `@kubernetes/client-node` (kubeconfig loading and auth, discovery, the
 * typed APIs, watch streams), each call an Effect that fails with `KubeError`
 * and is interruptible (a watch is aborted when its fiber is interrupted).
 */
import {
  ApiException,
  CoordinationV1Api,
  CoreV1Api,
  createConfiguration,
  CustomObjectsApi,
  KubeConfig,
  type KubernetesObject,
  KubernetesObjectApi,
  PatchStrategy,
  ServerConfiguration,
  setHeaderOptions,
  Watch
} from "@kubernetes/client-node"
import { Context, Data, Effect, Layer } from "effect"
import { AsyncLocalStorage } from "node:async_hooks"
import { existsSync } from "node:fs"
import { homedir } from "node:os"
import { join } from "node:path"
import { group, plural, version } from "../api/InferenceService.ts"

/** A failed API call: the HTTP status when there was one, and what the server said. */
export class KubeError extends Data.TaggedError("KubeError")<{
  readonly operation: string
  readonly status: number | undefined
  readonly detail: string
  /** The server's Retry-After (429, 503), in seconds. */
  readonly retryAfterSeconds?: number | undefined
}> {
  override get message() {
    return `${this.operation}: ${this.status === undefined ? "" : `${this.status} `}${this.detail}`
  }
}

/** A watch the server ended with 410 Gone: the resourceVersion is too old, list again. */
export class WatchExpired extends Data.TaggedError("WatchExpired")<{ readonly detail: string }> {}

/** The field manager of every write: what `kubectl get --show-managed-fields` shows. */
export const fieldManager = "inference-router-controller"

export interface ResourceRef {
  readonly apiVersion: string
  readonly kind: string
  /** The collection's URL path below the namespace, e.g. `apis/apps/v1/deployments`. */
  readonly path: string
}

export const resources = {
  inferenceServices: { apiVersion: `${group}/${version}`, kind: "InferenceService", path: `apis/${group}/${version}/${plural}` },
  deployments: { apiVersion: "apps/v1", kind: "Deployment", path: "apis/apps/v1/deployments" },
  pods: { apiVersion: "v1", kind: "Pod", path: "api/v1/pods" },
  services: { apiVersion: "v1", kind: "Service", path: "api/v1/services" },
  podDisruptionBudgets: { apiVersion: "policy/v1", kind: "PodDisruptionBudget", path: "apis/policy/v1/poddisruptionbudgets" },
  horizontalPodAutoscalers: {
    apiVersion: "autoscaling/v2",
    kind: "HorizontalPodAutoscaler",
    path: "apis/autoscaling/v2/horizontalpodautoscalers"
  }
} satisfies Record<string, ResourceRef>

/** The kinds of child the controller creates, each watched (by its label) so drift is seen and re-asserted. */
export const childResources = [
  resources.deployments,
  resources.services,
  resources.podDisruptionBudgets,
  resources.horizontalPodAutoscalers
] as const

export interface ListResult {
  readonly items: ReadonlyArray<any>
  readonly resourceVersion: string
}

export type WatchEventType = "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK"

const toKubeError = (operation: string) => (error: unknown): KubeError => {
  if (error instanceof ApiException) {
    const body = typeof error.body === "string" ? safeJson(error.body) : error.body
    const retryAfter = Number(error.headers?.["retry-after"] ?? Number.NaN)
    return new KubeError({
      operation,
      status: error.code,
      detail: String((body as any)?.message ?? error.message).slice(0, 500),
      ...(Number.isFinite(retryAfter) && retryAfter >= 0 ? { retryAfterSeconds: retryAfter } : {})
    })
  }
  const status = (error as { statusCode?: number }).statusCode
  return new KubeError({ operation, status, detail: error instanceof Error ? error.message : String(error) })
}

const safeJson = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return { message: text }
  }
}

/** `apis/<group>/<version>/<plural>`, or its `namespaces/<ns>/<plural>` form. */
const collectionPath = (resource: ResourceRef, namespace: string | undefined) => {
  if (namespace === undefined) return `/${resource.path}`
  const parts = resource.path.split("/")
  const last = parts.pop()
  return `/${parts.join("/")}/namespaces/${namespace}/${last}`
}

class ObjectApi extends KubernetesObjectApi {
  static of(configuration: ConstructorParameters<typeof KubernetesObjectApi>[0], kc: KubeConfig) {
    const api = new ObjectApi(configuration)
    api.setDefaultNamespace(kc)
    return api
  }
}

/** The abort signal of the call in progress, read by the clients' middleware (client-node takes no per-call signal). */
const callSignal = new AsyncLocalStorage<AbortSignal>()

/** No kubeconfig anywhere client-node would look, and not in a pod: there is no cluster to talk to. */
export class NoCluster extends Data.TaggedError("NoCluster")<{}> {
  override get message() {
    return "no cluster found: set KUBECONFIG, create ~/.kube/config, or run in a pod (KUBERNETES_SERVICE_HOST)"
  }
}

/** The API's answer to a call that took longer than the timeout. */
const timedOut = (operation: string, timeoutMs: number) =>
  new KubeError({ operation, status: undefined, detail: `no answer within ${timeoutMs} ms` })

export class KubeApi extends Context.Service<KubeApi, {
  /** The server the kubeconfig points at, for logs. */
  readonly server: string
  list(resource: ResourceRef, namespace: string | undefined, labelSelector?: string): Effect.Effect<ListResult, KubeError>
  /**
   * Streams events from `resourceVersion` until the server ends the stream
   * (succeeds), the connection fails (KubeError) or the server says 410
   * (WatchExpired). Interrupting it aborts the request.
   */
  watch(
    resource: ResourceRef,
    namespace: string | undefined,
    resourceVersion: string,
    onEvent: (type: WatchEventType, object: any) => void,
    labelSelector?: string
  ): Effect.Effect<void, KubeError | WatchExpired>
  /** Server-side apply, forcing ownership of the fields it sets. */
  apply(object: KubernetesObject): Effect.Effect<any, KubeError>
  /** Server-side apply of an InferenceService's status (the status subresource). */
  applyStatus(namespace: string, name: string, status: unknown): Effect.Effect<any, KubeError>
  /** Reads one object; undefined when there is none. */
  read(resource: ResourceRef, namespace: string, name: string): Effect.Effect<any | undefined, KubeError>
  /** Deletes an object; one already gone is not an error. */
  remove(object: { apiVersion: string; kind: string; metadata: { name: string; namespace: string } }): Effect.Effect<void, KubeError>
  createEvent(namespace: string, event: any): Effect.Effect<void, KubeError>
  readLease(namespace: string, name: string): Effect.Effect<any | undefined, KubeError>
  createLease(namespace: string, lease: any): Effect.Effect<any, KubeError>
  replaceLease(namespace: string, name: string, lease: any): Effect.Effect<any, KubeError>
}>()("inference-router/KubeApi") {
  /**
   * Every call but a watch is bounded by `timeoutMs` (and by any shorter
   * deadline of its caller, which interrupts it): an interrupted call aborts
   * its HTTP request, so a call that hangs neither holds a worker nor writes
   * after its caller gave up (a leader that lost its lease).
   */
  static readonly make = (kc: KubeConfig, timeoutMs = 30_000): KubeApi["Service"] => {
    const cluster = kc.getCurrentCluster()
    const configuration = createConfiguration({
      baseServer: new ServerConfiguration(cluster?.server ?? "http://localhost", {}),
      authMethods: { default: kc },
      promiseMiddleware: [{
        pre: async (context) => {
          const signal = callSignal.getStore()
          if (signal !== undefined) context.setSignal(signal)
          return context
        },
        post: async (response) => response
      }]
    })
    const objects = ObjectApi.of(configuration, kc)
    const core = new CoreV1Api(configuration)
    const custom = new CustomObjectsApi(configuration)
    const coordination = new CoordinationV1Api(configuration)
    const call = <A>(operation: string, run: () => Promise<A>) =>
      Effect.tryPromise({ try: (signal) => callSignal.run(signal, run), catch: toKubeError(operation) }).pipe(
        Effect.timeoutOrElse({ duration: timeoutMs, orElse: () => Effect.fail(timedOut(operation, timeoutMs)) })
      )
    const watcher = new Watch(kc)
    const applyContentType = setHeaderOptions("Content-Type", PatchStrategy.ServerSideApply)
    const [resourceGroup, resourceVersion] = [group, version]

    return KubeApi.of({
      server: cluster?.server ?? "(none)",
      list: (resource, namespace, labelSelector) =>
        call(
          `list ${resource.kind}`,
          () => objects.list(resource.apiVersion, resource.kind, namespace, undefined, undefined, undefined, undefined, labelSelector)
        ).pipe(
          Effect.map((list) => ({ items: list.items, resourceVersion: list.metadata?.resourceVersion ?? "" }))
        ),
      watch: (resource, namespace, from, onEvent, labelSelector) =>
        Effect.callback<void, KubeError | WatchExpired>((resume) => {
          const path = collectionPath(resource, namespace)
          let aborted = false
          let abort: AbortController | undefined
          let expired: WatchExpired | undefined
          watcher.watch(
            path,
            // The server ends each watch after a while; the informer watches again from where it was.
            {
              resourceVersion: from,
              allowWatchBookmarks: true,
              labelSelector,
              timeoutSeconds: 300 + Math.floor(Math.random() * 300)
            },
            (type, object) => {
              if (type === "ERROR") {
                if (object?.code === 410) expired = new WatchExpired({ detail: String(object.message ?? "410 Gone") })
                return
              }
              onEvent(type as WatchEventType, object)
            },
            (error) => {
              if (expired !== undefined) return resume(Effect.fail(expired))
              if (error === null || error === undefined || (error as Error).name === "AbortError") return resume(Effect.void)
              resume(Effect.fail(toKubeError(`watch ${resource.kind}`)(error)))
            }
          ).then((controller) => {
            abort = controller
            if (aborted) controller.abort()
          }, (error) => resume(Effect.fail(toKubeError(`watch ${resource.kind}`)(error))))
          return Effect.sync(() => {
            aborted = true
            abort?.abort()
          })
        }),
      apply: (object) =>
        call(
          `apply ${object.kind} ${object.metadata?.namespace}/${object.metadata?.name}`,
          () => objects.patch(object, undefined, undefined, fieldManager, true, PatchStrategy.ServerSideApply)
        ),
      applyStatus: (namespace, name, status) =>
        call(`apply status of InferenceService ${namespace}/${name}`, () =>
          custom.patchNamespacedCustomObjectStatus({
            group: resourceGroup,
            version: resourceVersion,
            namespace,
            plural,
            name,
            body: { apiVersion: `${resourceGroup}/${resourceVersion}`, kind: "InferenceService", metadata: { name, namespace }, status },
            fieldManager,
            force: true
          }, applyContentType)),
      read: (resource, namespace, name) =>
        call(`read ${resource.kind} ${namespace}/${name}`, () =>
          objects.read({ apiVersion: resource.apiVersion, kind: resource.kind, metadata: { name, namespace } })).pipe(
            Effect.catchIf((error) => error.status === 404, () => Effect.succeed(undefined))
          ),
      remove: (object) =>
        call(`delete ${object.kind} ${object.metadata.namespace}/${object.metadata.name}`, () => objects.delete(object)).pipe(
          Effect.asVoid,
          Effect.catchIf((error) => error.status === 404, () => Effect.void)
        ),
      createEvent: (namespace, event) =>
        call(`create event in ${namespace}`, () => core.createNamespacedEvent({ namespace, body: event })).pipe(Effect.asVoid),
      readLease: (namespace, name) =>
        call(`read lease ${namespace}/${name}`, () => coordination.readNamespacedLease({ namespace, name })).pipe(
          Effect.catchIf((error) => error.status === 404, () => Effect.succeed(undefined))
        ),
      createLease: (namespace, lease) =>
        call(`create lease ${namespace}`, () => coordination.createNamespacedLease({ namespace, body: lease })),
      replaceLease: (namespace, name, lease) =>
        call(`replace lease ${namespace}/${name}`, () => coordination.replaceNamespacedLease({ namespace, name, body: lease }))
    })
  }

  /**
   * From the kubeconfig kubectl would use (KUBECONFIG, ~/.kube/config, or the
   * pod's service account); none of them: fails with one line (client-node
   * would otherwise try http://localhost:8080 and warn on every call).
   */
  static readonly layer = (timeoutMs?: number): Layer.Layer<KubeApi, NoCluster> =>
    Layer.effect(
      KubeApi,
      Effect.suspend(() => {
        const kubeconfig = process.env.KUBECONFIG
        const found = (kubeconfig !== undefined && kubeconfig !== "") ||
          existsSync(join(homedir(), ".kube", "config")) ||
          process.env.KUBERNETES_SERVICE_HOST !== undefined
        if (!found) return Effect.fail(new NoCluster())
        const kc = new KubeConfig()
        kc.loadFromDefault()
        return Effect.succeed(KubeApi.make(kc, timeoutMs))
      })
    )
}
