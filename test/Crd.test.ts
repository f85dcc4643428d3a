/**
 * The InferenceService CRD as the API server would apply it (structural
 * schema, defaults, CEL rules; see support/CrdValidator.ts), against the
 * contract's Effect schema and the controller's defaults.
 */
import { assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { parse } from "yaml"
import { InferenceServiceSpec, kvEndpointPattern } from "../src/api/InferenceService.ts"
import { defaults } from "../src/controller/Desired.ts"
import { admit, crd, openApiSchema } from "./support/CrdValidator.ts"

const example = parse(readFileSync(new URL("../deploy/controller/example.yaml", import.meta.url), "utf8"))

const isvc = (spec: Record<string, unknown>, name = "m") => ({
  apiVersion: "inference-router.dev/v1alpha1",
  kind: "InferenceService",
  metadata: { name, namespace: "default" },
  spec: { modelRef: "m", ...spec }
})

const rejected = (spec: Record<string, unknown>, words: string, name?: string) => {
  const result = admit(isvc(spec, name))
  assert.isFalse(result.ok, `expected rejection of ${JSON.stringify(spec)}`)
  assert.include(result.errors.join("; "), words)
}

describe("the InferenceService CRD", () => {
  it("has a status subresource, a short name, printer columns and a structural schema", () => {
    const version = crd.spec.versions[0]
    assert.strictEqual(crd.spec.scope, "Namespaced")
    assert.notStrictEqual(crd.spec.group, "serving.kserve.io")
    assert.deepStrictEqual(version.subresources, { status: {} })
    assert.include(crd.spec.names.shortNames, "irsvc")
    assert.includeMembers(version.additionalPrinterColumns.map((c: any) => c.name), ["Model", "Ready", "Ready-Replicas", "Desired", "URL", "Age"])
    assert.strictEqual(openApiSchema.properties.spec.type, "object")
  })

  it("accepts the example and fills in the defaults", () => {
    const result = admit(example)
    assert.isTrue(result.ok, result.errors.join("; "))
    assert.strictEqual(result.object.spec.router.shutdownDelayMs, defaults.shutdownDelayMs)
    assert.strictEqual(result.object.spec.router.shutdownTimeoutMs, defaults.shutdownTimeoutMs)
  })

  it("its KV endpoint pattern is the contract's", () => {
    assert.strictEqual(openApiSchema.properties.spec.properties.kvEndpoints.items.pattern, kvEndpointPattern)
  })

  it("its defaults are the controller's", () => {
    const router = openApiSchema.properties.spec.properties.router.properties
    assert.strictEqual(router.shutdownDelayMs.default, defaults.shutdownDelayMs)
    assert.strictEqual(router.shutdownTimeoutMs.default, defaults.shutdownTimeoutMs)
    assert.strictEqual(openApiSchema.properties.spec.properties.apiKeysSecretRef.properties.key.default, defaults.apiKeysSecretKey)
  })

  it("a minimal spec (only modelRef) is valid", () => {
    const result = admit(isvc({}))
    assert.isTrue(result.ok, result.errors.join("; "))
    assert.deepStrictEqual(result.object.spec.router, { shutdownDelayMs: 5000, shutdownTimeoutMs: 25000 })
  })

  it("rejects what the schema rules out", () => {
    for (const [spec, words] of [
      [{ modelRef: "" }, "modelRef"],
      [{ router: { maxConcurrency: 0 } }, "maxConcurrency"],
      [{ router: { overloadStatus: 500 } }, "overloadStatus"],
      [{ router: { logLevel: "verbose" } }, "logLevel"],
      [{ kvEndpoints: ["kv-0"] }, "kvEndpoints"],
      [{ kvEndpoints: ["ftp://kv:21"] }, "kvEndpoints"],
      [{ replicas: -1 }, "replicas"],
      [{ resources: { requests: { cpu: "lots" } } }, "resources"],
      [{ env: [{ name: "1BAD", value: "x" }] }, "env"],
      [{ routr: {} }, "additional properties"]
    ] as const) rejected(spec as any, words)
    const missing = admit({ ...isvc({}), spec: {} })
    assert.isFalse(missing.ok)
    assert.include(missing.errors.join(";"), "modelRef")
  })

  describe("each CEL rule does what it says", () => {
    it("replicas or autoscaling, not both", () => {
      rejected({ replicas: 2, maxReplicas: 4 }, "not both")
      assert.isTrue(admit(isvc({ replicas: 2 })).ok)
      assert.isTrue(admit(isvc({ maxReplicas: 4 })).ok)
    })
    it("minReplicas <= maxReplicas, and only with maxReplicas", () => {
      rejected({ minReplicas: 5, maxReplicas: 4 }, "minReplicas must be <= maxReplicas")
      rejected({ minReplicas: 2 }, "minReplicas needs maxReplicas")
      assert.isTrue(admit(isvc({ minReplicas: 4, maxReplicas: 4 })).ok)
    })
    it("scaleMetric and scaleTarget only when autoscaling; a CPU target is a percentage", () => {
      rejected({ scaleMetric: "queue" }, "need maxReplicas")
      rejected({ scaleTarget: 3 }, "need maxReplicas")
      rejected({ maxReplicas: 3, scaleMetric: "cpu", scaleTarget: 150 }, "percentage")
      assert.isTrue(admit(isvc({ maxReplicas: 3, scaleMetric: "queue", scaleTarget: 150 })).ok)
    })
    it("the shutdown delay ends before the drain's timeout, defaults included", () => {
      rejected({ router: { shutdownDelayMs: 25_000 } }, "shutdownDelayMs must be less than shutdownTimeoutMs")
      rejected({ router: { shutdownDelayMs: 3_000, shutdownTimeoutMs: 3_000 } }, "shutdownDelayMs must be less")
      rejected({ router: { shutdownTimeoutMs: 4_000 } }, "shutdownDelayMs must be less")
      assert.isTrue(admit(isvc({ router: { shutdownDelayMs: 0, shutdownTimeoutMs: 4_000 } })).ok)
    })
    it("the headers timeout fits in the request timeout, its default included", () => {
      rejected({ router: { headersTimeoutMs: 5_000, requestTimeoutMs: 4_000 } }, "headersTimeoutMs")
      rejected({ router: { headersTimeoutMs: 40_000 } }, "headersTimeoutMs")
      assert.isTrue(admit(isvc({ router: { headersTimeoutMs: 4_000, requestTimeoutMs: 4_000 } })).ok)
    })
    it("extra env may not set the router's own settings", () => {
      rejected({ env: [{ name: "MAX_CONCURRENCY", value: "1" }] }, "env may not set")
      assert.isTrue(admit(isvc({ env: [{ name: "NODE_OPTIONS", value: "--max-old-space-size=200" }] })).ok)
    })
    it("names fit the Service's DNS label", () => {
      rejected({}, "at most 56", "x".repeat(57))
      assert.isTrue(admit(isvc({}, "x".repeat(56))).ok)
    })
  })

  it.prop(
    "whatever the contract's schema allows, the CRD's structure allows (only cross-field rules differ)",
    [InferenceServiceSpec],
    ([spec]) => {
      const result = admit(isvc(spec as any))
      const structural = result.errors.filter((error) => !/^\.spec(\.router|\.env)?: /.test(error) && !error.startsWith(": "))
      assert.deepStrictEqual(structural, [], JSON.stringify(spec))
    },
    { arbitrary: { runs: 200 } }
  )
})
