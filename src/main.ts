/**
 * Entry point: runs the router until SIGTERM/SIGINT. An invalid setting stops
 * start-up before listening, with one line on stderr and a non-zero exit.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Exit, Layer, Runtime } from "effect"
import { RouterServer } from "./Server.ts"

// A signal is a requested stop: once the drain completes, exit 0 (not 130),
// so Kubernetes and supervisors see a clean shutdown.
const teardown: Runtime.Teardown = (exit, onExit) =>
  Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : Runtime.defaultTeardown(exit, onExit)

Layer.launch(RouterServer).pipe(
  Effect.tapError((error) =>
    Effect.sync(() => {
      process.stderr.write(`inference-router: ${error.message}\n`)
    })
  ),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown })
)
