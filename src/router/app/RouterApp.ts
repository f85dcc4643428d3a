/**
 * The router's Effect HTTP application (probes, `/metrics`, `/openapi.json`,
 * `/docs`, the simulated server's routes) with the error envelope around it,
 * and the table of every route the router serves. `/infer` and `/v1/*` are
 * served by the request pipeline at the edge (edge/Pipeline.ts), not here.
 */
import { Context, Effect, Layer } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApiBuilder, OpenApi } from "effect/http-api"
import { metricsPath, openapiPath, RouterApi } from "../../api/RouterApi.ts"
import { DocsRoute, docsRoutes } from "./DocsRoute.ts"
import { withErrorEnvelope } from "./ErrorEnvelope.ts"
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

/**
 * The whole contract as OpenAPI, computed once, on the first request: not at
 * start-up, where building it (and compiling the code that builds it) cost
 * idle memory (BENCHMARKS.md section 12).
 */
const OpenApiRoute = HttpRouter.use((router) =>
  Effect.flatMap(
    Effect.cached(Effect.sync(() => HttpServerResponse.jsonUnsafe(OpenApi.fromApi(RouterApi)))),
    (document) => router.add("GET", openapiPath, document)
  )
)


/**
 * The HTTP application: routes and middleware. Built after the Node server and
 * released before it, so requests still running when the server stops are
 * interrupted only after its grace period.
 */
export const RouterApp = Layer.mergeAll(
  HttpApiBuilder.layer(ProbesApi).pipe(Layer.provide(ProbeHandlers)),
  OpenApiRoute,
  DocsRoute,
  MetricsRoute,
  SimulationRoutes,
  ErrorEnvelopeMiddleware
)
