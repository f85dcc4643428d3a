/**
 * deploy/controller: the manifests render and validate, and the RBAC grants
 * exactly what the controller uses: every request it makes in a scenario that
 * exercises every path (create, autoscaling on and off, a pod problem, events,
 * leader election) is recorded by the stand-in API, turned into (group,
 * resource, verb), and compared with the rules.
 */
import { Deployment } from "kubernetes-models/apps/v1/Deployment"
import { ClusterRole } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRole"
import { ClusterRoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/ClusterRoleBinding"
import { Role } from "kubernetes-models/rbac.authorization.k8s.io/v1/Role"
import { RoleBinding } from "kubernetes-models/rbac.authorization.k8s.io/v1/RoleBinding"
import { Namespace } from "kubernetes-models/v1/Namespace"
import { ServiceAccount } from "kubernetes-models/v1/ServiceAccount"
import { afterEach, assert, describe, it } from "vitest"
import { parseAllDocuments } from "yaml"
import { controllerSettingNames, loadControllerSettings } from "../src/controller/ControllerConfig.ts"
import { FakeKubeApi, type RecordedRequest } from "./support/FakeKubeApi.ts"
import { hasKubectl, kustomize } from "./support/Kubectl.ts"
import { withImage } from "../deploy/controller/release.ts"
import { execFileSync } from "node:child_process"
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { freePort, killAll, root, startProcess, until } from "./support/Processes.ts"
import { ConfigProvider, Effect, Exit } from "effect"

/** Rendered as `kubectl apply -k deploy/controller` would apply it. */
const rendered: Array<any> = parseAllDocuments(kustomize("controller")).map((doc) => doc.toJS()).filter((object) => object !== null)

const validators: Record<string, (object: any) => void> = {
  Namespace: (o) => new Namespace(o).validate(),
  ServiceAccount: (o) => new ServiceAccount(o).validate(),
  ClusterRole: (o) => new ClusterRole(o).validate(),
  ClusterRoleBinding: (o) => new ClusterRoleBinding(o).validate(),
  Role: (o) => new Role(o).validate(),
  RoleBinding: (o) => new RoleBinding(o).validate(),
  Deployment: (o) => new Deployment(o).validate(),
  CustomResourceDefinition: () => {}
}

/** What the API server's authorizer sees of a request: (group, resource, verb). */
const permissionsOf = (request: RecordedRequest): Array<string> => {
  const parts = request.path.split("/").filter((p) => p !== "")
  const [group, rest] = parts[0] === "api" ? ["", parts.slice(2)] : parts[0] === "apis" ? [parts[1], parts.slice(3)] : [undefined, []]
  if (group === undefined || rest.length === 0) return [] // discovery: open to every authenticated user
  const segments = rest[0] === "namespaces" && rest.length >= 3 ? rest.slice(2) : rest
  const [resource, name, subresource] = segments
  const full = subresource === undefined ? resource : `${resource}/${subresource}`
  const verbs: Record<string, string> = { POST: "create", PUT: "update", PATCH: "patch", DELETE: "delete" }
  const verb = request.method === "GET" ? (name === undefined ? (request.watch ? "watch" : "list") : "get") : verbs[request.method]
  // Server-side apply that creates the object is authorized as patch and as create.
  if (request.method === "PATCH" && request.status === 201) return [`${group}|${full}|patch`, `${group}|${full}|create`]
  return [`${group}|${full}|${verb}`]
}

const apis: Array<FakeKubeApi> = []
afterEach(async () => {
  killAll()
  for (const api of apis.splice(0)) await api.stop()
})

describe("deploy/controller", () => {
  it("renders, and every object validates against the Kubernetes schemas", () => {
    const kinds = rendered.map((o) => o.kind).sort()
    assert.deepStrictEqual(kinds, ["ClusterRole", "ClusterRole", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "Deployment", "Namespace", "Role", "RoleBinding", "ServiceAccount"])
    for (const object of rendered) validators[object.kind](object)
    const deployment = rendered.find((o) => o.kind === "Deployment")
    assert.strictEqual(deployment.spec.replicas, 2)
    assert.strictEqual(deployment.spec.template.spec.serviceAccountName, rendered.find((o) => o.kind === "ServiceAccount").metadata.name)
  })

  it("one place for the image: release.ts points images: at it, the controller runs it, and no ROUTER_IMAGE pins the routers elsewhere", () => {
    const dir = mkdtempSync(join(tmpdir(), "kustomize-"))
    cpSync(`${root}/deploy/controller`, dir, { recursive: true })
    writeFileSync(`${dir}/kustomization.yaml`, withImage(readFileSync(`${dir}/kustomization.yaml`, "utf8"), "reg.example/inference-router:1.2.0"))
    const objects = parseAllDocuments(hasKubectl ? execFileSync("kubectl", ["kustomize", dir], { encoding: "utf8" }) : "").map((d) => d.toJS())
    if (!hasKubectl) return
    const container = objects.find((o) => o?.kind === "Deployment").spec.template.spec.containers[0]
    assert.strictEqual(container.image, "reg.example/inference-router:1.2.0")
    assert.isUndefined(container.env.find((e: any) => e.name === "ROUTER_IMAGE"), "the routers follow the controller's own image")
  })

  it("people's built-in roles reach InferenceServices: edit/admin manage them, view reads them (aggregated ClusterRoles, bound to no one)", () => {
    const aggregated = (label: string) =>
      rendered.filter((o) => o.kind === "ClusterRole" && o.metadata.labels?.[`rbac.authorization.k8s.io/${label}`] === "true")
    const rulesOf = (roles: Array<any>) =>
      roles.flatMap((r) => r.rules.flatMap((rule: any) => rule.resources.flatMap((res: string) => rule.verbs.map((v: string) => `${rule.apiGroups[0]}|${res}|${v}`))))
    for (const label of ["aggregate-to-edit", "aggregate-to-admin"]) {
      const rules = rulesOf(aggregated(label))
      for (const verb of ["create", "delete", "get", "list", "patch", "update", "watch"]) assert.include(rules, `inference-router.dev|inferenceservices|${verb}`, label)
      assert.notInclude(rules, "inference-router.dev|inferenceservices/status|update", "status is the controller's")
    }
    const view = rulesOf(aggregated("aggregate-to-view"))
    assert.sameMembers(view, ["get", "list", "watch"].flatMap((v) => [`inference-router.dev|inferenceservices|${v}`, `inference-router.dev|inferenceservices/status|${v}`]))
    const boundRoles = rendered.filter((o) => o.kind === "ClusterRoleBinding").map((b) => b.roleRef.name)
    for (const role of [...aggregated("aggregate-to-edit"), ...aggregated("aggregate-to-view")]) assert.notInclude(boundRoles, role.metadata.name)
  })

  it("the controller Deployment's env is what the controller reads, with values it accepts", () => {
    const container = rendered.find((o) => o.kind === "Deployment").spec.template.spec.containers[0]
    const env: Record<string, string> = { POD_NAME: "controller-0", POD_NAMESPACE: "inference-router-system" }
    for (const item of container.env) {
      assert.include(controllerSettingNames as ReadonlyArray<string>, item.name)
      if (item.value !== undefined) env[item.name] = item.value
    }
    const exit = Effect.runSyncExit(Effect.provide(loadControllerSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env }))))
    assert.isTrue(Exit.isSuccess(exit))
    if (Exit.isSuccess(exit)) assert.strictEqual(exit.value.leaseNamespace, "inference-router-system")
  })

  it("RBAC grants exactly the verbs and resources the controller uses", async () => {
    const api = new FakeKubeApi()
    apis.push(api)
    await api.start()
    const port = await freePort()
    startProcess(["src/controller/main.ts"], {
      KUBECONFIG: api.kubeconfig(),
      PORT: String(port),
      HOST: "127.0.0.1",
      POD_NAME: "controller-0",
      POD_NAMESPACE: "default",
      LEASE_DURATION_SECONDS: "2",
      LEADER_RETRY_MS: "100"
    })
    api.put("pods", {
      metadata: { name: "controller-0", namespace: "default" },
      spec: { containers: [{ name: "controller", image: "inference-router:0.1.0" }] },
      status: { containerStatuses: [{ name: "controller", image: "inference-router:0.1.0", imageID: "sha256:" + "0".repeat(64) }] }
    })
    const isvc = { apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", metadata: { name: "rbac", namespace: "default" } }
    api.put("inferenceservices", { ...isvc, spec: { modelRef: "m", maxReplicas: 3 } })
    await until(() => api.get("horizontalpodautoscalers", "default", "rbac-router") !== undefined, "an HPA")
    api.put("inferenceservices", { ...isvc, spec: { modelRef: "m", replicas: 2 } })
    await until(() => api.get("horizontalpodautoscalers", "default", "rbac-router") === undefined, "the HPA deleted")
    await until(() => api.list("events").length > 0, "an event")
    await until(() => api.requests.some((r) => r.path.endsWith("/pods") && r.watch === true), "pods watched")
    await until(() => api.requests.filter((r) => r.path.includes("/leases") && r.method === "PUT").length > 0, "the lease renewed")

    const used = new Set(api.requests.flatMap(permissionsOf))
    const granted = new Set<string>()
    // The roles bound to the controller's ServiceAccount (not the ones aggregated into people's roles).
    const bound = new Set(rendered.filter((o) => o.kind === "ClusterRoleBinding" || o.kind === "RoleBinding")
      .filter((b) => b.subjects.some((s: any) => s.kind === "ServiceAccount" && s.name === "inference-router-controller"))
      .map((b) => `${b.roleRef.kind}/${b.roleRef.name}`))
    for (const object of rendered.filter((o) => (o.kind === "ClusterRole" || o.kind === "Role") && bound.has(`${o.kind}/${o.metadata.name}`))) {
      for (const rule of object.rules) {
        for (const group of rule.apiGroups) for (const resource of rule.resources) for (const verb of rule.verbs) granted.add(`${group}|${resource}|${verb}`)
      }
    }
    // Needed by admission (OwnerReferencesPermissionEnforcement, for blockOwnerDeletion), never a request.
    const forAdmission = "inference-router.dev|inferenceservices/finalizers|update"
    assert.isTrue(granted.delete(forAdmission), "inferenceservices/finalizers update is granted")
    assert.deepStrictEqual([...used].sort(), [...granted].sort())
  })
})
