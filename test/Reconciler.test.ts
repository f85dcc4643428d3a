/**
 * `contains`: whether a live object still has what the controller applied, read as server-side
 * apply stores it (list-maps merged with other managers' items, omitempty fields dropped).
 */
import { assert, describe, it } from "@effect/vitest"
import { contains } from "../src/controller/Reconciler.ts"

const template = (env: ReadonlyArray<unknown>, containers: ReadonlyArray<unknown> = []) => ({
  spec: { template: { spec: { containers: [{ name: "router", image: "r:1", env }, ...containers] } } }
})

describe("contains (the controller's drift check)", () => {
  it("another manager's items in a list-map are not drift; a change to one of ours is", () => {
    const desired = template([{ name: "A", value: "1" }])
    assert.isTrue(contains(template([{ name: "INJECTED", value: "x" }, { name: "A", value: "1" }], [{ name: "sidecar", image: "s:1" }]), desired))
    assert.isFalse(contains(template([{ name: "A", value: "2" }]), desired))
    assert.isFalse(contains(template([]), desired))
  })

  it("a second item under one of our keys is drift (the kubelet reads the last)", () => {
    assert.isFalse(contains(template([{ name: "A", value: "1" }, { name: "A", value: "evil" }]), template([{ name: "A", value: "1" }])))
  })

  it("an empty value the API server does not store is no drift; another manager's value there is", () => {
    const desired = template([{ name: "EMPTY", value: "" }])
    assert.isTrue(contains(template([{ name: "EMPTY" }]), desired))
    assert.isFalse(contains(template([{ name: "EMPTY", value: "http://evil" }]), desired))
  })

  it("ownerReferences are keyed by uid, not by name", () => {
    const ours = { apiVersion: "inference-router.dev/v1alpha1", kind: "InferenceService", name: "m", uid: "u-1", controller: true }
    const foreign = { apiVersion: "argoproj.io/v1alpha1", kind: "Application", name: "m", uid: "u-2" }
    assert.isTrue(contains({ metadata: { ownerReferences: [foreign, ours] } }, { metadata: { ownerReferences: [ours] } }))
  })

  it("container ports by port and protocol (TCP when unset), other lists whole", () => {
    const desired = { spec: { template: { spec: { containers: [{ name: "router", ports: [{ containerPort: 8080 }], args: ["a"] }] } } } }
    const live = (ports: ReadonlyArray<unknown>, args: ReadonlyArray<string>) => ({ spec: { template: { spec: { containers: [{ name: "router", ports, args }] } } } })
    assert.isTrue(contains(live([{ containerPort: 9090, protocol: "TCP" }, { containerPort: 8080, protocol: "TCP" }], ["a"]), desired))
    assert.isFalse(contains(live([{ containerPort: 8080, protocol: "TCP" }], ["a", "b"]), desired))
  })
})
