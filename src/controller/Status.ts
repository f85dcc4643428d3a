/**
 * An InferenceService's status from what its children report, pure: the
 * conditions say what is wrong in words a person can act on.
 *
 * - `Reconciled`: the children match the spec (False: `InvalidSpec` with the
 *   router's own message, `ApplyFailed`, or `NotOwned`: a child's name is
 *   taken by an object this InferenceService does not control).
 * - `RouterAvailable`: the router Deployment serves (False: `ImagePullFailed`,
 *   `RouterRejectedSettings` with the line the router printed,
 *   `ContainerConfigError` (a named API-keys Secret that does not exist),
 *   `CrashLoopBackOff`, `ProgressDeadlineExceeded`, `ReplicaFailure`,
 *   `RolloutInProgress`, `Unavailable`, `ScaledToZero`; Unknown: `Pending`).
 *   Readiness follows availability (the Deployment's `Available` condition):
 *   a rollout while pods serve leaves it True, even one whose new pods fail
 *   or that missed its progress deadline.
 * - `Progressing`: True (`RollingOut`) while a rollout is under way (with why
 *   a new pod fails, when one does: the old pods may still serve), False
 *   (`RolledOut`) once every replica runs the current template, False
 *   (`ProgressDeadlineExceeded`, with the new pods' problem) when the
 *   Deployment gave up waiting.
 * - `Ready`: Reconciled and RouterAvailable True; otherwise False with the
 *   first failing one's reason.
 * `lastTransitionTime` moves only when a condition's status changes.
 */
import type { Condition, InferenceServiceStatus } from "../api/InferenceService.ts"

export interface Observed {
  readonly generation: number
  /** Why the spec was not applied, when it was not. */
  readonly specProblem?: { readonly reason: "InvalidSpec" | "ApplyFailed" | "NotOwned"; readonly message: string } | undefined
  readonly deployment: any | undefined
  /** The router pods (given while the Deployment is not available or not rolled out). */
  readonly pods: ReadonlyArray<any>
  readonly url: string
  readonly image: string
  readonly previous: InferenceServiceStatus | undefined
  readonly now: string
}

type Verdict = Omit<Condition, "lastTransitionTime" | "observedGeneration">

const condition = (type: string, status: Verdict["status"], reason: string, message: string): Verdict => ({
  type,
  status,
  reason,
  message
})

/** An exit within this counts as part of a crash loop (the kubelet's back-off caps at 5 minutes). */
const crashLoopWindowMs = 10 * 60 * 1000

const deploymentCondition = (deployment: any, type: string) =>
  (deployment?.status?.conditions ?? []).find((c: any) => c.type === type)

/** The first thing a person should know about pods that do not become ready. */
const podProblem = (pods: ReadonlyArray<any>, now: string): Verdict | undefined => {
  for (const pod of pods) {
    for (const container of pod.status?.containerStatuses ?? []) {
      const waiting = container.state?.waiting
      if (waiting?.reason === "ErrImagePull" || waiting?.reason === "ImagePullBackOff" || waiting?.reason === "InvalidImageName") {
        return condition("RouterAvailable", "False", "ImagePullFailed", `${pod.metadata.name}: ${waiting.reason}: ${waiting.message ?? container.image}`)
      }
      if (waiting?.reason === "CreateContainerConfigError") {
        return condition("RouterAvailable", "False", "ContainerConfigError", `${pod.metadata.name}: ${waiting.message ?? "the container's configuration (a Secret or ConfigMap) is missing"}`)
      }
      const terminated = container.lastState?.terminated ?? container.state?.terminated
      const said: string = (terminated?.message ?? "").trim()
      const line = said.split("\n").reverse().find((l: string) => l.includes("invalid configuration"))
      if (line !== undefined) {
        return condition("RouterAvailable", "False", "RouterRejectedSettings", `${pod.metadata.name}: ${line.trim()}`)
      }
      // Between two back-offs the container runs for a while, not ready: still the same crash loop (else
      // the reason flipped to Unavailable and back at every restart, an event each way). Only while its
      // last exit is recent: the kubelet's back-off tops out at 5 minutes, and an old crash is history.
      const lastExit = Date.parse(container.lastState?.terminated?.finishedAt ?? "")
      const restarting = container.ready !== true && (container.restartCount ?? 0) >= 2 && Date.parse(now) - lastExit < crashLoopWindowMs
      if (waiting?.reason === "CrashLoopBackOff" || (restarting && container.state?.running !== undefined)) {
        const last = said.split("\n").filter((l: string) => l.trim() !== "").pop()
        return condition(
          "RouterAvailable",
          "False",
          "CrashLoopBackOff",
          `${pod.metadata.name}: the router keeps exiting${terminated?.exitCode === undefined ? "" : ` (exit code ${terminated.exitCode})`}${last === undefined ? "" : `: ${last}`}`
        )
      }
    }
  }
  return undefined
}

const routerAvailable = (observed: Observed): Verdict => {
  const deployment = observed.deployment
  if (deployment === undefined) return condition("RouterAvailable", "Unknown", "Pending", "the router Deployment does not exist yet")
  const desired: number = deployment.spec?.replicas ?? 1
  const ready: number = deployment.status?.readyReplicas ?? 0
  const rolledOut = (deployment.status?.observedGeneration ?? 0) >= (deployment.metadata?.generation ?? 0)
  const available = deploymentCondition(deployment, "Available")
  const progressing = deploymentCondition(deployment, "Progressing")
  const replicaFailure = deploymentCondition(deployment, "ReplicaFailure")
  const updated: number = deployment.status?.updatedReplicas ?? 0
  // Zero replicas serve nothing: the Service has no endpoints. Not a failure (a person asked for it), not ready either.
  if (desired === 0 && rolledOut) {
    return condition("RouterAvailable", "False", "ScaledToZero", "the router is scaled to zero replicas: nothing serves (set replicas to serve)")
  }
  // Availability first: a rollout whose new pods fail (or that missed its deadline) leaves the old ones serving.
  // Any ready replica serves: the Deployment's own Available needs all of them (maxUnavailable 0), so an
  // HPA scale-up, an eviction or one pod's restart made the whole service not Ready (and two events each).
  if (ready >= 1) {
    const rolling = !rolledOut || updated < desired ? `; rolling out: ${updated}/${desired} replicas updated` : ""
    if (available?.status === "True") {
      return condition("RouterAvailable", "True", "MinimumReplicasAvailable", `${ready}/${desired} router replicas ready${rolling}`)
    }
    const why = podProblem(observed.pods, observed.now)
    return condition(
      "RouterAvailable",
      "True",
      "SomeReplicasAvailable",
      `${ready}/${desired} router replicas ready, serving while the others start${rolling}${why === undefined ? "" : `; ${why.reason}: ${why.message}`}`
    )
  }
  const pods = podProblem(observed.pods, observed.now)
  if (pods !== undefined) return pods
  if (replicaFailure?.status === "True") {
    return condition("RouterAvailable", "False", "ReplicaFailure", replicaFailure.message ?? "pods could not be created")
  }
  if (progressing?.status === "False" && progressing.reason === "ProgressDeadlineExceeded") {
    return condition("RouterAvailable", "False", "ProgressDeadlineExceeded", progressing.message ?? "the rollout did not progress in time")
  }
  if (!rolledOut || updated < desired) {
    return condition("RouterAvailable", "False", "RolloutInProgress", `rolling out: ${updated}/${desired} replicas updated, ${ready} ready`)
  }
  return condition("RouterAvailable", "False", "Unavailable", `${ready}/${desired} router replicas ready`)
}

/**
 * Whether a rollout is under way: the Deployment's current template not yet on every replica.
 * A rollout past its progress deadline is no longer progressing: False, ProgressDeadlineExceeded,
 * with why its new pods do not become ready when they say.
 */
const rollout = (deployment: any, pods: ReadonlyArray<any>, now: string): Verdict => {
  if (deployment === undefined) return condition("Progressing", "Unknown", "Pending", "the router Deployment does not exist yet")
  const desired: number = deployment.spec?.replicas ?? 1
  const updated: number = deployment.status?.updatedReplicas ?? 0
  const rolledOut = (deployment.status?.observedGeneration ?? 0) >= (deployment.metadata?.generation ?? 0)
  const progressing = deploymentCondition(deployment, "Progressing")
  if (progressing?.status === "False" && progressing.reason === "ProgressDeadlineExceeded") {
    const why = podProblem(pods, now)
    const said: string = progressing.message ?? "the rollout did not progress in time"
    return condition("Progressing", "False", "ProgressDeadlineExceeded", why === undefined ? said : `${said}; ${why.reason}: ${why.message}`)
  }
  if (rolledOut && updated >= desired) {
    return condition("Progressing", "False", "RolledOut", `every replica runs generation ${deployment.metadata?.generation ?? 0} of the Deployment`)
  }
  // While the old pods serve, a new pod that fails says why at once, not only at the progress deadline
  // (a router image older than the spec's fields refuses them at start and crash-loops).
  const why = podProblem(pods, now)
  return condition("Progressing", "True", "RollingOut", `rolling out: ${updated}/${desired} replicas updated${why === undefined ? "" : `; ${why.reason}: ${why.message}`}`)
}

export const computeStatus = (observed: Observed): InferenceServiceStatus => {
  const reconciled = observed.specProblem === undefined
    ? condition("Reconciled", "True", "Applied", `the router's objects match generation ${observed.generation}`)
    : condition("Reconciled", "False", observed.specProblem.reason, observed.specProblem.message)
  const available = routerAvailable(observed)
  const progressing = rollout(observed.deployment, observed.pods, observed.now)
  const failing = [reconciled, available].find((c) => c.status !== "True")
  const ready = failing === undefined
    ? condition("Ready", "True", "Ready", `serving ${observed.url}`)
    : condition("Ready", failing.status === "Unknown" ? "Unknown" : "False", failing.reason, failing.message)
  const stamp = (verdict: Verdict): Condition => {
    const before = observed.previous?.conditions?.find((c) => c.type === verdict.type)
    return {
      ...verdict,
      lastTransitionTime: before !== undefined && before.status === verdict.status ? before.lastTransitionTime : observed.now,
      observedGeneration: observed.generation
    }
  }
  const deployment = observed.deployment
  return {
    // The InferenceService generation reconciled (not the Deployment's, as KServe once did).
    observedGeneration: observed.generation,
    conditions: [stamp(ready), stamp(reconciled), stamp(available), stamp(progressing)],
    url: observed.url,
    replicas: deployment?.spec?.replicas ?? deployment?.status?.replicas ?? 0,
    readyReplicas: deployment?.status?.readyReplicas ?? 0,
    routerImage: observed.image
  }
}

/** Whether two statuses say the same, so an unchanged one is not written. */
export const sameStatus = (a: InferenceServiceStatus | undefined, b: InferenceServiceStatus): boolean =>
  a !== undefined && JSON.stringify(normalize(a)) === JSON.stringify(normalize(b))

const normalize = (status: InferenceServiceStatus) => ({
  observedGeneration: status.observedGeneration,
  url: status.url,
  replicas: status.replicas,
  readyReplicas: status.readyReplicas,
  routerImage: status.routerImage,
  conditions: [...(status.conditions ?? [])].sort((x, y) => x.type.localeCompare(y.type)).map((c) => ({
    type: c.type,
    status: c.status,
    reason: c.reason,
    message: c.message,
    lastTransitionTime: c.lastTransitionTime,
    observedGeneration: c.observedGeneration
  }))
})
