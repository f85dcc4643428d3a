/**
 * The router's HTTP application: every route it serves, and the error
 * envelope around the ones on Effect's router. `/infer` is registered with
 * NodeRoutes with the request pipeline (edge/Pipeline.ts); the rest are Effect routes.
 */
import { Context, Effect, Layer, Scheduler } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApiBuilder, OpenApi } from "effect/http-api"
import { metricsPath, openapiPath, RouterApi } from "../../api/RouterApi.ts"
import { DocsRoute, docsRoutes } from "./DocsRoute.ts"
import { withErrorEnvelope } from "../edge/ErrorEnvelope.ts"
import { InferHandler } from "../edge/InferHandler.ts"
import { OpenAiHandler } from "../edge/OpenAiHandler.ts"
import { Pipeline } from "../edge/Pipeline.ts"
import { ProbeHandlers, ProbesApi } from "./ProbeHandlers.ts"
import { routeTable } from "./Routes.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { MetricsRoute } from "./MetricsRoute.ts"
import { simulationRouteSpecs, SimulationRoutes } from "../simulated/SimulationRoutes.ts"

/** Every route the router serves: what it matches, answers 405 for, and labels metrics with. */
export const routes = routeTable([
  ...Object.values(RouterApi.groups).flatMap((group) =>
    Object.values(group.endpoints).map(({ method, path }) => ({ method, path }))
  ),
  { method: "GET", path: openapiPath },
  ...docsRoutes,
  { method: "GET", path: metricsPath },
  ...simulationRouteSpecs
])

const ErrorEnvelopeMiddleware = HttpRouter.middleware(
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const envelope = withErrorEnvelope({ isDraining: lifecycle.isDraining })
    return (httpEffect) =>
      Effect.withFiber((fiber) =>
        envelope(Context.getUnsafe(fiber.context, HttpServerRequest.HttpServerRequest), httpEffect)
      )
  }),
  { global: true }
)

/** The whole contract as OpenAPI, computed once. */
const OpenApiRoute = HttpRouter.use((router) =>
  Effect.suspend(() => {
    const document = HttpServerResponse.jsonUnsafe(OpenApi.fromApi(RouterApi))
    return router.add("GET", openapiPath, Effect.succeed(document))
  })
)

/**
 * Where `/infer`'s fibers (admission, the model) continue after a timer or a
 * freed slot: on a microtask, not Effect's default `setImmediate`. The default
 * waits for a whole poll phase of the event loop at each such step, which
 * under load measured 0.6–0.9 ms between one request freeing a slot and the
 * next starting (0.14 ms with microtasks), and 0.3 ms more after each model
 * timer: 92–93 % of the theoretical throughput with slots always busy
 * (benchmark scenario 2), 97 % with microtasks. The catch, that such fibers
 * never yield to I/O, does not apply: none of them does CPU-heavy work.
 */
export const RequestScheduler = Layer.succeed(Scheduler.Scheduler, new Scheduler.MixedScheduler("sync"))

/**
 * The HTTP application: routes and middleware, and `/infer` on NodeRoutes.
 * Built after the Node server and released before it, so requests still
 * running when the server stops are interrupted only after its grace period.
 */
export const RouterApp = Layer.mergeAll(
  HttpApiBuilder.layer(ProbesApi).pipe(Layer.provide(ProbeHandlers)),
  // One pipeline for both, built with them: released before the server and the
  // request observer, so the requests it stops at the end of a drain are answered
  // and logged while those still listen.
  Layer.mergeAll(InferHandler, OpenAiHandler).pipe(Layer.provide(Pipeline.layer), Layer.provide(RequestScheduler)),
  OpenApiRoute,
  DocsRoute,
  MetricsRoute,
  SimulationRoutes,
  ErrorEnvelopeMiddleware
)
