/**
 * Benchmark charts (scripts/charts.ts): the SVG Vega draws holds every point
 * given, labelled with its values, and the tables in BENCHMARKS.md's format
 * are read into those points (signs, bold, ×, thousands separators).
 */
import { mkdtempSync, readFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { assert, describe, it } from "vitest"
import {
  cellNumber,
  inferCharts,
  lineChart,
  recordedInferScenarios,
  recordedStreamLevels,
  streamCharts,
  tableAfter
} from "../scripts/charts.ts"

/** The points an SVG's marks carry, from Vega's accessible labels: `x: 50; y: 0.41; series: a`. */
const pointsOf = (svg: string, role: "point" | "bar") =>
  [...svg.matchAll(/<path aria-label="([^"]+)" role="graphics-symbol" aria-roledescription="([^"]+)"/g)]
    .filter(([, , kind]) => kind === role)
    .map(([, label]) => Object.fromEntries(label.split("; ").map((part) => part.split(": ") as [string, string])))

const benchmarks = `
### 1. Router overhead (default settings: one access-log line per request): SIM_LATENCY_MS=0
| | req/s | p50 ms | p99 ms | peak RSS MiB |
|---|---:|---:|---:|---:|
| router | 56108 | 0.80 | 1.74 | 107.7 |
| baseline | 68768 | 0.67 | 1.47 | 116.9 |
| **router / baseline** | **0.81×** | 1.20× | 1.18× | **0.92×** |

### 1. Router overhead (LOG_LEVEL=warn: no access log)
| | req/s | p50 ms | p99 ms | peak RSS MiB |
|---|---:|---:|---:|---:|
| router | 61089 | 0.75 | 1.54 | 108.6 |
| baseline | 63493 | 0.72 | 1.62 | 112.1 |

### 2. Admission under pressure: MAX_CONCURRENCY=8
| | req/s | p50 ms | p99 ms |
|---|---:|---:|---:|
| router | 389 | 81.95 | 87.08 |
| baseline | 395 | 80.68 | 86.19 |

### 6d. Less kept per stream (2026-11-28)
| | promoted per stream |
|---|---:|
| bare | 4.0 KB |

| streams @ gap | TTFT p50 / p99 added (ms) | ITL p50 / p99 added (ms) | ITL p99 bare / router | RSS router / bare | CPU µs/token router / bare |
|---:|---:|---:|---:|---:|---:|
| 50 @ 10 ms | +0.41 / +0.20 | −0.28 / −0.31 | 11.55 / 11.25 ms | 1.03× | 0.94× |
| 1,000 @ 50 ms | +0.80 / −0.37 | −0.60 / −0.92 | 52.80 / 51.88 ms | 0.63× | 1.25× |
`

describe("benchmark charts", () => {
  it("reads numbers as the tables write them", () => {
    assert.strictEqual(cellNumber("−3.95"), -3.95)
    assert.strictEqual(cellNumber("+0.41 "), 0.41)
    assert.strictEqual(cellNumber("**0.95×**"), 0.95)
    assert.strictEqual(cellNumber("1,000 "), 1000)
    assert.throws(() => cellNumber("n/a"), /not a number/)
    assert.deepStrictEqual(tableAfter(benchmarks, "### 2. Admission")[1], ["baseline", "395", "80.68", "86.19"])
  })

  it("reads the streams sweep and the /infer scenarios from BENCHMARKS.md's tables", () => {
    assert.deepStrictEqual(recordedStreamLevels(benchmarks), [
      { streams: 50, gapMs: 10, ttftAdded: { p50: 0.41, p99: 0.2 }, itlAdded: { p50: -0.28, p99: -0.31 }, rssRatio: 1.03, cpuRatio: 0.94 },
      { streams: 1000, gapMs: 50, ttftAdded: { p50: 0.8, p99: -0.37 }, itlAdded: { p50: -0.6, p99: -0.92 }, rssRatio: 0.63, cpuRatio: 1.25 }
    ])
    const scenarios = recordedInferScenarios(benchmarks)
    assert.deepStrictEqual(scenarios.map((s) => [s.name, s.router.rps, s.baseline.p99]), [
      ["overhead, access log on", 56108, 1.47],
      ["overhead, access log off", 61089, 1.62],
      ["admission under pressure", 389, 86.19]
    ])
  })

  it("draws every point of every curve, with its axis titles and legend", async () => {
    const svg = await lineChart({
      title: "Curves",
      x: { title: "streams", log: true },
      y: { title: "ms" },
      points: [
        { x: 50, y: 1.5, series: "a" },
        { x: 500, y: -2, series: "a" },
        { x: 50, y: 3, series: "b" },
        { x: 500, y: 4, series: "b" }
      ]
    })
    assert.match(svg, /^<svg /)
    for (const text of ["Curves", "streams", "ms"]) assert.include(svg, `>${text}</text>`)
    assert.deepStrictEqual(pointsOf(svg, "point").map((p) => [p.streams, p.ms, p.series]), [
      ["50", "1.5", "a"],
      ["500", "−2", "a"],
      ["50", "3", "b"],
      ["500", "4", "b"]
    ])
  })

  it("writes the benchmarks' charts, one point per level and figure", async () => {
    const dir = mkdtempSync(join(tmpdir(), "charts-"))
    const [latency, resources] = await streamCharts(recordedStreamLevels(benchmarks), dir, "run-")
    assert.strictEqual(latency, join(dir, "run-streams-latency.svg"))
    const points = pointsOf(readFileSync(latency, "utf8"), "point")
    assert.lengthOf(points, 2 * 4)
    assert.deepInclude(points, { "concurrent streams": "1k", "added (ms)": "−0.92", series: "inter-token p99" })
    assert.lengthOf(pointsOf(readFileSync(resources, "utf8"), "point"), 2 * 2)
    const [throughput] = await inferCharts(recordedInferScenarios(benchmarks), dir)
    const bars = pointsOf(readFileSync(throughput, "utf8"), "bar")
    assert.lengthOf(bars, 3 * 2)
    assert.deepInclude(bars, { series: "baseline", "requests per second": "395" })
  })
})
