/**
 * `render`: the objects the controller would apply, printed with no cluster.
 */
import { spawnSync } from "node:child_process"
import { afterEach, assert, describe, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { killAll, root, startProcess } from "./support/Processes.ts"

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
})
