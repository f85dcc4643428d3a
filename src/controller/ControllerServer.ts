/**
 * Composes the controller program: settings, logging, the Kubernetes API,
 * the controller, and its health and metrics server.
 */
import { Layer } from "effect"
import { loggingLayer } from "../shared/Logging.ts"
import { Controller } from "./Controller.ts"
import { ControllerConfig } from "./ControllerConfig.ts"
import { HealthServer } from "./HealthServer.ts"
import { KubeApi } from "./KubeApi.ts"

export const ControllerServer = HealthServer.pipe(
  Layer.provideMerge(Controller),
  Layer.provide(Layer.unwrap(ControllerConfig.useSync((settings) => KubeApi.layer(settings.apiTimeoutMs)))),
  Layer.provideMerge(Layer.unwrap(ControllerConfig.useSync(loggingLayer))),
  Layer.provideMerge(ControllerConfig.layer)
)
