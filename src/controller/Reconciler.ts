/**
 * One reconcile of one InferenceService, level-based and idempotent: read the
 * InferenceService and its Deployment from the informers' caches, compute the
 * desired children (a pure function), apply what changed (server-side apply,
 * forcing the fields the controller owns), and write the status only when it
 * changed. The same state gives the same writes, and none when nothing
 * changed. Children are deleted by the garbage collector through their
 * owner references: no finalizer, nothing outside the cluster to clean.
 *
 * "What changed" is decided by what was last applied, not by a superset test
 * on the live object: each child carries the hash of the configuration
 * applied to it (`appliedHashAnnotation`), so a key removed from the spec is
 * applied (and server-side apply removes it); a live object that lost a field
 * the controller sets (an edit) is applied again too.
 */
import { Clock, Data, Effect, Exit } from "effect"
import { createHash } from "node:crypto"
import { apiVersion as isvcApiVersion, type InferenceServiceSpec, kind as isvcKind } from "../api/InferenceService.ts"
import { metricContext } from "../shared/Metrics.ts"
import { autoscales, childName, desiredObjects, type KubeObject, managedByLabel, ownerLabel, quantityValue, selectorLabels } from "./Desired.ts"
import type { Informer } from "./Informer.ts"
import { fieldManager, KubeApi, type KubeError, type ResourceRef, resources } from "./KubeApi.ts"
import { apiWritesBy, forgetInferenceServiceReady, reconcileDuration, reconcilesBy, setInferenceServiceReady } from "./Metrics.ts"
import { checkSpec, type SpecCheck } from "./SpecCheck.ts"
import { computeStatus, sameStatus } from "./Status.ts"

type Within = "object" | "resources" | "quantities"

/**
 * The keys of the list-maps (server-side apply's `listMapKeys`) among the fields the controller sets:
 * another manager's items are kept there, so each of ours is found by its key. Other lists are
 * compared whole (atomic lists, such as `args`, are replaced whole by an apply). The stand-in API
 * server (test/support/FakeKubeApi.ts) has its own table, by path, on purpose: it models the real
 * server, and shares no code with what it tests.
 */
const listMapKeys: Readonly<Record<string, ReadonlyArray<string>>> = {
  containers: ["name"],
  initContainers: ["name"],
  env: ["name"],
  volumes: ["name"],
  volumeMounts: ["mountPath"],
  imagePullSecrets: ["name"],
  ownerReferences: ["uid"],
  // A container's by port and protocol; a Service's too.
  ports: ["containerPort", "port", "protocol"]
}

const sameKey = (a: Record<string, unknown>, b: Record<string, unknown>, keys: ReadonlyArray<string>) =>
  keys.every((key) => a[key] === b[key] || (key === "protocol" && (a[key] ?? "TCP") === (b[key] ?? "TCP")))

/**
 * Whether `live` has every field `desired` sets, with the same value (what the
 * API added is ignored). Quantities compare by value: the API server stores
 * them in canonical form ("0.5" CPU as "500m", an HPA target's averageValue
 * "1000" as "1k"): a container's `resources` and an HPA metric's `target`.
 */
export const contains = (live: unknown, desired: unknown, within: Within = "object", field = ""): boolean => {
  if (Array.isArray(desired)) {
    if (!Array.isArray(live)) return false
    // A list-map: another manager's items (a sidecar, an injected variable) are kept there, so each of
    // ours is looked up by its key, and must be there once (a second item of the same key, which the
    // API server only warns about, would be the one the kubelet reads). Compared by position, they
    // made every resync apply again for nothing. A removal of ours changes the applied hash, which applies anyway.
    const keys = listMapKeys[field]
    if (keys !== undefined && desired.every((item) => item !== null && typeof item === "object")) {
      return desired.every((item) => {
        const matches = live.filter((candidate) => candidate !== null && typeof candidate === "object" && sameKey(candidate, item, keys))
        return matches.length === 1 && contains(matches[0], item, within)
      })
    }
    return live.length === desired.length && desired.every((item, i) => contains(live[i], item))
  }
  // An empty string the API server does not store (omitempty: an env variable's empty value).
  if (desired === "" && live === undefined) return true
  if (desired !== null && typeof desired === "object") {
    if (live === null || typeof live !== "object") return false
    return Object.entries(desired).every(([key, value]) =>
      contains(
        (live as any)[key],
        value,
        within === "quantities" || (within === "resources" && (key === "requests" || key === "limits")) || key === "target"
          ? "quantities"
          : key === "resources"
          ? "resources"
          : "object",
        key
      )
    )
  }
  if (within === "quantities" && (typeof live === "string" || typeof live === "number") && (typeof desired === "string" || typeof desired === "number")) {
    const [a, b] = [quantityValue(live), quantityValue(desired)]
    // Not quantities (a target's type, "AverageValue"): compared as they are.
    if (!Number.isNaN(a) && !Number.isNaN(b)) return a === b
  }
  return live === desired
}

/** The annotation holding the hash of the configuration the controller last applied to a child. */
export const appliedHashAnnotation = "inference-router.dev/applied-hash"

/** The object with the hash of its configuration in `appliedHashAnnotation`. */
export const withAppliedHash = (object: KubeObject): KubeObject => {
  const hash = createHash("sha256").update(JSON.stringify(object)).digest("hex").slice(0, 16)
  return { ...object, metadata: { ...object.metadata, annotations: { ...object.metadata.annotations, [appliedHashAnnotation]: hash } } }
}

const fieldIn = (entry: any, path: ReadonlyArray<string>) => {
  let node = entry.fieldsV1
  for (const segment of path) node = node?.[segment]
  return node !== undefined
}

/** Whether `manager` set this field by server-side apply, by the managed fields (`path`: `f:spec`, `f:replicas`). */
export const appliedBy = (object: any, manager: string, ...path: ReadonlyArray<string>): boolean =>
  (object?.metadata?.managedFields ?? []).some((entry: any) =>
    entry.manager === manager && entry.operation === "Apply" && (entry.subresource ?? "") === "" && fieldIn(entry, path)
  )

/** Whether a manager other than `manager` owns the field. */
export const ownedByOthers = (object: any, manager: string, ...path: ReadonlyArray<string>): boolean =>
  (object?.metadata?.managedFields ?? []).some((entry: any) => entry.manager !== manager && fieldIn(entry, path))

/** A child of that name exists and this InferenceService does not control it. */
export class NotOwned extends Data.TaggedError("NotOwned")<{ readonly detail: string }> {
  override get message() {
    return this.detail
  }
}

/**
 * Why the controller will not write a child it does not control, or undefined when it does (or
 * there is none, or it adopts it). As controller-runtime's adoption: an object with no controller
 * reference that carries both the controller's labels for this InferenceService (`managed-by` and
 * `inference-router.dev/inferenceservice`) is an orphan of an earlier InferenceService of that
 * name (`kubectl delete --cascade=orphan`, then created again): adopted, its owner reference set by
 * the apply. Refused: an unlabelled object, or one controlled by something else.
 */
export const foreignChild = (live: any, ownerUid: string, isvcName: string): string | undefined => {
  if (live === undefined) return undefined
  const controller = (live.metadata?.ownerReferences ?? []).find((ref: any) => ref.controller === true)
  if (controller?.uid === ownerUid) return undefined
  const labels = live.metadata?.labels ?? {}
  if (controller === undefined && labels[managedByLabel] === fieldManager && labels[ownerLabel] === isvcName) return undefined
  const name = `${live.kind ?? "object"} ${live.metadata?.namespace}/${live.metadata?.name}`
  return controller === undefined
    ? `${name} exists and is not controlled by this InferenceService: the controller leaves it alone (delete or rename it, and the controller creates its own)`
    : `${name} is controlled by ${controller.kind} ${controller.name} (uid ${controller.uid}), not by this InferenceService`
}

/**
 * The Deployment to apply. When the spec switches from a fixed count to
 * autoscaling, the controller keeps applying the live replica count (never
 * below minReplicas) while it is the count's only manager: dropping the field
 * at once would let the API server default it to 1 before the HPA writes its
 * own. Once the HPA has written the count (it then owns it), the field is left
 * out: the server-side apply docs' "transferring ownership". A Deployment
 * created with autoscaling starts at minReplicas the same way.
 */
export const deploymentToApply = (desired: KubeObject, spec: InferenceServiceSpec, live: any): KubeObject => {
  if (!autoscales(spec)) return desired
  // Created with autoscaling: minReplicas from the start (not the API's default of 1 until the HPA's
  // first sync), then handed over to the HPA as below.
  if (live === undefined) return { ...desired, spec: { replicas: spec.minReplicas ?? 1, ...desired.spec } }
  if (!appliedBy(live, fieldManager, "f:spec", "f:replicas") || ownedByOthers(live, fieldManager, "f:spec", "f:replicas")) return desired
  const replicas = Math.max(live.spec?.replicas ?? 1, spec.minReplicas ?? 1)
  return { ...desired, spec: { replicas, ...desired.spec } }
}

export interface ReconcilerDeps {
  readonly routerImage: string
  readonly inferenceServices: Informer
  /** The watched children, by kind. */
  readonly children: Readonly<Record<string, Informer>>
  /** The router pods (watched by label). */
  readonly pods: Informer
}

type Problem = { reason: "InvalidSpec" | "ApplyFailed" | "NotOwned"; message: string }

export const makeReconciler = (deps: ReconcilerDeps) =>
  Effect.gen(function*() {
    const kube = yield* KubeApi
    const metrics = metricContext(yield* Effect.context<never>())
    const clock = yield* Clock.Clock
    const wrote = (kind: string) => Effect.sync(() => apiWritesBy(kind).updateUnsafe(1, metrics))

    /**
     * The live child: from the cache (children the controller labelled) or,
     * when the cache has none, from the API, where an object of that name the
     * controller did not create may be (a forced apply would take it over).
     */
    const liveChild = (ref: ResourceRef, namespace: string, name: string): Effect.Effect<any, KubeError> => {
      const cached = deps.children[ref.kind]?.store.get(`${namespace}/${name}`)
      return cached !== undefined ? Effect.succeed(cached) : kube.read(ref, namespace, name)
    }

    /**
     * Applies `object` unless it was applied as it is and the live one still
     * has every field it sets; deletes an unwanted live one; fails with
     * NotOwned for a child this InferenceService does not control. With
     * `precondition` (a resourceVersion), the apply is conditional on it: 409
     * Conflict when the object changed since.
     */
    const applyIfChanged = (
      object: KubeObject | undefined,
      ref: ResourceRef,
      namespace: string,
      name: string,
      ownerUid: string,
      ownerName: string,
      precondition?: string
    ) =>
      Effect.gen(function*() {
        const live = object === undefined ? deps.children[ref.kind]?.store.get(`${namespace}/${name}`) : yield* liveChild(ref, namespace, name)
        const foreign = foreignChild(live, ownerUid, ownerName)
        if (foreign !== undefined) return yield* new NotOwned({ detail: foreign })
        if (object === undefined) {
          // Not wanted (an HPA after autoscaling was turned off).
          if (live === undefined) return undefined
          yield* kube.remove({ apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name, namespace } })
          yield* wrote(ref.kind)
          return undefined
        }
        const hashed = withAppliedHash(object)
        const hash = hashed.metadata.annotations![appliedHashAnnotation]
        if (live !== undefined && live.metadata?.annotations?.[appliedHashAnnotation] === hash && contains(live, hashed)) return live
        const applied = yield* kube.apply(
          (precondition === undefined ? hashed : { ...hashed, metadata: { ...hashed.metadata, resourceVersion: precondition } }) as any
        )
        yield* wrote(ref.kind)
        return applied
      })

    /**
     * The Deployment, applied. While switching to autoscaling, the count the
     * controller keeps applying is the live one, read from the API (the cache
     * may lag an HPA that scaled a moment ago), and the apply is conditional on
     * the resourceVersion read: an HPA scale that lands between the read and the
     * apply (its watch event may even reach the cache before the read's answer)
     * makes it a 409, and the Deployment is read again; a forced apply of the
     * stale count would undo the HPA's and take the field back from it.
     */
    const applyDeployment = (desired: KubeObject, spec: InferenceServiceSpec, namespace: string, name: string, ownerUid: string, ownerName: string) =>
      Effect.gen(function*() {
        const cached = deps.children.Deployment?.store.get(`${namespace}/${name}`)
        const switching = deploymentToApply(desired, spec, cached) !== desired
        const live = switching ? yield* kube.read(resources.deployments, namespace, name) : cached
        const object = deploymentToApply(desired, spec, live)
        const precondition = object !== desired ? live?.metadata?.resourceVersion : undefined
        return yield* applyIfChanged(object, resources.deployments, namespace, name, ownerUid, ownerName, precondition)
      }).pipe(
        // The controller's applies are forced (no field conflicts): a 409 is the precondition's.
        Effect.retry({ while: (error) => error._tag === "KubeError" && error.status === 409, times: 3 })
      )

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

    /** Events sent while the status write that would record them was refused, by namespace/name (forgotten once one succeeds). */
    const announced = new Map<string, Set<string>>()

    /** The router pods of an InferenceService, from the cache. */
    const podsOf = (namespace: string, name: string): Array<any> => {
      const selector = Object.entries(selectorLabels(name))
      return [...deps.pods.store.values()].filter((pod) =>
        pod.metadata?.namespace === namespace && selector.every(([k, v]) => pod.metadata?.labels?.[k] === v)
      )
    }

    const writeStatus = (isvc: any, problem: Problem | undefined, deployment: any, url: string, image: string) =>
      Effect.gen(function*() {
        const ready = deployment?.status?.readyReplicas ?? 0
        const updated = deployment?.status?.updatedReplicas ?? 0
        const wanted = deployment?.spec?.replicas ?? 1
        // Pods say why a Deployment is not available, or why a rollout does not progress
        // (image pulls, a router that rejects its settings).
        const pods = deployment !== undefined && (ready < wanted || updated < wanted) ? podsOf(isvc.metadata.namespace, isvc.metadata.name) : []
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
        setInferenceServiceReady(isvc.metadata.namespace, isvc.metadata.name, status.conditions?.find((c) => c.type === "Ready"), metrics)
        if (sameStatus(isvc.status, status)) return
        // The status write may be refused where the event is not: before Kubernetes 1.30 (no validation
        // ratcheting) the CRD's rules run on /status writes too, so an object stored under an older CRD
        // that the current one refuses can never have its status written. The event still says why.
        const written = yield* kube.applyStatus(isvc.metadata.namespace, isvc.metadata.name, status).pipe(
          Effect.tap(() => wrote("InferenceServiceStatus")),
          Effect.exit
        )
        const key = `${isvc.metadata.namespace}/${isvc.metadata.name}`
        const announce = (type: "Normal" | "Warning", reason: string, message: string) => {
          // A refused status write is retried with the same stored status: the same news once, not on every retry.
          const said = `${isvc.metadata.uid}/${isvc.metadata.generation}/${type}/${reason}/${message}`
          if (announced.get(key)?.has(said) === true) return Effect.void
          return event(isvc, type, reason, message).pipe(Effect.tap(() =>
            Effect.sync(() => {
              if (Exit.isFailure(written)) announced.set(key, new Set([...(announced.get(key) ?? []), said]))
            })
          ))
        }
        const before = isvc.status?.conditions?.find((c: any) => c.type === "Ready")
        const after = status.conditions!.find((c) => c.type === "Ready")!
        if (before?.status !== after.status || before?.reason !== after.reason) {
          // Progress (a first rollout, pods starting) and a scale to zero someone asked for are news, not warnings.
          const progress = after.status === "True" || after.reason === "RolloutInProgress" || after.reason === "Pending" ||
            after.reason === "ScaledToZero"
          yield* announce(progress ? "Normal" : "Warning", after.reason, after.message)
        }
        // A rollout that gave up while the old pods serve leaves Ready True: its own warning.
        const stalledBefore = isvc.status?.conditions?.find((c: any) => c.type === "Progressing")?.reason === "ProgressDeadlineExceeded"
        const stalled = status.conditions!.find((c) => c.type === "Progressing")!
        if (stalled.reason === "ProgressDeadlineExceeded" && !stalledBefore && after.reason !== "ProgressDeadlineExceeded") {
          yield* announce("Warning", stalled.reason, stalled.message)
        }
        if (Exit.isFailure(written)) return yield* Effect.failCause(written.cause)
        announced.delete(key)
      })

    /**
     * The spec check runs the router's settings parser, the most costly part of
     * a reconcile that writes nothing: a resync re-checks only what changed.
     * Keyed by the spec's text, not its generation alone: a CRD's `default:`
     * added later changes the spec as the API server reads it out, with no new
     * generation (seen once the object is listed again).
     */
    const checks = new Map<string, { readonly key: string; readonly spec: string; readonly check: SpecCheck }>()
    const checkedSpec = (isvc: any): SpecCheck => {
      const spec = JSON.stringify(isvc.spec ?? null)
      const known = checks.get(isvc.metadata.uid)
      if (known !== undefined && known.spec === spec) return known.check
      const check = checkSpec(isvc.spec, isvc.metadata.name)
      checks.set(isvc.metadata.uid, { key: `${isvc.metadata.namespace}/${isvc.metadata.name}`, spec, check })
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
          if (isvc === undefined) forgetInferenceServiceReady(metrics, key)
          announced.delete(key)
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
          const deployment = yield* applyDeployment(desired.deployment, check.spec, namespace, routerName, uid, name)
          yield* applyIfChanged(desired.service, resources.services, namespace, routerName, uid, name)
          yield* applyIfChanged(desired.podDisruptionBudget, resources.podDisruptionBudgets, namespace, routerName, uid, name)
          yield* applyIfChanged(desired.horizontalPodAutoscaler, resources.horizontalPodAutoscalers, namespace, routerName, uid, name)
          return { deployment }
        }).pipe(
          // A child this InferenceService does not control stays so until a person acts: reported, not retried.
          Effect.catchTag("NotOwned", (error) => Effect.succeed({ notOwned: error.message })),
          Effect.tapError((error) =>
            writeStatus(isvc, { reason: "ApplyFailed", message: error.message }, liveDeployment, desired.url, desired.image).pipe(Effect.ignore)
          )
        )
        if ("notOwned" in applied) {
          yield* writeStatus(isvc, { reason: "NotOwned", message: applied.notOwned }, liveDeployment, desired.url, desired.image)
          reconcilesBy("invalid").updateUnsafe(1, metrics)
          return
        }
        yield* writeStatus(isvc, undefined, applied.deployment ?? liveDeployment, desired.url, desired.image)
        reconcilesBy("success").updateUnsafe(1, metrics)
      }).pipe(
        Effect.tapError(() => Effect.sync(() => reconcilesBy("error").updateUnsafe(1, metrics))),
        timed,
        Effect.annotateLogs({ inferenceService: key })
      )
  })
