/**
 * Entry point: runs the router until SIGTERM/SIGINT, then drains: readiness
 * flips to 503, `/infer` is served for SHUTDOWN_DELAY_MS, the listener closes
 * and in-flight requests finish (bounded by SHUTDOWN_TIMEOUT_MS), exit 0.
 * An invalid setting stops start-up before listening, with one line on stderr.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Context, Effect, Exit, Layer, Runtime } from "effect"
import { Lifecycle } from "./Lifecycle.ts"
import { RouterServer } from "./Server.ts"

// A signal is a requested stop: once the drain completes, exit 0 (not 130),
// so Kubernetes and supervisors see a clean shutdown.
const teardown: Runtime.Teardown = (exit, onExit) =>
  Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : Runtime.defaultTeardown(exit, onExit)

Effect.scoped(Effect.gen(function*() {
  const services = yield* Layer.build(RouterServer)
  // runMain interrupts this fiber on SIGTERM/SIGINT; the drain runs before the
  // scope closes the listener.
  const drain = Context.get(services, Lifecycle).drain.pipe(Effect.provideContext(services))
  return yield* Effect.never.pipe(Effect.onInterrupt(() => drain))
})).pipe(
  Effect.tapError((error) =>
    Effect.sync(() => {
      process.stderr.write(`inference-router: ${error.message}\n`)
    })
  ),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown })
)
