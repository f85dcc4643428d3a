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
  Layer.provide(KubeApi.layer),
  Layer.provideMerge(Layer.unwrap(ControllerConfig.useSync(loggingLayer))),
  Layer.provideMerge(ControllerConfig.layer)
)
