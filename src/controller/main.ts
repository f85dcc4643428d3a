/**
 * Entry point of the controller program:
 * - `node src/controller/main.ts` runs the controller against the current
 *   kubeconfig until SIGTERM/SIGINT (then it releases its Lease and exits 0);
 * - `node src/controller/main.ts render FILE...` prints the objects it would
 *   apply for InferenceService files, with no cluster.
 * Any failure prints one line on stderr naming the cause, exit 1.
 */
import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect, Layer } from "effect"
import { exitOnSignal, reportFailure } from "../shared/Main.ts"
import { ControllerServer } from "./ControllerServer.ts"
import { render } from "./Render.ts"

const [command, ...args] = process.argv.slice(2)

const program: Effect.Effect<unknown, { readonly message: string }> = command === "render"
  ? render(args)
  : Layer.launch(ControllerServer)

program.pipe(
  reportFailure("inference-router-controller"),
  NodeRuntime.runMain({ disableErrorReporting: true, teardown: exitOnSignal })
)
