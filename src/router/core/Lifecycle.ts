/**
 * The router's serving lifecycle: serving, then draining after SIGTERM/SIGINT.
 *
 * Draining flips `/readyz` to 503 at once, so Kubernetes stops routing new
 * traffic here, and keeps serving every route for SHUTDOWN_DELAY_MS while the
 * endpoint removal propagates. After that the server layer closes the listener
 * and waits for in-flight requests (see `edge/NodeServer.ts`).
 */
import { Context, Effect, Layer } from "effect"
import { RouterConfig } from "./Config.ts"

export class Lifecycle extends Context.Service<Lifecycle, {
  /** Synchronous so the readiness probe costs nothing. */
  isDraining(): boolean
  /** Marks the router draining and waits SHUTDOWN_DELAY_MS; idempotent. */
  readonly drain: Effect.Effect<void>
}>()("inference-router/Lifecycle") {
  static readonly make = (shutdownDelayMs: number): Lifecycle["Service"] => {
    let draining = false
    return Lifecycle.of({
      isDraining: () => draining,
      drain: Effect.suspend(() => {
        if (draining) return Effect.void
        draining = true
        return Effect.logInfo("draining: readiness is now 503").pipe(
          Effect.annotateLogs({ shutdownDelayMs }),
          Effect.andThen(Effect.sleep(shutdownDelayMs)),
          Effect.andThen(Effect.logInfo("closing the listener; waiting for in-flight requests"))
        )
      })
    })
  }

  static readonly layer: Layer.Layer<Lifecycle, never, RouterConfig> = Layer.effect(
    Lifecycle,
    RouterConfig.useSync((config) => Lifecycle.make(config.shutdownDelayMs))
  )
}
