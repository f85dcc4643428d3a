/**
 * The controller: informers on InferenceServices and on the children it
 * creates (by their label; in every replica, so a standby is warm), and, while this replica leads,
 * the work queue that reconciles them, fed by watch events, by the owned
 * Deployments' events, and by a periodic resync.
 */
import { Context, Effect, Layer } from "effect"
import { metricContext } from "../shared/Metrics.ts"
import { ControllerConfig } from "./ControllerConfig.ts"
import { type Informer, makeInformer } from "./Informer.ts"
import { childResources, KubeApi, resources } from "./KubeApi.ts"
import { runWhileLeader } from "./LeaderElection.ts"
import { isLeader, watchRestartsBy } from "./Metrics.ts"
import { makeReconciler } from "./Reconciler.ts"
import { makeWorkQueue, type WorkQueue } from "./WorkQueue.ts"

/** The InferenceService that controls a child, as `namespace/name`. */
export const ownerKey = (object: any): string | undefined => {
  const owner = (object.metadata?.ownerReferences ?? []).find((ref: any) =>
    ref.controller === true && ref.kind === "InferenceService"
  )
  return owner === undefined ? undefined : `${object.metadata.namespace}/${owner.name}`
}

/**
 * The controller's own image, from its Pod: the routers run the same image
 * (`dist/router.js` beside `dist/controller.js`), so one image setting serves
 * both. When the Pod cannot be read, the fallback, with a warning.
 */
const ownImage = (pod: { readonly name: string; readonly namespace: string }, fallback: string) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const found = yield* kube.read(resources.pods, pod.namespace, pod.name)
    const containers: ReadonlyArray<any> = found?.spec?.containers ?? []
    const image: unknown = (containers.find((c) => c.name === "controller") ?? containers[0])?.image
    if (typeof image !== "string" || image === "") return yield* Effect.fail(`pod ${pod.namespace}/${pod.name} not found or without an image`)
    yield* Effect.logInfo(`router image: ${image} (the controller's own; set ROUTER_IMAGE to choose another)`)
    return image
  }).pipe(
    Effect.catch((error) =>
      Effect.logWarning(`could not read the controller's own image; routers get ${fallback} (set ROUTER_IMAGE)`).pipe(
        Effect.annotateLogs({ error: typeof error === "string" ? error : error.message }),
        Effect.as(fallback)
      )
    )
  )

export class ControllerState extends Context.Service<ControllerState, {
  /** Ready once every informer has listed once. */
  readonly isReady: () => boolean
  readonly queueDepth: () => number
  readonly isLeading: () => boolean
  /**
   * Whether the workers have stopped making progress: a reconcile has run for
   * longer than ten API timeouts (every call is bounded, so only a defect can
   * hold one that long). Liveness fails, and the kubelet restarts the process.
   */
  readonly isStalled: () => boolean
}>()("inference-router/ControllerState") {}

export const Controller = Layer.effect(
  ControllerState,
  Effect.gen(function*() {
    const settings = yield* ControllerConfig
    const metrics = metricContext(yield* Effect.context<never>())
    let queue: WorkQueue | undefined
    let leading = false
    const restarts = (resource: string) => (reason: string) => watchRestartsBy(resource, reason).updateUnsafe(1, metrics)

    const inferenceServices: Informer = yield* makeInformer({
      resource: resources.inferenceServices,
      namespaces: settings.watchNamespaces,
      idleTimeoutMs: settings.watchIdleTimeoutMs,
      onChange: (key) => queue?.add(key),
      onRestart: restarts("InferenceService")
    })
    const children: Record<string, Informer> = {}
    for (const resource of childResources) {
      children[resource.kind] = yield* makeInformer({
        resource,
        namespaces: settings.watchNamespaces,
        labelSelector: "app.kubernetes.io/managed-by=inference-router-controller",
        idleTimeoutMs: settings.watchIdleTimeoutMs,
        // A child changed (a rollout's progress, a manual edit): look at its InferenceService again.
        onChange: (_key, object) => {
          const owner = ownerKey(object)
          if (owner !== undefined) queue?.add(owner)
        },
        onRestart: restarts(resource.kind)
      })
    }
    const isReady = () => inferenceServices.isSynced() && Object.values(children).every((informer) => informer.isSynced())
    const routerImage = settings.routerImageExplicit || settings.pod === undefined
      ? settings.routerImage
      : yield* ownImage(settings.pod, settings.routerImage)
    const reconcile = yield* makeReconciler({ routerImage, inferenceServices, children })

    const lead = Effect.scoped(Effect.gen(function*() {
      while (!isReady()) yield* Effect.sleep(50)
      const work = yield* makeWorkQueue(
        {
          parallelism: settings.maxParallelReconciles,
          backoffBase: "500 millis",
          backoffMax: "5 minutes",
          jitter: 0.2,
          retryRate: { perSecond: 10, burst: 100 }
        },
        reconcile,
        (key, result, error) =>
          result === "error"
            ? Effect.logWarning("reconcile failed; retrying with backoff").pipe(
              Effect.annotateLogs({ inferenceService: key, error: (error as { message?: string } | undefined)?.message })
            )
            : Effect.void
      )
      queue = work
      for (const key of inferenceServices.store.keys()) work.add(key)
      // Level-based: now and then every InferenceService is looked at again,
      // which writes nothing when nothing changed.
      return yield* Effect.forever(
        Effect.sleep(settings.resyncSeconds * 1000).pipe(
          Effect.andThen(Effect.sync(() => {
            for (const key of inferenceServices.store.keys()) work.add(key)
          }))
        )
      )
    }).pipe(Effect.ensuring(Effect.sync(() => (queue = undefined)))))

    const setLeading = (value: boolean) => {
      leading = value
      isLeader.updateUnsafe(value ? 1 : 0, metrics)
    }
    yield* Effect.forkScoped(
      settings.leaderElection
        ? runWhileLeader({
          namespace: settings.leaseNamespace,
          name: settings.leaseName,
          identity: settings.identity,
          leaseDurationSeconds: settings.leaseDurationSeconds,
          renewDeadlineMs: settings.renewDeadlineMs,
          retryMs: settings.leaderRetryMs,
          onLeading: setLeading
        }, lead)
        : Effect.sync(() => setLeading(true)).pipe(Effect.andThen(lead))
    )
    yield* Effect.logInfo("controller started").pipe(Effect.annotateLogs({
      watchNamespaces: settings.watchNamespaces.length === 0 ? "(all)" : settings.watchNamespaces.join(","),
      leaderElection: settings.leaderElection,
      identity: settings.identity
    }))
    return ControllerState.of({
      isReady,
      queueDepth: () => queue?.depth() ?? 0,
      isLeading: () => leading,
      isStalled: () => (queue?.longestRunningMs() ?? 0) > 10 * settings.apiTimeoutMs
    })
  })
)
