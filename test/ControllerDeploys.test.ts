/**
 * Deploy and test, end to end: an InferenceService created in the stand-in
 * API, the controller applies its Deployment, and that Deployment's pod
 * template runs for real: the router process with exactly the env the
 * Deployment sets, resolved as a kubelet would (downward API, Secret), except
 * PORT, which is a free port here (a pod's own network namespace makes 8080
 * free there). Then a spec change rolls out a new template the router obeys.
 */
import { afterEach, assert, describe, it } from "vitest"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"
import { freePort, killAll, startProcess, until } from "./support/Processes.ts"
import { requestAt } from "./support/TestRouter.ts"

const apis: Array<FakeKubeApi> = []
afterEach(async () => {
  killAll()
  for (const api of apis.splice(0)) await api.stop()
})

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

const metricValue = (text: string, series: string) =>
  Number(text.split("\n").find((l) => l.startsWith(series + " "))?.slice(series.length + 1))

describe("an InferenceService deployed and called", () => {
  it("the router runs with the Deployment's env and answers for the InferenceService; a new maxConcurrency rolls out", async () => {
    const api = new FakeKubeApi()
    apis.push(api)
    await api.start()
    api.put("secrets", { apiVersion: "v1", kind: "Secret", metadata: { name: "llama-keys", namespace: "models" }, data: { keys: Buffer.from("k-1,k-2").toString("base64") } })
    const controllerPort = await freePort()
    startProcess(["src/controller/main.ts"], {
      KUBECONFIG: api.kubeconfig(),
      PORT: String(controllerPort),
      HOST: "127.0.0.1",
      LEADER_ELECTION: "false",
      ROUTER_IMAGE: "registry.local/inference-router:test"
    })
    api.put("inferenceservices", {
      apiVersion: "inference-router.dev/v1alpha1",
      kind: "InferenceService",
      metadata: { name: "llama", namespace: "models" },
      spec: {
        modelRef: "llama-3-8b",
        kvEndpoints: ["kv-0.kv:6379", "redis://kv-1.kv:6379"],
        router: { maxConcurrency: 4, simLatencyMs: 5 },
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
  }, 60_000)
})
