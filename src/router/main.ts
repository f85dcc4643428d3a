/**
 * Entry point: runs the router until SIGTERM/SIGINT, then drains: readiness
 * flips to 503, requests are served for SHUTDOWN_DELAY_MS, the listener closes
 * and in-flight requests finish (bounded by SHUTDOWN_TIMEOUT_MS), exit 0.
 * Any failure to start prints one line on stderr naming the cause, exit 1.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Context, Effect, Layer } from "effect"
import { exitOnSignal, reportFailure } from "../shared/Main.ts"
import { Lifecycle } from "./core/Lifecycle.ts"
import { RouterServer } from "./edge/RouterServer.ts"

Effect.scoped(Effect.gen(function*() {
  const services = yield* Layer.build(RouterServer)
  // runMain interrupts this fiber on SIGTERM/SIGINT; the drain runs before the
  // scope closes the listener.
  const drain = Context.get(services, Lifecycle).drain.pipe(Effect.provideContext(services))
  return yield* Effect.never.pipe(Effect.onInterrupt(() => drain))
})).pipe(
  reportFailure("inference-router"),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown: exitOnSignal })
)
