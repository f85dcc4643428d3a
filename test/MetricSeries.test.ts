/**
 * The per-request metrics kept in plain numbers (edge/MetricSeries.ts) export
 * what Effect's own metrics would after the same updates: the same snapshot,
 * the same Prometheus text.
 */
import { assert, describe, it } from "@effect/vitest"
import { Context, Metric, Schema } from "effect"
import { PrometheusMetrics } from "effect/observability"
import { modelTime, queueWait, requestDuration, requestsTotal, shedTotal } from "../src/router/core/Metrics.ts"
import { histogramSeries, labelledCounterSeries } from "../src/router/edge/MetricSeries.ts"
import { labelled } from "../src/shared/Metrics.ts"

const freshContext = () => Context.make(Metric.MetricRegistry, new Map())

const assertSameExport = (effects: Context.Context<never>, series: Context.Context<never>) => {
  assert.deepStrictEqual(Metric.snapshotUnsafe(series), Metric.snapshotUnsafe(effects))
  assert.strictEqual(PrometheusMetrics.formatUnsafe(series), PrometheusMetrics.formatUnsafe(effects))
}

/** Seconds as requests see them, and the edges: 0, on a boundary, beyond the last, huge. */
const Seconds = Schema.Union([
  Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 700 })),
  Schema.Literals([0, 0.001, 0.0025, 60, 600, 601, 1e9])
])

describe("metric series kept in plain numbers", () => {
  it.prop(
    "a histogram's export equals Effect's after the same values (each of the router's three)",
    [Schema.Array(Seconds)],
    ([values]) => {
      for (const metric of [requestDuration, queueWait, modelTime]) {
        const effects = freshContext()
        const series = freshContext()
        const record = histogramSeries(metric, series)
        metric.valueUnsafe(effects) // registered before any update, as the series is
        for (const value of values) {
          metric.updateUnsafe(value, effects)
          record(value)
        }
        assertSameExport(effects, series)
      }
    },
    { arbitrary: { runs: 100 } }
  )

  it.prop(
    "labelled counters' export equals Effect's after the same updates, series in the order first used",
    [Schema.Array(Schema.Tuple([Schema.Literals(["/infer", "/v1/completions", "unmatched"]), Schema.Literals(["200", "429", "503", "499"]), Schema.Int.check(Schema.isBetween({ minimum: -1, maximum: 4 }))]))],
    ([updates]) => {
      const effects = freshContext()
      const series = freshContext()
      const requestsBy = labelled(requestsTotal, "endpoint", "status")
      const requestsSeries = labelledCounterSeries(requestsTotal, series, "endpoint", "status")
      const shedBy = labelled(shedTotal, "reason")
      const shedSeries = labelledCounterSeries(shedTotal, series, "reason")
      for (const [endpoint, status, drawn] of updates) {
        // -1 and NaN too: both ignore them.
        const amount = drawn === 4 ? Number.NaN : drawn
        requestsBy(endpoint, status).updateUnsafe(amount, effects)
        requestsSeries(endpoint, status)(amount)
        shedBy(status).updateUnsafe(amount, effects)
        shedSeries(status)(amount)
      }
      assertSameExport(effects, series)
    },
    { arbitrary: { runs: 100 } }
  )

  it("a NaN lands above every bucket, as in Effect's", () => {
    const effects = freshContext()
    const series = freshContext()
    const record = histogramSeries(requestDuration, series)
    requestDuration.valueUnsafe(effects)
    for (const value of [0.5, Number.NaN, 0.5]) {
      requestDuration.updateUnsafe(value, effects)
      record(value)
    }
    assertSameExport(effects, series)
  })

  it("a second observer on the same registry (a rebuilt layer) counts on from the first's numbers", () => {
    const effects = freshContext()
    const series = freshContext()
    for (let observer = 0; observer < 2; observer++) {
      const record = histogramSeries(requestDuration, series)
      const requestsSeries = labelledCounterSeries(requestsTotal, series, "endpoint", "status")
      const requestsBy = labelled(requestsTotal, "endpoint", "status")
      requestDuration.valueUnsafe(effects)
      for (const value of [0.002, 0.3]) {
        requestDuration.updateUnsafe(value, effects)
        record(value)
        requestsBy("/infer", "200").updateUnsafe(1, effects)
        requestsSeries("/infer", "200")(1)
      }
    }
    assertSameExport(effects, series)
    assert.include(PrometheusMetrics.formatUnsafe(series), `router_requests_total{endpoint="/infer",status="200"} 4`)
  })
})
