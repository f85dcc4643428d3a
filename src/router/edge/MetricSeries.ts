/**
 * Counters and histograms for the per-request metrics whose state lives in
 * plain numbers here, read by Effect's registry when metrics are exported
 * (`Metric.registerUnsafe`, as the process metrics are read at scrape time).
 * A bypass of `Metric.updateUnsafe`: the five updates of every request cost
 * about 5 % of the router's CPU per `/infer` request (BENCHMARKS.md section
 * 17), each one resolving its series in the registry, a labelled one building
 * a context too. The state read is the one Effect's own counter and histogram
 * would hold after the same updates (test/MetricSeries.test.ts); the series
 * are exported from the observer's start (the histograms at 0). These metrics
 * must be updated here only: Effect's updates to a registered series are
 * ignored.
 */
import { Context, Metric } from "effect"
import { byLabels } from "../../shared/Metrics.ts"

const ignored = () => {}

/**
 * The state of each series, per registry: a second observer on the same
 * registry (a rebuilt layer, two routers in one process) counts on from the
 * first's numbers, as Effect's registry-held state did.
 */
const statesByRegistry = new WeakMap<Metric.MetricRegistry, Map<string, unknown>>()
const stateOf = <S>(metric: Metric.Metric<any, any>, attributes: Readonly<Record<string, string>>, context: Context.Context<never>, make: () => S, get: (state: S) => unknown): S => {
  const registry = Context.get(context, Metric.MetricRegistry)
  let states = statesByRegistry.get(registry)
  if (states === undefined) statesByRegistry.set(registry, states = new Map())
  const key = `${metric.id} ${JSON.stringify(Context.get(context, Metric.CurrentMetricAttributes))} ${JSON.stringify(attributes)}`
  let state = states.get(key) as S | undefined
  if (state === undefined) {
    const made = make()
    state = made
    states.set(key, made)
    const series = Object.keys(attributes).length === 0 ? metric : Metric.withAttributes(metric, attributes)
    Metric.registerUnsafe(series, context, { get: () => get(made), update: ignored, modify: ignored })
  }
  return state
}

/**
 * Adds to an incremental counter's series (its registry from `context`),
 * ignoring negative and NaN amounts as Effect's incremental counter does.
 */
export const counterSeries = (
  metric: Metric.Metric<number, Metric.CounterState<number>>,
  context: Context.Context<never>,
  attributes: Readonly<Record<string, string>> = {}
): (amount: number) => void => {
  const state = stateOf(metric, attributes, context, () => ({ count: 0 }), ({ count }) => ({ count, incremental: true }))
  return (amount) => {
    if (amount >= 0) state.count += amount
  }
}

/** One counter series per label set, registered at its first use (a series exported at 0 from the start: call it with 0). */
export const labelledCounterSeries = (
  metric: Metric.Metric<number, Metric.CounterState<number>>,
  context: Context.Context<never>,
  ...labelNames: ReadonlyArray<string>
): (...values: ReadonlyArray<string>) => (amount: number) => void =>
  byLabels((attributes) => counterSeries(metric, context, attributes), ...labelNames)

interface HistogramCells {
  readonly bounds: Float64Array
  /** Per bucket; the last counts values above every boundary (exported as +Inf, from `count`). */
  readonly counts: Float64Array
  count: number
  sum: number
  min: number
  max: number
}

/**
 * Records into a histogram's series. Its boundaries are read from the metric
 * (the state Effect would make for it). Bucket counts are doubles: Effect's
 * wrap at 2^32.
 */
export const histogramSeries = (
  metric: Metric.Metric<number, Metric.HistogramState>,
  context: Context.Context<never>
): (value: number) => void => {
  const cells = stateOf<HistogramCells>(metric, {}, context, () => {
    const bounds = Float64Array.from(metric.valueUnsafe(Context.make(Metric.MetricRegistry, new Map())).buckets, ([boundary]) => boundary)
    return { bounds, counts: new Float64Array(bounds.length + 1), count: 0, sum: 0, min: Number.MAX_VALUE, max: -Number.MAX_VALUE }
  }, ({ bounds, count, counts, max, min, sum }) => {
    const buckets: Array<[number, number]> = []
    let cumulated = 0
    for (let i = 0; i < bounds.length; i++) {
      cumulated += counts[i]
      buckets.push([bounds[i], cumulated])
    }
    return { buckets, count, min, max, sum }
  })
  const { bounds, counts } = cells
  const size = bounds.length
  return (value) => {
    // The first bucket whose boundary is at least the value (NaN: none), as Effect's search finds it.
    let bucket = 0
    while (bucket < size && !(value <= bounds[bucket])) bucket++
    counts[bucket]++
    cells.count++
    cells.sum += value
    if (value < cells.min) cells.min = value
    if (value > cells.max) cells.max = value
  }
}
