/**
 * The Kubernetes manifests, checked offline: `kubectl kustomize` renders them,
 * every object validates against the Kubernetes schemas and has no unknown
 * fields, selectors match labels, and the Deployment's environment is exactly
 * what the Config layer reads, with values it accepts.
 */
import { ObjectSerializer } from "@kubernetes/client-node/dist/gen/models/ObjectSerializer.js"
import { ConfigProvider, Effect, Exit } from "effect"
import { Deployment } from "kubernetes-models/apps/v1/Deployment"
import { HorizontalPodAutoscaler } from "kubernetes-models/autoscaling/v2/HorizontalPodAutoscaler"
import { PodDisruptionBudget } from "kubernetes-models/policy/v1/PodDisruptionBudget"
import { Service } from "kubernetes-models/v1/Service"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { assert, describe, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { envDecisions } from "../src/controller/Desired.ts"
import { loadSettings, settingNames } from "../src/router/core/Config.ts"
import { renderBase } from "../scripts/render-base.ts"
import { hasKubectl, kustomize } from "./support/Kubectl.ts"
import { metricsPath } from "../src/api/RouterApi.ts"

const root = fileURLToPath(new URL("..", import.meta.url))

const renderedYaml = kustomize("base")

const rendered: Array<any> = parseAllDocuments(renderedYaml).map((doc) => doc.toJS())

const byKind = (kind: string) => {
  const found = rendered.filter((object) => object.kind === kind)
  assert.lengthOf(found, 1, `one ${kind}`)
  return found[0]
}

/** kind → (schema validation, the typed model name for the round trip) */
const kinds: Record<string, { readonly validate: (object: any) => void; readonly model: string }> = {
  Deployment: { validate: (o) => new Deployment(o).validate(), model: "V1Deployment" },
  Service: { validate: (o) => new Service(o).validate(), model: "V1Service" },
  PodDisruptionBudget: { validate: (o) => new PodDisruptionBudget(o).validate(), model: "V1PodDisruptionBudget" },
  HorizontalPodAutoscaler: {
    validate: (o) => new HorizontalPodAutoscaler(o).validate(),
    model: "V2HorizontalPodAutoscaler"
  }
}

/** Through the typed model and back: fields the model does not know are dropped. */
const roundTrip = (object: unknown, model: string): unknown =>
  ObjectSerializer.serialize(ObjectSerializer.deserialize(object, model, ""), model, "")

/** Paths present in `original` but missing after a round trip through the typed model: unknown fields. */
const droppedPaths = (original: unknown, roundTripped: unknown, path = ""): Array<string> => {
  if (Array.isArray(original)) {
    return original.flatMap((item, i) => droppedPaths(item, (roundTripped as Array<unknown>)?.[i], `${path}[${i}]`))
  }
  if (original !== null && typeof original === "object") {
    return Object.entries(original).flatMap(([key, value]) => {
      const next = (roundTripped as Record<string, unknown> | undefined)?.[key]
      return next === undefined ? [`${path}.${key}`] : droppedPaths(value, next, `${path}.${key}`)
    })
  }
  return []
}

const deployment = byKind("Deployment")
const pod = deployment.spec.template
const container = pod.spec.containers[0]
const env: Record<string, any> = Object.fromEntries(container.env.map((e: any) => [e.name, e]))

describe("Kubernetes manifests", () => {
  it.skipIf(!hasKubectl)("kubectl kustomize renders the base", () => {
    assert.isAbove(renderedYaml.length, 0)
  })

  it("render: a Deployment, a Service, a PodDisruptionBudget and an HPA", () => {
    assert.sameMembers(rendered.map((o) => o.kind), Object.keys(kinds))
  })

  it("every object validates against the Kubernetes schemas", () => {
    for (const object of rendered) kinds[object.kind].validate(object)
  })

  it("no object has an unknown field", () => {
    for (const object of rendered) {
      const { model } = kinds[object.kind]
      assert.deepStrictEqual(droppedPaths(object, roundTrip(object, model)), [], `${object.kind} has fields Kubernetes does not know`)
    }
  })

  it("the unknown-field check catches a misspelling", () => {
    const misspelled = { ...byKind("PodDisruptionBudget"), spec: { maxUnavailabel: 1, selector: {} } }
    assert.deepStrictEqual(droppedPaths(misspelled, roundTrip(misspelled, "V1PodDisruptionBudget")), [".spec.maxUnavailabel"])
  })

  it("selectors match the pod labels", () => {
    const labels = pod.metadata.labels
    const selects = (selector: Record<string, string>) =>
      Object.entries(selector).every(([key, value]) => labels[key] === value)
    assert.isTrue(selects(deployment.spec.selector.matchLabels), "Deployment selector")
    assert.isTrue(selects(byKind("Service").spec.selector), "Service selector")
    assert.deepStrictEqual(byKind("PodDisruptionBudget").spec.selector.matchLabels, deployment.spec.selector.matchLabels)
    const target = byKind("HorizontalPodAutoscaler").spec.scaleTargetRef
    assert.deepInclude(target, { kind: "Deployment", name: deployment.metadata.name })
  })

  it("is what the controller renders from deploy/base/inferenceservice.yaml (no drift)", () => {
    for (const [file, text] of Object.entries(renderBase())) {
      assert.strictEqual(readFileSync(`${root}/deploy/base/${file}`, "utf8"), text, `${file}: run npm run render:base`)
    }
  })

  it("the environment is what the Config layer reads, as the decision table says", () => {
    // Left to the router: HOSTNAME (Kubernetes sets it), HOST (the default, all
    // interfaces, suits pods), LISTEN_SOCKETS (its default suits pods), API_KEYS_FILE (the alternative to API_KEYS),
    // CLIENT_STALL_TIMEOUT_MS (rarely differs per service), and the simulated model's tuning (SIM_* but SIM_LATENCY_MS;
    // spec.env sets them).
    const leftToRouter = envDecisions.filter((d) => d.from === "router").map((d) => d.variable)
    const named = ["HOSTNAME", "HOST", "LISTEN_SOCKETS", "API_KEYS_FILE", "CLIENT_STALL_TIMEOUT_MS"]
    assert.includeMembers(leftToRouter, named)
    assert.isTrue(leftToRouter.filter((name) => !named.includes(name)).every((name) => name.startsWith("SIM_") || name.startsWith("UPSTREAM_")))
    // The base example is the simulated model: the upstream settings are set only with spec.upstreams (Desired.test.ts).
    const upstreamOnly = (name: string) => name === "MODEL_BACKEND" || name.startsWith("UPSTREAM")
    assert.sameMembers(Object.keys(env), settingNames.filter((name) => !leftToRouter.includes(name) && !upstreamOnly(name)))
    assert.deepStrictEqual(env.POD_NAME.valueFrom, { fieldRef: { apiVersion: "v1", fieldPath: "metadata.name" } })
    // A Secret that is named must exist: a missing one stops the pod (and the status says so) rather than serving without auth.
    assert.deepStrictEqual(env.API_KEYS.valueFrom.secretKeyRef, { name: "inference-router-api-keys", key: "keys" })
  })

  it("the Config layer accepts every value the Deployment sets", async () => {
    const literal = Object.fromEntries(
      Object.values(env).filter((e: any) => e.value !== undefined).map((e: any) => [e.name, e.value])
    )
    const exit = await Effect.runPromise(
      Effect.exit(Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: literal }))))
    )
    assert.isTrue(Exit.isSuccess(exit), String(exit))
    if (Exit.isSuccess(exit)) assert.strictEqual(exit.value.port, container.ports[0].containerPort)
  })

  it("drain timing fits inside the grace period", () => {
    const delay = Number(env.SHUTDOWN_DELAY_MS.value)
    const timeout = Number(env.SHUTDOWN_TIMEOUT_MS.value)
    assert.isAbove(delay, 0, "a delay lets endpoint removal propagate")
    assert.isBelow(delay, timeout)
    assert.isAtMost(timeout + 2_000, pod.spec.terminationGracePeriodSeconds * 1000, "drain ends before SIGKILL")
  })

  it("probes use the router's endpoints on its port", () => {
    const port = container.ports[0]
    assert.deepStrictEqual(port, { name: "http", containerPort: 8080, protocol: "TCP" })
    assert.deepInclude(container.livenessProbe.httpGet, { path: "/healthz", port: "http" })
    assert.deepInclude(container.readinessProbe.httpGet, { path: "/readyz", port: "http" })
    assert.deepInclude(container.startupProbe.httpGet, { path: "/readyz", port: "http" })
    assert.deepStrictEqual(pod.metadata.annotations, {
      "prometheus.io/scrape": "true",
      "prometheus.io/port": String(port.containerPort),
      "prometheus.io/path": metricsPath
    })
  })

  it("runs locked down: non-root, read-only root, no privilege escalation, no capabilities", () => {
    assert.isTrue(pod.spec.securityContext.runAsNonRoot)
    assert.notStrictEqual(pod.spec.securityContext.runAsUser, 0)
    assert.deepStrictEqual(container.securityContext, {
      allowPrivilegeEscalation: false,
      readOnlyRootFilesystem: true,
      privileged: false,
      capabilities: { drop: ["ALL"] }
    })
    assert.isDefined(container.resources.requests.memory)
    assert.isDefined(container.resources.limits.memory)
  })

  it("the image runs the production command the benchmark measures (npm run start:prod)", () => {
    const dockerfile = readFileSync(`${root}/Dockerfile`, "utf8")
    const startProd: string = JSON.parse(readFileSync(`${root}/package.json`, "utf8")).scripts["start:prod"]
    const args = startProd.split("exec node ")[1].split(" ")
    assert.include(dockerfile, `CMD ${JSON.stringify(["node", ...args]).replaceAll(",", ", ")}`)
    assert.match(dockerfile, /^USER 1000:1000$/m)
    assert.match(dockerfile, /^EXPOSE 8080$/m)
  })
})
