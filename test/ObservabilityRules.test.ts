/**
 * The alert rules and the dashboard's selectors on synthetic series
 * (`promtool test rules`, where promtool is installed): the cases a
 * kube-prometheus-stack operator meets that a router's own scrape cannot show
 * (KServe's InferenceService controller in the same cluster, vLLM servers'
 * own vllm:* series, queue timeouts of minutes, an upstream ejected once).
 */
import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "vitest"
import { parse as parseYaml, stringify as stringifyYaml } from "yaml"
import { root } from "./support/Processes.ts"

const hasPromtool = spawnSync("promtool", ["--version"], { stdio: "ignore" }).status === 0
const workDir = mkdtempSync(join(tmpdir(), "observability-rules-"))

type Rule = { alert: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }
const ruleSpec = parseYaml(readFileSync(`${root}/deploy/monitoring/prometheusrule.yaml`, "utf8")).spec as { groups: Array<{ name: string; rules: Array<Rule> }> }
const dashboard = JSON.parse(readFileSync(`${root}/deploy/monitoring/dashboards/inference-router.json`, "utf8"))

/** Runs promtool's unit tests on the shipped rules (their annotations left out: promtool compares them too). */
const promtoolTest = (tests: ReadonlyArray<unknown>) => {
  const bare = { groups: ruleSpec.groups.map((g) => ({ ...g, rules: g.rules.map(({ annotations: _, ...rule }) => rule) })) }
  writeFileSync(join(workDir, "rules.yaml"), stringifyYaml(bare))
  writeFileSync(join(workDir, "cases.test.yaml"), stringifyYaml({ rule_files: ["rules.yaml"], evaluation_interval: "1m", tests }))
  const result = spawnSync("promtool", ["test", "rules", "cases.test.yaml"], { encoding: "utf8", cwd: workDir })
  assert.strictEqual(result.status, 0, result.stdout + result.stderr)
}

const router = 'namespace="ns",inferenceservice="llama",pod="p1"'
const alert = (alertname: string, evalTime: string, input: Record<string, string>, expected: ReadonlyArray<Record<string, string>>) => ({
  interval: "1m",
  input_series: Object.entries(input).map(([series, values]) => ({ series, values })),
  alert_rule_test: [{ eval_time: evalTime, alertname, exp_alerts: expected.map((exp_labels) => ({ exp_labels })) }]
})

describe.skipIf(!hasPromtool)("the alert rules on synthetic series", () => {
  it("an upstream ejected twice within 15 minutes alerts, once (its counter starts at 0) does not", () => {
    const ejections = `router_upstream_ejections_total{${router},upstream="10.0.0.1:8000"}`
    const labels = { severity: "warning", namespace: "ns", inferenceservice: "llama", upstream: "10.0.0.1:8000" }
    promtoolTest([
      alert("InferenceRouterUpstreamEjected", "12m", { [ejections]: "0x5 1x30" }, []),
      alert("InferenceRouterUpstreamEjected", "12m", { [ejections]: "0x5 1x3 2x30" }, [labels]),
      // An ejection a quarter of an hour later is not "repeatedly".
      alert("InferenceRouterUpstreamEjected", "40m", { [ejections]: "0x5 1x20 2x30" }, []),
      // Nor is one episode that each of two router replicas saw once.
      alert("InferenceRouterUpstreamEjected", "12m", {
        [ejections]: "0x5 1x30",
        [ejections.replace('pod="p1"', 'pod="p2"')]: "0x5 1x30"
      }, [])
    ])
  })

  it("no upstream it can send to pages; every upstream ejected but still chosen in panic does not", () => {
    const labels = { severity: "critical", namespace: "ns", inferenceservice: "llama", pod: "p1" }
    promtoolTest([
      alert("InferenceRouterNoHealthyUpstream", "10m", {
        [`router_upstreams_healthy{${router}}`]: "0x15",
        [`router_upstream_pool_ready{${router}}`]: "1x15"
      }, []),
      alert("InferenceRouterNoHealthyUpstream", "10m", {
        [`router_upstreams_healthy{${router}}`]: "0x15",
        [`router_upstream_pool_ready{${router}}`]: "0x15"
      }, [labels])
    ])
  })

  it("clients hanging up on a quarter of the inference requests alert, whatever /v1/models polling adds", () => {
    const requests = (endpoint: string, status: string) => `router_requests_total{${router},endpoint="${endpoint}",status="${status}"}`
    const labels = { severity: "warning", namespace: "ns", inferenceservice: "llama" }
    promtoolTest([
      alert("InferenceRouterClientsHangingUp", "25m", {
        [requests("/v1/chat/completions", "200")]: "0+60x30",
        [requests("/v1/chat/completions", "499")]: "0+40x30",
        [requests("/v1/models", "200")]: "0+1000x30"
      }, [labels]),
      // A user stopping a stream now and then is not an incident.
      alert("InferenceRouterClientsHangingUp", "25m", {
        [requests("/infer", "200")]: "0+95x30",
        [requests("/infer", "499")]: "0+5x30"
      }, [])
    ])
  })

  it("reconcile errors of KServe's InferenceService controller are not this controller's", () => {
    promtoolTest([
      alert("InferenceRouterReconcileErrors", "30m", {
        'controller_runtime_reconcile_errors_total{namespace="kserve",job="kserve/kserve-controller-manager",controller="inferenceservice"}': "0+1x40"
      }, []),
      alert("InferenceRouterReconcileErrors", "30m", {
        'controller_runtime_reconcile_errors_total{namespace="inference-router-system",pod="a",controller="inferenceservice.inference-router.dev"}': "0+1x40"
      }, [{ severity: "warning", namespace: "inference-router-system", controller: "inferenceservice.inference-router.dev" }])
    ])
  })

  it("requests that time out in the queue alert, though they record no wait", () => {
    const labels = { severity: "warning", namespace: "ns", inferenceservice: "llama" }
    promtoolTest([
      alert("InferenceRouterQueueTimeouts", "25m", {
        [`router_queue_wait_seconds_count{${router}}`]: "0x30",
        [`router_shed_total{${router},reason="queue_timeout"}`]: "0+20x30"
      }, [labels]),
      // One in a thousand is the tail, not the service.
      alert("InferenceRouterQueueTimeouts", "25m", {
        [`router_queue_wait_seconds_count{${router}}`]: "0+1000x30",
        [`router_shed_total{${router},reason="queue_timeout"}`]: "0+1x30"
      }, [])
    ])
  })

  it("more than 1 % of the admitted granted near their queue timeout alerts, fewer does not", () => {
    const labels = { severity: "warning", namespace: "ns", inferenceservice: "llama" }
    const input = (near: string, admitted: string) => ({
      [`router_queue_waits_near_timeout_total{${router}}`]: near,
      [`router_queue_wait_seconds_count{${router}}`]: admitted
    })
    promtoolTest([
      alert("InferenceRouterQueueWaitNearTimeout", "25m", input("0+2x30", "0+100x30"), [labels]),
      alert("InferenceRouterQueueWaitNearTimeout", "25m", input("0+1x30", "0+1000x30"), []),
      // What a histogram's p99 alerted on: 5 % of the admitted waiting a third of the timeout, none near it.
      alert("InferenceRouterQueueWaitNearTimeout", "25m", input("0x30", "0+100x30"), [])
    ])
  })
})

describe.skipIf(!hasPromtool)("the dashboard's router panels", () => {
  it("count the routers' stand-in vllm:* series, not a vLLM server's own, with every variable at All", () => {
    const panel = dashboard.panels.find((p: any) => p.title === "Tokens per second")
    const expr: string = panel.targets.find((t: any) => t.expr.includes("vllm:generation_tokens_total")).expr
    const allValues = Object.fromEntries(dashboard.templating.list.filter((v: any) => v.allValue !== undefined).map((v: any) => [v.name, v.allValue]))
    const query = expr.replaceAll("$__rate_interval", "5m").replace(/\$([a-z_]+)/g, (_, name: string) => allValues[name])
    writeFileSync(join(workDir, "dashboard.test.yaml"), stringifyYaml({
      rule_files: [],
      evaluation_interval: "1m",
      tests: [{
        interval: "1m",
        input_series: [
          { series: 'vllm:generation_tokens_total{namespace="prod",pod="llama-router-abc",inferenceservice="llama",model_name="llama-3-8b"}', values: "0+60x10" },
          { series: 'vllm:generation_tokens_total{namespace="prod",pod="vllm-0",job="prod/vllm",model_name="llama-3-8b"}', values: "0+600x10" }
        ],
        promql_expr_test: [{ expr: query, eval_time: "10m", exp_samples: [{ labels: '{namespace="prod",inferenceservice="llama"}', value: 1 }] }]
      }]
    }))
    const result = spawnSync("promtool", ["test", "rules", "dashboard.test.yaml"], { encoding: "utf8", cwd: workDir })
    assert.strictEqual(result.status, 0, result.stdout + result.stderr)
  })
})
