/** `labelled`: one metric per label set, the same one for the same values, found by value at each level. */
import { Metric } from "effect"
import { describe, expect, it } from "vitest"
import { labelled } from "../src/shared/Metrics.ts"

describe("labelled", () => {
  it("gives the same metric for the same values and a different one for any other value", () => {
    const by = labelled(Metric.counter("labelled_test_total"), "endpoint", "status")
    const infer200 = by("/infer", "200")
    expect(by("/infer", "200")).toBe(infer200)
    const others = [by("/infer", "429"), by("/v1/completions", "200"), by("/v1/completions", "429")]
    expect(new Set([infer200, ...others]).size).toBe(4)
    // Values that a joined key would confuse stay apart.
    const pair = labelled(Metric.counter("labelled_test2_total"), "a", "b")
    expect(pair("x\u0000y", "z")).not.toBe(pair("x", "y\u0000z"))
  })
})
