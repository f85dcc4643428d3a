/**
 * What a controller process has done, read from its /metrics, for tests that
 * check "nothing was written" after the work that would have written it, not
 * after a guessed time.
 */
import type { FakeKubeApi } from "./FakeKubeApi.ts"
import { until } from "./Processes.ts"
import { requestAt } from "./TestRouter.ts"

/** Reconciles the controller has finished (every result). */
export const reconcilesDone = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n")
    .filter((line) => line.startsWith("inference_router_controller_reconciles_total{"))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

/** Whether no reconcile runs or waits now, from the work queue's gauges. */
export const idle = async (port: number) => {
  const lines = (await requestAt(port, { path: "/metrics" })).text.split("\n")
  const gauge = (name: string) => lines.filter((l) => l.startsWith(name + "{")).reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(" ") + 1)), 0)
  return gauge("controller_runtime_active_workers") === 0 && gauge("workqueue_depth") === 0
}

/**
 * Waits until the controller has done `rounds` more reconciles of every stored InferenceService
 * (resyncs come every second), then until none runs or waits (a write in flight has landed).
 */
export const afterResyncs = async (api: FakeKubeApi, port: number, rounds: number) => {
  const wanted = (await reconcilesDone(port)) + rounds * api.list("inferenceservices").length
  await until(async () => (await reconcilesDone(port)) >= wanted && (await idle(port)), `${rounds} resync(s)`)
}
