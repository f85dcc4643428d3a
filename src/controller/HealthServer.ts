/**
 * The controller's own HTTP endpoints, on Effect's HTTP server (not a hot
 * path): `/healthz` (the process runs, its leader-election fiber has not ended on a defect, and its workers make progress), `/readyz` (the informers have listed
 * once), `/metrics` (Prometheus).
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Layer } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { createServer } from "node:http"
import { metricContext, prometheusResponse } from "../shared/Metrics.ts"
import { ControllerConfig } from "./ControllerConfig.ts"
import { ControllerState } from "./Controller.ts"
import { queueDepth } from "./Metrics.ts"

const Routes = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const state = yield* ControllerState
  yield* router.add(
    "GET",
    "/healthz",
    Effect.sync(() => {
      const failure = state.failure()
      if (failure !== undefined) return HttpServerResponse.jsonUnsafe({ status: "failed", reason: failure }, { status: 503 })
      return state.isStalled()
        ? HttpServerResponse.jsonUnsafe({ status: "stalled", reason: "a reconcile has made no progress for ten API timeouts" }, { status: 503 })
        : HttpServerResponse.jsonUnsafe({ status: "ok" })
    })
  )
  yield* router.add(
    "GET",
    "/readyz",
    Effect.sync(() =>
      state.isReady()
        ? HttpServerResponse.jsonUnsafe({ status: "ready", leading: state.isLeading() })
        : HttpServerResponse.jsonUnsafe({ status: "syncing" }, { status: 503 })
    )
  )
  yield* router.add(
    "GET",
    "/metrics",
    Effect.gen(function*() {
      const context = yield* Effect.context<never>()
      queueDepth.updateUnsafe(state.queueDepth(), metricContext(context))
      return prometheusResponse(context)
    })
  )
}))

export const HealthServer = Layer.unwrap(Effect.gen(function*() {
  const settings = yield* ControllerConfig
  return HttpRouter.serve(Routes, { disableLogger: true }).pipe(
    Layer.provide(NodeHttpServer.layer(() => createServer(), {
      port: settings.port,
      ...(settings.host === undefined ? {} : { host: settings.host })
    }))
  )
}))
