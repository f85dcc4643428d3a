/**
 * The stand-in API server (support/FakeKubeApi.ts) behaves as kube-apiserver
 * where the controller depends on it: server-side apply with managed fields,
 * defaulting, write-time validation, faults. Each rule as the Kubernetes
 * documentation states it ("Server-Side Apply": conflicts, shared ownership,
 * transferring ownership, merge strategy).
 */
import { afterEach, assert, describe, it } from "vitest"
import { KubeConfig } from "@kubernetes/client-node"
import { Effect, Exit } from "effect"
import { KubeApi, resources } from "../src/controller/KubeApi.ts"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"

const apis: Array<FakeKubeApi> = []
afterEach(async () => {
  for (const api of apis.splice(0)) await api.stop()
})

const start = async () => {
  const api = new FakeKubeApi()
  apis.push(api)
  await api.start()
  const call = async (method: string, path: string, body?: unknown, options: { contentType?: string; token?: string; signal?: AbortSignal } = {}) => {
    const response = await fetch(`http://127.0.0.1:${api.port}${path}`, {
      method,
      headers: {
        "content-type": options.contentType ?? "application/json",
        authorization: `Bearer ${options.token ?? "t"}`
      },
      ...(body === undefined ? {} : { body: typeof body === "string" ? body : JSON.stringify(body) }),
      ...(options.signal === undefined ? {} : { signal: options.signal })
    })
    return { status: response.status, headers: response.headers, body: await response.json().catch(() => undefined) as any }
  }
  const apply = (path: string, object: unknown, manager: string, force = false) =>
    call("PATCH", `${path}?fieldManager=${manager}${force ? "&force=true" : ""}`, object, { contentType: "application/apply-patch+yaml" })
  return { api, call, apply }
}

const deploymentPath = "/apis/apps/v1/namespaces/default/deployments/web"
const deployment = (spec: Record<string, unknown> = {}, env: Array<Record<string, unknown>> = [{ name: "A", value: "1" }], extra: Record<string, unknown> = {}) => ({
  apiVersion: "apps/v1",
  kind: "Deployment",
  metadata: { name: "web", namespace: "default", labels: { app: "web" } },
  spec: {
    selector: { matchLabels: { app: "web" } },
    template: {
      metadata: { labels: { app: "web" } },
      spec: { containers: [{ name: "main", image: "img:1", env, ...extra }] }
    },
    ...spec
  }
})

const managersOf = (object: any) => object.metadata.managedFields.map((m: any) => `${m.manager}/${m.operation}${m.subresource ? "/" + m.subresource : ""}`).sort()
const owns = (object: any, manager: string, ...path: Array<string>) => {
  const entry = object.metadata.managedFields.find((m: any) => m.manager === manager)
  let node = entry?.fieldsV1
  for (const segment of path) node = node?.[segment]
  return node !== undefined
}

describe("the stand-in API server: server-side apply", () => {
  it("defaults what no manager sets (Deployment replicas 1, protocols, a Service's clusterIP), owned by nobody", async () => {
    const { api, apply } = await start()
    const created = await apply(deploymentPath, deployment(), "ctl")
    assert.strictEqual(created.status, 201)
    assert.strictEqual(created.body.spec.replicas, 1)
    assert.strictEqual(created.body.spec.strategy.type, "RollingUpdate")
    assert.isFalse(owns(created.body, "ctl", "f:spec", "f:replicas"))
    assert.isTrue(owns(created.body, "ctl", "f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"main"}', "f:env", 'k:{"name":"A"}', "f:value"))
    const service = await apply("/api/v1/namespaces/default/services/web", {
      apiVersion: "v1",
      kind: "Service",
      metadata: { name: "web" },
      spec: { selector: { app: "web" }, ports: [{ name: "http", port: 80 }] }
    }, "ctl")
    assert.strictEqual(service.status, 201)
    assert.match(service.body.spec.clusterIP, /^10\.96\./)
    assert.deepStrictEqual(service.body.spec.ports[0], { name: "http", port: 80, protocol: "TCP", targetPort: 80 })
    assert.strictEqual(api.get("services", "default", "web").spec.type, "ClusterIP")
  })

  it("an apply that changes nothing bumps no resourceVersion and sends no watch event", async () => {
    const { api, apply } = await start()
    const first = await apply(deploymentPath, deployment(), "ctl")
    const revision = api.resourceVersion
    const again = await apply(deploymentPath, deployment(), "ctl")
    assert.strictEqual(again.status, 200)
    assert.strictEqual(again.body.metadata.resourceVersion, first.body.metadata.resourceVersion)
    assert.strictEqual(api.resourceVersion, revision, "no new revision: no watch event")
  })

  it("a field a manager stops applying is removed, and defaulted again when it had a default", async () => {
    const { apply } = await start()
    await apply(deploymentPath, deployment({ replicas: 3 }, [{ name: "A", value: "1" }, { name: "B", value: "2" }]), "ctl")
    const next = await apply(deploymentPath, deployment({}, [{ name: "A", value: "1" }]), "ctl")
    assert.deepStrictEqual(next.body.spec.template.spec.containers[0].env, [{ name: "A", value: "1" }])
    assert.strictEqual(next.body.spec.replicas, 1, "replicas no one owns falls back to the default")
  })

  it("conflicts: a field another manager owns with a different value is 409 without force, taken over with force", async () => {
    const { api, apply } = await start()
    await apply(deploymentPath, deployment({ replicas: 2 }), "ctl")
    const conflict = await apply(deploymentPath, deployment({ replicas: 5 }), "other")
    assert.strictEqual(conflict.status, 409)
    assert.include(conflict.body.message, `conflict with "ctl"`)
    assert.include(conflict.body.message, ".spec.replicas")
    const forced = await apply(deploymentPath, deployment({ replicas: 5 }), "other", true)
    assert.strictEqual(forced.status, 200)
    assert.strictEqual(forced.body.spec.replicas, 5)
    assert.isFalse(owns(api.get("deployments", "default", "web"), "ctl", "f:spec", "f:replicas"))
    assert.isTrue(owns(api.get("deployments", "default", "web"), "other", "f:spec", "f:replicas"))
  })

  it("an apply or patch naming a resourceVersion is conditional on it: 409 once the object has moved on", async () => {
    const { api, apply, call } = await start()
    const created = await apply(deploymentPath, deployment({ replicas: 2 }), "ctl")
    const version = created.body.metadata.resourceVersion
    api.scale("default", "web", 5)
    const conditional = (spec: Record<string, unknown>) => ({ ...deployment(spec), metadata: { ...deployment().metadata, resourceVersion: version } })
    const refused = await apply(deploymentPath, conditional({ replicas: 3 }), "ctl", true)
    assert.strictEqual(refused.status, 409)
    assert.include(refused.body.message, "the object has been modified")
    assert.strictEqual((await call("PATCH", deploymentPath, { metadata: { resourceVersion: version }, spec: { replicas: 3 } }, { contentType: "application/merge-patch+json" })).status, 409)
    assert.strictEqual(api.get("deployments", "default", "web").spec.replicas, 5, "nothing written")
    const current = api.get("deployments", "default", "web").metadata.resourceVersion
    const accepted = await apply(deploymentPath, { ...conditional({ replicas: 3 }), metadata: { ...deployment().metadata, resourceVersion: current } }, "ctl", true)
    assert.strictEqual(accepted.status, 200)
    assert.strictEqual(accepted.body.spec.replicas, 3)
  })

  it("shared ownership: the same value applied by two managers is owned by both, and stays until both stop", async () => {
    const { apply } = await start()
    await apply(deploymentPath, deployment({ replicas: 2 }), "ctl")
    const shared = await apply(deploymentPath, deployment({ replicas: 2 }), "other")
    assert.strictEqual(shared.status, 200)
    assert.isTrue(owns(shared.body, "ctl", "f:spec", "f:replicas"))
    assert.isTrue(owns(shared.body, "other", "f:spec", "f:replicas"))
    const oneLeft = await apply(deploymentPath, deployment(), "ctl")
    assert.strictEqual(oneLeft.body.spec.replicas, 2, "still owned by the other manager")
    const none = await apply(deploymentPath, deployment(), "other")
    assert.strictEqual(none.body.spec.replicas, 1, "no owner left: removed, then defaulted")
  })

  it("list-maps merge by key: another manager's env entry survives an apply; a duplicate key is refused", async () => {
    const { apply } = await start()
    await apply(deploymentPath, deployment({}, [{ name: "A", value: "1" }]), "ctl")
    const other = await apply(deploymentPath, deployment({}, [{ name: "X", value: "9" }]), "other")
    assert.deepStrictEqual(other.body.spec.template.spec.containers[0].env.map((e: any) => e.name).sort(), ["A", "X"])
    const again = await apply(deploymentPath, deployment({}, [{ name: "A", value: "2" }]), "ctl")
    assert.deepStrictEqual(again.body.spec.template.spec.containers[0].env.map((e: any) => `${e.name}=${e.value}`).sort(), ["A=2", "X=9"])
    const duplicate = await apply(deploymentPath, deployment({}, [{ name: "A", value: "1" }, { name: "A", value: "2" }]), "ctl")
    assert.strictEqual(duplicate.status, 422)
    assert.include(duplicate.body.message, "duplicate entries for key")
  })

  it("the HPA writing spec.replicas (an update through scale) takes the field; the applier's removal then leaves it", async () => {
    const { api, apply } = await start()
    await apply(deploymentPath, deployment({ replicas: 3 }), "ctl")
    api.scale("default", "web", 4)
    const scaled = api.get("deployments", "default", "web")
    assert.deepStrictEqual(managersOf(scaled), ["ctl/Apply", "kube-controller-manager/Update/scale"])
    assert.isTrue(owns(scaled, "kube-controller-manager", "f:spec", "f:replicas"))
    assert.isFalse(owns(scaled, "ctl", "f:spec", "f:replicas"))
    const after = await apply(deploymentPath, deployment(), "ctl")
    assert.strictEqual(after.body.spec.replicas, 4, "owned by the HPA: not removed")
  })

  it("an update (kubectl edit) takes ownership of the fields whose value it changes", async () => {
    const { api, apply } = await start()
    await apply(deploymentPath, deployment(), "ctl")
    const edited = structuredClone(api.get("deployments", "default", "web"))
    edited.spec.template.spec.containers[0].env[0].value = "edited"
    api.put("deployments", edited, "kubectl-edit")
    const live = api.get("deployments", "default", "web")
    assert.isTrue(owns(live, "kubectl-edit", "f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"main"}', "f:env", 'k:{"name":"A"}', "f:value"))
    assert.isFalse(owns(live, "ctl", "f:spec", "f:template", "f:spec", "f:containers", 'k:{"name":"main"}', "f:env", 'k:{"name":"A"}', "f:value"))
    assert.strictEqual((await apply(deploymentPath, deployment(), "ctl")).status, 409)
    assert.strictEqual((await apply(deploymentPath, deployment(), "ctl", true)).body.spec.template.spec.containers[0].env[0].value, "1")
  })

  it("the status subresource has its own managers and leaves the spec alone", async () => {
    const { api, apply } = await start()
    api.put("inferenceservices", { apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", metadata: { name: "m", namespace: "default" }, spec: { modelRef: "m" } })
    const path = "/apis/inference-router.dev/v1alpha1/namespaces/default/inferenceservices/m/status"
    const condition = (type: string, status: string) => ({ type, status, reason: "R", message: "", lastTransitionTime: "2026-01-01T00:00:00Z" })
    await apply(path, { apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", metadata: { name: "m" }, status: { conditions: [condition("Ready", "True")] } }, "ctl")
    const live = api.get("inferenceservices", "default", "m")
    assert.strictEqual(live.metadata.generation, 1)
    assert.strictEqual(live.spec.modelRef, "m")
    assert.deepStrictEqual(managersOf(live), ["ctl/Apply/status", "test-client/Update"])
  })
})

describe("the stand-in API server: validation and defaulting at write time", () => {
  it("a Service name must be a DNS-1035 label (llama.v3, 3b-model refused); other names DNS-1123", async () => {
    const { apply } = await start()
    for (const name of ["llama.v3-router", "3b-model-router"]) {
      const refused = await apply(`/api/v1/namespaces/default/services/${name}`, { apiVersion: "v1", kind: "Service", metadata: { name }, spec: { ports: [{ port: 80 }] } }, "ctl")
      assert.strictEqual(refused.status, 422, name)
      assert.include(refused.body.message, "DNS-1035")
    }
    const deploymentName = "/apis/apps/v1/namespaces/default/deployments/3b-model-router"
    const body = deployment()
    assert.strictEqual((await apply(deploymentName, { ...body, metadata: { ...body.metadata, name: "3b-model-router" } }, "ctl")).status, 201)
    const bad = await apply("/apis/apps/v1/namespaces/default/deployments/Web", { ...body, metadata: { ...body.metadata, name: "Web" } }, "ctl")
    assert.strictEqual(bad.status, 422)
  })

  it("stores resource quantities in canonical form, and an apply of the same values in another form is a no-op", async () => {
    const { api, apply } = await start()
    const body = deployment({}, [], { resources: { requests: { cpu: "0.5", memory: "1024Mi" }, limits: { cpu: "1000m", memory: "2048Mi" } } })
    const created = await apply(deploymentPath, body, "ctl")
    assert.deepStrictEqual(created.body.spec.template.spec.containers[0].resources, { requests: { cpu: "500m", memory: "1Gi" }, limits: { cpu: "1", memory: "2Gi" } })
    const revision = api.resourceVersion
    assert.strictEqual((await apply(deploymentPath, body, "ctl")).status, 200)
    assert.strictEqual(api.resourceVersion, revision)
  })

  it("annotations: keys are qualified names (checked lower-cased), all of them at most 256 KiB, as ValidateAnnotations", async () => {
    const { apply } = await start()
    const annotated = (annotations: Record<string, string>) => {
      const body = deployment()
      return { ...body, spec: { ...body.spec, template: { ...body.spec.template, metadata: { ...body.spec.template.metadata, annotations } } } }
    }
    for (const annotations of [{ "bad key": "v" }, { "x/y/z": "w" }, { big: "x".repeat(256 * 1024) }] as Array<Record<string, string>>) {
      const refused = await apply(deploymentPath, annotated(annotations), "ctl")
      assert.strictEqual(refused.status, 422, JSON.stringify(Object.keys(annotations)))
      assert.include(refused.body.message, "spec.template.metadata.annotations")
    }
    const metadataRefused = await apply(deploymentPath, { ...deployment(), metadata: { ...deployment().metadata, annotations: { "a b": "c" } } }, "ctl")
    assert.strictEqual(metadataRefused.status, 422)
    assert.strictEqual((await apply(deploymentPath, annotated({ "Example.COM/note": "x", "prometheus.io/scrape": "true" }), "ctl")).status, 201)
  })

  it("an HPA's metric targets are stored canonical (averageValue 1000 as 1k)", async () => {
    const { apply } = await start()
    const hpa = {
      apiVersion: "autoscaling/v2",
      kind: "HorizontalPodAutoscaler",
      metadata: { name: "web", namespace: "default" },
      spec: {
        scaleTargetRef: { apiVersion: "apps/v1", kind: "Deployment", name: "web" },
        minReplicas: 1,
        maxReplicas: 3,
        metrics: [{ type: "Pods", pods: { metric: { name: "q" }, target: { type: "AverageValue", averageValue: "1000" } } }]
      }
    }
    const created = await apply("/apis/autoscaling/v2/namespaces/default/horizontalpodautoscalers/web", hpa, "ctl")
    assert.strictEqual(created.status, 201, JSON.stringify(created.body))
    assert.deepStrictEqual(created.body.spec.metrics[0].pods.target, { type: "AverageValue", averageValue: "1k" })
  })

  it("a Deployment's selector is immutable (422 on change)", async () => {
    const { apply } = await start()
    assert.strictEqual((await apply(deploymentPath, deployment(), "ctl")).status, 201)
    const changed = deployment()
    changed.spec.selector = { matchLabels: { app: "web", tier: "x" } } as any
    changed.spec.template.metadata.labels = { app: "web", tier: "x" } as any
    const refused = await apply(deploymentPath, changed, "ctl")
    assert.strictEqual(refused.status, 422)
    assert.include(refused.body.message, "field is immutable")
  })

  it("a container's requests must not exceed its limits", async () => {
    const { apply } = await start()
    const refused = await apply(deploymentPath, deployment({}, [], { resources: { requests: { cpu: "2" }, limits: { cpu: "1" } } }), "ctl")
    assert.strictEqual(refused.status, 422)
    assert.include(refused.body.message, "must be less than or equal to cpu limit")
    const fine = await apply(deploymentPath, deployment({}, [], { resources: { requests: { cpu: "500m", memory: "1Gi" }, limits: { cpu: "1", memory: "1024Mi" } } }), "ctl")
    assert.strictEqual(fine.status, 201)
  })

  it("InferenceServices: the CRD's schema, defaults, CEL rules, and pruning of unknown fields", async () => {
    const { api, apply } = await start()
    const path = "/apis/inference-router.dev/v1alpha1/namespaces/default/inferenceservices/m"
    const isvc = (spec: Record<string, unknown>) => ({ apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", metadata: { name: "m" }, spec })
    const refused = await apply(path, isvc({ modelRef: "m", replicas: 2, maxReplicas: 3 }), "user")
    assert.strictEqual(refused.status, 422)
    assert.include(refused.body.message, "not both")
    const created = await apply(path, isvc({ modelRef: "m", unknownField: 1, router: { maxConcurrency: 4, typo: true } }), "user")
    assert.strictEqual(created.status, 201, JSON.stringify(created.body))
    assert.deepStrictEqual(api.get("inferenceservices", "default", "m").spec, { modelRef: "m", router: { maxConcurrency: 4, shutdownDelayMs: 5000, shutdownTimeoutMs: 25000 } })
    assert.throws(() => api.put("inferenceservices", isvc({ modelRef: "" })), /modelRef/)
  })
})

/** Opens a watch and collects its events (BOOKMARKs included) until `count` came or `ms` passed. */
const watchEvents = (port: number, path: string, count: number, ms = 2_000) => {
  const controller = new AbortController()
  const events: Array<any> = []
  const done = (async () => {
    const timer = setTimeout(() => controller.abort(), ms)
    try {
      const response = await fetch(`http://127.0.0.1:${port}${path}`, { signal: controller.signal })
      const decoder = new TextDecoder()
      let buffered = ""
      for await (const chunk of response.body as any as AsyncIterable<Uint8Array>) {
        buffered += decoder.decode(chunk, { stream: true })
        const lines = buffered.split("\n")
        buffered = lines.pop()!
        for (const line of lines) if (line.trim() !== "") events.push(JSON.parse(line))
        if (events.length >= count) break
      }
    } catch {
      // aborted at the time limit
    } finally {
      clearTimeout(timer)
      controller.abort()
    }
    return events
  })()
  return { events, done }
}

describe("the stand-in API server: watches", () => {
  it("a filtered watch: ADDED when an object starts matching its selector, DELETED when it stops (as the watch cache)", async () => {
    const { api } = await start()
    const watch = watchEvents(api.port, "/api/v1/namespaces/default/pods?watch=true&labelSelector=app%3Dweb", 3)
    await new Promise((resolve) => setTimeout(resolve, 100))
    const pod = (labels: Record<string, string>) => ({ metadata: { name: "p", namespace: "default", labels }, spec: { containers: [{ name: "c", image: "i:1" }] } })
    api.put("pods", pod({ app: "other" }))
    api.put("pods", pod({ app: "web" }))
    api.put("pods", pod({ app: "web", more: "x" }))
    api.put("pods", pod({ app: "gone" }))
    const events = await watch.done
    assert.deepStrictEqual(events.map((e) => [e.type, e.object.metadata.labels.app]), [["ADDED", "web"], ["MODIFIED", "web"], ["DELETED", "web"]])
  })

  it("bookmarks only to watches that ask for them (allowWatchBookmarks), about once a minute unless told otherwise", async () => {
    const api = new FakeKubeApi({ bookmarkMs: 100 })
    apis.push(api)
    await api.start()
    const asked = watchEvents(api.port, "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true", 1, 1_000)
    const notAsked = watchEvents(api.port, "/api/v1/namespaces/default/pods?watch=true", 1, 400)
    assert.deepStrictEqual((await asked.done).map((e) => e.type), ["BOOKMARK"])
    assert.deepStrictEqual(await notAsked.done, [])
    const quiet = (await start()).api
    const defaulted = watchEvents(quiet.port, "/api/v1/namespaces/default/pods?watch=true&allowWatchBookmarks=true", 1, 1_300)
    assert.deepStrictEqual(await defaulted.done, [], "no bookmark within a second by default")
  })
})

describe("the stand-in API server: faults on demand", () => {
  it("answers a status (429 with Retry-After, 403, 409) a given number of times, then normally", async () => {
    const { api, call } = await start()
    api.fault({ method: "GET", path: "/leases", status: 429, retryAfterSeconds: 2, times: 1 })
    const limited = await call("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/l")
    assert.strictEqual(limited.status, 429)
    assert.strictEqual(limited.headers.get("retry-after"), "2")
    assert.strictEqual((await call("GET", "/apis/coordination.k8s.io/v1/namespaces/default/leases/l")).status, 404)
    const remove = api.fault({ token: "intruder", status: 403 })
    assert.strictEqual((await call("GET", "/api/v1/namespaces/default/pods", undefined, { token: "intruder" })).body.reason, "Forbidden")
    assert.strictEqual((await call("GET", "/api/v1/namespaces/default/pods")).status, 200)
    remove()
    assert.strictEqual((await call("GET", "/api/v1/namespaces/default/pods", undefined, { token: "intruder" })).status, 200)
  })

  it("a watch answered with HTTP 410, and a watch from a compacted resourceVersion ended by a 410 ERROR event", async () => {
    const { api, call } = await start()
    api.fault({ watch: true, status: 410, times: 1 })
    assert.strictEqual((await call("GET", "/api/v1/namespaces/default/pods?watch=true&resourceVersion=1")).status, 410)
    api.compact()
    const response = await fetch(`http://127.0.0.1:${api.port}/api/v1/namespaces/default/pods?watch=true&resourceVersion=1`)
    const event = JSON.parse((await response.text()).trim())
    assert.deepInclude(event, { type: "ERROR" })
    assert.strictEqual(event.object.code, 410)
  })

  it("slow and hanging requests: a delay answers late, a hang never answers", async () => {
    const { api, call } = await start()
    api.fault({ path: "/pods", delayMs: 100, times: 1 })
    const started = Date.now()
    assert.strictEqual((await call("GET", "/api/v1/namespaces/default/pods")).status, 200)
    assert.isAtLeast(Date.now() - started, 90)
    api.fault({ path: "/pods", hang: true })
    const aborted = await call("GET", "/api/v1/namespaces/default/pods", undefined, { signal: AbortSignal.timeout(200) }).then(() => "answered", (error) => error.name)
    assert.strictEqual(aborted, "TimeoutError")
    assert.isUndefined(api.requests.at(-1)!.status, "never answered")
  })

  it("an answer delivered late holds the state of its arrival: a write made meanwhile overtakes it", async () => {
    const { api, apply, call } = await start()
    await apply(deploymentPath, deployment({ replicas: 2 }), "ctl")
    api.fault({ method: "GET", path: "/deployments/web", answerLateMs: 300, times: 1 })
    const read = call("GET", deploymentPath)
    while (api.requests.at(-1)?.heldAt === undefined) await new Promise((resolve) => setTimeout(resolve, 5))
    api.scale("default", "web", 5)
    const answer = await read
    assert.strictEqual(answer.body.spec.replicas, 2, "the state when it arrived")
    assert.isAtLeast(api.requests.at(-1)!.answeredAt! - api.requests.at(-1)!.heldAt!, 250)
    assert.strictEqual((await call("GET", deploymentPath)).body.spec.replicas, 5)
  })
})

describe("the controller's API client against the stand-in's faults", () => {
  const client = (api: FakeKubeApi, timeoutMs = 30_000) => {
    const kc = new KubeConfig()
    kc.loadFromFile(api.kubeconfig())
    return KubeApi.make(kc, timeoutMs)
  }

  it("a 429 carries the server's Retry-After to the work queue", async () => {
    const { api } = await start()
    api.fault({ path: "/deployments/web", status: 429, retryAfterSeconds: 7, times: 1 })
    const exit = await Effect.runPromiseExit(client(api).read(resources.deployments, "default", "web"))
    assert.isTrue(Exit.isFailure(exit))
    const error = Exit.isFailure(exit) ? (exit.cause.reasons[0] as any).error : undefined
    assert.strictEqual(error.status, 429)
    assert.strictEqual(error.retryAfterSeconds, 7)
  })

  it("a hanging request is abandoned after the timeout and its connection aborted", async () => {
    const { api } = await start()
    api.fault({ path: "/deployments/web", hang: true })
    const started = Date.now()
    const exit = await Effect.runPromiseExit(client(api, 300).read(resources.deployments, "default", "web"))
    assert.isTrue(Exit.isFailure(exit))
    assert.include(String((exit as any).cause.reasons[0].error.message), "no answer within 300 ms")
    assert.isBelow(Date.now() - started, 5_000)
    await new Promise((resolve) => setTimeout(resolve, 100))
    assert.strictEqual((api as any).hanging.size, 0, "the request was aborted, not left open")
  })
})
