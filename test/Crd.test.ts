/**
 * The InferenceService CRD as the API server would apply it (structural
 * schema, defaults, CEL rules; see support/CrdValidator.ts), against the
 * contract's Effect schema and the controller's defaults.
 */
import { assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { parse } from "yaml"
import { InferenceServiceSpec, kvEndpointPattern, kvEventsEndpointPattern, minMetricsIntervalMs, schedulers } from "../src/api/InferenceService.ts"
import { defaultRouting, schedulerNames } from "../src/router/routing/RoutingSettings.ts"
import { Schema } from "effect"
import { defaults, deniedEnvNames } from "../src/controller/Desired.ts"
import { desiredObjects } from "../src/controller/Desired.ts"
import { checkSpec } from "../src/controller/SpecCheck.ts"
import { writeErrors } from "./support/FakeKubeApi.ts"
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

  it("its routing fields are the router's: the scheduler names, the KV events endpoint pattern, the defaults it documents", () => {
    const spec = openApiSchema.properties.spec.properties
    const routing = spec.routing.properties
    assert.deepStrictEqual(routing.scheduler.enum, [...schedulerNames])
    assert.deepStrictEqual([...schedulers], [...schedulerNames])
    assert.strictEqual(spec.upstreams.items.properties.kvEvents.pattern, kvEventsEndpointPattern)
    // No CRD default: unset is the router's default (as for the other router settings), which the descriptions name.
    assert.include(routing.scheduler.description, `router default ${defaultRouting.scheduler}`)
    assert.include(routing.loadBoundPercent.description, `router default ${Math.round(defaultRouting.loadBound * 100)}`)
    assert.include(routing.metricsIntervalMs.description, `router default ${defaultRouting.metricsIntervalMs}`)
    for (const field of ["scheduler", "loadBoundPercent", "metricsIntervalMs"]) assert.notProperty(routing[field], "default", field)
    // The CEL rules read an unset scheduler as least-request: they need rewriting if the router's default changes.
    assert.strictEqual(defaultRouting.scheduler, "least-request", "the CRD's routing rules treat an unset scheduler as least-request")
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
    it("names are DNS-1035 labels: a Service named llama.v3-router or 3b-model-router is refused by the API server", () => {
      for (const name of ["llama.v3", "3b-model", "Llama"]) rejected({}, "DNS-1035", name)
      assert.isTrue(admit(isvc({}, "llama-v3")).ok)
    })
    it("env may set none of the settings the controller sets: the rule lists exactly the decision table's deny list", () => {
      const rule: string = openApiSchema.properties.spec.properties.env["x-kubernetes-validations"][0].rule
      const listed = [...rule.matchAll(/'([A-Z_0-9]+)'/g)].map((m) => m[1])
      const expected = `self.all(e, !(e.name in [${deniedEnvNames().map((n) => `'${n}'`).join(",")}]))`
      assert.deepStrictEqual(listed, [...deniedEnvNames()], `deploy/controller/crd.yaml's env rule should be: ${expected}`)
      for (const name of ["MODEL_BACKEND", "UPSTREAMS", "UPSTREAM_RETRIES"]) rejected({ env: [{ name, value: "x" }] }, "env may not set")
    })
    it("env names are unique (a list-map by name, as server-side apply needs)", () => {
      rejected({ env: [{ name: "TZ", value: "UTC" }, { name: "TZ", value: "CET" }] }, "Duplicate value")
    })
    it("pod label and annotation keys are qualified names; annotations at most 256 KiB; an image without whitespace", () => {
      rejected({ podLabels: { "bad key": "x", team: "a" } }, "podLabels keys must be label keys")
      rejected({ podLabels: { "x/y/z": "x" } }, "podLabels keys must be label keys")
      rejected({ podLabels: { "Example.com/x": "x" } }, "podLabels keys must be label keys")
      rejected({ podAnnotations: { "bad key": "v", "x/y/z": "w" } }, "podAnnotations keys must be annotation keys")
      rejected({ podAnnotations: { big: "x".repeat(256 * 1024) } }, "at most 256 KiB")
      rejected({ image: "reg.example/router:1 --privileged" }, "pattern")
      assert.isTrue(admit(isvc({ podLabels: { team: "a", "example.com/tier": "gold" } })).ok)
      assert.isTrue(admit(isvc({ podAnnotations: { "Example.COM/note": "x", "prometheus.io/scrape": "true", big: "x".repeat(200 * 1024) } })).ok)
    })
    describe("routing and KV events: only where the router reads them", () => {
      const upstream = { url: "http://vllm-0:8000" }
      it("routing needs upstreams", () => {
        rejected({ routing: { scheduler: "cache-aware" } }, "routing needs upstreams")
        rejected({ routing: {}, upstreams: [] }, "routing needs upstreams")
        assert.isTrue(admit(isvc({ routing: { scheduler: "cache-aware" }, upstreams: [upstream] })).ok)
        assert.isTrue(admit(isvc({ routing: { scheduler: "least-request" }, upstreams: [upstream] })).ok)
      })
      it("the load bound and the metrics interval need the cache-aware scheduler, stated or not", () => {
        for (const routing of [{ loadBoundPercent: 150 }, { metricsIntervalMs: 50 }, { scheduler: "least-request", loadBoundPercent: 150 }]) {
          rejected({ routing, upstreams: [upstream] }, "need scheduler: cache-aware")
        }
        const result = admit(isvc({ routing: { scheduler: "cache-aware", loadBoundPercent: 150, metricsIntervalMs: 0 }, upstreams: [upstream] }))
        assert.isTrue(result.ok, result.errors.join("; "))
        assert.deepStrictEqual(result.object.spec.routing, { scheduler: "cache-aware", loadBoundPercent: 150, metricsIntervalMs: 0 }, "no defaults added")
      })
      it("KV events need the cache-aware scheduler", () => {
        rejected({ upstreams: [upstream, { ...upstream, kvEvents: 5557 }] }, "kvEvents needs routing.scheduler: cache-aware")
        rejected({ upstreams: [{ ...upstream, kvEvents: 5557 }], routing: { scheduler: "least-request" } }, "kvEvents needs routing.scheduler: cache-aware")
        assert.isTrue(admit(isvc({ upstreams: [{ ...upstream, kvEvents: 5557 }], routing: { scheduler: "cache-aware" } })).ok)
      })
      it("a KV events endpoint is a port, or tcp://host:port (a port only for a dns+ url)", () => {
        const cacheAware = { scheduler: "cache-aware" }
        for (const kvEvents of [5557, 1, 65535, "tcp://kv-pub.models.svc:5557", "tcp://10.0.0.5:5557", "tcp://[fd00::5]:5557"]) {
          const result = admit(isvc({ upstreams: [{ ...upstream, kvEvents }], routing: cacheAware }))
          assert.isTrue(result.ok, `${kvEvents}: ${result.errors.join("; ")}`)
        }
        for (const kvEvents of [0, 65536, "5557", "tcp://*:5557", "tcp://kv:0", "tcp://kv:65536", "tcp://kv", "udp://kv:5557", "tcp://a,b:5557", "tcp://a;b:5557", 55.5]) {
          rejected({ upstreams: [{ ...upstream, kvEvents }], routing: cacheAware }, "kvEvents")
        }
        // Said in words, not only as the pattern's regular expression.
        for (const kvEvents of ["5557", "kv-pub:5557", "udp://kv:5557"]) {
          rejected({ upstreams: [{ ...upstream, kvEvents }], routing: cacheAware }, "kvEvents is a port number (5557), or a string tcp://host:port")
        }
        rejected({ upstreams: [{ url: "dns+http://vllm-pods.models.svc:8000", kvEvents: "tcp://kv-pub:5557" }], routing: cacheAware }, "must be a port")
        assert.isTrue(admit(isvc({ upstreams: [{ url: "dns+http://vllm-pods.models.svc:8000", kvEvents: 5557 }], routing: cacheAware })).ok)
      })
      it("one KV events publisher per upstream: the CRD refuses the same url and port twice; the controller also one publisher in two forms", () => {
        const routing = { scheduler: "cache-aware" }
        const refusedByController = (upstreams: ReadonlyArray<Record<string, unknown>>, words: string) => {
          const check = checkSpec({ modelRef: "m", upstreams, routing })
          assert.strictEqual(check._tag, "Invalid", JSON.stringify(upstreams))
          assert.include(check._tag === "Invalid" ? check.message : "", words)
        }
        const twice = [{ url: "http://vllm-0:8000", kvEvents: 5557 }, { url: "http://vllm-0:8000", kvEvents: 5557, weight: 2 }]
        rejected({ upstreams: twice, routing }, "two upstreams name one KV events publisher (the same url and kvEvents port)")
        refusedByController(twice, "spec.upstreams[1].kvEvents: upstreams[0] and upstreams[1] name one KV events publisher (vllm-0:5557)")
        // What only the controller sees: one publisher in two forms, one host in two urls, a tcp:// endpoint twice.
        for (
          const upstreams of [
            [{ url: "http://vllm-0:8000", kvEvents: 5557 }, { url: "http://vllm-1:8000", kvEvents: "tcp://vllm-0:5557" }],
            [{ url: "http://vllm-0:8000", kvEvents: 5557 }, { url: "http://VLLM-0:8001/v1", kvEvents: 5557 }],
            [{ url: "dns+http://pods.models.svc:8000", kvEvents: 5557 }, { url: "http://pods.models.svc:8000", kvEvents: 5557 }],
            [{ url: "http://vllm-0:8000", kvEvents: "tcp://kv-pub:5557" }, { url: "http://vllm-1:8000", kvEvents: "tcp://kv-pub:5557" }],
            [{ url: "http://[fd00::7]:8000", kvEvents: 5557 }, { url: "http://vllm-1:8000", kvEvents: "tcp://[fd00::7]:5557" }]
          ]
        ) {
          assert.isTrue(admit(isvc({ upstreams, routing })).ok, JSON.stringify(upstreams))
          refusedByController(upstreams, "name one KV events publisher")
        }
        // Different servers, or one server's two ports: accepted by both.
        for (
          const upstreams of [
            [{ url: "http://vllm-0:8000", kvEvents: 5557 }, { url: "http://vllm-1:8000", kvEvents: 5557 }],
            [{ url: "http://vllm-0:8000", kvEvents: 5557 }, { url: "http://vllm-0:8000", kvEvents: 5558 }],
            [{ url: "http://vllm-0:8000", kvEvents: "tcp://kv-0:5557" }, { url: "http://vllm-1:8000", kvEvents: "tcp://kv-1:5557" }],
            [{ url: "http://vllm-0:8000" }, { url: "http://vllm-0:8000" }]
          ]
        ) {
          assert.isTrue(admit(isvc({ upstreams, routing })).ok, JSON.stringify(upstreams))
          assert.strictEqual(checkSpec({ modelRef: "m", upstreams, routing })._tag, "Valid", JSON.stringify(upstreams))
        }
      })
      it("the publisher rule compares only ints and urls: 64 upstreams of 2048-character urls evaluate", () => {
        // The API server sizes an int-or-string value at the whole request: a rule comparing kvEvents
        // strings would be estimated far over the limit and the CRD refused. Keep it to ints and urls.
        const rule: string = openApiSchema.properties.spec.properties.upstreams["x-kubernetes-validations"][0].rule
        assert.notMatch(rule, /string\(|\.kvEvents\s*==|==\s*[ab]\.kvEvents|lowerAscii|split|substring/)
        const upstreams = Array.from({ length: 64 }, (_, i) => ({ url: `http://vllm-${i}:8000/${"p".repeat(2000)}`, kvEvents: 5557 }))
        assert.isTrue(admit(isvc({ upstreams, routing: { scheduler: "cache-aware" } })).ok)
      })
      it("bounds: the load bound 100-1000 % (the router's 1-10), the scheduler one of the router's", () => {
        const cacheAware = { scheduler: "cache-aware" }
        rejected({ upstreams: [upstream], routing: { ...cacheAware, loadBoundPercent: 99 } }, "loadBoundPercent")
        rejected({ upstreams: [upstream], routing: { ...cacheAware, loadBoundPercent: 1001 } }, "loadBoundPercent")
        rejected({ upstreams: [upstream], routing: { ...cacheAware, loadBoundPercent: 1.25 } }, "loadBoundPercent")
        rejected({ upstreams: [upstream], routing: { ...cacheAware, metricsIntervalMs: -1 } }, "metricsIntervalMs")
        // 0 is "not read"; 1-9 ms would have every router read each server's /metrics back to back.
        for (const metricsIntervalMs of [1, minMetricsIntervalMs - 1]) {
          const spec = { upstreams: [upstream], routing: { ...cacheAware, metricsIntervalMs } }
          rejected(spec, "metricsIntervalMs must be 0 (not read) or at least 10")
          const check = checkSpec({ modelRef: "m", ...spec })
          assert.strictEqual(check._tag, "Invalid")
          assert.include(check._tag === "Invalid" ? check.message : "", "metricsIntervalMs must be 0 (not read) or at least 10")
        }
        for (const metricsIntervalMs of [0, minMetricsIntervalMs, 3_600_000]) {
          const spec = { upstreams: [upstream], routing: { ...cacheAware, metricsIntervalMs } }
          assert.isTrue(admit(isvc(spec)).ok, String(metricsIntervalMs))
          assert.strictEqual(checkSpec({ modelRef: "m", ...spec })._tag, "Valid", String(metricsIntervalMs))
        }
        rejected({ upstreams: [upstream], routing: { scheduler: "random" } }, "scheduler")
      })
    })
    it("resources: any one quantity may be set alone; unknown resource names are not in the schema", () => {
      assert.isTrue(admit(isvc({ resources: { requests: { cpu: "500m", memory: "256Mi" } } })).ok)
      assert.isTrue(admit(isvc({ resources: { limits: { memory: "1Gi" } } })).ok)
      rejected({ resources: { requests: { "nvidia.com/gpu": 1 } } }, "additional properties")
    })
  })

  it.prop(
    "whatever the contract's schema allows, the CRD's structure allows (only cross-field rules differ)",
    [InferenceServiceSpec],
    ([spec]) => {
      const result = admit(isvc(spec as any))
      const structural = result.errors.filter((error) => !/^\.spec(\.router|\.env|\.routing|\.upstreams\[\d+\])?: /.test(error) && !error.startsWith(": "))
      assert.deepStrictEqual(structural, [], JSON.stringify(spec))
    },
    { arbitrary: { runs: 200 } }
  )

  /** Specs mixing valid values with each way a spec can break the CRD's cross-field rules. */
  const Tricky = Schema.Struct({
    name: Schema.Literals(["m", "llama-v3", "llama.v3", "3b-model", "x".repeat(56), "x".repeat(57)]),
    // Any spec the contract allows, or a plain one the rest of the plan varies.
    spec: Schema.Union([InferenceServiceSpec, Schema.Struct({ modelRef: Schema.Literal("m") })]),
    requests: Schema.optionalKey(Schema.Struct({
      cpu: Schema.optionalKey(Schema.Literals(["100m", "2", 3])),
      memory: Schema.optionalKey(Schema.Literals(["64Mi", "1Gi"]))
    })),
    limits: Schema.optionalKey(Schema.Struct({
      cpu: Schema.optionalKey(Schema.Literals(["200m", "4"])),
      memory: Schema.optionalKey(Schema.Literals(["100Mi", "2Gi"]))
    })),
    maxConcurrency: Schema.optionalKey(Schema.Literals([1, 2_000])),
    replicas: Schema.optionalKey(Schema.Literals([0, 3])),
    minReplicas: Schema.optionalKey(Schema.Literals([1, 5])),
    maxReplicas: Schema.optionalKey(Schema.Literals([2, 10])),
    scaleMetric: Schema.optionalKey(Schema.Literals(["cpu", "queue"])),
    scaleTarget: Schema.optionalKey(Schema.Literals([50, 150])),
    env: Schema.optionalKey(Schema.Literals(["TZ", "UPSTREAMS", "SIM_SEED", "MAX_CONCURRENCY", "HOST"])),
    twice: Schema.Boolean,
    labelKey: Schema.optionalKey(Schema.Literals(["team", "example.com/tier", "bad key", "x/y/z", "-x", "Example.com/x"])),
    annotationKey: Schema.optionalKey(Schema.Literals(["note", "Example.COM/note", "bad key", "x/y/z", "a..b/c"])),
    image: Schema.optionalKey(Schema.Literals(["router:2", "router:2 --x", " router:2"])),
    upstream: Schema.optionalKey(Schema.Literals(["http://vllm-0:8000", "dns+http://vllm-pods.models.svc:8000"])),
    kvEvents: Schema.optionalKey(Schema.Literals([5557, "tcp://kv-pub:5557", "tcp://[fd00::1]:5557"])),
    scheduler: Schema.optionalKey(Schema.Literals(["least-request", "cache-aware"])),
    loadBoundPercent: Schema.optionalKey(Schema.Literals([100, 125, 1000])),
    metricsIntervalMs: Schema.optionalKey(Schema.Literals([0, 5, 50])),
    /** The plan's upstream listed twice (one KV events publisher twice, when it has kvEvents). */
    upstreamTwice: Schema.Boolean
  })

  it.prop(
    "reverse: what the CRD refuses the controller refuses; what it accepts the controller renders, or refuses naming the field",
    [Tricky],
    ([plan]) => {
      const spec: Record<string, any> = { ...plan.spec }
      for (const key of ["replicas", "minReplicas", "maxReplicas", "scaleMetric", "scaleTarget"] as const) {
        if (plan[key] !== undefined) spec[key] = plan[key]
      }
      if (plan.requests !== undefined || plan.limits !== undefined) {
        spec.resources = { ...(plan.requests === undefined ? {} : { requests: plan.requests }), ...(plan.limits === undefined ? {} : { limits: plan.limits }) }
      }
      if (plan.maxConcurrency !== undefined) spec.router = { ...spec.router, maxConcurrency: plan.maxConcurrency }
      if (plan.env !== undefined) spec.env = [{ name: plan.env, value: "x" }, ...(plan.twice ? [{ name: plan.env, value: "y" }] : [])]
      if (plan.labelKey !== undefined) spec.podLabels = { ...spec.podLabels, [plan.labelKey]: "a" }
      if (plan.annotationKey !== undefined) spec.podAnnotations = { ...spec.podAnnotations, [plan.annotationKey]: "a" }
      if (plan.image !== undefined) spec.image = plan.image
      if (plan.upstream !== undefined) {
        const item = { url: plan.upstream, ...(plan.kvEvents === undefined ? {} : { kvEvents: plan.kvEvents }) }
        spec.upstreams = [...(spec.upstreams ?? []), item, ...(plan.upstreamTwice ? [item] : [])]
      }
      for (const key of ["scheduler", "loadBoundPercent", "metricsIntervalMs"] as const) {
        if (plan[key] !== undefined) spec.routing = { ...spec.routing, [key]: plan[key] }
      }
      const result = admit(isvc(spec, plan.name))
      const check = checkSpec(result.ok ? result.object.spec : spec, plan.name)
      if (!result.ok) {
        assert.strictEqual(check._tag, "Invalid", `the CRD refuses (${result.errors.join("; ")}) but the controller accepts ${JSON.stringify(spec)}`)
        return
      }
      if (check._tag === "Valid") {
        // Rendered into objects the API server stores.
        const objects = desiredObjects({ name: plan.name, namespace: "default", uid: "u-1" }, check.spec, { routerImage: "router:1" })
        for (const object of [objects.deployment, objects.service, objects.podDisruptionBudget, objects.horizontalPodAutoscaler]) {
          if (object !== undefined) assert.deepStrictEqual(writeErrors(object), [], `${object.kind} of ${JSON.stringify(spec)}`)
        }
      } else {
        // Only what no schema can check, each naming the field or the setting.
        // (One KV events publisher named in two forms is seen by the controller only.)
        assert.match(
          check.message,
          /^(the router would reject this spec: spec\.[a-zA-Z.]+: invalid configuration: [A-Z_]+|invalid spec: spec\.resources\.|invalid spec: spec\.upstreams\[\d+\]\.kvEvents: upstreams\[\d+\] and upstreams\[\d+\] name one KV events publisher)/,
          JSON.stringify(spec)
        )
      }
    },
    { arbitrary: { runs: 300 } }
  )
})
