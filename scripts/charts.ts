/**
 * Benchmark charts: SVG drawn by Vega-Lite (compiled to Vega and rendered
 * headless in Node, no browser or canvas), written beside a benchmark's
 * table. The benchmarks call `streamCharts` / `inferCharts` with their rows;
 * run directly, this redraws the committed charts in docs/bench/ from the
 * tables recorded in BENCHMARKS.md:
 *
 *   node scripts/charts.ts            # BENCHMARKS.md -> docs/bench/*.svg
 */
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import type { TopLevelSpec } from "vega-lite"

/** One point of a curve, or one bar. */
export interface Point {
  readonly x: number | string
  readonly y: number
  readonly series: string
}

export interface ChartOptions {
  readonly title: string
  readonly subtitle?: string
  readonly x: { readonly title: string; readonly log?: boolean }
  readonly y: { readonly title: string; readonly zero?: boolean }
  readonly points: ReadonlyArray<Point>
}

const base = (options: ChartOptions) => ({
  $schema: "https://vega.github.io/schema/vega-lite/v6.json",
  title: { text: options.title, ...(options.subtitle === undefined ? {} : { subtitle: options.subtitle }), anchor: "start" as const },
  background: "white",
  config: { font: "sans-serif", legend: { orient: "bottom" as const, title: null, labelLimit: 400 } },
  data: { values: options.points.map((p) => ({ ...p })) }
})

/**
 * Vega and Vega-Lite, imported when a chart is drawn: the benchmarks also run
 * on a machine with the bundled router and no node_modules (docs/testing.md),
 * where they skip the charts; `npm run charts` draws them from the tables later.
 */
const renderers = async () => {
  try {
    return { vega: await import("vega"), vegaLite: await import("vega-lite") }
  } catch {
    return undefined
  }
}

/** SVG of a Vega-Lite spec, rendered headless. */
export const renderSvg = async (spec: TopLevelSpec): Promise<string> => {
  const loaded = await renderers()
  if (loaded === undefined) throw new Error("vega and vega-lite are not installed (npm ci)")
  const { vega, vegaLite } = loaded
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: "none" })
  try {
    return await view.toSVG()
  } finally {
    view.finalize()
  }
}

const extent = (values: ReadonlyArray<number>) => [Math.min(...values), Math.max(...values)]

/** Curves: y against a numeric x (log scale for load levels that double), one line per series. */
export const lineChart = (options: ChartOptions) =>
  renderSvg({
    ...base(options),
    width: 480,
    height: 260,
    mark: { type: "line", point: true, tooltip: true },
    encoding: {
      x: {
        field: "x",
        type: "quantitative",
        title: options.x.title,
        scale: { ...(options.x.log === true ? { type: "log" } : { zero: false }), nice: false, domain: extent(options.points.map((p) => p.x as number)) },
        axis: { values: [...new Set(options.points.map((p) => p.x as number))], format: "~s" }
      },
      y: { field: "y", type: "quantitative", title: options.y.title, scale: { zero: options.y.zero ?? true } },
      color: { field: "series", type: "nominal", sort: null },
      strokeDash: { field: "series", type: "nominal", sort: null }
    }
  } as TopLevelSpec)

/**
 * Grouped bars: one panel per x (in the order given), one bar per series,
 * each panel on its own y scale (scenarios of different magnitudes side by side).
 */
export const barChart = (options: ChartOptions) =>
  renderSvg({
    ...base(options),
    facet: {
      column: { field: "x", type: "nominal", sort: [...new Set(options.points.map((p) => String(p.x)))], title: null, header: { labelFontSize: 12 } }
    },
    spec: {
      width: 170,
      height: 220,
      mark: { type: "bar", tooltip: true },
      encoding: {
        x: { field: "series", type: "nominal", sort: null, axis: null },
        y: { field: "y", type: "quantitative", title: options.y.title },
        color: { field: "series", type: "nominal", sort: null }
      }
    },
    resolve: { scale: { y: "independent" } }
  } as TopLevelSpec)

export const writeSvg = (file: string, svg: string) => {
  mkdirSync(dirname(file), { recursive: true })
  writeFileSync(file, svg.endsWith("\n") ? svg : svg + "\n")
  return file
}

// ---- the benchmarks' charts ----

/** One level of `npm run bench:streams`: milliseconds added by the router, and its RSS/CPU against the bare server. */
export interface StreamLevel {
  readonly streams: number
  readonly gapMs: number
  readonly ttftAdded: { readonly p50: number; readonly p99: number }
  readonly itlAdded: { readonly p50: number; readonly p99: number }
  readonly rssRatio: number
  readonly cpuRatio: number
}

const skipped = (): Array<string> => {
  console.error("charts skipped: vega is not installed here (npm run charts draws them from the recorded tables)")
  return []
}

const levelLabel = (level: StreamLevel) => level.streams

/** `streams-latency.svg` and `streams-resources.svg`: the router's cost as open streams grow. */
export const streamCharts = async (levels: ReadonlyArray<StreamLevel>, dir: string, prefix = "", subtitle?: string) => {
  if ((await renderers()) === undefined) return skipped()
  const gaps = [...new Set(levels.map((l) => l.gapMs))].join(" / ")
  const note = subtitle ?? `inter-token gap ${gaps} ms`
  const latency = await lineChart({
    title: "Latency the router adds to streams",
    subtitle: `router minus a bare SSE server; ${note}`,
    x: { title: "concurrent streams", log: true },
    y: { title: "added (ms)", zero: false },
    points: levels.flatMap((l) => [
      { x: levelLabel(l), y: l.ttftAdded.p50, series: "first token p50" },
      { x: levelLabel(l), y: l.ttftAdded.p99, series: "first token p99" },
      { x: levelLabel(l), y: l.itlAdded.p50, series: "inter-token p50" },
      { x: levelLabel(l), y: l.itlAdded.p99, series: "inter-token p99" }
    ])
  })
  const resources = await lineChart({
    title: "Router memory and CPU against a bare SSE server",
    subtitle: `ratio router / bare server; ${note}`,
    x: { title: "concurrent streams", log: true },
    y: { title: "router / bare (×)" },
    points: levels.flatMap((l) => [
      { x: levelLabel(l), y: l.rssRatio, series: "RSS with N streams open" },
      { x: levelLabel(l), y: l.cpuRatio, series: "CPU per token" }
    ])
  })
  return [writeSvg(join(dir, `${prefix}streams-latency.svg`), latency), writeSvg(join(dir, `${prefix}streams-resources.svg`), resources)]
}

/** One scenario of `npm run bench`: router and baseline medians. */
export interface InferScenario {
  readonly name: string
  readonly router: { readonly rps: number; readonly p50: number; readonly p99: number }
  readonly baseline: { readonly rps: number; readonly p50: number; readonly p99: number }
}

/** `infer-throughput.svg` and `infer-latency.svg`: router and baseline side by side per scenario. */
export const inferCharts = async (scenarios: ReadonlyArray<InferScenario>, dir: string, prefix = "", subtitle?: string) => {
  if ((await renderers()) === undefined) return skipped()
  const throughput = await barChart({
    title: "POST /infer throughput: router and a bare node:http baseline",
    ...(subtitle === undefined ? {} : { subtitle }),
    x: { title: "scenario" },
    y: { title: "requests per second" },
    points: scenarios.flatMap((s) => [
      { x: s.name, y: s.router.rps, series: "router" },
      { x: s.name, y: s.baseline.rps, series: "baseline" }
    ])
  })
  const latency = await barChart({
    title: "POST /infer latency: router and baseline",
    ...(subtitle === undefined ? {} : { subtitle }),
    x: { title: "scenario" },
    y: { title: "ms" },
    points: scenarios.flatMap((s) => [
      { x: s.name, y: s.router.p50, series: "router p50" },
      { x: s.name, y: s.baseline.p50, series: "baseline p50" },
      { x: s.name, y: s.router.p99, series: "router p99" },
      { x: s.name, y: s.baseline.p99, series: "baseline p99" }
    ])
  })
  return [writeSvg(join(dir, `${prefix}infer-throughput.svg`), throughput), writeSvg(join(dir, `${prefix}infer-latency.svg`), latency)]
}

// ---- tables recorded in BENCHMARKS.md ----

/** The rows of the first Markdown table after the heading that starts with `heading`, cells trimmed. */
export const tableAfter = (markdown: string, heading: string): Array<Array<string>> => {
  const lines = markdown.split("\n")
  const start = lines.findIndex((line) => line.startsWith(heading))
  if (start === -1) throw new Error(`BENCHMARKS.md: no heading "${heading}"`)
  // The "heading" may be the table's own header line.
  const first = lines.findIndex((line, i) => i >= start && line.startsWith("|"))
  const rows: Array<Array<string>> = []
  for (let i = first; i < lines.length && lines[i].startsWith("|"); i++) {
    rows.push(lines[i].slice(1, -1).split("|").map((cell) => cell.trim()))
  }
  // Less the header and the alignment row.
  return rows.slice(2)
}

/** A number as the tables write it: `+0.41`, `−3.95` (a minus sign), `**0.95×**`, `1,000`. */
export const cellNumber = (cell: string): number => {
  const match = /[+\-−]?[\d,]*\.?\d+/.exec(cell.replaceAll("*", ""))
  if (match === null) throw new Error(`not a number: "${cell}"`)
  return Number(match[0].replace("−", "-").replaceAll(",", ""))
}
const pair = (cell: string) => {
  const [a, b] = cell.split("/")
  return { p50: cellNumber(a), p99: cellNumber(b) }
}

/** The streams sweep of BENCHMARKS.md section 6d (steady arrivals, production flags). */
export const recordedStreamLevels = (markdown: string): Array<StreamLevel> => {
  // 6d has several tables; the sweep is the one whose first column is "streams @ gap".
  const start = markdown.indexOf("### 6d.")
  if (start === -1) throw new Error("BENCHMARKS.md: no section 6d")
  const section = markdown.slice(start)
  const at = section.indexOf("| streams @ gap |")
  if (at === -1) throw new Error("BENCHMARKS.md 6d: no streams @ gap table")
  return tableAfter(section.slice(at), "| streams @ gap |").map((cells) => {
    const [streams, gap] = cells[0].split("@")
    return {
      streams: cellNumber(streams),
      gapMs: cellNumber(gap),
      ttftAdded: pair(cells[1]),
      itlAdded: pair(cells[2]),
      rssRatio: cellNumber(cells[4]),
      cpuRatio: cellNumber(cells[5])
    }
  })
}

/** Scenarios 1 (both log settings) and 2 of the 2026-11-27 results. */
export const recordedInferScenarios = (markdown: string): Array<InferScenario> => {
  const scenario = (name: string, heading: string): InferScenario => {
    const rows = tableAfter(markdown, heading)
    const row = (label: string) => {
      const cells = rows.find((r) => r[0] === label)
      if (cells === undefined) throw new Error(`BENCHMARKS.md "${heading}": no row "${label}"`)
      return { rps: cellNumber(cells[1]), p50: cellNumber(cells[2]), p99: cellNumber(cells[3]) }
    }
    return { name, router: row("router"), baseline: row("baseline") }
  }
  return [
    scenario("overhead, access log on", "### 1. Router overhead (default settings"),
    scenario("overhead, access log off", "### 1. Router overhead (LOG_LEVEL=warn"),
    scenario("admission under pressure", "### 2. Admission under pressure")
  ]
}

const root = fileURLToPath(new URL("..", import.meta.url))

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) {
  const markdown = readFileSync(join(root, "BENCHMARKS.md"), "utf8")
  const dir = join(root, "docs", "bench")
  const written = [
    ...await streamCharts(recordedStreamLevels(markdown), dir, "", "BENCHMARKS.md 6d; gap 10 ms (50 ms at 1,000)"),
    ...await inferCharts(recordedInferScenarios(markdown), dir, "", "BENCHMARKS.md 1 and 2 (2026-11-27): overhead at 50 connections, admission 8 slots × 20 ms at 32")
  ]
  for (const file of written) console.log(`written ${file}`)
}
