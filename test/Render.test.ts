/**
 * `render`: the objects the controller would apply, printed with no cluster.
 */
import { spawnSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { afterEach, assert, describe, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { renderText } from "../src/controller/Render.ts"
import { killAll, root, startProcess } from "./support/Processes.ts"
import { admit } from "./support/CrdValidator.ts"

afterEach(killAll)

describe("render", () => {
  it("prints the example's Deployment, Service and PDB as YAML, with the image from ROUTER_IMAGE", async () => {
    const run = startProcess(["src/controller/main.ts", "render", "deploy/controller/example.yaml"], { ROUTER_IMAGE: "reg/router:9" })
    assert.strictEqual(await run.exited, 0, run.output().stderr)
    const objects = parseAllDocuments(run.output().stdout).map((d) => d.toJS())
    assert.deepStrictEqual(objects.map((o) => o.kind), ["Deployment", "Service", "PodDisruptionBudget"])
    assert.strictEqual(objects[0].spec.template.spec.containers[0].image, "reg/router:9")
    assert.isUndefined(objects[0].metadata.ownerReferences, "no uid in the file: no owner reference")
  })

  it("a spec the router would reject: exit 1, one line naming the InferenceService and the setting", async () => {
    const result = spawnSync(process.execPath, ["src/controller/main.ts", "render", "-"], {
      cwd: root,
      input: "apiVersion: inference-router.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: bad}\nspec: {modelRef: m, kvEndpoints: ['kv:70000']}\n",
      encoding: "utf8"
    })
    assert.strictEqual(result.status, 1)
    const lines = result.stderr.trim().split("\\n")
    assert.lengthOf(lines, 1, result.stderr)
    assert.match(lines[0], /^inference-router-controller: -: InferenceService bad: the router would reject this spec: .*KV_ENDPOINTS/)
    assert.strictEqual(result.stdout, "")
  })

  const renderStdin = (input: string) =>
    spawnSync(process.execPath, ["src/controller/main.ts", "render", "-"], { cwd: root, input, encoding: "utf8" })
  const manifest = (name: string, spec: string) => `apiVersion: inference-router.dev/v1alpha1\nkind: InferenceService\nmetadata: {name: ${JSON.stringify(name)}}\nspec: ${spec}\n`

  it("refuses what the CRD refuses, naming the field (exit 1 with that one line from the command)", () => {
    const cli = renderStdin(manifest("both", "{modelRef: m, replicas: 2, maxReplicas: 4}"))
    assert.strictEqual(cli.status, 1)
    assert.lengthOf(cli.stderr.trim().split("\n"), 1, cli.stderr)
    assert.match(cli.stderr.trim(), /^inference-router-controller: -: InferenceService both: invalid spec: spec\.replicas: /)
    assert.strictEqual(cli.stdout, "")
    for (const [name, spec, field] of [
      ["both", "{modelRef: m, replicas: 2, maxReplicas: 4}", "spec.replicas"],
      ["x".repeat(57), "{modelRef: m}", "metadata.name"],
      ["llama.v3", "{modelRef: m}", "metadata.name"],
      ["3b-model", "{modelRef: m}", "metadata.name"],
      ["env", "{modelRef: m, env: [{name: MAX_CONCURRENCY, value: '1'}]}", "spec.env[0].name"],
      ["env2", "{modelRef: m, env: [{name: UPSTREAMS, value: 'http://elsewhere:1'}]}", "spec.env[0].name"],
      ["res", "{modelRef: m, resources: {requests: {cpu: '2'}, limits: {cpu: '1'}}}", "spec.resources.requests.cpu"],
      // A bad key is refused naming it, not dropped (the other keys rendered without it).
      ["labels", "{modelRef: m, podLabels: {'bad key': x, team: a}}", `["podLabels"]["bad key"]`],
      ["annotations", "{modelRef: m, podAnnotations: {'bad key': v, 'x/y/z': w}}", `["podAnnotations"]["bad key"]`],
      ["annotations2", "{modelRef: m, podAnnotations: {ok: v, 'x/y/z': w}}", `["podAnnotations"]["x/y/z"]`],
      ["image", "{modelRef: m, image: 'router:1 --privileged'}", `["image"]`],
      ["sim", "{modelRef: m, routing: {scheduler: cache-aware}}", "spec.routing: routing needs upstreams"],
      ["lr", "{modelRef: m, upstreams: [{url: 'http://vllm-0:8000', kvEvents: 5557}]}", "spec.upstreams[0].kvEvents: upstreams[].kvEvents needs routing.scheduler: cache-aware"],
      ["bound", "{modelRef: m, upstreams: [{url: 'http://vllm-0:8000'}], routing: {loadBoundPercent: 150}}", "spec.routing.loadBoundPercent"],
      ["dns", "{modelRef: m, upstreams: [{url: 'dns+http://pods.ns.svc:8000', kvEvents: 'tcp://kv:5557'}], routing: {scheduler: cache-aware}}", "spec.upstreams[0].kvEvents: kvEvents of a dns+ url must be a port"],
      ["envsched", "{modelRef: m, env: [{name: UPSTREAM_SCHEDULER, value: cache-aware}]}", "spec.env[0].name"]
    ] as const) {
      const error = (() => {
        try {
          renderText(manifest(name, spec), "-", "router:1")
        } catch (error) {
          return error as Error
        }
      })()
      assert.isDefined(error, name)
      assert.include(error!.message, field)
      assert.notInclude(error!.message, "\n")
    }
  })

  it("a request over the default limit renders a limit that fits it (a real API server refuses requests > limits)", () => {
    const deployment = parseAllDocuments(renderText(manifest("cpu", "{modelRef: m, resources: {requests: {cpu: '2'}}}"), "-", "router:1"))[0].toJS()
    assert.deepStrictEqual(deployment.spec.template.spec.containers[0].resources, {
      requests: { cpu: "2", memory: "160Mi" },
      limits: { cpu: "2", memory: "256Mi" }
    })
  })

  it("routing and KV events: the router's env from spec.routing and upstreams[].kvEvents", () => {
    const deployment = parseAllDocuments(renderText(
      manifest(
        "cached",
        "{modelRef: m, kvEndpoints: ['redis://redis:6379'], upstreams: [{url: 'http://vllm-0:8000', kvEvents: 5557}, {url: 'dns+http://vllm-pods.models.svc:8000', kvEvents: 5557}], routing: {scheduler: cache-aware, loadBoundPercent: 200, metricsIntervalMs: 50}}"
      ),
      "-",
      "router:1"
    ))[0].toJS()
    const env = Object.fromEntries(deployment.spec.template.spec.containers[0].env.map((e: any) => [e.name, e.value]))
    assert.deepInclude(env, {
      KV_ENDPOINTS: "redis://redis:6379",
      MODEL_BACKEND: "upstream",
      UPSTREAMS: "http://vllm-0:8000;kv-events=5557,dns+http://vllm-pods.models.svc:8000;kv-events=5557",
      UPSTREAM_SCHEDULER: "cache-aware",
      UPSTREAM_LOAD_BOUND: "2",
      UPSTREAM_METRICS_INTERVAL_MS: "50"
    })
  })

  it("docs/controller.md's routing example renders the env the page says, and the CRD admits it", () => {
    const doc = readFileSync(`${root}/docs/controller.md`, "utf8")
    const example = [...doc.matchAll(/```yaml\n([^`]*?)```/g)].map((m) => m[1]).find((text) => text.includes("routing:"))
    assert.isDefined(example)
    assert.isTrue(admit(parseAllDocuments(example!)[0].toJS()).ok)
    const deployment = parseAllDocuments(renderText(example!, "docs/controller.md", "router:1"))[0].toJS()
    const env = Object.fromEntries(deployment.spec.template.spec.containers[0].env.map((e: any) => [e.name, e.value]))
    // What the sentence after the example says it renders (the spec table's `<namespace>/<name>` is not a value).
    const stated = [...doc.matchAll(/`(UPSTREAMS|UPSTREAM_SCHEDULER|UPSTREAM_LOAD_BOUND|UPSTREAM_SHARED_SCOPE)=([^`<]+)`/g)].map((m) => [m[1], m[2]])
    // The page states each of them (a rewrite that drops one would leave nothing to compare).
    assert.sameMembers(stated.map(([name]) => name), ["UPSTREAMS", "UPSTREAM_SCHEDULER", "UPSTREAM_LOAD_BOUND", "UPSTREAM_SHARED_SCOPE"])
    for (const [name, value] of stated) assert.strictEqual(env[name], value, name)
    assert.match(env.KV_ENDPOINTS, /^redis:\/\//)
  })

  it("a file with no InferenceService in it: an error saying so", () => {
    assert.throws(() => renderText("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n", "-", "router:1"), /^-: no InferenceService in it \(only ConfigMap\)/)
  })
})
