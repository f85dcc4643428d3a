/**
 * Entry point: runs the router until SIGTERM/SIGINT. An invalid setting stops
 * start-up before listening, with one line on stderr and a non-zero exit.
 */
import { NodeRuntime } from "@effect/platform-node"
import { Effect, Layer } from "effect"
import { RouterServer } from "./Server.ts"

Layer.launch(RouterServer).pipe(
  Effect.tapError((error) =>
    Effect.sync(() => {
      process.stderr.write(`inference-router: ${error.message}\n`)
    })
  ),
  NodeRuntime.runMain({ disableErrorReporting: true })
)
