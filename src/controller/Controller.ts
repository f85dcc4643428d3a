/**
 * The controller: informers on InferenceServices, on the children it
 * creates and on their pods (by their label; in every replica, so a standby is warm), and, while this replica leads,
 * the work queue that reconciles them, fed by watch events, by the owned
 * children's and the router pods' events, and by a periodic resync.
 */
import { Cause, Context, Deferred, Effect, Exit, Layer, Schedule } from "effect"
import { metricContext } from "../shared/Metrics.ts"
import { ControllerConfig } from "./ControllerConfig.ts"
import { type Informer, makeInformer } from "./Informer.ts"
import { childResources, KubeApi, resources } from "./KubeApi.ts"
import { ownerLabel } from "./Desired.ts"
import { runWhileLeader } from "./LeaderElection.ts"
import { isLeader, setLeaderStatus, watchRestartsBy } from "./Metrics.ts"
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
 * both. Pinned to the digest the kubelet pulled (the container status's
 * `imageID`), as `<image>@sha256:...`, when that is a registry digest: a
 * mutable tag (`:latest`, a re-pushed `:1.2`) then cannot give routers a
 * different build than the controller's. Fails while the Pod, or its
 * container's status, cannot be read (the caller retries: there is no
 * built-in fallback in a pod).
 */
export const ownImage = (pod: { readonly name: string; readonly namespace: string }) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const found = yield* kube.read(resources.pods, pod.namespace, pod.name)
    const containers: ReadonlyArray<any> = found?.spec?.containers ?? []
    const container = containers.find((c) => c.name === "controller") ?? containers[0]
    const image: unknown = container?.image
    if (typeof image !== "string" || image === "") return yield* Effect.fail(`pod ${pod.namespace}/${pod.name} not found or without an image`)
    const imageID: unknown = (found?.status?.containerStatuses ?? []).find((s: any) => s.name === container.name)?.imageID
    if (typeof imageID !== "string" || imageID === "") {
      return yield* Effect.fail(`pod ${pod.namespace}/${pod.name}: no imageID in the status of container ${container.name} yet`)
    }
    return pinnedImage(image, imageID)
  })

/**
 * `image` pinned to the registry digest in `imageID` (`docker-pullable://reg/x@sha256:...` or
 * `reg/x@sha256:...`); `image` itself when it names a digest already, or when `imageID` is a
 * local image ID (`sha256:...`, an image loaded into the node, not pullable by digest).
 */
export const pinnedImage = (image: string, imageID: string): string => {
  if (image.includes("@")) return image
  const digest = /@(sha256:[0-9a-f]{64})$/.exec(imageID)?.[1]
  return digest === undefined ? image : `${image}@${digest}`
}

/** `ownImage`, retried (backoff up to 30 s, each failure a warning) until it succeeds. */
const ownImageRetried = (pod: { readonly name: string; readonly namespace: string }) =>
  ownImage(pod).pipe(
    Effect.tapError((error) =>
      Effect.logWarning("cannot read the controller's own image yet (routers run it); not ready, not leading; retrying").pipe(
        Effect.annotateLogs({ pod: `${pod.namespace}/${pod.name}`, error: typeof error === "string" ? error : error.message })
      )
    ),
    Effect.retry(Schedule.min([Schedule.exponential("200 millis"), Schedule.spaced("30 seconds")])),
    // The schedule never ends: a failure cannot get here.
    Effect.orDie,
    Effect.tap((image) => Effect.logInfo(`router image: ${image} (the controller's own; set ROUTER_IMAGE to choose another)`))
  )

/**
 * Forks `effect`, meant to run until the scope closes, and reports its end unless it was
 * interrupted (the scope closing): a fiber that dies on a defect or fails must not leave a process that looks alive and
 * does nothing. `failed` gets one line; the caller fails liveness with it.
 */
export const forkSupervised = <E, R>(name: string, effect: Effect.Effect<unknown, E, R>, failed: (reason: string) => void) =>
  Effect.forkScoped(effect.pipe(
    Effect.onExit((exit) => {
      if (Exit.isFailure(exit) && Exit.hasInterrupts(exit)) return Effect.void
      // It never ends by itself: even a success means nothing runs any more.
      const reason = Exit.isSuccess(exit) ? `${name} ended` : `${name} ended: ${Cause.pretty(exit.cause).split("\n")[0]}`
      return Effect.sync(() => failed(reason)).pipe(
        Effect.andThen(Effect.logError(`${reason}; /healthz now fails so the kubelet restarts the controller`)),
        Effect.annotateLogs({ cause: Exit.isSuccess(exit) ? "" : Cause.pretty(exit.cause) })
      )
    })
  ))

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
  /** Why the controller can no longer work (its leader-election fiber ended on a defect), or undefined. */
  readonly failure: () => string | undefined
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
          // An orphan (no owner reference) by its label: its InferenceService may adopt it.
          const labelled = object.metadata?.labels?.[ownerLabel]
          const owner = ownerKey(object) ?? (typeof labelled === "string" ? `${object.metadata.namespace}/${labelled}` : undefined)
          if (owner !== undefined) queue?.add(owner)
        },
        onRestart: restarts(resource.kind)
      })
    }
    // In a pod without ROUTER_IMAGE, the routers' image is the controller's own: until it is known,
    // not ready and not a candidate for the lease (never a built-in tag, which would move every router).
    const routerImage = yield* Deferred.make<string>()
    let routerImageKnown = false
    yield* Effect.forkScoped(
      Deferred.complete(
        routerImage,
        (settings.routerImageExplicit || settings.pod === undefined ? Effect.succeed(settings.routerImage) : ownImageRetried(settings.pod)).pipe(
          Effect.tap(() => Effect.sync(() => (routerImageKnown = true)))
        )
      )
    )
    // The router pods (by the label every child carries): a pod that crash-loops or cannot pull its
    // image changes nothing on its Deployment, so the status would otherwise learn of it only at a resync.
    const pods: Informer = yield* makeInformer({
      resource: resources.pods,
      namespaces: settings.watchNamespaces,
      labelSelector: "app.kubernetes.io/managed-by=inference-router-controller",
      idleTimeoutMs: settings.watchIdleTimeoutMs,
      onChange: (_key, pod) => {
        const owner = pod.metadata?.labels?.[ownerLabel]
        if (typeof owner === "string") queue?.add(`${pod.metadata.namespace}/${owner}`)
      },
      onRestart: restarts("Pod")
    })
    const isReady = () =>
      routerImageKnown && inferenceServices.isSynced() && pods.isSynced() &&
      Object.values(children).every((informer) => informer.isSynced())

    const lead = Effect.scoped(Effect.gen(function*() {
      while (!isReady()) yield* Effect.sleep(50)
      const reconcile = yield* makeReconciler({ routerImage: yield* Deferred.await(routerImage), inferenceServices, children, pods })
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
      setLeaderStatus(settings.leaseName, value, metrics)
    }
    let failure: string | undefined
    yield* forkSupervised("leader election and reconciling", Deferred.await(routerImage).pipe(Effect.andThen(
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
    )), (reason) => {
      failure = reason
      setLeading(false)
    })
    yield* Effect.logInfo("controller started").pipe(Effect.annotateLogs({
      watchNamespaces: settings.watchNamespaces.length === 0 ? "(all)" : settings.watchNamespaces.join(","),
      leaderElection: settings.leaderElection,
      identity: settings.identity
    }))
    return ControllerState.of({
      isReady,
      queueDepth: () => queue?.depth() ?? 0,
      isLeading: () => leading,
      isStalled: () => (queue?.longestRunningMs() ?? 0) > 10 * settings.apiTimeoutMs,
      failure: () => failure
    })
  })
)
