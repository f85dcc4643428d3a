/**
 * Composes the router: its HTTP application on the Node server, the services
 * they use, the request observer, logging and settings.
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Effect, Layer } from "effect"
import { HttpRouter } from "effect/http"
import { loggingLayer } from "../../shared/Logging.ts"
import { Admission } from "../core/Admission.ts"
import { RouterConfig } from "../core/Config.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { RequestObserver } from "./RequestObserver.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { Model } from "../simulated/Model.ts"
import { NodeServerLayer } from "./NodeServer.ts"
import { RouterApp, routes } from "../app/RouterApp.ts"
import { RequestScheduler } from "../core/RequestScheduler.ts"
import { InferHandler } from "./InferHandler.ts"
import { OpenAiHandler } from "./OpenAiHandler.ts"
import { Pipeline } from "./Pipeline.ts"
import { Upstreams } from "../upstream/Upstreams.ts"
import { Backend } from "../core/Backend.ts"
import { SimulatedBackend } from "../simulated/SimulatedBackend.ts"
import { UpstreamBackend } from "../upstream/UpstreamBackend.ts"

/** JSON lines on stdout (LOG_FORMAT=pretty for humans), filtered at LOG_LEVEL. */
export const LoggingLayer = Layer.unwrap(RouterConfig.useSync(loggingLayer))

const StartupLog = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  if (config.modelRefDefaulted) {
    yield* Effect.logWarning(`MODEL_REF is not set; serving "${config.modelRef}"`)
  }
  // API keys are Redacted (they print as <redacted>); KV endpoints as shown, credentials masked.
  yield* Effect.logInfo("effective configuration").pipe(
    Effect.annotateLogs({
      config: {
        ...config,
        apiKeys: `${config.apiKeys.length} key(s)`,
        kvEndpoints: config.kvEndpoints.map((endpoint) => endpoint.shown)
      }
    })
  )
  for (const endpoint of config.kvEndpoints) {
    yield* Effect.logInfo(`KV endpoint: ${endpoint.shown}`)
  }
}))

/**
 * The backend MODEL_BACKEND names: the one place that asks which it is. The
 * simulated one runs `Model` (tests pass a stand-in).
 */
const BackendLayer = (model: Layer.Layer<Model, never, RouterConfig | Admission>): Layer.Layer<Backend, never, RouterConfig | Admission | Upstreams> =>
  Layer.unwrap(RouterConfig.useSync((config): Layer.Layer<Backend, never, RouterConfig | Admission | Upstreams> =>
    config.backend === "upstream" ? UpstreamBackend : SimulatedBackend.pipe(Layer.provide(model))
  ))

/**
 * `/infer` and `/v1/*` on NodeRoutes, over one request pipeline. Served with
 * the HTTP app: in-flight requests get the server's grace period, and the
 * pipeline is released before the server and the request observer, so the
 * requests it stops at the end of a drain are answered and logged while those
 * still listen.
 */
const NodeHandlers = Layer.mergeAll(InferHandler, OpenAiHandler).pipe(
  Layer.provide(Pipeline.layer),
  Layer.provide(RequestScheduler)
)

/**
 * The whole router as one layer: building it listens; releasing it closes the
 * listener and waits for in-flight requests. Run `Lifecycle.drain` before
 * releasing it (see main.ts). Tests swap the configuration, the model and the
 * logger; everything else is what production runs.
 */
export const makeRouterServer = <E>(options: {
  readonly config: Layer.Layer<RouterConfig, E>
  readonly model?: Layer.Layer<Model, never, RouterConfig | Admission> | undefined
  readonly logging?: Layer.Layer<never, never, RouterConfig> | undefined
}) =>
  // The Node handlers are served with the app: built after the Node server, and
  // released after its grace period and before it (see NodeServer's `serve`).
  HttpRouter.serve(Layer.mergeAll(RouterApp, NodeHandlers), { disableLogger: true, disableListenLog: options.logging !== undefined }).pipe(
    Layer.provideMerge(NodeServerLayer(routes)),
    // File and ETag services Effect's HTTP app expects of a Node server.
    Layer.provide(NodeHttpServer.layerHttpServices),
    Layer.provideMerge(NodeRoutes.layer),
    Layer.provide(RequestObserver.layer(routes)),
    Layer.provideMerge(BackendLayer(options.model ?? Model.layer)),
    Layer.provideMerge(Layer.mergeAll(
      Admission.layer.pipe(Layer.provide(RequestScheduler)),
      Lifecycle.layer,
      Upstreams.layer
    )),
    Layer.provide(StartupLog),
    Layer.provideMerge(options.logging ?? LoggingLayer),
    Layer.provideMerge(options.config)
  )

export const RouterServer = makeRouterServer({ config: RouterConfig.layer })
