/**
 * Counters and histograms for the per-request metrics whose state lives in
 * plain numbers here, read by Effect's registry when metrics are exported
 * (`Metric.registerUnsafe`, as the process metrics are read at scrape time).
 * A bypass of `Metric.updateUnsafe`: the five updates of every request cost
 * about 5 % of the router's CPU per `/infer` request (BENCHMARKS.md section
 * 17), each one resolving its series in the registry, a labelled one building
 * a context too. The state read is the one Effect's own counter and histogram
 * would hold (test/MetricSeries.test.ts), so `/metrics` prints the same.
 */
import { type Context, Metric } from "effect"

const ignored = () => {}

/** Adds to an incremental counter's series (its attributes and registry from `context`). */
export const counterSeries = (
  metric: Metric.Metric<number, Metric.CounterState<number>>,
  context: Context.Context<never>
): (amount: number) => void => {
  let count = 0
  Metric.registerUnsafe(metric, context, { get: () => ({ count, incremental: true }), update: ignored, modify: ignored })
  return (amount) => {
    count += amount
  }
}

/**
 * One counter series per label set, registered at its first use (a series
 * exported at 0 from the start: call it with 0). Nested Maps by each value in
 * turn, as `labelled` does for Effect's metrics.
 */
export const labelledCounterSeries = (
  metric: Metric.Metric<number, Metric.CounterState<number>>,
  context: Context.Context<never>,
  ...labelNames: ReadonlyArray<string>
): (...values: ReadonlyArray<string>) => (amount: number) => void => {
  const root = new Map<string, unknown>()
  return (...values) => {
    let level = root
    const last = values.length - 1
    for (let i = 0; i < last; i++) {
      let next = level.get(values[i]) as Map<string, unknown> | undefined
      if (next === undefined) level.set(values[i], next = new Map())
      level = next
    }
    let add = level.get(values[last]) as ((amount: number) => void) | undefined
    if (add === undefined) {
      const attributes: Record<string, string> = {}
      labelNames.forEach((name, i) => (attributes[name] = values[i]))
      add = counterSeries(Metric.withAttributes(metric, attributes), context)
      level.set(values[last], add)
    }
    return add
  }
}

/**
 * Records into a histogram's series; `boundaries` must be the ones `metric`
 * was made with. Counts are doubles (Effect's wrap at 2^32).
 */
export const histogramSeries = (
  metric: Metric.Metric<number, Metric.HistogramState>,
  boundaries: ReadonlyArray<number>,
  context: Context.Context<never>
): (value: number) => void => {
  const bounds = Float64Array.from([...boundaries].sort((a, b) => a - b))
  const size = bounds.length
  // Per bucket; the last counts values above every boundary (exported as +Inf, from `count`).
  const counts = new Float64Array(size + 1)
  let count = 0
  let sum = 0
  let min = Number.MAX_VALUE
  let max = -Number.MAX_VALUE
  Metric.registerUnsafe(metric, context, {
    get: () => {
      const buckets: Array<[number, number]> = []
      let cumulated = 0
      for (let i = 0; i < size; i++) {
        cumulated += counts[i]
        buckets.push([bounds[i], cumulated])
      }
      return { buckets, count, min, max, sum }
    },
    update: ignored,
    modify: ignored
  })
  return (value) => {
    // The first bucket whose boundary is at least the value (NaN: none), as Effect's search finds it.
    let bucket = 0
    while (bucket < size && !(value <= bounds[bucket])) bucket++
    counts[bucket]++
    count++
    sum += value
    if (value < min) min = value
    if (value > max) max = value
  }
}
