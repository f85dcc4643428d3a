/**
 * Composes the router: the HttpApi routes with their handlers, the error
 * envelope, the services they use, logging, and the Node HTTP server.
 */
import { NodeHttpServer } from "@effect/platform-node"
import { Effect, Layer, Logger, References } from "effect"
import { HttpRouter } from "effect/http"
import { HttpApiBuilder } from "effect/http-api"
import { createServer } from "node:http"
import { Admission } from "./Admission.ts"
import { RouterApi } from "./api/RouterApi.ts"
import { type LogLevelName, RouterConfig } from "./Config.ts"
import { allowedMethods, ErrorEnvelope } from "./http/ErrorEnvelope.ts"
import { RouterHandlers } from "./http/RouterHandlers.ts"
import { Model } from "./Model.ts"

export const openapiPath = "/openapi.json"

const routes = [
  ...Object.values(RouterApi.groups).flatMap((group) =>
    Object.values(group.endpoints).map(({ method, path }) => ({ method, path }))
  ),
  { method: "GET", path: openapiPath }
]

/** The HTTP application: routes and middleware. Needs RouterConfig, Admission and Model. */
export const RouterApp = Layer.mergeAll(
  HttpApiBuilder.layer(RouterApi, { openapiPath }).pipe(Layer.provide(RouterHandlers)),
  ErrorEnvelope.layer(allowedMethods(routes))
)

/** Admission and the model, over the configuration. */
export const RouterServices = Layer.mergeAll(Admission.layer, Model.layer)

const effectLogLevel: Record<LogLevelName, "Debug" | "Info" | "Warn" | "Error"> = {
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  error: "Error"
}

/** JSON lines on stdout, filtered at LOG_LEVEL. */
export const LoggingLayer = Layer.unwrap(RouterConfig.useSync((config) =>
  Layer.mergeAll(
    Logger.layer([Logger.consoleJson]),
    Layer.succeed(References.MinimumLogLevel, effectLogLevel[config.logLevel])
  )
))

const StartupLog = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  if (config.modelRefDefaulted) {
    yield* Effect.logWarning(`MODEL_REF is not set; serving "${config.modelRef}"`)
  }
  yield* Effect.logInfo("effective configuration").pipe(Effect.annotateLogs({ config }))
  for (const endpoint of config.kvEndpoints) {
    yield* Effect.logInfo(`KV endpoint: ${endpoint}`)
  }
}))

const NodeServer = Layer.unwrap(RouterConfig.useSync((config) =>
  NodeHttpServer.layer(() => createServer(), {
    port: config.port,
    ...(config.host === undefined ? {} : { host: config.host })
  })
))

/** The whole router as one layer: building it listens, releasing it drains. */
export const RouterServer = HttpRouter.serve(RouterApp, { disableLogger: true }).pipe(
  Layer.provide(NodeServer),
  Layer.provide(RouterServices),
  Layer.provide(StartupLog),
  Layer.provide(LoggingLayer),
  Layer.provideMerge(RouterConfig.layer)
)
