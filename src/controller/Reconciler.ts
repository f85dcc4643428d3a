/**
 * One reconcile of one InferenceService, level-based and idempotent: read the
 * InferenceService and its Deployment from the informers' caches, compute the
 * desired children (a pure function), apply what differs (server-side apply,
 * forcing the fields the controller owns), and write the status only when it
 * changed. The same state gives the same writes, and none when nothing
 * changed. Children are deleted by the garbage collector through their
 * owner references: no finalizer, nothing outside the cluster to clean.
 */
import { Clock, Effect } from "effect"
import { apiVersion as isvcApiVersion, kind as isvcKind } from "../api/InferenceService.ts"
import { metricContext } from "../shared/Metrics.ts"
import { childName, desiredObjects, type KubeObject, selectorLabels } from "./Desired.ts"
import type { Informer } from "./Informer.ts"
import { KubeApi, type KubeError, type ResourceRef, resources } from "./KubeApi.ts"
import { apiWritesBy, reconcileDuration, reconcilesBy } from "./Metrics.ts"
import { checkSpec, type SpecCheck } from "./SpecCheck.ts"
import { computeStatus, sameStatus } from "./Status.ts"

/** Whether `live` has every field `desired` sets, with the same value (what the API added is ignored). */
export const contains = (live: unknown, desired: unknown): boolean => {
  if (Array.isArray(desired)) {
    return Array.isArray(live) && live.length === desired.length && desired.every((item, i) => contains(live[i], item))
  }
  if (desired !== null && typeof desired === "object") {
    if (live === null || typeof live !== "object") return false
    return Object.entries(desired).every(([key, value]) => contains((live as any)[key], value))
  }
  return live === desired
}

export interface ReconcilerDeps {
  readonly routerImage: string
  readonly inferenceServices: Informer
  /** The watched children, by kind. */
  readonly children: Readonly<Record<string, Informer>>
}

export const makeReconciler = (deps: ReconcilerDeps) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const metrics = metricContext(yield* Effect.context<never>())
    const clock = yield* Clock.Clock
    const wrote = (kind: string) => Effect.sync(() => apiWritesBy(kind).updateUnsafe(1, metrics))

    /** Applies `object` unless the live one already has every field it sets; deletes an unwanted live one. */
    const applyIfChanged = (object: KubeObject | undefined, ref: ResourceRef, namespace: string, name: string) => {
      const live = deps.children[ref.kind]?.store.get(`${namespace}/${name}`)
      if (object === undefined) {
        // Not wanted (an HPA after autoscaling was turned off).
        if (live === undefined) return Effect.succeed(undefined)
        return kube.remove({ apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name, namespace } }).pipe(
          Effect.tap(() => wrote(ref.kind)),
          Effect.as(undefined)
        )
      }
      if (live !== undefined && contains(live, object)) return Effect.succeed(live)
      return kube.apply(object as any).pipe(Effect.tap(() => wrote(ref.kind)))
    }

    const event = (isvc: any, type: "Normal" | "Warning", reason: string, message: string) => {
      const now = new Date(clock.currentTimeMillisUnsafe()).toISOString()
      return kube.createEvent(isvc.metadata.namespace, {
        metadata: { generateName: `${isvc.metadata.name}.`, namespace: isvc.metadata.namespace },
        involvedObject: {
          apiVersion: isvcApiVersion,
          kind: isvcKind,
          name: isvc.metadata.name,
          namespace: isvc.metadata.namespace,
          uid: isvc.metadata.uid,
          resourceVersion: isvc.metadata.resourceVersion
        },
        reason,
        message: message.slice(0, 1024),
        type,
        source: { component: "inference-router-controller" },
        reportingComponent: "inference-router-controller",
        firstTimestamp: now,
        lastTimestamp: now,
        count: 1
      }).pipe(
        Effect.tap(() => wrote("Event")),
        // An event is a courtesy: failing to record one does not fail the reconcile.
        Effect.catch((error) => Effect.logWarning("could not record an event").pipe(Effect.annotateLogs({ error: error.message })))
      )
    }

    const writeStatus = (isvc: any, problem: { reason: "InvalidSpec" | "ApplyFailed"; message: string } | undefined, deployment: any, url: string, image: string) =>
      Effect.gen(function*() {
        const ready = deployment?.status?.readyReplicas ?? 0
        const wanted = deployment?.spec?.replicas ?? 1
        // Pods say why a Deployment is not available (image pulls, a router that rejects its settings).
        const pods = deployment !== undefined && ready < wanted
          ? yield* kube.listPods(isvc.metadata.namespace, Object.entries(selectorLabels(isvc.metadata.name)).map(([k, v]) => `${k}=${v}`).join(","))
          : []
        const status = computeStatus({
          generation: isvc.metadata.generation ?? 0,
          specProblem: problem,
          deployment,
          pods,
          url,
          image,
          previous: isvc.status,
          now: new Date(clock.currentTimeMillisUnsafe()).toISOString()
        })
        if (sameStatus(isvc.status, status)) return
        yield* kube.applyStatus(isvc.metadata.namespace, isvc.metadata.name, status).pipe(Effect.tap(() => wrote("InferenceServiceStatus")))
        const before = isvc.status?.conditions?.find((c: any) => c.type === "Ready")
        const after = status.conditions!.find((c) => c.type === "Ready")!
        if (before?.status !== after.status || before?.reason !== after.reason) {
          yield* event(isvc, after.status === "True" ? "Normal" : "Warning", after.reason, after.message)
        }
      })

    /**
     * The spec check runs the router's settings parser, the most costly part of
     * a reconcile that writes nothing: a resync re-checks only what changed
     * (a spec changes only with its generation).
     */
    const checks = new Map<string, { readonly key: string; readonly generation: number; readonly check: SpecCheck }>()
    const checkedSpec = (isvc: any): SpecCheck => {
      const known = checks.get(isvc.metadata.uid)
      if (known !== undefined && known.generation === isvc.metadata.generation) return known.check
      const check = checkSpec(isvc.spec)
      checks.set(isvc.metadata.uid, { key: `${isvc.metadata.namespace}/${isvc.metadata.name}`, generation: isvc.metadata.generation, check })
      return check
    }

    const timed = <A, E>(effect: Effect.Effect<A, E>) =>
      Effect.suspend(() => {
        const startedAt = clock.currentTimeMillisUnsafe()
        return Effect.ensuring(
          effect,
          Effect.sync(() => reconcileDuration.updateUnsafe((clock.currentTimeMillisUnsafe() - startedAt) / 1000, metrics))
        )
      })

    return (key: string): Effect.Effect<void, KubeError> =>
      Effect.gen(function*() {
        const isvc = deps.inferenceServices.store.get(key)
        // Gone, or going: the garbage collector removes the children.
        if (isvc === undefined || isvc.metadata.deletionTimestamp !== undefined) {
          if (isvc === undefined) for (const [uid, entry] of checks) if (entry.key === key) checks.delete(uid)
          return
        }
        const { name, namespace, uid } = isvc.metadata
        const routerName = childName(name)
        const liveDeployment = deps.children.Deployment?.store.get(`${namespace}/${routerName}`)
        const check = checkedSpec(isvc)
        if (check._tag === "Invalid") {
          // Children are left as they were: a bad edit does not take a working router down.
          yield* writeStatus(isvc, { reason: "InvalidSpec", message: check.message }, liveDeployment, isvc.status?.url ?? "", isvc.status?.routerImage ?? "")
          reconcilesBy("invalid").updateUnsafe(1, metrics)
          return
        }
        const desired = desiredObjects({ name, namespace, uid }, check.spec, { routerImage: deps.routerImage })
        const applied = yield* Effect.gen(function*() {
          const deployment = yield* applyIfChanged(desired.deployment, resources.deployments, namespace, routerName)
          yield* applyIfChanged(desired.service, resources.services, namespace, routerName)
          yield* applyIfChanged(desired.podDisruptionBudget, resources.podDisruptionBudgets, namespace, routerName)
          yield* applyIfChanged(desired.horizontalPodAutoscaler, resources.horizontalPodAutoscalers, namespace, routerName)
          return deployment
        }).pipe(
          Effect.tapError((error) =>
            writeStatus(isvc, { reason: "ApplyFailed", message: error.message }, liveDeployment, desired.url, desired.image).pipe(
              Effect.ignore
            )
          )
        )
        yield* writeStatus(isvc, undefined, applied ?? liveDeployment, desired.url, desired.image)
        reconcilesBy("success").updateUnsafe(1, metrics)
      }).pipe(
        Effect.tapError(() => Effect.sync(() => reconcilesBy("error").updateUnsafe(1, metrics))),
        timed,
        Effect.annotateLogs({ inferenceService: key })
      )
  })
