/**
 * Status from the children, pure: every reason a person can act on, the
 * summary Ready, observedGeneration, and lastTransitionTime moving only when
 * a condition's status changes.
 */
import { assert, describe, it } from "vitest"
import { computeStatus, type Observed, sameStatus } from "../src/controller/Status.ts"

const deployment = (status: Record<string, unknown>, spec: Record<string, unknown> = { replicas: 2 }, generation = 3) => ({
  metadata: { generation },
  spec,
  status: { observedGeneration: generation, ...status }
})

const observe = (overrides: Partial<Observed>): Observed => ({
  generation: 7,
  deployment: undefined,
  pods: [],
  url: "http://m-router.ns.svc.cluster.local",
  image: "router:1",
  previous: undefined,
  now: "2026-11-27T10:00:00.000Z",
  ...overrides
})

const ready = (status: ReturnType<typeof computeStatus>) => status.conditions!.find((c) => c.type === "Ready")!

describe("status", () => {
  it("available: Ready True, with counts, the URL, the image and the InferenceService's generation", () => {
    const status = computeStatus(observe({
      deployment: deployment({ readyReplicas: 2, updatedReplicas: 2, conditions: [{ type: "Available", status: "True" }] })
    }))
    assert.deepInclude(ready(status), { status: "True", reason: "Ready", observedGeneration: 7 })
    assert.deepInclude(status, { observedGeneration: 7, replicas: 2, readyReplicas: 2, url: "http://m-router.ns.svc.cluster.local", routerImage: "router:1" })
    assert.sameMembers(status.conditions!.map((c) => c.type), ["Ready", "Reconciled", "RouterAvailable", "Progressing"])
    assert.deepInclude(status.conditions!.find((c) => c.type === "Progressing"), { status: "False", reason: "RolledOut" })
  })

  it("a rollout while the old pods serve (Available): Ready stays True, the rollout is Progressing, not a failure", () => {
    const status = computeStatus(observe({
      deployment: { ...deployment({ readyReplicas: 2, updatedReplicas: 1, conditions: [{ type: "Available", status: "True" }] }), metadata: { generation: 4 } }
    }))
    assert.deepInclude(ready(status), { status: "True", reason: "Ready" })
    assert.deepInclude(status.conditions!.find((c) => c.type === "Progressing"), { status: "True", reason: "RollingOut" })
    assert.include(status.conditions!.find((c) => c.type === "RouterAvailable")!.message, "rolling out: 1/2")
  })

  it("a rollout whose new pods crash-loop while the old ones serve (a router older than the spec's fields): Progressing says why at once", () => {
    // A router from before ;kv-events= refuses its UPSTREAMS and exits; the kubelet keeps its line as the termination message.
    const said = "invalid configuration: UPSTREAMS=\"http://vllm-0:8000;kv-events=5557\": expected comma-separated base URLs"
    const status = computeStatus(observe({
      deployment: { ...deployment({ readyReplicas: 2, updatedReplicas: 1, conditions: [{ type: "Available", status: "True" }] }), metadata: { generation: 4 } },
      pods: [
        { metadata: { name: "old-1" }, status: { containerStatuses: [{ ready: true, state: { running: {} } }] } },
        { metadata: { name: "new-1" }, status: { containerStatuses: [{ state: { waiting: { reason: "CrashLoopBackOff" } }, lastState: { terminated: { exitCode: 1, message: `${said}\n` } } }] } }
      ]
    }))
    assert.deepInclude(ready(status), { status: "True", reason: "Ready" })
    const progressing = status.conditions!.find((c) => c.type === "Progressing")!
    assert.deepInclude(progressing, { status: "True", reason: "RollingOut" })
    assert.include(progressing.message, `RouterRejectedSettings: new-1: ${said}`)
  })

  it("a child's name taken by an object the InferenceService does not control: Ready False, reason NotOwned", () => {
    const status = computeStatus(observe({ specProblem: { reason: "NotOwned", message: "Service ns/m-router exists and is not controlled by this InferenceService" } }))
    assert.deepInclude(ready(status), { status: "False", reason: "NotOwned" })
  })

  for (const [what, observed, reason] of [
    ["no Deployment yet", observe({}), "Pending"],
    // The first rollout, nothing ready yet (with a replica ready, it serves: Ready).
    ["a rollout in progress", observe({ deployment: { ...deployment({ readyReplicas: 0, updatedReplicas: 1 }), metadata: { generation: 4 } } }), "RolloutInProgress"],
    ["ReplicaFailure", observe({ deployment: deployment({ updatedReplicas: 2, conditions: [{ type: "ReplicaFailure", status: "True", message: "quota exceeded" }] }) }), "ReplicaFailure"],
    ["ProgressDeadlineExceeded", observe({ deployment: deployment({ updatedReplicas: 2, conditions: [{ type: "Progressing", status: "False", reason: "ProgressDeadlineExceeded" }] }) }), "ProgressDeadlineExceeded"],
    ["an image that cannot be pulled", observe({ deployment: deployment({ updatedReplicas: 2 }), pods: [{ metadata: { name: "p" }, status: { containerStatuses: [{ state: { waiting: { reason: "ErrImagePull", message: "not found" } } }] } }] }), "ImagePullFailed"],
    ["a missing Secret", observe({ deployment: deployment({ updatedReplicas: 2 }), pods: [{ metadata: { name: "p" }, status: { containerStatuses: [{ state: { waiting: { reason: "CreateContainerConfigError", message: "secret \"k\" not found" } } }] } }] }), "ContainerConfigError"],
    ["a router crash-looping on a setting", observe({ deployment: deployment({ updatedReplicas: 2 }), pods: [{ metadata: { name: "p" }, status: { containerStatuses: [{ state: { waiting: { reason: "CrashLoopBackOff" } }, lastState: { terminated: { exitCode: 1, message: "inference-router: invalid configuration: PORT=\"x\": expected a port number 1-65535\n" } } }] } }] }), "RouterRejectedSettings"],
    ["a router crash-looping otherwise", observe({ deployment: deployment({ updatedReplicas: 2 }), pods: [{ metadata: { name: "p" }, status: { containerStatuses: [{ state: { waiting: { reason: "CrashLoopBackOff" } }, lastState: { terminated: { exitCode: 137, message: "" } } }] } }] }), "CrashLoopBackOff"],
    ["an invalid spec", observe({ specProblem: { reason: "InvalidSpec", message: "the router would reject this spec: …" } }), "InvalidSpec"],
    ["a failed apply", observe({ specProblem: { reason: "ApplyFailed", message: "apply Deployment: 403 forbidden" } }), "ApplyFailed"]
  ] as const) {
    it(`${what}: Ready is not True, reason ${reason}`, () => {
      const condition = ready(computeStatus(observed))
      assert.notStrictEqual(condition.status, "True")
      assert.strictEqual(condition.reason, reason)
      assert.isAbove(condition.message.length, 5)
    })
  }

  it("the router's own line reaches the message", () => {
    const condition = ready(computeStatus(observe({
      deployment: deployment({ updatedReplicas: 2 }),
      pods: [{ metadata: { name: "p-1" }, status: { containerStatuses: [{ state: { waiting: { reason: "CrashLoopBackOff" } }, lastState: { terminated: { message: "inference-router: invalid configuration: MAX_QUEUE=\"-1\": expected an integer >= 0" } } }] } }]
    })))
    assert.strictEqual(condition.message, "p-1: inference-router: invalid configuration: MAX_QUEUE=\"-1\": expected an integer >= 0")
  })

  it("lastTransitionTime moves only when a condition's status changes; an unchanged status is the same status", () => {
    const first = computeStatus(observe({}))
    const later = computeStatus(observe({ previous: first, now: "2026-11-27T11:00:00.000Z" }))
    assert.strictEqual(ready(later).lastTransitionTime, "2026-11-27T10:00:00.000Z")
    assert.isTrue(sameStatus(first, later))
    const available = computeStatus(observe({
      previous: later,
      now: "2026-11-27T12:00:00.000Z",
      deployment: deployment({ readyReplicas: 2, updatedReplicas: 2, conditions: [{ type: "Available", status: "True" }] })
    }))
    assert.strictEqual(ready(available).lastTransitionTime, "2026-11-27T12:00:00.000Z")
    assert.strictEqual(available.conditions!.find((c) => c.type === "Reconciled")!.lastTransitionTime, "2026-11-27T10:00:00.000Z")
    assert.isFalse(sameStatus(later, available))
  })

  it("a scale-up, an eviction or one pod restarting leaves Ready True while any replica is ready (the Deployment's Available needs them all)", () => {
    const scaling = deployment({ readyReplicas: 2, updatedReplicas: 4, conditions: [{ type: "Available", status: "False", reason: "MinimumReplicasUnavailable" }] }, { replicas: 4 })
    const pods = [{ metadata: { name: "m-router-new" }, status: { containerStatuses: [{ state: { waiting: { reason: "ContainerCreating" } } }] } }]
    const status = computeStatus(observe({ deployment: scaling, pods }))
    assert.deepInclude(ready(status), { status: "True", reason: "Ready" })
    const available = status.conditions!.find((c) => c.type === "RouterAvailable")!
    assert.deepInclude(available, { status: "True", reason: "SomeReplicasAvailable" })
    assert.include(available.message, "2/4 router replicas ready")
    // None ready: not Ready.
    const none = computeStatus(observe({ deployment: deployment({ readyReplicas: 0, updatedReplicas: 4, conditions: [{ type: "Available", status: "False" }] }, { replicas: 4 }), pods }))
    assert.deepInclude(ready(none), { status: "False" })
  })

  it("a crash loop keeps its reason while the container runs between two back-offs (not Unavailable and back, an event each way)", () => {
    const crashing = (state: unknown) => [{
      metadata: { name: "m-router-x" },
      status: { containerStatuses: [{ ready: false, restartCount: 3, state, lastState: { terminated: { exitCode: 1, message: "boom", finishedAt } } }] }
    }]
    let finishedAt = "2026-11-27T09:58:00Z" // two minutes before `now`
    const down = deployment({ readyReplicas: 0, updatedReplicas: 1, conditions: [{ type: "Available", status: "False" }] })
    for (const state of [{ waiting: { reason: "CrashLoopBackOff" } }, { running: { startedAt: "2026-11-27T09:59:00Z" } }]) {
      assert.deepInclude(ready(computeStatus(observe({ deployment: down, pods: crashing(state) }))), { status: "False", reason: "CrashLoopBackOff" })
    }
    // An old crash (days ago) of a container that runs but is not ready (no model server answers) is not a crash loop.
    finishedAt = "2026-11-21T10:00:00Z"
    const rolledOut = deployment({ readyReplicas: 0, updatedReplicas: 2, conditions: [{ type: "Available", status: "False" }] })
    assert.deepInclude(ready(computeStatus(observe({ deployment: rolledOut, pods: crashing({ running: { startedAt: "2026-11-21T10:00:05Z" } }) }))), { status: "False", reason: "Unavailable" })
  })

  it("scaled to zero: nothing serves (no endpoints), so not Ready, with its own reason", () => {
    const status = computeStatus(observe({ deployment: deployment({}, { replicas: 0 }) }))
    assert.deepInclude(ready(status), { status: "False", reason: "ScaledToZero" })
    assert.deepInclude(status.conditions!.find((c) => c.type === "RouterAvailable"), { status: "False", reason: "ScaledToZero" })
  })

  it("a rollout stuck past its deadline while the old pods serve: Ready stays True; Progressing False ProgressDeadlineExceeded with the new pods' problem", () => {
    const stuck = {
      ...deployment({
        readyReplicas: 2,
        updatedReplicas: 1,
        conditions: [
          { type: "Available", status: "True", reason: "MinimumReplicasAvailable" },
          { type: "Progressing", status: "False", reason: "ProgressDeadlineExceeded", message: "ReplicaSet \"m-router-2\" has timed out progressing." }
        ]
      })
    }
    const pods = [{ metadata: { name: "m-router-2-x" }, status: { containerStatuses: [{ state: { waiting: { reason: "ImagePullBackOff", message: "Back-off pulling image \"router:2\"" } } }] } }]
    const status = computeStatus(observe({ deployment: stuck, pods }))
    assert.deepInclude(ready(status), { status: "True", reason: "Ready" })
    assert.deepInclude(status.conditions!.find((c) => c.type === "RouterAvailable"), { status: "True" })
    const progressing = status.conditions!.find((c) => c.type === "Progressing")!
    assert.deepInclude(progressing, { status: "False", reason: "ProgressDeadlineExceeded" })
    assert.include(progressing.message, "timed out progressing")
    assert.include(progressing.message, "ImagePullFailed: m-router-2-x: ImagePullBackOff")
  })
})
