/**
 * The model behind the router. Today a simulation: it waits `SIM_LATENCY_MS`
 * on Effect's Clock (so TestClock drives it in tests) and reports how long the
 * inference took. It knows nothing of HTTP or admission.
 */
import { Clock, Context, Effect, Layer } from "effect"
import { RouterConfig } from "./Config.ts"

export interface Inference {
  /** Whole milliseconds the model spent on this prompt. */
  readonly processingMs: number
}

export class Model extends Context.Service<Model, {
  infer(prompt: string): Effect.Effect<Inference>
}>()("inference-router/Model") {
  static readonly simulated = (latencyMs: number): Model["Service"] =>
    Model.of({
      infer: (_prompt) =>
        Effect.gen(function*() {
          const startedAt = yield* Clock.currentTimeMillis
          if (latencyMs > 0) yield* Effect.sleep(latencyMs)
          const finishedAt = yield* Clock.currentTimeMillis
          return { processingMs: Math.floor(finishedAt - startedAt) }
        })
    })

  static readonly layer: Layer.Layer<Model, never, RouterConfig> = Layer.effect(
    Model,
    RouterConfig.useSync((config) => Model.simulated(config.simLatencyMs))
  )
}
