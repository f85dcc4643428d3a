/**
 * The controller process against the strict stand-in API server (managed
 * fields, defaulting, validation, faults): what a real cluster shows on day
 * one and a kinder stand-in did not (issue 19's findings, one test each).
 */
import { mkdtempSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, assert, describe, it } from "vitest"
import { foreignChild } from "../src/controller/Reconciler.ts"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"
import { atEnd, freePort, killAll, owned, sleep, type Started, startProcess, until } from "./support/Processes.ts"
import { requestAt } from "./support/TestRouter.ts"
import { afterResyncs } from "./support/ControllerProgress.ts"

/**
 * One stand-in and one controller (default settings) shared by the quick tests that need nothing
 * else: each uses InferenceServices of its own names, so they do not meet, and the process
 * starts once instead of once a test. Tests that wait for whole resyncs (counted over every
 * stored InferenceService) have their own, and run concurrently with the others below.
 */
let shared: Promise<{ readonly api: FakeKubeApi; readonly controller: Started & { readonly port: number } }> | undefined
const sharedController = () =>
  shared ??= (async () => {
    const api = new FakeKubeApi({ bookmarkMs: 200 })
    await api.start()
    const controller = await startController(api, {}, "controller")
    return { api, controller }
  })()
afterAll(async () => {
  // What a timed-out test left running too (each test's own are ended with it: owned).
  killAll()
  if (shared === undefined) return
  const { api, controller } = await shared
  controller.child.kill("SIGKILL")
  await api.stop()
})

const fakeApi = async () => {
  const api = new FakeKubeApi({ bookmarkMs: 200 })
  atEnd(() => api.stop())
  await api.start()
  return api
}

const startController = async (api: FakeKubeApi, env: Record<string, string> = {}, token = "controller"): Promise<Started & { readonly port: number }> => {
  const port = await freePort()
  const controller = startProcess(["src/controller/main.ts"], {
    KUBECONFIG: api.kubeconfig(token),
    PORT: String(port),
    HOST: "127.0.0.1",
    POD_NAME: `controller-${token}`,
    LEADER_ELECTION: "false",
    RESYNC_SECONDS: "1",
    ...env
  })
  return { ...controller, port }
}

/** The controller's own Pod as the kubelet reports it, its container's image pulled as `imageID`. */
const controllerPod = (imageID: string) => ({
  metadata: { name: "controller-0", namespace: "ops" },
  spec: { containers: [{ name: "controller", image: "reg.example/inference-router:7" }] },
  status: { containerStatuses: [{ name: "controller", image: "reg.example/inference-router:7", imageID, ready: true }] }
})

const isvc = (name: string, spec: Record<string, unknown>, namespace = "default") => ({
  apiVersion: "inference-router.dev/v1alpha1",
  kind: "InferenceService",
  metadata: { name, namespace },
  spec
})

/** An edit of the spec, as `kubectl apply` by a user would make it. */
const edit = (api: FakeKubeApi, name: string, spec: Record<string, unknown>) => {
  const live = api.get("inferenceservices", "default", name)
  return api.put("inferenceservices", { ...live, spec }, "kubectl")
}

const condition = (object: any, type: string) => object?.status?.conditions?.find((c: any) => c.type === type)
const reconciled = (api: FakeKubeApi, name: string) => {
  const object = api.get("inferenceservices", "default", name)
  const c = condition(object, "Reconciled")
  return c?.status === "True" && c.observedGeneration === object.metadata.generation
}

// Real processes on a shared machine: generous limits; each test takes a few seconds when the machine is idle.
describe("the controller against a stand-in as strict as kube-apiserver", { timeout: 60_000 }, () => {
  it("a CPU request over the default limit is applied (the limit follows it), not refused by the API server", async () => {
    const { api } = await sharedController()
    api.put("inferenceservices", isvc("cpu", { modelRef: "m", resources: { requests: { cpu: "2" } } }))
    await until(() => reconciled(api, "cpu"), "reconciled")
    const resources = api.get("deployments", "default", "cpu-router").spec.template.spec.containers[0].resources
    assert.deepStrictEqual(resources.limits.cpu, "2")
  })

  it("a pod label, an annotation and an env entry removed from the spec leave the Deployment", async () => {
    const { api } = await sharedController()
    api.put("inferenceservices", isvc("keys", {
      modelRef: "m",
      podLabels: { team: "a", tier: "gold" },
      podAnnotations: { note: "x" },
      env: [{ name: "TZ", value: "UTC" }]
    }))
    await until(() => reconciled(api, "keys"), "reconciled")
    // Only keys of maps removed: the live object is still a superset of what is wanted.
    edit(api, "keys", { modelRef: "m", podLabels: { team: "a" }, env: [{ name: "TZ", value: "UTC" }] })
    await until(() => reconciled(api, "keys"), "the edit reconciled")
    await until(() => api.get("deployments", "default", "keys-router").spec.template.metadata.labels.tier === undefined, "the label gone")
    const live = api.get("deployments", "default", "keys-router").spec.template
    assert.strictEqual(live.metadata.labels.team, "a")
    assert.isUndefined(live.metadata.annotations.note)
    edit(api, "keys", { modelRef: "m", podLabels: { team: "a" } })
    await until(() => reconciled(api, "keys"), "the second edit reconciled")
    await until(() => api.get("deployments", "default", "keys-router").spec.template.spec.containers[0].env.every((e: any) => e.name !== "TZ"), "the env entry gone")
  })

  it("created with autoscaling: the Deployment starts at minReplicas (not the default 1), then the HPA owns the count", async () => {
    const { api } = await sharedController()
    api.put("inferenceservices", isvc("auto", { modelRef: "m", minReplicas: 3, maxReplicas: 6 }))
    await until(() => reconciled(api, "auto"), "reconciled")
    assert.strictEqual(api.get("deployments", "default", "auto-router").spec.replicas, 3)
    const hash = () => api.get("deployments", "default", "auto-router").metadata.annotations["inference-router.dev/applied-hash"]
    const firstHash = hash()
    api.scale("default", "auto-router", 5)
    // The controller's next apply (on the scale's watch event) leaves the count out, and the HPA's stays.
    const replicasOwners = () =>
      api.managedFields("deployments", "default", "auto-router").filter((m: any) => m.fieldsV1?.["f:spec"]?.["f:replicas"] !== undefined).map((m: any) => m.manager)
    await until(() => hash() !== firstHash, "applied again, without replicas")
    assert.strictEqual(api.get("deployments", "default", "auto-router").spec.replicas, 5, "the HPA's count stays")
    assert.deepStrictEqual(replicasOwners(), ["kube-controller-manager"])
  })

  it("an HPA scale that overtakes the controller's read of the Deployment stays: a count read before it is never applied over it", async () => {
    const { api } = await sharedController()
    api.put("inferenceservices", isvc("overtaken", { modelRef: "m", minReplicas: 3, maxReplicas: 6 }))
    await until(() => reconciled(api, "overtaken"), "reconciled")
    const deployment = () => api.get("deployments", "default", "overtaken-router")
    const hash = () => deployment().metadata.annotations["inference-router.dev/applied-hash"]
    const firstHash = hash()
    // While the controller owns the count, each reconcile reads the Deployment from the API. The next read is
    // answered with the state before the scale, and lands after the scale's watch event has reached the cache.
    const since = api.requests.length
    api.fault({ method: "GET", path: "/deployments/overtaken-router", answerLateMs: 1_500, times: 1 })
    await until(() => api.requests.slice(since).some((r) => r.method === "GET" && r.path.endsWith("/deployments/overtaken-router") && r.heldAt !== undefined), "a read answered late")
    api.scale("default", "overtaken-router", 5)
    await until(() => hash() !== firstHash || deployment().spec.replicas !== 5, "the controller's next apply")
    assert.strictEqual(deployment().spec.replicas, 5, "the HPA's count not undone by the stale one")
    await until(() => hash() !== firstHash, "applied again, without replicas")
    assert.strictEqual(deployment().spec.replicas, 5)
    const owners = api.managedFields("deployments", "default", "overtaken-router")
      .filter((m: any) => m.fieldsV1?.["f:spec"]?.["f:replicas"] !== undefined)
      .map((m: any) => m.manager)
    assert.deepStrictEqual(owners, ["kube-controller-manager"])
  })

  it("orphans (kubectl delete --cascade=orphan, then created again) are adopted; labelled objects controlled by another are not", async () => {
    const { api } = await sharedController()
    const first = api.put("inferenceservices", isvc("orphan", { modelRef: "m" }))
    await until(() => reconciled(api, "orphan"), "reconciled")
    const plurals = ["deployments", "services", "poddisruptionbudgets"]
    // The garbage collector's orphaning: the owner goes, its children lose their owner reference.
    api.delete("inferenceservices", "default", "orphan")
    for (const plural of plurals) {
      const child = structuredClone(api.get(plural, "default", "orphan-router"))
      assert.strictEqual(child.metadata.ownerReferences[0].uid, first.metadata.uid)
      child.metadata.ownerReferences = []
      api.put(plural, child, "kube-controller-manager")
    }
    const second = api.put("inferenceservices", isvc("orphan", { modelRef: "m" }))
    await until(() => reconciled(api, "orphan") && api.get("inferenceservices", "default", "orphan").metadata.uid === second.metadata.uid, "reconciled again")
    await until(() => plurals.every((p) => api.get(p, "default", "orphan-router").metadata.ownerReferences?.[0]?.uid === second.metadata.uid), "adopted")
    assert.strictEqual(condition(api.get("inferenceservices", "default", "orphan"), "Reconciled").reason, "Applied")

    const labels = { "app.kubernetes.io/managed-by": "inference-router-controller", "inference-router.dev/inferenceservice": "x" }
    assert.isUndefined(foreignChild({ kind: "Service", metadata: { namespace: "d", name: "x-router", labels } }, "uid-x", "x"), "an orphan with our labels")
    assert.include(foreignChild({ kind: "Service", metadata: { namespace: "d", name: "x-router", labels: {} } }, "uid-x", "x"), "not controlled")
    assert.include(
      foreignChild({ kind: "Service", metadata: { namespace: "d", name: "x-router", labels: { ...labels, "inference-router.dev/inferenceservice": "y" } } }, "uid-x", "x"),
      "not controlled",
      "labelled for another InferenceService"
    )
    const controlled = { kind: "Service", metadata: { namespace: "d", name: "x-router", labels, ownerReferences: [{ kind: "Gateway", name: "g", uid: "uid-g", controller: true }] } }
    assert.include(foreignChild(controlled, "uid-x", "x"), "controlled by Gateway g")
  })

})

// Each its own stand-in and controller, ended with it (owned): run concurrently, their waits overlapping.
describe.concurrent("the controller against a strict stand-in, faults and its own environment", { timeout: 60_000 }, () => {
  it("quantities the API server stores in canonical form (0.5 CPU as 500m, an HPA target 1000 as 1k) are not applied again on every resync", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api)
    api.put("inferenceservices", isvc("q", { modelRef: "m", resources: { requests: { cpu: "0.5", memory: "1024Mi" } } }))
    api.put("inferenceservices", isvc("hq", { modelRef: "m", maxReplicas: 3, scaleMetric: "queue", scaleTarget: 1000 }))
    await until(() => reconciled(api, "q") && reconciled(api, "hq"), "reconciled")
    assert.deepStrictEqual(api.get("deployments", "default", "q-router").spec.template.spec.containers[0].resources.requests, { cpu: "500m", memory: "1Gi" })
    assert.strictEqual(api.get("horizontalpodautoscalers", "default", "hq-router").spec.metrics[0].pods.target.averageValue, "1k")
    // What the first applies set in motion (their watch events) reconciled once more, then two whole resyncs.
    await afterResyncs(api, controller.port, 1)
    const applies = () =>
      api.requests.filter((r) => r.method === "PATCH" && (r.path.endsWith("/deployments/q-router") || r.path.endsWith("/horizontalpodautoscalers/hq-router"))).length
    const before = applies()
    await afterResyncs(api, controller.port, 2)
    assert.strictEqual(applies(), before, "no apply when nothing changed")
  }))

  it("switching from replicas: 3 to autoscaling keeps 3 replicas until the HPA writes its own count, then leaves it to the HPA", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api)
    api.put("inferenceservices", isvc("scale", { modelRef: "m", replicas: 3 }))
    await until(() => reconciled(api, "scale"), "reconciled")
    edit(api, "scale", { modelRef: "m", minReplicas: 2, maxReplicas: 6 })
    await until(() => api.get("horizontalpodautoscalers", "default", "scale-router") !== undefined && reconciled(api, "scale"), "the HPA")
    await afterResyncs(api, controller.port, 2)
    assert.strictEqual(api.get("deployments", "default", "scale-router").spec.replicas, 3, "never dropped towards 1")
    // The HPA scales: the count is its own; the controller no longer applies it, nor fights it.
    api.scale("default", "scale-router", 5)
    edit(api, "scale", { modelRef: "m", minReplicas: 2, maxReplicas: 6, podLabels: { v: "2" } })
    await until(() => api.get("deployments", "default", "scale-router").spec.template.metadata.labels.v === "2", "a later edit applied")
    await afterResyncs(api, controller.port, 2)
    assert.strictEqual(api.get("deployments", "default", "scale-router").spec.replicas, 5)
    const owners = api.managedFields("deployments", "default", "scale-router")
      .filter((m: any) => m.fieldsV1?.["f:spec"]?.["f:replicas"] !== undefined)
      .map((m: any) => m.manager)
    assert.deepStrictEqual(owners, ["kube-controller-manager"])
  }))

  it("routing and KV events: applied as kubectl would, they reach the Deployment's env; a combination the router would ignore is refused at write time", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api)
    // kubectl apply --server-side: the CRD's schema and CEL rules run at write time.
    const apply = (name: string, spec: Record<string, unknown>) =>
      fetch(`http://127.0.0.1:${api.port}/apis/inference-router.dev/v1alpha1/namespaces/default/inferenceservices/${name}?fieldManager=kubectl&force=true`, {
        method: "PATCH",
        headers: { "content-type": "application/apply-patch+yaml", authorization: "Bearer user" },
        body: JSON.stringify(isvc(name, spec))
      })
    const upstreams = [{ url: "http://vllm-0.models.svc:8000", kvEvents: 5557 }, { url: "http://vllm-1.models.svc:8000", kvEvents: "tcp://kv-relay.models.svc:5557" }]
    const created = await apply("cached", { modelRef: "m", kvEndpoints: ["redis://redis.models.svc:6379"], upstreams, routing: { scheduler: "cache-aware", loadBoundPercent: 150 } })
    assert.strictEqual(created.status, 201, await created.text())
    await until(() => reconciled(api, "cached"), "reconciled")
    const env = () => Object.fromEntries(api.get("deployments", "default", "cached-router").spec.template.spec.containers[0].env.map((e: any) => [e.name, e.value]))
    assert.deepInclude(env(), {
      KV_ENDPOINTS: "redis://redis.models.svc:6379",
      MODEL_BACKEND: "upstream",
      UPSTREAMS: "http://vllm-0.models.svc:8000;kv-events=5557,http://vllm-1.models.svc:8000;kv-events=tcp://kv-relay.models.svc:5557",
      UPSTREAM_SCHEDULER: "cache-aware",
      UPSTREAM_LOAD_BOUND: "1.5"
    })
    assert.notProperty(env(), "UPSTREAM_METRICS_INTERVAL_MS", "unset: the router's default")

    for (const [spec, message] of [
      [{ modelRef: "m", upstreams, routing: { scheduler: "least-request" } }, "upstreams[].kvEvents needs routing.scheduler: cache-aware"],
      [{ modelRef: "m", upstreams: [{ url: "http://vllm-0:8000" }], routing: { loadBoundPercent: 150 } }, "loadBoundPercent and metricsIntervalMs need scheduler: cache-aware"],
      [{ modelRef: "m", routing: { scheduler: "cache-aware" } }, "routing needs upstreams"],
      [{ modelRef: "m", upstreams, routing: { scheduler: "cache-aware" }, env: [{ name: "UPSTREAM_LOAD_BOUND", value: "3" }] }, "env may not set the router's own settings"]
    ] as const) {
      const refused = await apply("cached", spec)
      assert.strictEqual(refused.status, 422, JSON.stringify(spec))
      const status = await refused.json() as { readonly reason: string; readonly message: string }
      assert.strictEqual(status.reason, "Invalid")
      assert.include(status.message, message)
    }
    // Nothing refused reached the stored object, nor the Deployment.
    assert.strictEqual(api.get("inferenceservices", "default", "cached").spec.routing.scheduler, "cache-aware")
    await afterResyncs(api, controller.port, 1)
    assert.strictEqual(env().UPSTREAM_LOAD_BOUND, "1.5")
  }))

  it("an object it did not create, named <name>-router, is not taken over: Ready=False NotOwned, the object unchanged", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api)
    const foreign = api.put("services", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "taken-router", namespace: "default" },
      spec: { selector: { app: "someone-else" }, ports: [{ port: 9000 }] }
    }, "kubectl-create")
    api.put("inferenceservices", isvc("taken", { modelRef: "m" }))
    await until(() => condition(api.get("inferenceservices", "default", "taken"), "Ready")?.reason === "NotOwned", "NotOwned")
    assert.include(condition(api.get("inferenceservices", "default", "taken"), "Ready").message, "Service default/taken-router")
    await afterResyncs(api, controller.port, 2)
    const live = api.get("services", "default", "taken-router")
    assert.strictEqual(live.metadata.resourceVersion, foreign.metadata.resourceVersion, "never written")
    assert.deepStrictEqual(live.spec.selector, { app: "someone-else" })
  }))

  it("a watch answered with HTTP 410 lists again instead of retrying the same resourceVersion", owned(async () => {
    const api = await fakeApi()
    await startController(api, { WATCH_IDLE_TIMEOUT_MS: "60000" })
    api.put("inferenceservices", isvc("w", { modelRef: "m" }))
    await until(() => reconciled(api, "w"), "reconciled")
    const before = api.requests.length
    api.fault({ watch: true, path: "/inferenceservices", status: 410, times: 1 })
    api.dropWatches()
    await until(() => api.requests.slice(before).some((r) => r.path.endsWith("/inferenceservices") && !r.watch && r.method === "GET"), "listed again")
    await sleep(500)
    const watches410 = api.requests.slice(before).filter((r) => r.watch && r.status === 410).length
    assert.strictEqual(watches410, 1, "one 410, then a list and a new watch")
  }))

  it("lease errors (403) are logged as warnings, not at debug", owned(async () => {
    const api = await fakeApi()
    api.fault({ path: "/leases", status: 403 })
    const controller = await startController(api, { LEADER_ELECTION: "true", LEASE_DURATION_SECONDS: "2", RENEW_DEADLINE_MS: "1500", LEADER_RETRY_MS: "200" })
    await until(() => controller.output().stdout.includes("403"), "a logged 403")
    const line = controller.output().stdout.split("\n").find((l) => l.includes("403"))!
    assert.match(line, /"level":"WARN"|level=WARN|WARN/i)
  }))

  it("two replicas, the leader's lease requests hang: it stops writing before the other starts (never two acting)", owned(async () => {
    const api = await fakeApi()
    const env = { LEADER_ELECTION: "true", LEASE_DURATION_SECONDS: "3", RENEW_DEADLINE_MS: "2000", LEADER_RETRY_MS: "200" }
    const holder = () => api.get("leases", "default", "inference-router-controller")?.spec?.holderIdentity
    await startController(api, env, "a")
    await until(() => holder() === "controller-a", "a leads")
    const b = await startController(api, env, "b")
    await until(async () => (await requestAt(b.port, { path: "/readyz" }).catch(() => ({ status: 0 }))).status === 200, "b ready (standby)")
    api.put("inferenceservices", isvc("busy", { modelRef: "m" }))
    // The spec keeps changing, so whoever leads keeps writing.
    let n = 0
    const editing = setInterval(() => edit(api, "busy", { modelRef: "m", podLabels: { n: String(n++) } }), 150)
    try {
      const writes = (token: string) => api.writes(token).filter((r) => !r.path.includes("/leases") && !r.path.includes("/events"))
      await until(() => writes("a").length > 0, "a writes")
      api.fault({ token: "a", path: "/leases", hang: true })
      await until(() => holder() === "controller-b", "b leads", 15_000)
      await until(() => writes("b").length > 0, "b writes")
      await sleep(500)
      const lastA = Math.max(...writes("a").map((r) => r.at))
      const firstB = Math.min(...writes("b").map((r) => r.at))
      assert.isBelow(lastA, firstB, "a's last write came before b's first")
    } finally {
      clearInterval(editing)
    }
  }))

  it("SIGTERM while every lease request hangs: the process exits within the grace period", owned(async () => {
    const api = await fakeApi()
    const controller = await startController(api, { LEADER_ELECTION: "true", LEASE_DURATION_SECONDS: "3", RENEW_DEADLINE_MS: "2000", LEADER_RETRY_MS: "200" })
    await until(() => api.get("leases", "default", "inference-router-controller")?.spec?.holderIdentity === "controller-controller", "leading")
    api.fault({ path: "/leases", hang: true })
    await sleep(300)
    const started = Date.now()
    controller.child.kill("SIGTERM")
    const code = await controller.exited
    // The controller Deployment's grace period is 30 s; the release is bounded by the renew deadline (2 s here).
    assert.isBelow(Date.now() - started, 8_000)
    assert.strictEqual(code, 0)
  }))

  it("npm run controller without any kubeconfig: one line saying no cluster was found, exit 1", owned(async () => {
    const port = await freePort()
    const home = mkdtempSync(join(tmpdir(), "no-kube-"))
    // Not spawnSync: it would stop this worker's event loop, and with it the other tests' stand-ins.
    const run = startProcess(["src/controller/main.ts"], { HOME: home, PORT: String(port), HOST: "127.0.0.1" })
    const status = await run.exited
    const result = run.output()
    assert.strictEqual(status, 1, result.stdout + result.stderr)
    const lines = result.stderr.trim().split("\n")
    assert.lengthOf(lines, 1, result.stderr)
    assert.include(lines[0], "no cluster found")
  }))

  it("hanging applies do not hold the workers: other InferenceServices are reconciled, and the stuck one when the API answers again", owned(async () => {
    const api = await fakeApi()
    // A bound well above what an answering call takes on a loaded machine: only the hanging ones reach it.
    const controller = await startController(api, { API_TIMEOUT_MS: "1500", MAX_PARALLEL_RECONCILES: "2" })
    const remove = api.fault({ method: "PATCH", path: /\/(stuck-\d)-router$/, hang: true })
    for (let i = 0; i < 4; i++) api.put("inferenceservices", isvc(`stuck-${i}`, { modelRef: "m" }))
    await sleep(300)
    api.put("inferenceservices", isvc("free", { modelRef: "m" }))
    await until(() => reconciled(api, "free"), "another InferenceService reconciled")
    assert.strictEqual((await requestAt(controller.port, { path: "/healthz" })).status, 200)
    remove()
    await until(() => [0, 1, 2, 3].every((i) => reconciled(api, `stuck-${i}`)), "the stuck ones once the API answers", 20_000)
  }))

  it("the routers run the controller's own image (read from its Pod) unless ROUTER_IMAGE says otherwise", owned(async () => {
    const api = await fakeApi()
    api.put("pods", controllerPod("sha256:" + "1".repeat(64)))
    await startController(api, { POD_NAME: "controller-0", POD_NAMESPACE: "ops" })
    api.put("inferenceservices", isvc("img", { modelRef: "m" }))
    await until(() => reconciled(api, "img"), "reconciled")
    // A local image ID (not a registry digest): the tag as it is.
    assert.strictEqual(api.get("deployments", "default", "img-router").spec.template.spec.containers[0].image, "reg.example/inference-router:7")
  }))

  it("in a pod, the controller's own image is read until it can be (not ready, not leading meanwhile), never a built-in tag, and pinned to its digest", owned(async () => {
    const api = await fakeApi()
    const digest = "sha256:" + "ab".repeat(32)
    api.put("pods", controllerPod(`docker-pullable://reg.example/inference-router@${digest}`))
    api.put("inferenceservices", isvc("img", { modelRef: "m" }))
    const removeFault = api.fault({ method: "GET", path: "/pods/controller-0", status: 500 })
    const controller = await startController(api, { POD_NAME: "controller-0", POD_NAMESPACE: "ops" })
    await until(() => api.requests.filter((r) => r.path.endsWith("/pods/controller-0")).length >= 2, "the pod read retried")
    await sleep(500)
    assert.strictEqual((await requestAt(controller.port, { path: "/readyz" })).status, 503)
    assert.isUndefined(api.get("deployments", "default", "img-router"), "nothing applied with a guessed image")
    removeFault()
    await until(() => reconciled(api, "img"), "reconciled once the pod was read", 10_000)
    assert.strictEqual(
      api.get("deployments", "default", "img-router").spec.template.spec.containers[0].image,
      `reg.example/inference-router:7@${digest}`
    )
    await until(async () => (await requestAt(controller.port, { path: "/readyz" })).status === 200, "ready")
  }))
})
