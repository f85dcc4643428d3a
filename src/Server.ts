/**
 * Composes the router: the routes (probes through HttpApiBuilder, `/infer`,
 * OpenAPI, docs, metrics), the error envelope, the services they use, logging,
 * the request observer and the Node HTTP server.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, References, Scheduler } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApiBuilder, HttpApiScalar, OpenApi } from "effect/http-api"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"
import { Admission } from "./Admission.ts"
import { RouterApi } from "./api/RouterApi.ts"
import { type LogLevelName, RouterConfig, type RouterSettings } from "./Config.ts"
import { allowedMethods, pathOf, withErrorEnvelope } from "./http/ErrorEnvelope.ts"
import { InferHandler } from "./http/InferHandler.ts"
import { NodeRoutes } from "./http/NodeRoutes.ts"
import { ProbeHandlers, ProbesApi } from "./http/ProbeHandlers.ts"
import { RequestObserver } from "./http/RequestObserver.ts"
import { Lifecycle } from "./Lifecycle.ts"
import { metricsPath, MetricsRoute } from "./Metrics.ts"
import { Model } from "./Model.ts"

export const openapiPath = "/openapi.json"
export const docsPath = "/docs"

/** Every route the router serves, for 405 answers and metric labels. */
export const routes = [
  ...Object.values(RouterApi.groups).flatMap((group) =>
    Object.values(group.endpoints).map(({ method, path }) => ({ method, path }))
  ),
  { method: "GET", path: openapiPath },
  { method: "GET", path: docsPath },
  { method: "GET", path: metricsPath }
]

const allowed = allowedMethods(routes)

const ErrorEnvelopeMiddleware = HttpRouter.middleware(
  Effect.gen(function*() {
    const lifecycle = yield* Lifecycle
    const envelope = withErrorEnvelope({ allowed, isDraining: lifecycle.isDraining })
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
const RequestScheduler = Layer.succeed(Scheduler.Scheduler, new Scheduler.MixedScheduler("sync"))

/**
 * The HTTP application: routes and middleware, and `/infer` on NodeRoutes.
 * Built after the Node server and released before it, so requests still
 * running when the server stops are interrupted only after its grace period.
 */
export const RouterApp = Layer.mergeAll(
  HttpApiBuilder.layer(ProbesApi).pipe(Layer.provide(ProbeHandlers)),
  InferHandler.pipe(Layer.provide(RequestScheduler)),
  OpenApiRoute,
  // Bundled script, and no web fonts: the page makes no request beyond the router.
  HttpApiScalar.layer(RouterApi, { path: docsPath, scalar: { withDefaultFonts: false } }),
  MetricsRoute,
  ErrorEnvelopeMiddleware
)

const effectLogLevel: Record<LogLevelName, "Debug" | "Info" | "Warn" | "Error"> = {
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  error: "Error"
}

/** JSON lines on stdout (LOG_FORMAT=pretty for humans), filtered at LOG_LEVEL. */
export const LoggingLayer = Layer.unwrap(RouterConfig.useSync((config) =>
  Layer.mergeAll(
    Logger.layer([config.logFormat === "pretty" ? Logger.consolePretty() : Logger.consoleJson]),
    Layer.succeed(References.MinimumLogLevel, effectLogLevel[config.logLevel])
  )
))

const StartupLog = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  if (config.modelRefDefaulted) {
    yield* Effect.logWarning(`MODEL_REF is not set; serving "${config.modelRef}"`)
  }
  // API keys are Redacted: they print as <redacted>.
  yield* Effect.logInfo("effective configuration").pipe(
    Effect.annotateLogs({ config: { ...config, apiKeys: `${config.apiKeys.length} key(s)` } })
  )
  for (const endpoint of config.kvEndpoints) {
    yield* Effect.logInfo(`KV endpoint: ${endpoint}`)
  }
}))

/**
 * The Node HTTP server, with the limits that stop slow or silent clients
 * holding connections. Every request is first seen by the request observer,
 * then served by its NodeRoutes handler if it has one, else by Effect's server.
 */
export const createHttpServer = (
  config: RouterSettings,
  observer: RequestObserver["Service"],
  nodeRoutes: NodeRoutes["Service"]
) => {
  const server = createServer({
    // Headers and the whole request must arrive within these bounds (answered 408).
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    // How often Node checks those timeouts (its default is 30 s).
    connectionsCheckingInterval: Math.min(1_000, config.headersTimeoutMs)
  })
  // Node has no hook ahead of its request listeners, and Effect's server adds
  // its own: requests are dispatched where Node emits them. `checkContinue`
  // is a request whose client waits for "100 Continue" before the body.
  const emit = server.emit
  server.emit = function(this: typeof server, event: string | symbol, ...args: Array<any>) {
    if (event === "request" || event === "checkContinue") {
      const [request, response] = args as [IncomingMessage, ServerResponse]
      const path = pathOf(request.url ?? "/")
      observer.observe(request, response, path)
      const handler = nodeRoutes.find(request.method, path)
      if (handler !== undefined) {
        handler(request, response, event === "checkContinue")
        return true
      }
    }
    return emit.apply(this, [event, ...args] as Parameters<typeof emit>)
  } as typeof server.emit
  return server
}

/** Request ids, request metrics and the access log, for the whole server. */
export const RequestObserverLayer = RequestObserver.layer(allowed)

const NodeServer = Layer.unwrap(Effect.gen(function*() {
  const config = yield* RouterConfig
  const observer = yield* RequestObserver
  const nodeRoutes = yield* NodeRoutes
  return NodeHttpServer.layer(() => createHttpServer(config, observer, nodeRoutes), {
    // On release the server stops listening and waits this long for in-flight
    // requests; those still running are then interrupted and answered 503.
    gracefulShutdownTimeout: config.shutdownTimeoutMs - config.shutdownDelayMs,
    port: config.port,
    ...(config.host === undefined ? {} : { host: config.host })
  })
}))

/**
 * The whole router as one layer: building it listens; releasing it closes the
 * listener and waits for in-flight requests. Run `Lifecycle.drain` before
 * releasing it (see main.ts). Tests swap the configuration, the model and the
 * logger; everything else is what production runs.
 */
export const makeRouterServer = <E>(options: {
  readonly config: Layer.Layer<RouterConfig, E>
  readonly model?: Layer.Layer<Model, never, RouterConfig> | undefined
  readonly logging?: Layer.Layer<never, never, RouterConfig> | undefined
}) =>
  HttpRouter.serve(RouterApp, { disableLogger: true, disableListenLog: options.logging !== undefined }).pipe(
    Layer.provideMerge(NodeServer),
    Layer.provideMerge(NodeRoutes.layer),
    Layer.provide(RequestObserverLayer),
    Layer.provideMerge(Layer.mergeAll(
      Admission.layer.pipe(Layer.provide(RequestScheduler)),
      options.model ?? Model.layer,
      Lifecycle.layer
    )),
    Layer.provide(StartupLog),
    Layer.provideMerge(options.logging ?? LoggingLayer),
    Layer.provideMerge(options.config)
  )

export const RouterServer = makeRouterServer({ config: RouterConfig.layer })
