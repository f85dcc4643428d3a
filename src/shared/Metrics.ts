/**
 * Metric helpers both programs use, on Effect's Metric registry and its
 * Prometheus formatter.
 */
import { Context, Metric } from "effect"
import { HttpServerResponse } from "effect/http"
import { PrometheusMetrics } from "effect/observability"

/** Seconds, from 1 ms to a minute. */
export const secondsHistogram = (name: string, description: string) =>
  Metric.histogram(name, {
    description,
    boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
  })

/**
 * The part of a context that metric updates read: the registry and the global
 * metric attributes. Updating with it rather than a whole layer context spares
 * each update two lookups that walk every service in that context: measured
 * 205 vs 155 ns for two updates, about 0.1 µs per `/infer` request.
 */
export const metricContext = (context: Context.Context<never>): Context.Context<never> =>
  Context.make(Metric.MetricRegistry, Context.get(context, Metric.MetricRegistry)).pipe(
    Context.add(Metric.CurrentMetricAttributes, Context.get(context, Metric.CurrentMetricAttributes))
  )

/** Caches one metric per label set, so labelling costs a Map lookup, not an allocation. */
export const labelled = <M extends Metric.Metric<any, any>>(metric: M, ...labelNames: ReadonlyArray<string>) => {
  const cache = new Map<string, M>()
  return (...values: ReadonlyArray<string>): M => {
    const key = values.join("\u0000")
    let found = cache.get(key)
    if (found === undefined) {
      const attributes: Record<string, string> = {}
      labelNames.forEach((name, i) => (attributes[name] = values[i]))
      found = Metric.withAttributes(metric, attributes) as M
      cache.set(key, found)
    }
    return found
  }
}

/** Every metric in the context's registry, in the Prometheus text format. */
export const prometheusResponse = (context: Context.Context<never>) =>
  HttpServerResponse.text(PrometheusMetrics.formatUnsafe(context), {
    contentType: "text/plain; version=0.0.4; charset=utf-8"
  })
