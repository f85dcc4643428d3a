/** The test's metric registry in the Prometheus text format, as `{ "name{labels}": value }`. */
import { Effect } from "effect"
import { PrometheusMetrics } from "effect/observability"

export const exposition = Effect.gen(function*() {
  const text = PrometheusMetrics.formatUnsafe(yield* Effect.context<never>())
  const samples: Record<string, number> = {}
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue
    const at = line.lastIndexOf(" ")
    samples[line.slice(0, at)] = Number(line.slice(at + 1))
  }
  return samples
})
