/**
 * The monitoring component (deploy/monitoring) against real processes: every
 * PromQL expression in the Grafana dashboard and the alert rules is parsed
 * with Prometheus' own grammar (@prometheus-io/lezer-promql), and each metric
 * it reads, each label it selects or groups by, must be in the /metrics of a
 * running router (simulated mode, upstream mode, cache-aware routing) or controller (against the
 * stand-in API server): a renamed metric fails here, not on a dashboard.
 * Where promtool is installed (Debian's `prometheus` package), the rules pass
 * `promtool check rules`, the /metrics pass `promtool check metrics` but for
 * the `:` in vLLM's names, and alerts fire (`promtool test rules`) on series
 * captured from a router shedding under load, a router without a healthy
 * upstream and an InferenceService that never becomes Ready.
 */
import { parser } from "@prometheus-io/lezer-promql"
import type { SyntaxNode } from "@lezer/common"
import { spawnSync } from "node:child_process"
import * as Http from "node:http"
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { afterAll, assert, beforeAll, describe, it } from "vitest"
import { parse as parseYaml, stringify as stringifyYaml } from "yaml"
import { dashboardJson } from "../scripts/charts-grafana.ts"
import { FakeKubeApi } from "./support/FakeKubeApi.ts"
import { hasKubectl, kustomize } from "./support/Kubectl.ts"
import { freePort, killAll, root, startProcess, until } from "./support/Processes.ts"
import { post, type Running, startFront, startRouter, startUpstream } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

const dashboard = JSON.parse(readFileSync(`${root}/deploy/monitoring/dashboards/inference-router.json`, "utf8"))
const ruleSpec = parseYaml(readFileSync(`${root}/deploy/monitoring/prometheusrule.yaml`, "utf8")).spec as {
  groups: Array<{ name: string; rules: Array<{ alert: string; expr: string; for?: string; labels?: Record<string, string>; annotations?: Record<string, string> }> }>
}

/** Labels Prometheus gives every series of a target (the PodMonitors add `inferenceservice`). */
const targetLabels = new Set(["namespace", "pod", "inferenceservice", "job", "instance", "container"])

// ---- /metrics in the Prometheus text format ----

type Exported = Map<string, Array<{ labels: Record<string, string>; value: number }>>

const sampleLine = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$/
const labelPair = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g

const parseExposition = (text: string, into: Exported = new Map()): Exported => {
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const match = sampleLine.exec(line)
    assert.isNotNull(match, `unparsable /metrics line: ${line}`)
    const labels: Record<string, string> = {}
    for (const [, name, value] of (match![2] ?? "").matchAll(labelPair)) labels[name] = value
    const series = into.get(match![1]) ?? []
    series.push({ labels, value: Number(match![3]) })
    into.set(match![1], series)
  }
  return into
}

const scrape = async (port: number) => (await requestAt(port, { path: "/metrics" })).text

// ---- PromQL ----

/** Grafana's variables as a query would see them: any value, a 5m rate window. */
const withoutVariables = (expr: string) =>
  expr.replaceAll("$__rate_interval", "5m").replaceAll("$__interval", "1m").replace(/\$\{?[a-z_]+\}?/g, ".*")

const text = (expr: string, node: SyntaxNode) => expr.slice(node.from, node.to)
const children = (node: SyntaxNode): Array<SyntaxNode> => {
  const all: Array<SyntaxNode> = []
  for (let child = node.firstChild; child !== null; child = child.nextSibling) all.push(child)
  return all
}
const descendants = (node: SyntaxNode, name: string): Array<SyntaxNode> =>
  children(node).flatMap((child) => [...(child.name === name ? [child] : []), ...descendants(child, name)])
const unquote = (literal: string) => JSON.parse(literal.startsWith("'") ? `"${literal.slice(1, -1)}"` : literal) as string

/** Every problem with `expr` against what the processes export (empty: none). */
const problems = (expr: string, exported: Exported): Array<string> => {
  const source = withoutVariables(expr)
  const tree = parser.parse(source)
  const found: Array<string> = []
  tree.iterate({
    enter: (node) => {
      if (node.type.isError) found.push(`syntax error at ${node.from}: ${source.slice(Math.max(0, node.from - 20), node.to + 20)}`)
    }
  })
  const top = tree.topNode
  const metricsIn = (node: SyntaxNode) => descendants(node, "VectorSelector").map((selector) => text(source, selector.getChild("Identifier")!))
  for (const selector of descendants(top, "VectorSelector")) {
    const name = text(source, selector.getChild("Identifier")!)
    const series = exported.get(name)
    if (series === undefined) {
      found.push(`${name}: not exported`)
      continue
    }
    for (const matcher of descendants(selector, "UnquotedLabelMatcher")) {
      const label = text(source, matcher.getChild("LabelName")!)
      if (targetLabels.has(label)) continue
      const op = text(source, matcher.getChild("MatchOp")!)
      const value = unquote(text(source, matcher.getChild("StringLiteral")!))
      const values = series.map((s) => s.labels[label]).filter((v) => v !== undefined)
      if (values.length === 0) found.push(`${name}: no label ${label}`)
      else if (op === "=" && !values.includes(value)) found.push(`${name}{${label}="${value}"}: no such series (${[...new Set(values)]})`)
      else if (op === "=~" && !values.some((v) => new RegExp(`^(?:${value})$`).test(v))) found.push(`${name}{${label}=~"${value}"}: no such series`)
    }
  }
  // by (...), without (...), on (...), ignoring (...): labels some metric in the expression carries.
  for (const grouping of descendants(top, "GroupingLabels")) {
    const scope = grouping.parent?.parent ?? top
    const names = metricsIn(scope)
    for (const labelNode of descendants(grouping, "LabelName")) {
      const label = text(source, labelNode)
      if (targetLabels.has(label)) continue
      if (label === "le" && names.some((n) => n.endsWith("_bucket"))) continue
      if (!names.some((n) => exported.get(n)?.some((s) => label in s.labels))) found.push(`grouping by ${label}: on none of ${names}`)
    }
  }
  return found
}

/** Every PromQL expression in the dashboard: panel targets and variable queries (label_values's selector). */
const dashboardExpressions = (): Array<{ where: string; expr: string }> => {
  const panels = dashboard.panels.flatMap((panel: any) => [panel, ...(panel.panels ?? [])])
  const targets = panels.flatMap((panel: any) =>
    (panel.targets ?? []).map((target: any) => ({ where: `panel "${panel.title}" ${target.refId}`, expr: target.expr as string }))
  )
  const variables = dashboard.templating.list.filter((v: any) => v.type === "query").map((v: any) => {
    const query: string = typeof v.query === "string" ? v.query : v.query.query
    const match = /^label_values\((.+),\s*([a-zA-Z_]+)\)$/.exec(query)
    assert.isNotNull(match, `variable ${v.name}: ${query}`)
    // The label it lists must be one the selector's series carry: select on it.
    return { where: `variable ${v.name}`, expr: `sum by (${match![2]}) (${match![1]})` }
  })
  return [...targets, ...variables]
}

const ruleExpressions = () =>
  ruleSpec.groups.flatMap((group) => group.rules.map((rule) => ({ where: `alert ${rule.alert}`, expr: rule.expr })))

// ---- the processes ----

const hasPromtool = spawnSync("promtool", ["--version"], { stdio: "ignore" }).status === 0
const promtool = (args: ReadonlyArray<string>, input?: string) =>
  spawnSync("promtool", [...args], { input, encoding: "utf8", cwd: workDir })
const workDir = mkdtempSync(join(tmpdir(), "observability-"))

/** Target labels for captured series, as the PodMonitors would add them. */
const scenarioLabels = {
  shedding: { namespace: "prod", inferenceservice: "busy", pod: "busy-router-0" },
  calm: { namespace: "prod", inferenceservice: "calm", pod: "calm-router-0" },
  front: { namespace: "prod", inferenceservice: "front", pod: "front-router-0" },
  routing: { namespace: "prod", inferenceservice: "routing", pod: "routing-router-0" },
  stranded: { namespace: "prod", inferenceservice: "stranded", pod: "stranded-router-0" },
  controller: { namespace: "inference-router-system", pod: "controller-0" }
} as const
type Scenario = keyof typeof scenarioLabels

/** /metrics text by process, in scrape order. */
const scrapes: Record<Scenario, Array<string>> = { shedding: [], calm: [], front: [], routing: [], stranded: [], controller: [] }
const exported: Exported = new Map()
let api: FakeKubeApi
/** A port nothing listens on: the stranded router's upstream, the routing router's Redis. */
let closedPort = 0

/** A burst of `/infer` requests at once, for the router that sheds. */
const burst = (router: Running, count: number) =>
  Promise.all(Array.from({ length: count }, () => post(router.port, "/infer", { prompt: "x" }).then((r) => r.status)))

const rounds = 9

beforeAll(async () => {
  api = new FakeKubeApi()
  await api.start()
  const closed = closedPort = await freePort()
  const controllerPort = await freePort()
  const [shedding, calm, failing, stranded] = await Promise.all([
    // One slot, two queue places, a queue timeout between one and two requests' time: of a burst of six,
    // one runs, one waits ~400 ms of its 450 (near the timeout: at least 360 ms, unless the burst
    // straggles by 40 ms), one times out, three find the queue full.
    startRouter({ MAX_CONCURRENCY: "1", MAX_QUEUE: "2", QUEUE_TIMEOUT_MS: "450", SIM_LATENCY_MS: "400" }),
    // Calm, and the healthy upstream of the routers in upstream mode.
    startUpstream(),
    // Answers every request 500: ejected.
    startUpstream({ SIM_FAILURE_RATE: "100", SIM_FAILURE_TYPES: "server_error" }),
    // Its only upstream refuses connections: never ready.
    startFront([`http://127.0.0.1:${closed}`], { UPSTREAM_HEALTH_INTERVAL_MS: "100" }, false)
  ])
  const [front, routing] = await Promise.all([
    // Without active checks: the refused connection is retried on another upstream, the failing one's 500 ejects it.
    startFront([calm, failing, `http://127.0.0.1:${closed}`], { UPSTREAM_HEALTH_INTERVAL_MS: "0", UPSTREAM_EJECT_AFTER: "1" }),
    // Its shared state's Redis never answers (nothing listens there): it routes on its own state, and says so.
    startFront([calm], { UPSTREAM_SCHEDULER: "cache-aware", KV_ENDPOINTS: `redis://127.0.0.1:${closed}` })
  ])
  startProcess(["src/controller/main.ts"], {
    KUBECONFIG: api.kubeconfig(),
    PORT: String(controllerPort),
    HOST: "127.0.0.1",
    POD_NAME: "controller-0",
    LOG_LEVEL: "warn"
  })
  api.put("inferenceservices", {
    apiVersion: "inference-router.dev/v1alpha1",
    kind: "InferenceService",
    metadata: { name: "llama", namespace: "default" },
    spec: { modelRef: "llama-3-8b" }
  })
  await until(async () => {
    try {
      return (await requestAt(controllerPort, { path: "/readyz" })).status === 200 &&
        (await scrape(controllerPort)).includes('inference_router_controller_reconciles_total{result="success"}')
    } catch {
      return false
    }
  }, "the controller to reconcile", 30_000)

  // Traffic every panel reads: OpenAI streams and answers, /infer, upstream retries and an ejection, a 5xx.
  const chat = { model: "m", stream: true, max_tokens: 3, messages: [{ role: "user", content: "a b c" }] }
  for (const router of [calm, routing]) {
    assert.strictEqual((await post(router.port, "/v1/chat/completions", chat)).status, 200)
    assert.strictEqual((await post(router.port, "/v1/completions", { model: "m", prompt: "x y", max_tokens: 2 })).status, 200)
    assert.strictEqual((await post(router.port, "/infer", { prompt: "x" })).status, 200)
  }
  const failingId = `127.0.0.1:${failing.port}`
  await until(async () => {
    await post(front.port, "/v1/completions", { model: "m", prompt: "x", max_tokens: 2 })
    const text = await scrape(front.port)
    return text.includes(`router_upstream_ejections_total{upstream="${failingId}"}`) && text.includes("router_upstream_retries_total{")
  }, "an ejection and a retry")
  await until(async () => (await scrape(stranded.port)).includes(`router_upstream_available{upstream="127.0.0.1:${closed}"} 0`), "the stranded router to see its upstream down")
  assert.isAtLeast((await post(stranded.port, "/v1/completions", { model: "m", prompt: "x", max_tokens: 2 })).status, 500)
  // A dropped watch, as an API server restart drops them: the controller starts it again.
  api.dropWatches()
  await until(async () => (await scrape(controllerPort)).includes("inference_router_controller_watch_restarts_total{"), "a watch restart")

  // A client that hangs up while its request is in the model: a 499, which the hang-up alert and panel select.
  const leaving = Http.request({ port: shedding.port, method: "POST", path: "/infer", headers: { "content-type": "application/json" } })
  leaving.on("error", () => {})
  leaving.end(JSON.stringify({ prompt: "x" }))
  await until(async () => /^router_requests_running 1$/m.test(await scrape(shedding.port)), "the request in the model")
  leaving.destroy()
  await until(async () => (await scrape(shedding.port)).includes('status="499"'), "the hang-up counted")

  // The scenarios, scraped once per round (one round stands for two minutes in `promtool test rules`).
  for (let round = 0; round < rounds; round++) {
    if (round > 0) {
      const statuses = await burst(shedding, 6)
      assert.isAtLeast(statuses.filter((status) => status === 429 || status === 503).length, 1, `the busy router sheds: ${statuses}`)
      await post(calm.port, "/infer", { prompt: "x" })
    }
    const texts = await Promise.all([shedding, calm, front, routing, stranded].map((r) => scrape(r.port)))
    scrapes.shedding.push(texts[0])
    scrapes.calm.push(texts[1])
    scrapes.front.push(texts[2])
    scrapes.routing.push(texts[3])
    scrapes.stranded.push(texts[4])
    scrapes.controller.push(await scrape(controllerPort))
  }
  for (const texts of Object.values(scrapes)) parseExposition(texts[texts.length - 1], exported)
}, 90_000)

afterAll(async () => {
  killAll()
  await api?.stop()
})

describe("the dashboard and the alert rules read only what the router and the controller export", () => {
  it("the dashboard is in a JSON model current Grafana imports", () => {
    // Written from scripts/charts-grafana.ts, typed with Grafana's own schema types (@grafana/schema).
    assert.strictEqual(readFileSync(`${root}/deploy/monitoring/dashboards/inference-router.json`, "utf8"), dashboardJson(), "npm run dashboard")
    assert.isAtLeast(dashboard.schemaVersion, 39)
    assert.strictEqual(dashboard.uid, "inference-router")
    const ids = dashboard.panels.map((p: any) => p.id)
    assert.strictEqual(new Set(ids).size, ids.length, "panel ids are unique")
    for (const panel of dashboard.panels) {
      assert.containsAllKeys(panel.gridPos, ["h", "w", "x", "y"])
      assert.isAtMost(panel.gridPos.x + panel.gridPos.w, 24, `panel "${panel.title}" fits the 24-column grid`)
      if (panel.type !== "row") assert.strictEqual(panel.datasource.uid, "${datasource}", `panel "${panel.title}" uses the datasource variable`)
    }
  })

  it("every expression parses, and every metric and label it uses is exported", () => {
    const expressions = [...dashboardExpressions(), ...ruleExpressions()]
    assert.isAbove(expressions.length, 40)
    const failures = expressions.flatMap(({ where, expr }) => problems(expr, exported).map((p) => `${where}: ${p}`))
    assert.deepStrictEqual(failures, [])
  })

  it("the queue wait's buckets reach 600 s, so the dashboard's p99 shows a wait of minutes", () => {
    const bounds = new Set(exported.get("router_queue_wait_seconds_bucket")!.map((s) => s.labels.le))
    for (const le of ["60", "120", "300", "600", "+Inf"]) assert.isTrue(bounds.has(le), le)
  })

  it("the requests granted near their queue timeout are counted: one of each burst", () => {
    const near = parseExposition(scrapes.shedding[rounds - 1]).get("router_queue_waits_near_timeout_total")
    assert.isAtLeast(near?.[0]?.value ?? 0, 1)
    // At most one a burst: each scrape adds what the count gained, never the whole count again.
    assert.isAtMost(near?.[0]?.value ?? Infinity, rounds - 1)
  })

  it("the router and the controller export the process's CPU, memory and start time under prom-client's names", () => {
    for (const scenario of ["calm", "controller"] as const) {
      const own = parseExposition(scrapes[scenario][rounds - 1])
      for (const name of ["process_cpu_user_seconds_total", "process_cpu_system_seconds_total", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_start_time_seconds"]) {
        assert.isAbove(own.get(name)?.[0]?.value ?? 0, 0, `${scenario}: ${name}`)
      }
      assert.isAtMost(own.get("process_start_time_seconds")![0].value, Date.now() / 1000)
    }
  })

  it("a renamed metric, a label no series carries, or a syntax error is caught", () => {
    assert.deepStrictEqual(problems("sum(rate(router_requests_total[5m]))", exported), [])
    assert.deepStrictEqual(problems("sum(rate(router_request_total[5m]))", exported), ["router_request_total: not exported"])
    const misspelt = problems('sum(rate(router_shed_total{reason="queue_overflow"}[5m]))', exported)
    assert.lengthOf(misspelt, 1)
    assert.match(misspelt[0], /^router_shed_total\{reason="queue_overflow"\}: no such series \(.*queue_full.*\)$/)
    assert.deepStrictEqual(problems('rate(router_shed_total{reason=~"queue_(full|timeout)"}[5m])', exported), [])
    assert.deepStrictEqual(problems('rate(router_shed_total{reason=~"queue_over.*"}[5m])', exported), [
      'router_shed_total{reason=~"queue_over.*"}: no such series'
    ])
    assert.deepStrictEqual(problems("sum by (model) (rate(router_requests_total[5m]))", exported), [
      "grouping by model: on none of router_requests_total"
    ])
    assert.lengthOf(problems("sum(rate(router_requests_total[5m])", exported), 1)
  })
})

describe("deploy/monitoring", () => {
  // Components need kustomize itself (support/Kubectl.ts lists plain resources without it).
  it.skipIf(!hasKubectl)("is an optional component: the controller applies without it, with it adds monitors, rules and the dashboard", () => {
    const kinds = (yaml: string) => yaml.split(/^---$/m).map((doc) => parseYaml(doc)?.kind).filter(Boolean)
    assert.notInclude(kinds(kustomize("controller")), "PodMonitor")
    const monitored = kinds(kustomize("controller-monitored"))
    for (const kind of ["PodMonitor", "PrometheusRule", "ConfigMap", "Deployment", "CustomResourceDefinition"]) assert.include(monitored, kind)
  })

  it("every alert has a severity and a runbook entry in docs/observability.md", () => {
    const docs = readFileSync(`${root}/docs/observability.md`, "utf8")
    for (const { alert, labels, annotations } of ruleSpec.groups.flatMap((g) => g.rules)) {
      assert.oneOf(labels?.severity, ["warning", "critical"], alert)
      assert.notProperty(annotations, "runbook", `${alert}: runbook_url is the key kube-prometheus-stack's templates link`)
      assert.match(annotations?.runbook_url ?? "", new RegExp(`^https://\\S+/docs/observability\\.md#${alert.toLowerCase()}$`), alert)
      assert.match(docs, new RegExp(`^### ${alert}$`, "m"), `${alert} has a runbook section`)
    }
  })
})

describe.skipIf(!hasPromtool)("promtool", () => {
  const rulesFile = join(workDir, "rules.yaml")
  beforeAll(() => writeFileSync(rulesFile, stringifyYaml(ruleSpec)))

  it("checks the rules", () => {
    const result = promtool(["check", "rules", rulesFile])
    assert.strictEqual(result.status, 0, result.stdout + result.stderr)
  })

  it("checks the router's and the controller's /metrics: nothing but the ':' in vLLM's names", () => {
    for (const [scenario, texts] of Object.entries(scrapes)) {
      const result = promtool(["check", "metrics"], texts[texts.length - 1])
      const complaints = (result.stdout + result.stderr).split("\n").filter((l) => l.trim() !== "")
      const others = complaints.filter((l) => !/^vllm:\S+ metric names should not contain ':'$/.test(l))
      assert.deepStrictEqual(others, [], scenario)
    }
  })

  /**
   * The captured scrapes as promtool input series, one round two minutes
   * apart, with the labels the PodMonitors add: the values are those the
   * processes exported, only the time between scrapes is stretched.
   */
  const inputSeries = (scenario: Scenario) => {
    const byKey = new Map<string, Array<string>>()
    scrapes[scenario].forEach((text, round) => {
      for (const [name, series] of parseExposition(text)) {
        for (const { labels, value } of series) {
          const all = { ...labels, ...scenarioLabels[scenario] }
          const key = `${name}{${Object.entries(all).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(",")}}`
          const values = byKey.get(key) ?? Array<string>(scrapes[scenario].length).fill("_")
          values[round] = Number.isFinite(value) ? String(value) : value > 0 ? "Inf" : value < 0 ? "-Inf" : "NaN"
          byKey.set(key, values)
        }
      }
    })
    return [...byKey].map(([series, values]) => ({ series, values: values.join(" ") }))
  }

  it("fires the alerts the scenarios call for, and no others", () => {
    // The rules as shipped, less annotations (their text carries live values; the labels and `for` are what is tested).
    const bare = { groups: ruleSpec.groups.map((g) => ({ ...g, rules: g.rules.map(({ annotations: _, ...rule }) => rule) })) }
    writeFileSync(join(workDir, "bare-rules.yaml"), stringifyYaml(bare))
    const end = `${(rounds - 1) * 2}m`
    const expected: Record<string, Array<Record<string, string>>> = {
      InferenceRouterSheddingSustained: [{ severity: "warning", namespace: "prod", inferenceservice: "busy" }],
      InferenceRouterQueueWaitNearTimeout: [{ severity: "warning", namespace: "prod", inferenceservice: "busy" }],
      // One of each burst times out in the queue.
      InferenceRouterQueueTimeouts: [{ severity: "warning", namespace: "prod", inferenceservice: "busy" }],
      InferenceRouterNoHealthyUpstream: [{ severity: "critical", namespace: "prod", inferenceservice: "stranded", pod: "stranded-router-0" }],
      InferenceRouterSharedStateDown: [{ severity: "warning", namespace: "prod", inferenceservice: "routing", endpoint: `redis://127.0.0.1:${closedPort}` }],
      InferenceServiceNotReady: [{ severity: "warning", inferenceservice_namespace: "default", inferenceservice: "llama" }]
    }
    const alertNames = ruleSpec.groups.flatMap((g) => g.rules.map((r) => r.alert))
    const test = {
      rule_files: ["bare-rules.yaml"],
      evaluation_interval: "1m",
      tests: [{
        interval: "2m",
        input_series: (Object.keys(scenarioLabels) as Array<Scenario>).flatMap(inputSeries),
        alert_rule_test: alertNames.flatMap((alertname) => [
          // Nothing fires at the first scrape: every alert waits its `for`.
          { eval_time: "0m", alertname, exp_alerts: [] },
          { eval_time: end, alertname, exp_alerts: (expected[alertname] ?? []).map((exp_labels) => ({ exp_labels })) }
        ])
      }]
    }
    writeFileSync(join(workDir, "scenarios.test.yaml"), stringifyYaml(test))
    const result = promtool(["test", "rules", "scenarios.test.yaml"])
    assert.strictEqual(result.status, 0, result.stdout + result.stderr)
  })
})

