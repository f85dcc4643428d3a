/**
 * The controller process against a stand-in of the Kubernetes API
 * (support/FakeKubeApi.ts), reached through a kubeconfig with the same client
 * code as a real cluster: reconcile, status, idempotence, drift, the faults
 * users report in Node controllers, leader election.
 */
import { afterAll, assert, describe, it } from "vitest"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"
import { atEnd, freePort, killAll, owned, sleep, startProcess, until } from "./support/Processes.ts"
import { requestAt } from "./support/TestRouter.ts"
import { afterResyncs } from "./support/ControllerProgress.ts"

// Each test has its own stand-in and controllers, ended with it (owned): they run concurrently,
// their waits (resyncs, leases, backoffs) overlapping. What a timed-out test left running:
afterAll(killAll)

const fakeApi = async (options: { bookmarkMs?: number } = {}) => {
  const api = new FakeKubeApi(options)
  atEnd(() => api.stop())
  await api.start()
  return api
}

const startController = async (api: FakeKubeApi, env: Record<string, string> = {}, token = "controller") => {
  const port = await freePort()
  const controller = startProcess(["src/controller/main.ts"], {
    KUBECONFIG: api.kubeconfig(token),
    PORT: String(port),
    HOST: "127.0.0.1",
    POD_NAME: `controller-${token}`,
    LEASE_DURATION_SECONDS: "2",
    RENEW_DEADLINE_MS: "1500",
    LEADER_RETRY_MS: "200",
    WATCH_IDLE_TIMEOUT_MS: "5000",
    ...env
  })
  return { ...controller, port }
}

const isvc = (name: string, spec: Record<string, unknown>, namespace = "default") => ({
  apiVersion: "inference-router.dev/v1alpha1",
  kind: "InferenceService",
  metadata: { name, namespace },
  spec
})

const condition = (object: any, type: string) => object?.status?.conditions?.find((c: any) => c.type === type)

const envOf = (deployment: any): Record<string, any> =>
  Object.fromEntries(deployment.spec.template.spec.containers[0].env.map((e: any) => [e.name, e.value ?? e.valueFrom]))

/** What a Deployment's status says once its pods are up, as the deployment controller writes it. */
const available = (deployment: any) => ({
  ...deployment,
  status: {
    observedGeneration: deployment.metadata.generation,
    replicas: deployment.spec.replicas ?? 1,
    updatedReplicas: deployment.spec.replicas ?? 1,
    readyReplicas: deployment.spec.replicas ?? 1,
    availableReplicas: deployment.spec.replicas ?? 1,
    conditions: [{ type: "Available", status: "True", reason: "MinimumReplicasAvailable" }]
  }
})

const nonLeaseWrites = (api: FakeKubeApi, token?: string) =>
  api.writes(token).filter((r) => !r.path.includes("/leases"))

const metric = async (port: number, series: string) => {
  const text = (await requestAt(port, { path: "/metrics" })).text
  const line = text.split("\n").find((l) => l.startsWith(series + " "))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

describe.concurrent("controller against a stand-in API server", () => {
  it("reconciles an InferenceService: children by server-side apply with owners, status, an event, readiness", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api)
    await until(async () => (await requestAt(controller.port, { path: "/readyz" }).catch(() => ({ status: 0 }))).status === 200, "readiness")
    const owner = api.put("inferenceservices", isvc("llama", { modelRef: "llama-3-8b", kvEndpoints: ["kv-0:6379"], router: { maxConcurrency: 3 } }))
    await until(() => condition(api.get("inferenceservices", "default", "llama"), "Reconciled")?.status === "True", "status")

    const deployment = api.get("deployments", "default", "llama-router")
    assert.deepStrictEqual(deployment.metadata.ownerReferences, [{
      apiVersion: "inference-router.dev/v1alpha1",
      kind: "InferenceService",
      name: "llama",
      uid: owner.metadata.uid,
      controller: true,
      blockOwnerDeletion: true
    }])
    const env = envOf(deployment)
    assert.strictEqual(env.MODEL_REF, "llama-3-8b")
    assert.strictEqual(env.MAX_CONCURRENCY, "3")
    assert.strictEqual(env.KV_ENDPOINTS, "kv-0:6379")
    assert.deepStrictEqual(env.POD_NAME, { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } })
    for (const plural of ["services", "poddisruptionbudgets"]) assert.isDefined(api.get(plural, "default", "llama-router"), plural)
    assert.isUndefined(api.get("horizontalpodautoscalers", "default", "llama-router"))

    const applies = api.requests.filter((r) => r.method === "PATCH" && !r.path.endsWith("/status"))
    assert.isAtLeast(applies.length, 3)
    for (const apply of applies) assert.strictEqual(apply.contentType, "application/apply-patch+yaml")
    assert.deepStrictEqual(deployment.metadata.managedFields.map((m: any) => m.manager), ["inference-router-controller"])

    const status = api.get("inferenceservices", "default", "llama").status
    assert.strictEqual(status.observedGeneration, 1)
    assert.strictEqual(status.url, "http://llama-router.default.svc.cluster.local")
    assert.strictEqual(status.routerImage, "inference-router:0.1.0")
    assert.strictEqual(condition({ status }, "Ready").status, "False")
    assert.strictEqual(condition({ status }, "RouterAvailable").reason, "RolloutInProgress")
    assert.isTrue(api.requests.some((r) => r.method === "PATCH" && r.path.endsWith("/inferenceservices/llama/status")))

    // The Deployment becomes available: Ready, with an event.
    api.put("deployments", available(api.get("deployments", "default", "llama-router")))
    await until(() => condition(api.get("inferenceservices", "default", "llama"), "Ready")?.status === "True", "Ready")
    await until(() => api.list("events").some((e) => e.reason === "Ready" && e.type === "Normal"), "a Ready event")
    assert.isAbove(await metric(controller.port, `inference_router_controller_reconciles_total{result="success"}`), 0)
  }))

  it("is level-based: resyncs of unchanged InferenceServices write nothing; a manual edit of the Deployment is re-asserted", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api, { RESYNC_SECONDS: "1" })
    for (let i = 0; i < 4; i++) api.put("inferenceservices", isvc(`m${i}`, { modelRef: `model-${i}` }))
    // An empty env value, which the API server does not store (omitempty): still nothing to write at a resync.
    api.put("inferenceservices", isvc("m4", { modelRef: "model-4", env: [{ name: "TEAM_NOTE", value: "" }] }))
    await until(() => api.list("inferenceservices").every((o) => condition(o, "Reconciled")?.status === "True"), "all reconciled")
    // What the first writes set in motion (their watch events, the events sent after the status) done, then two whole resyncs.
    await afterResyncs(api, controller.port, 1)
    const before = nonLeaseWrites(api).length
    await afterResyncs(api, controller.port, 2)
    assert.strictEqual(nonLeaseWrites(api).length, before, "nothing written when nothing changed")

    // kubectl edit: someone changes the env.
    const deployment = structuredClone(api.get("deployments", "default", "m0-router"))
    deployment.spec.template.spec.containers[0].env = [{ name: "MODEL_REF", value: "hijacked" }]
    api.put("deployments", deployment)
    await until(() => envOf(api.get("deployments", "default", "m0-router")).MODEL_REF === "model-0", "the edit re-asserted")

    // Another manager adds a sidecar (a mesh's injector, kubectl edit): its item is left alone, and not re-applied at every resync.
    const injected = structuredClone(api.get("deployments", "default", "m1-router"))
    injected.spec.template.spec.containers.push({ name: "sidecar", image: "busybox:1" })
    api.put("deployments", injected, "sidecar-injector")
    await afterResyncs(api, controller.port, 1)
    const settled = nonLeaseWrites(api).length
    await afterResyncs(api, controller.port, 2)
    assert.strictEqual(nonLeaseWrites(api).length, settled, "no apply at each resync for another manager's list item")
    assert.include(api.get("deployments", "default", "m1-router").spec.template.spec.containers.map((c: { name: string }) => c.name), "sidecar")
  }))

  it("a spec the router would reject: Ready=False InvalidSpec with the router's message, children left as they were", owned(async () => {
    const api = await fakeApi()
    await startController(api)
    api.put("inferenceservices", isvc("bad", { modelRef: "m", router: { maxConcurrency: 4 } }))
    await until(() => api.get("deployments", "default", "bad-router") !== undefined, "first apply")
    const applied = structuredClone(api.get("deployments", "default", "bad-router"))
    api.put("inferenceservices", isvc("bad", { modelRef: "m", router: { maxConcurrency: 9 }, kvEndpoints: ["kv:70000"] }))
    await until(() => condition(api.get("inferenceservices", "default", "bad"), "Ready")?.reason === "InvalidSpec", "InvalidSpec")
    const ready = condition(api.get("inferenceservices", "default", "bad"), "Ready")
    assert.strictEqual(ready.status, "False")
    assert.include(ready.message, "KV_ENDPOINTS")
    assert.strictEqual(api.get("inferenceservices", "default", "bad").status.observedGeneration, 2)
    assert.deepStrictEqual(api.get("deployments", "default", "bad-router").spec, applied.spec, "children untouched")
    await until(() => api.list("events").some((e) => e.reason === "InvalidSpec" && e.type === "Warning"), "a warning event")
  }))

  it("an object stored under an older CRD that the current one refuses: the Warning event is sent though the status write is refused (Kubernetes < 1.30)", owned(async () => {
    const api = await fakeApi()
    await startController(api)
    // Stored before UPSTREAM_SCHEDULER moved to spec.routing; without validation ratcheting the
    // CRD's rules also run on /status writes, so the API server refuses every status write (422).
    api.putStoredEarlier("inferenceservices", isvc("old", {
      modelRef: "m",
      upstreams: [{ url: "http://vllm:8000" }],
      env: [{ name: "UPSTREAM_SCHEDULER", value: "cache-aware" }]
    }))
    const statusWrites = () => api.requests.filter((r) => r.method === "PATCH" && r.path.endsWith("/inferenceservices/old/status"))
    await until(() => api.list("events").some((e) => e.reason === "InvalidSpec" && e.type === "Warning" && e.involvedObject.name === "old"), "a warning event")
    const warning = api.list("events").find((e) => e.reason === "InvalidSpec")
    assert.include(warning.message, "UPSTREAM_SCHEDULER")
    assert.isUndefined(api.get("inferenceservices", "default", "old").status, "the status write was refused")
    assert.isTrue(statusWrites().every((r) => r.status === 422), "the stand-in refuses the status write as the API server does")
    // The refused write is retried: the same warning is not sent again on every retry.
    await until(() => statusWrites().length >= 3, "retried status writes")
    assert.strictEqual(api.list("events").filter((e) => e.reason === "InvalidSpec" && e.involvedObject.name === "old").length, 1)
  }))

  it("surfaces a router crash-looping on a setting, and image pull failures, from the pods", owned(async () => {
    const api = await fakeApi()
    await startController(api)
    api.put("inferenceservices", isvc("crash", { modelRef: "m" }))
    await until(() => api.get("deployments", "default", "crash-router") !== undefined, "deployment")
    const labels = api.get("deployments", "default", "crash-router").spec.template.metadata.labels
    api.put("pods", {
      metadata: { name: "crash-router-abc", namespace: "default", labels },
      status: {
        containerStatuses: [{
          name: "router",
          image: "inference-router:0.1.0",
          state: { waiting: { reason: "CrashLoopBackOff" } },
          lastState: {
            terminated: {
              exitCode: 1,
              message: "inference-router: invalid configuration: MAX_QUEUE=\"lots\": expected an integer >= 0\n"
            }
          }
        }]
      }
    })
    // Nothing else changes (a failing pod leaves its Deployment's status as it was): the pod's own event is enough.
    await until(() => condition(api.get("inferenceservices", "default", "crash"), "Ready")?.reason === "RouterRejectedSettings", "the crash surfaced")
    assert.include(condition(api.get("inferenceservices", "default", "crash"), "Ready").message, "MAX_QUEUE=\"lots\"")

    const pod = structuredClone(api.get("pods", "default", "crash-router-abc"))
    pod.status.containerStatuses[0] = { name: "router", image: "nope:1", state: { waiting: { reason: "ImagePullBackOff", message: "Back-off pulling image \"nope:1\"" } } }
    api.put("pods", pod)
    await until(() => condition(api.get("inferenceservices", "default", "crash"), "Ready")?.reason === "ImagePullFailed", "the pull failure surfaced")
  }))

  it("survives the API being down at start, dropped watches, 410 Gone and silent watches, without exiting or storming", owned(async () => {
    const api = await fakeApi({ bookmarkMs: 200 })
    api.down = true
    const controller = await startController(api, { WATCH_IDLE_TIMEOUT_MS: "1000" })
    // Listening (its health server does not need the API), but not ready while the API is down.
    await until(async () => (await requestAt(controller.port, { path: "/healthz" }).catch(() => ({ status: 0 }))).status === 200, "listening")
    const downSince = api.requests.length
    await sleep(1_500)
    const tries = api.requests.length - downSince
    assert.isBelow(tries, 200, "backed off, not a storm")
    assert.strictEqual((await requestAt(controller.port, { path: "/readyz" })).status, 503)
    api.down = false
    api.put("inferenceservices", isvc("a", { modelRef: "a" }))
    await until(() => api.get("deployments", "default", "a-router") !== undefined, "reconciled after the API came back")
    assert.strictEqual((await requestAt(controller.port, { path: "/readyz" })).status, 200)

    // A watch dropped mid-stream.
    api.dropWatches()
    api.put("inferenceservices", isvc("b", { modelRef: "b" }))
    await until(() => api.get("deployments", "default", "b-router") !== undefined, "seen after a dropped watch")

    // History compacted: resuming from an old resourceVersion gets 410; the controller lists again.
    api.compact()
    api.dropWatches()
    api.put("inferenceservices", isvc("c", { modelRef: "c" }))
    await until(() => api.get("deployments", "default", "c-router") !== undefined, "seen after 410")
    await until(async () => (await metric(controller.port, `inference_router_controller_watch_restarts_total{resource="InferenceService",reason="expired"}`)) >= 1, "410 counted")

    // A watch that goes silent (no events, no bookmarks) is restarted.
    api.silentWatches = true
    api.dropWatches()
    await until(async () => (await metric(controller.port, `inference_router_controller_watch_restarts_total{resource="InferenceService",reason="silent"}`)) >= 1, "silence detected", 10_000)
    api.silentWatches = false
    api.put("inferenceservices", isvc("d", { modelRef: "d" }))
    await until(() => api.get("deployments", "default", "d-router") !== undefined, "seen after a silent watch", 10_000)
    assert.strictEqual(controller.child.exitCode, null, "still running")
  }), 60_000)

  it("WATCH_NAMESPACES: only those namespaces are watched and reconciled", owned(async () => {
    const api = await fakeApi()
    await startController(api, { WATCH_NAMESPACES: "team-a,team-b" })
    api.put("inferenceservices", isvc("other", { modelRef: "x" }, "team-c"))
    api.put("inferenceservices", isvc("mine", { modelRef: "a" }, "team-a"))
    api.put("inferenceservices", isvc("also", { modelRef: "b" }, "team-b"))
    await until(() => api.get("deployments", "team-a", "mine-router") !== undefined && api.get("deployments", "team-b", "also-router") !== undefined, "both watched namespaces")
    await sleep(500)
    assert.isUndefined(api.get("deployments", "team-c", "other-router"))
    const paths = new Set(api.requests.filter((r) => r.method === "GET" && r.path.includes("inferenceservices")).map((r) => r.path))
    assert.isFalse([...paths].some((p) => p === "/apis/inference-router.dev/v1alpha1/inferenceservices"), "no cluster-wide list or watch")
    assert.isTrue(paths.has("/apis/inference-router.dev/v1alpha1/namespaces/team-a/inferenceservices"))
  }))

  it("leader election: two replicas, one writes; SIGTERM releases the lease and the other takes over", owned(async () => {
    const api = await fakeApi()
    // A long lease: taking over well before it could expire shows it was released.
    const lease = { LEASE_DURATION_SECONDS: "10" }
    const a = await startController(api, lease, "a")
    await until(() => api.get("leases", "default", "inference-router-controller")?.spec?.holderIdentity === "controller-a", "a leads")
    const b = await startController(api, lease, "b")
    await until(async () => (await requestAt(b.port, { path: "/readyz" }).catch(() => ({ status: 0 }))).status === 200, "b ready (standby)")
    api.put("inferenceservices", isvc("one", { modelRef: "one" }))
    await until(() => condition(api.get("inferenceservices", "default", "one"), "Reconciled")?.status === "True", "reconciled by the leader")
    await sleep(500)
    assert.isAbove(nonLeaseWrites(api, "a").length, 0)
    assert.strictEqual(nonLeaseWrites(api, "b").length, 0, "the standby never writes")
    assert.strictEqual(await metric(b.port, "inference_router_controller_leader"), 0)

    a.child.kill("SIGTERM")
    assert.strictEqual(await a.exited, 0)
    // Released, not left to expire: b takes over well within the lease duration.
    await until(() => api.get("leases", "default", "inference-router-controller")?.spec?.holderIdentity === "controller-b", "b leads", 8_000)
    api.put("inferenceservices", isvc("two", { modelRef: "two" }))
    await until(() => api.get("deployments", "default", "two-router") !== undefined, "reconciled by the new leader")
    assert.isAbove(nonLeaseWrites(api, "b").length, 0)
  }))
})
