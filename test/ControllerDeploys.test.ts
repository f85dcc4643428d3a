/**
 * Deploy and test, end to end: an InferenceService created in the stand-in
 * API, the controller applies its Deployment, and that Deployment's pod
 * template runs for real: the router process with exactly the env the
 * Deployment sets, resolved as a kubelet would (downward API, Secret), except
 * PORT, which is a free port here (a pod's own network namespace makes 8080
 * free there). Then a spec change rolls out a new template the router obeys.
 */
import { afterAll, assert, describe, it } from "vitest"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"
import { atEnd, freePort, killAll, owned, startProcess, until } from "./support/Processes.ts"
import { metricValue as metricAt, openStream, startUpstream } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

// Each test has its own stand-in, controller and pods, ended with it (owned): they run concurrently.
// What a timed-out test left running:
afterAll(killAll)

const fakeApi = async () => {
  const api = new FakeKubeApi()
  atEnd(() => api.stop())
  await api.start()
  return api
}

/** The container's env as the kubelet resolves it for a pod named `podName`. */
const resolveEnv = (api: FakeKubeApi, deployment: any, podName: string): Record<string, string> => {
  const env: Record<string, string> = {}
  const namespace = deployment.metadata.namespace
  for (const item of deployment.spec.template.spec.containers[0].env) {
    if (item.value !== undefined) env[item.name] = item.value
    else if (item.valueFrom?.fieldRef?.fieldPath === "metadata.name") env[item.name] = podName
    else if (item.valueFrom?.secretKeyRef !== undefined) {
      const { key, name } = item.valueFrom.secretKeyRef
      env[item.name] = Buffer.from(api.get("secrets", namespace, name).data[key], "base64").toString("utf8")
    } else throw new Error(`env ${item.name}: no kubelet rule in this test for ${JSON.stringify(item.valueFrom)}`)
  }
  return env
}

const runPod = async (api: FakeKubeApi, deployment: any, podName: string) => {
  const env = resolveEnv(api, deployment, podName)
  const port = await freePort()
  const router = startProcess(["src/router/main.ts"], { ...env, PORT: String(port), HOST: "127.0.0.1" })
  await until(async () => (await requestAt(port, { path: "/readyz" }).catch(() => ({ status: 0 }))).status === 200, "the router pod ready", 30_000)
  return { router, port, env }
}

/** The controller, against the stand-in API, without leader election. */
const startController = async (api: FakeKubeApi, image = "registry.local/inference-router:test") =>
  startProcess(["src/controller/main.ts"], {
    KUBECONFIG: api.kubeconfig(),
    PORT: String(await freePort()),
    HOST: "127.0.0.1",
    LEADER_ELECTION: "false",
    ROUTER_IMAGE: image
  })

const metricValue = (text: string, series: string) =>
  Number(text.split("\n").find((l) => l.startsWith(series + " "))?.slice(series.length + 1))

describe.concurrent("an InferenceService deployed and called", () => {
  it("the router runs with the Deployment's env and answers for the InferenceService; a new maxConcurrency rolls out", owned(async () => {
    const api = await fakeApi()
    api.put("secrets", { apiVersion: "v1", kind: "Secret", metadata: { name: "llama-keys", namespace: "models" }, data: { keys: Buffer.from("k-1,k-2").toString("base64") } })
    await startController(api)
    api.put("inferenceservices", {
      apiVersion: "inference-router.dev/v1alpha1",
      kind: "InferenceService",
      metadata: { name: "llama", namespace: "models" },
      spec: {
        modelRef: "llama-3-8b",
        kvEndpoints: ["kv-0.kv:6379", "redis://kv-1.kv:6379"],
        // A short drain (the default is 5 s): the first pod is stopped below.
        router: { maxConcurrency: 4, simLatencyMs: 5, shutdownDelayMs: 200 },
        apiKeysSecretRef: { name: "llama-keys" }
      }
    })
    await until(() => api.get("deployments", "models", "llama-router") !== undefined, "the Deployment", 30_000)
    const first = api.get("deployments", "models", "llama-router")
    assert.strictEqual(first.spec.template.spec.containers[0].image, "registry.local/inference-router:test")

    const pod = await runPod(api, first, "llama-router-7d9f-abcde")
    const denied = await requestAt(pod.port, { method: "POST", path: "/infer", headers: { "content-type": "application/json" }, body: "{\"prompt\":\"hi\"}" })
    assert.strictEqual(denied.status, 401, "API keys from the Secret")
    const answer = await requestAt(pod.port, {
      method: "POST",
      path: "/infer",
      headers: { "content-type": "application/json", authorization: "Bearer k-2" },
      body: JSON.stringify({ prompt: "hello" })
    })
    assert.strictEqual(answer.status, 200, answer.text)
    assert.deepStrictEqual(answer.json, {
      modelRef: "llama-3-8b",
      prompt: "hello",
      routerPod: "llama-router-7d9f-abcde",
      kvEndpoints: ["kv-0.kv:6379", "redis://kv-1.kv:6379"],
      processingMs: answer.json.processingMs
    })
    assert.strictEqual(metricValue((await requestAt(pod.port, { path: "/metrics" })).text, "router_max_concurrency"), 4)

    // Change maxConcurrency: a new pod template, and the router it starts reports the new limit.
    const owner = api.get("inferenceservices", "models", "llama")
    api.put("inferenceservices", { ...owner, spec: { ...owner.spec, router: { ...owner.spec.router, maxConcurrency: 16 } } })
    await until(
      () => api.get("deployments", "models", "llama-router").spec.template.spec.containers[0].env.some((e: any) => e.name === "MAX_CONCURRENCY" && e.value === "16"),
      "the new template"
    )
    const second = api.get("deployments", "models", "llama-router")
    assert.strictEqual(second.metadata.generation, first.metadata.generation + 1)
    pod.router.child.kill("SIGTERM")
    assert.strictEqual(await pod.router.exited, 0)
    const next = await runPod(api, second, "llama-router-8e0a-fghij")
    assert.strictEqual(metricValue((await requestAt(next.port, { path: "/metrics" })).text, "router_max_concurrency"), 16)
    assert.strictEqual(api.get("inferenceservices", "models", "llama").status.observedGeneration, 2)
  }), 60_000)

  it("kvEndpointsSecretRef: the router pod reads KV_ENDPOINTS from the Secret; the password is in neither the InferenceService nor the Deployment", owned(async () => {
    const api = await fakeApi()
    const endpoints = "redis://:s3cret-pw@redis-0.redis:6379"
    api.put("secrets", { apiVersion: "v1", kind: "Secret", metadata: { name: "redis-endpoints", namespace: "models" }, data: { endpoints: Buffer.from(endpoints).toString("base64") } })
    await startController(api)
    api.put("inferenceservices", {
      apiVersion: "inference-router.dev/v1alpha1",
      kind: "InferenceService",
      metadata: { name: "kv", namespace: "models" },
      spec: { modelRef: "m", kvEndpointsSecretRef: { name: "redis-endpoints", key: "endpoints" } }
    })
    await until(() => api.get("deployments", "models", "kv-router") !== undefined, "the Deployment", 30_000)
    const deployment = api.get("deployments", "models", "kv-router")
    assert.deepInclude(deployment.spec.template.spec.containers[0].env, {
      name: "KV_ENDPOINTS",
      valueFrom: { secretKeyRef: { name: "redis-endpoints", key: "endpoints" } }
    })
    assert.notInclude(JSON.stringify([deployment, api.get("inferenceservices", "models", "kv")]), "s3cret-pw")
    const pod = await runPod(api, deployment, "kv-router-1-abcde")
    const answer = await requestAt(pod.port, { method: "POST", path: "/infer", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "hi" }) })
    assert.strictEqual(answer.status, 200, answer.text)
    // The router has the list (its password masked wherever it shows it).
    assert.deepStrictEqual(answer.json.kvEndpoints, ["redis://***@redis-0.redis:6379"])
  }), 60_000)

  it("spec.routing and upstreams[].kvEvents: the router pod routes cache-aware on the model servers' KV events", owned(async () => {
    const api = await fakeApi()
    // Two simulated vLLMs with a prefix cache, publishing KV events (as in Routing.e2e.test.ts).
    const servers = await Promise.all([0, 1].map(async () => {
      const eventsPort = await freePort()
      const server = await startUpstream({ SIM_BLOCK_SIZE: "16", SIM_KV_BLOCKS: "4096", SIM_PREFILL_US_PER_TOKEN: "500", SIM_KV_EVENTS_ENDPOINT: `tcp://*:${eventsPort}` })
      return { url: `http://127.0.0.1:${server.port}`, kvEvents: eventsPort }
    }))
    await startController(api, "router:test")
    api.put("inferenceservices", {
      apiVersion: "inference-router.dev/v1alpha1",
      kind: "InferenceService",
      metadata: { name: "chat", namespace: "models" },
      spec: {
        modelRef: "m",
        upstreams: servers,
        upstreamPolicy: { healthIntervalMs: 100 },
        routing: { scheduler: "cache-aware", metricsIntervalMs: 50 },
        // A server failing a check is forgotten: a slow machine must not fail one (left to spec.env).
        env: [{ name: "UPSTREAM_HEALTH_TIMEOUT_MS", value: "10000" }]
      }
    })
    await until(() => api.get("deployments", "models", "chat-router") !== undefined, "the Deployment", 30_000)
    const pod = await runPod(api, api.get("deployments", "models", "chat-router"), "chat-router-1")
    for (const { kvEvents, url } of servers) {
      const upstream = url.slice("http://".length)
      await until(async () => (await metricAt(pod.port, `router_upstream_available{upstream="${upstream}"`)) === 1, `${upstream} healthy`)
      assert.include(pod.env.UPSTREAMS, `${url};kv-events=${kvEvents}`)
    }
    const system = (variant: number) => Array.from({ length: 400 }, (_, i) => `v${variant}s${i}`).join(" ")
    const chat = (variant: number, question: string) => ({
      model: "m",
      stream: true,
      max_tokens: 4,
      messages: [{ role: "system", content: system(variant) }, { role: "user", content: question }]
    })
    const blocksOn = async (upstream: string) => (await metricAt(pod.port, `router_routing_index_blocks{upstream="${upstream}"`)) ?? 0
    // A prompt sent to the second server directly, not through the router: only its KV events can
    // tell the router what it cached. (A new prefix each try: events published before the router's
    // subscription joined are not replayed.)
    const direct = servers[1].url.slice("http://".length)
    let variant = 0
    await until(async () => {
      const before = await blocksOn(direct)
      const primed = await openStream(Number(direct.split(":")[1]), "/v1/chat/completions", chat(++variant, "q0"))
      await primed.ended
      assert.strictEqual(primed.status, 200)
      return until(async () => (await blocksOn(direct)) >= before + 400 / 16, "the KV events", 2_000).then(() => true, () => false)
    }, "the router follows the server's KV events", 30_000)
    const stream = await openStream(pod.port, "/v1/chat/completions", chat(variant, "q1"))
    await stream.ended
    assert.strictEqual(stream.status, 200)
    assert.strictEqual(String(stream.headers["x-inference-upstream"]), direct, String(stream.headers["x-inference-route"]))
    // (The predicted cached tokens are not in the header unless UPSTREAM_ROUTE_HEADER_CACHED_TOKENS=true.)
    assert.match(String(stream.headers["x-inference-route"]), /^cache-aware; reason=cache$/)
  }), 60_000)
})
