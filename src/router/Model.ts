/**
 * The model behind the router. Today a simulation: it waits `SIM_LATENCY_MS`
 * on Effect's Clock (so TestClock drives it in tests) and reports how long the
 * inference took. It knows nothing of HTTP or admission.
 */
import { Context, Effect, Layer } from "effect"
import { RouterConfig } from "./Config.ts"

export interface Inference {
  /** Whole milliseconds the model spent on this prompt. */
  readonly processingMs: number
}

export class Model extends Context.Service<Model, {
  infer(prompt: string): Effect.Effect<Inference>
}>()("inference-router/Model") {
  static readonly simulated = (latencyMs: number): Model["Service"] => {
    const instant = Effect.succeed<Inference>({ processingMs: 0 })
    return Model.of({
      infer: (_prompt) =>
        latencyMs === 0 ? instant : Effect.clockWith((clock) => {
          // Nanoseconds, rounded to the nearest millisecond: Node's timers run on
          // the event loop's cached clock, so a 100 ms sleep measures 99.6 ms as
          // often as 100.4 ms, and the millisecond clock can even read 99.
          const startedAt = clock.currentTimeNanosUnsafe()
          return Effect.map(Effect.sleep(latencyMs), () => ({
            processingMs: Math.round(Number(clock.currentTimeNanosUnsafe() - startedAt) / 1_000_000)
          }))
        })
    })
  }

  static readonly layer: Layer.Layer<Model, never, RouterConfig> = Layer.effect(
    Model,
    RouterConfig.useSync((config) => Model.simulated(config.simLatencyMs))
  )
}
