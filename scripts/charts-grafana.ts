/**
 * The Grafana dashboard (deploy/monitoring/dashboards/inference-router.json),
 * written from this typed source: the model is checked against Grafana's own
 * types (@grafana/schema, generated from Grafana's dashboard schema), and
 * every query is a PromQL expression test/Observability.test.ts checks
 * against the metrics real processes export. After editing:
 *
 *   npm run dashboard     # rewrites the JSON; the test fails while they differ
 */
import {
  type Dashboard,
  type DataSourceRef,
  GraphDrawStyle,
  type Panel,
  type RowPanel,
  SortOrder,
  StackingMode,
  TooltipDisplayMode,
  type VariableModel,
  VariableRefresh,
  VariableSort,
  BigValueColorMode,
  BigValueGraphMode,
  BigValueJustifyMode,
  BigValueTextMode,
  LegendDisplayMode,
  ThresholdsMode,
  VizOrientation,
  type GraphFieldConfig,
  FieldColorModeId,
  PercentChangeColorMode
} from "@grafana/schema"
import type { Options as StatOptions } from "@grafana/schema/dist/esm/raw/composable/stat/panelcfg/x/StatPanelCfg_types.gen"
import type { Options as TimeSeriesOptions } from "@grafana/schema/dist/esm/raw/composable/timeseries/panelcfg/x/TimeSeriesPanelCfg_types.gen"
import { writeFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { controllerName } from "../src/controller/Metrics.ts"

export const dashboardFile = fileURLToPath(new URL("../deploy/monitoring/dashboards/inference-router.json", import.meta.url))

const datasource: DataSourceRef = { type: "prometheus", uid: "${datasource}" }
/**
 * The routers the variables select. "All" is ".+", not ".*": a series without
 * the label (a vLLM server's own vllm:* series, which the routers' PodMonitor
 * does not label with `inferenceservice`) is not a router's.
 */
const routers = 'namespace=~"$namespace", inferenceservice=~"$inferenceservice", pod=~"$pod"'
const controllerPods = 'namespace=~"$controller_namespace"'
// The controller's own name (KServe's InferenceService controller is "inferenceservice").
const controller = `controller="${controllerName}"`
const queue = `name="${controllerName}"`
const window = "[$__rate_interval]"
/** The inference endpoints: the share panels' denominator (not /v1/models, the docs or unknown paths). */
const inference = 'endpoint=~"/infer|/v1/completions|/v1/chat/completions"'
/** Router panels break down per InferenceService. */
const perService = "namespace, inferenceservice"
const service = "{{namespace}}/{{inferenceservice}}"

const quantile = (q: number, bucket: string, by = `, ${perService}`) =>
  `histogram_quantile(${q}, sum by (le${by}) (rate(${bucket}{${routers}}${window})))`

type Query = readonly [expr: string, legend: string]

/** Lays panels out left to right on Grafana's 24-column grid, a new line when one is full. */
const layout = () => {
  const panels: Array<Panel | RowPanel> = []
  let id = 0
  let x = 0
  let y = 0
  let lineHeight = 0
  const place = (w: number, h: number) => {
    if (x + w > 24) {
      x = 0
      y += lineHeight
      lineHeight = 0
    }
    const gridPos = { h, w, x, y }
    x += w
    lineHeight = Math.max(lineHeight, h)
    return gridPos
  }
  const targets = (queries: ReadonlyArray<Query>) =>
    queries.map(([expr, legendFormat], i) => ({ datasource, expr, legendFormat, refId: String.fromCharCode(65 + i), range: true }))
  return {
    panels,
    row: (title: string) => {
      if (x > 0) {
        y += lineHeight
        x = 0
        lineHeight = 0
      }
      panels.push({ type: "row", title, id: ++id, collapsed: false, gridPos: { h: 1, w: 24, x: 0, y }, panels: [] })
      y += 1
    },
    timeseries: (title: string, description: string, unit: string, queries: ReadonlyArray<Query>, options: { stack?: boolean } = {}) => {
      const custom: GraphFieldConfig = {
        drawStyle: GraphDrawStyle.Line,
        lineWidth: 1,
        fillOpacity: 10,
        showPoints: VisibilityModeNever,
        spanNulls: false,
        ...(options.stack === true ? { stacking: { mode: StackingMode.Normal, group: "A" } } : {})
      }
      const panelOptions: TimeSeriesOptions = {
        legend: { displayMode: LegendDisplayMode.List, placement: "bottom", showLegend: true, calcs: [] },
        tooltip: { mode: TooltipDisplayMode.Multi, sort: SortOrder.Descending }
      }
      panels.push({
        type: "timeseries",
        id: ++id,
        title,
        description,
        datasource,
        gridPos: place(8, 8),
        fieldConfig: { defaults: { unit, custom: { ...custom }, color: { mode: FieldColorModeId.PaletteClassic } }, overrides: [] },
        options: { ...panelOptions },
        targets: targets(queries)
      })
    },
    stat: (title: string, description: string, unit: string, query: Query, steps: ReadonlyArray<{ color: string; value: number | null }> = [{ color: "green", value: null }]) => {
      const panelOptions: StatOptions = {
        reduceOptions: { calcs: ["lastNotNull"], fields: "", values: false },
        colorMode: BigValueColorMode.Value,
        graphMode: BigValueGraphMode.Area,
        justifyMode: BigValueJustifyMode.Auto,
        orientation: VizOrientation.Auto,
        textMode: BigValueTextMode.Auto,
        showPercentChange: false,
        percentChangeColorMode: PercentChangeColorMode.Standard,
        wideLayout: true
      }
      panels.push({
        type: "stat",
        id: ++id,
        title,
        description,
        datasource,
        gridPos: place(6, 4),
        fieldConfig: {
          defaults: { unit, color: { mode: FieldColorModeId.Thresholds }, thresholds: { mode: ThresholdsMode.Absolute, steps: steps.map((s) => ({ ...s })) } },
          overrides: []
        },
        options: { ...panelOptions },
        targets: targets([query])
      })
    }
  }
}

// Not re-exported under a name of its own by @grafana/schema's index.
const VisibilityModeNever = "never" as GraphFieldConfig["showPoints"]

export const dashboard = (): Dashboard => {
  const { panels, row, timeseries, stat } = layout()

  row("Overview")
  stat("Requests/s", "Requests served per second, all endpoints (probes and /metrics excluded)", "reqps", [`sum(rate(router_requests_total{${routers}}${window}))`, ""])
  stat("Shed", "Share of inference requests answered without running the model", "percentunit", [
    `sum(rate(router_shed_total{${routers}}${window})) / sum(rate(router_requests_total{${routers}, ${inference}}${window}))`,
    ""
  ], [{ color: "green", value: null }, { color: "orange", value: 0.01 }, { color: "red", value: 0.05 }])
  stat("Router pods", "Router pods scraped", "none", [`count(router_max_concurrency{${routers}})`, ""])
  stat("5xx", "Share of inference requests answered with a 5xx status", "percentunit", [
    `sum(rate(router_requests_total{${routers}, ${inference}, status=~"5.."}${window})) / sum(rate(router_requests_total{${routers}, ${inference}}${window}))`,
    ""
  ], [{ color: "green", value: null }, { color: "red", value: 0.01 }])
  stat("Hang-ups", "Share of inference requests whose client hung up before the answer (499): shed by nobody, lost all the same", "percentunit", [
    `sum(rate(router_requests_total{${routers}, ${inference}, status="499"}${window})) / sum(rate(router_requests_total{${routers}, ${inference}}${window}))`,
    ""
  ], [{ color: "green", value: null }, { color: "orange", value: 0.05 }, { color: "red", value: 0.25 }])

  row("Requests and admission")
  timeseries("Requests by endpoint and status", "router_requests_total: answers per second by endpoint and HTTP status", "reqps", [
    [`sum by (${perService}, endpoint, status) (rate(router_requests_total{${routers}}${window}))`, `${service} {{endpoint}} {{status}}`]
  ])
  timeseries("Admitted and shed", "Admitted: requests that got a slot (each records a queue wait); shed by reason: answered 429/503 without running the model", "reqps", [
    [`sum by (${perService}) (rate(router_queue_wait_seconds_count{${routers}}${window}))`, `${service} admitted`],
    [`sum by (${perService}, reason) (rate(router_shed_total{${routers}}${window})) > 0`, `${service} shed {{reason}}`]
  ])
  timeseries("In the model and queued", "Requests holding a slot and waiting for one per InferenceService, against MAX_CONCURRENCY and MAX_QUEUE (summed over its pods)", "short", [
    [`sum by (${perService}) (router_requests_running{${routers}})`, `${service} running`],
    [`sum by (${perService}) (router_requests_waiting{${routers}})`, `${service} queued`],
    [`sum by (${perService}) (router_max_concurrency{${routers}})`, `${service} slots`],
    [`sum by (${perService}) (router_max_queue{${routers}})`, `${service} queue limit`]
  ])
  timeseries("Queue wait", "Time admitted requests waited for a slot (p99), each InferenceService against its own QUEUE_TIMEOUT_MS; requests that timed out record no wait (see Admitted and shed)", "s", [
    [quantile(0.99, "router_queue_wait_seconds_bucket"), `${service} p99`],
    [`max by (${perService}) (router_queue_timeout_seconds{${routers}})`, `${service} timeout`]
  ])
  timeseries("Request duration", "From request start to response (the whole stream for streaming answers)", "s", [
    [quantile(0.5, "router_request_duration_seconds_bucket"), `${service} p50`],
    [quantile(0.99, "router_request_duration_seconds_bucket"), `${service} p99`]
  ])
  timeseries("Requests by pod", "Requests per second per router pod: the balance across replicas", "reqps", [
    [`sum by (namespace, pod) (rate(router_requests_total{${routers}}${window}))`, "{{namespace}}/{{pod}}"]
  ])

  row("Tokens (OpenAI API, vLLM's metric names)")
  const perModel = (metric: string, what: string, description: string) =>
    timeseries(what, description, "s", [
      [quantile(0.5, metric), `${service} p50`],
      [quantile(0.99, metric), `${service} p99`]
    ])
  perModel("vllm:time_to_first_token_seconds_bucket", "Time to first token", "vllm:time_to_first_token_seconds: from arrival to the first token")
  perModel("vllm:inter_token_latency_seconds_bucket", "Inter-token latency", "vllm:inter_token_latency_seconds: between consecutive tokens of a stream")
  timeseries("Tokens per second", "Prompt tokens processed and tokens generated", "short", [
    [`sum by (${perService}) (rate(vllm:prompt_tokens_total{${routers}}${window}))`, `${service} prompt`],
    [`sum by (${perService}) (rate(vllm:generation_tokens_total{${routers}}${window}))`, `${service} generated`]
  ])
  timeseries("Finished by reason", "vllm:request_success_total by finished_reason (stop, length, ...)", "reqps", [
    [`sum by (${perService}, finished_reason) (rate(vllm:request_success_total{${routers}}${window}))`, `${service} {{finished_reason}}`]
  ], { stack: true })
  perModel("vllm:e2e_request_latency_seconds_bucket", "End-to-end latency", "vllm:e2e_request_latency_seconds: from arrival to the last token")
  timeseries("Slot use (vLLM's KV-cache gauge)", "vllm:kv_cache_usage_perc: running / MAX_CONCURRENCY per pod", "percentunit", [
    [`max by (namespace, pod) (vllm:kv_cache_usage_perc{${routers}})`, "{{namespace}}/{{pod}}"]
  ])

  row("Upstreams (MODEL_BACKEND=upstream)")
  timeseries("Attempts by upstream and status", "router_upstream_requests_total: attempts sent to each upstream, by status code or how it ended without one (connect_error, error, timeout, broken, idle_timeout, rejected, deadline)", "reqps", [
    [`sum by (${perService}, upstream, status) (rate(router_upstream_requests_total{${routers}}${window}))`, `${service} {{upstream}} {{status}}`]
  ])
  timeseries("Upstream health", "router_upstream_available: routers that see the upstream healthy and not ejected", "short", [
    [`sum by (${perService}, upstream) (router_upstream_available{${routers}})`, `${service} {{upstream}}`]
  ])
  timeseries("Ejections and retries", "Ejections after consecutive failures, and retried attempts, per upstream, per second", "ops", [
    [`sum by (${perService}, upstream) (rate(router_upstream_ejections_total{${routers}}${window})) > 0`, `${service} ejected {{upstream}}`],
    [`sum by (${perService}, upstream) (rate(router_upstream_retries_total{${routers}}${window})) > 0`, `${service} retried {{upstream}}`]
  ])
  timeseries("Upstream latency p99", "router_upstream_request_duration_seconds: forwarding to the end of the upstream's answer", "s", [
    [quantile(0.99, "router_upstream_request_duration_seconds_bucket", `, ${perService}, upstream`), `${service} {{upstream}}`]
  ])
  timeseries("In flight and connections", "Requests in flight and open keep-alive connections per upstream", "short", [
    [`sum by (${perService}, upstream) (router_upstream_in_flight{${routers}})`, `${service} in flight {{upstream}}`],
    [`sum by (${perService}, upstream) (router_upstream_connections{${routers}})`, `${service} connections {{upstream}}`]
  ])

  row("Cache-aware routing (UPSTREAM_SCHEDULER=cache-aware)")
  timeseries("Routing decisions by reason", "router_routing_decisions_total: cache (sent where its prefix is cached), load, spill (over UPSTREAM_LOAD_BOUND), only-healthy", "reqps", [
    [`sum by (${perService}, reason) (rate(router_routing_decisions_total{${routers}}${window}))`, `${service} {{reason}}`]
  ], { stack: true })
  // The model servers' own counters (vLLM's names): any pod in the namespaces, routers in simulated mode or vLLM.
  timeseries("Prefix cache hit rate (model servers)", "vllm:prefix_cache_hits_total / vllm:prefix_cache_queries_total: the share of prompt tokens found cached, per model server", "percentunit", [
    [
      `sum by (namespace, pod) (rate(vllm:prefix_cache_hits_total{namespace=~"$namespace"}${window})) / sum by (namespace, pod) (rate(vllm:prefix_cache_queries_total{namespace=~"$namespace"}${window}))`,
      "{{namespace}}/{{pod}}"
    ]
  ])
  timeseries("Cached tokens: predicted and reported", "Prompt tokens the scheduler predicted cached and the upstreams reported cached, per second; the error is |predicted - reported| over reported", "short", [
    [`sum by (${perService}) (rate(router_routing_reported_cached_tokens_total{${routers}}${window}))`, `${service} reported`],
    [`sum by (${perService}) (rate(router_routing_predicted_cached_tokens_total{${routers}}${window}))`, `${service} predicted`],
    [`sum by (${perService}) (rate(router_routing_cached_tokens_error_total{${routers}}${window})) / sum by (${perService}) (rate(router_routing_reported_cached_tokens_total{${routers}}${window}))`, `${service} error ratio`]
  ])
  timeseries("Upstream signals fresh", "router_routing_upstream_signals_fresh: routers whose scrape of the upstream's /metrics is fresh", "short", [
    [`sum by (${perService}, upstream) (router_routing_upstream_signals_fresh{${routers}})`, `${service} {{upstream}}`]
  ])
  timeseries("Routing decision time", "router_routing_decision_seconds: parse, tokens, block keys and the choice; well under 1 ms expected, more: a CPU-starved router", "s", [
    [quantile(0.5, "router_routing_decision_seconds_bucket"), `${service} p50`],
    [quantile(0.99, "router_routing_decision_seconds_bucket"), `${service} p99`]
  ])

  row("Controller")
  timeseries("Reconciles by result", "controller_runtime_reconcile_total", "ops", [
    [`sum by (result) (rate(controller_runtime_reconcile_total{${controllerPods}, ${controller}}${window}))`, "{{result}}"]
  ])
  timeseries("Reconcile errors", "controller_runtime_reconcile_errors_total: failed reconciles, retried with backoff", "ops", [
    [`sum(rate(controller_runtime_reconcile_errors_total{${controllerPods}, ${controller}}${window}))`, "errors"]
  ])
  timeseries("Reconcile time", "controller_runtime_reconcile_time_seconds", "s", [0.5, 0.99].map((q) =>
    [
      `histogram_quantile(${q}, sum by (le) (rate(controller_runtime_reconcile_time_seconds_bucket{${controllerPods}, ${controller}}${window})))`,
      `p${q * 100}`
    ] as const
  ))
  timeseries("Work queue", "workqueue_depth (keys waiting), adds and retries per second", "short", [
    [`sum(workqueue_depth{${controllerPods}, ${queue}})`, "depth"],
    [`sum(rate(workqueue_adds_total{${controllerPods}, ${queue}}${window}))`, "adds/s"],
    [`sum(rate(workqueue_retries_total{${controllerPods}, ${queue}}${window}))`, "retries/s"]
  ])
  timeseries("Time in queue", "workqueue_queue_duration_seconds: from a key's add to a worker taking it", "s", [
    [`histogram_quantile(0.99, sum by (le) (rate(workqueue_queue_duration_seconds_bucket{${controllerPods}, ${queue}}${window})))`, "p99"]
  ])
  timeseries("Reconciles in progress", "workqueue_longest_running_processor_seconds and workqueue_unfinished_work_seconds: a value that keeps growing is a stuck reconcile", "s", [
    [`max(workqueue_longest_running_processor_seconds{${controllerPods}, ${queue}})`, "longest running"],
    [`sum(workqueue_unfinished_work_seconds{${controllerPods}, ${queue}})`, "unfinished work"]
  ])
  timeseries("Leader", "leader_election_master_status: 1 on the replica holding the Lease", "short", [
    [`max by (pod) (leader_election_master_status{${controllerPods}, name="inference-router-controller"})`, "{{pod}}"]
  ])
  timeseries("InferenceServices not Ready", "inference_router_inferenceservice_ready == 0 by the Ready condition's reason, from the leading replica", "short", [
    [`count by (reason) (max by (inferenceservice_namespace, inferenceservice, reason) (inference_router_inferenceservice_ready{${controllerPods}}) == 0)`, "{{reason}}"]
  ], { stack: true })
  timeseries("Watch restarts", "Watches started again, by resource and reason", "short", [
    [`sum by (resource, reason) (increase(inference_router_controller_watch_restarts_total{${controllerPods}}${window}))`, "{{resource}} {{reason}}"]
  ])
  timeseries("API writes", "Writes to the Kubernetes API by kind", "ops", [
    [`sum by (kind) (rate(inference_router_controller_api_writes_total{${controllerPods}}${window}))`, "{{kind}}"]
  ])

  const variable = (name: string, label: string, query: string, all = true): VariableModel => ({
    name,
    label,
    type: "query",
    datasource,
    query: { query, refId: `${name}-query` },
    refresh: VariableRefresh.onTimeRangeChanged,
    includeAll: all,
    multi: all,
    ...(all ? { allValue: ".+", current: { selected: true, text: ["All"], value: ["$__all"] } } : {}),
    sort: VariableSort.alphabeticalAsc
  })

  return {
    annotations: {
      list: [{
        builtIn: 1,
        datasource: { type: "grafana", uid: "-- Grafana --" },
        enable: true,
        hide: true,
        iconColor: "rgba(0, 211, 255, 1)",
        name: "Annotations & Alerts",
        type: "dashboard"
      }]
    },
    description: "inference-router: routers per InferenceService and pod (requests, admission, tokens, upstreams) and the InferenceService controller",
    editable: true,
    fiscalYearStartMonth: 0,
    graphTooltip: 1,
    links: [],
    panels,
    refresh: "30s",
    // Grafana 10.4 and later import it; newer ones migrate it on import.
    schemaVersion: 39,
    tags: ["inference-router", "llm"],
    templating: {
      list: [
        { name: "datasource", label: "Data source", type: "datasource", query: "prometheus", hide: 0, refresh: VariableRefresh.onDashboardLoad, regex: "", includeAll: false, multi: false },
        variable("namespace", "Namespace", "label_values(router_max_concurrency, namespace)"),
        variable("inferenceservice", "InferenceService", 'label_values(router_max_concurrency{namespace=~"$namespace"}, inferenceservice)'),
        variable("pod", "Pod", 'label_values(router_max_concurrency{namespace=~"$namespace", inferenceservice=~"$inferenceservice"}, pod)'),
        variable("controller_namespace", "Controller namespace", `label_values(controller_runtime_reconcile_total{${controller}}, namespace)`, false)
      ]
    },
    time: { from: "now-1h", to: "now" },
    timepicker: {},
    timezone: "browser",
    title: "inference-router",
    uid: "inference-router",
    version: 1,
    weekStart: ""
  }
}

/** The file's text: what is committed. */
export const dashboardJson = () => JSON.stringify(dashboard(), null, 2) + "\n"

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  writeFileSync(dashboardFile, dashboardJson())
  console.log(`written ${dashboardFile}`)
}
