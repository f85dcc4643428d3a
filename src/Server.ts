/**
 * Composes the router: the HttpApi routes with their handlers, the metrics
 * and docs routes, the request pipeline middleware, the services they use,
 * logging, and the Node HTTP server.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Context, Effect, Layer, Logger, References } from "effect"
import { HttpRouter, HttpServerRequest } from "effect/http"
import { HttpApiBuilder, HttpApiScalar } from "effect/http-api"
import { createServer } from "node:http"
import { Admission } from "./Admission.ts"
import { RouterApi } from "./api/RouterApi.ts"
import { type LogLevelName, RouterConfig, type RouterSettings } from "./Config.ts"
import { AuthorizationLayer } from "./http/Authorization.ts"
import { allowedMethods, withErrorEnvelope } from "./http/ErrorEnvelope.ts"
import { withObservability } from "./http/Observability.ts"
import { RouterHandlers } from "./http/RouterHandlers.ts"
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

/** Observability outermost (it sees the final answer), then the error envelope. */
const RequestPipeline = HttpRouter.middleware(
  Effect.gen(function*() {
    const config = yield* RouterConfig
    const envelope = withErrorEnvelope({ allowed, maxBodyBytes: config.maxBodyBytes })
    const observe = withObservability({ allowed })
    return (httpEffect) =>
      Effect.withFiber((fiber) => {
        const request = Context.getUnsafe(fiber.context, HttpServerRequest.HttpServerRequest)
        return observe(request, envelope(request, httpEffect))
      })
  }),
  { global: true }
)

/** The HTTP application: routes and middleware. Needs RouterConfig, Admission, Model and Lifecycle. */
export const RouterApp = Layer.mergeAll(
  HttpApiBuilder.layer(RouterApi, { openapiPath }).pipe(
    Layer.provide(RouterHandlers),
    Layer.provide(AuthorizationLayer)
  ),
  HttpApiScalar.layer(RouterApi, { path: docsPath }),
  MetricsRoute,
  RequestPipeline
)

/** Admission, the model and the lifecycle, over the configuration. */
export const RouterServices = Layer.mergeAll(Admission.layer, Model.layer, Lifecycle.layer)

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

/** The Node HTTP server, with the limits that stop slow or silent clients holding connections. */
export const createHttpServer = (config: RouterSettings) =>
  createServer({
    // Headers and the whole request must arrive within these bounds (answered 408).
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    // How often Node checks those timeouts (its default is 30 s).
    connectionsCheckingInterval: Math.min(1_000, config.headersTimeoutMs)
  })

const NodeServer = Layer.unwrap(RouterConfig.useSync((config) =>
  NodeHttpServer.layer(() => createHttpServer(config), {
    // On release the server stops listening and waits this long for in-flight
    // requests; those still running are then interrupted and answered 503.
    gracefulShutdownTimeout: config.shutdownTimeoutMs - config.shutdownDelayMs,
    port: config.port,
    ...(config.host === undefined ? {} : { host: config.host })
  })
))

/**
 * The whole router as one layer: building it listens; releasing it closes the
 * listener and waits for in-flight requests. Run `Lifecycle.drain` before
 * releasing it (see main.ts).
 */
export const RouterServer = HttpRouter.serve(RouterApp, { disableLogger: true }).pipe(
  Layer.provide(NodeServer),
  Layer.provideMerge(RouterServices),
  Layer.provide(StartupLog),
  Layer.provideMerge(LoggingLayer),
  Layer.provideMerge(RouterConfig.layer)
)
