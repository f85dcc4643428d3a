/**
 * The router group's handlers: probes, and `/infer` as admission around the model.
 */
import { Effect } from "effect"
import { HttpApiBuilder, HttpApiSchema } from "effect/http-api"
import { Admission, type Rejected } from "../Admission.ts"
import { Overloaded, Unavailable } from "../api/Errors.ts"
import { type InferResponse, NotReady, queueTimeoutHeader, RouterApi } from "../api/RouterApi.ts"
import { RouterConfig } from "../Config.ts"
import { Lifecycle } from "../Lifecycle.ts"
import { Model } from "../Model.ts"

export const RouterHandlers = HttpApiBuilder.group(
  RouterApi,
  "router",
  Effect.fn(function*(handlers) {
    const config = yield* RouterConfig
    const admission = yield* Admission
    const model = yield* Model
    const lifecycle = yield* Lifecycle

    // OVERLOAD_STATUS=503 is for meshes that retry on 5xx; the body and headers are the same.
    const shed = (rejected: Rejected) => {
      const fields = {
        code: rejected.reason,
        message: rejected.message,
        retryAfterSeconds: rejected.retryAfterSeconds
      }
      return Effect.fail(config.overloadStatus === 503 ? new Unavailable(fields) : new Overloaded(fields))
    }

    const respond = (prompt: string, waitedMs: number, processingMs: number) => {
      const body: InferResponse = {
        modelRef: config.modelRef,
        prompt,
        ...(config.podName === undefined ? {} : { routerPod: config.podName }),
        kvEndpoints: config.kvEndpoints,
        processingMs
      }
      return HttpApiSchema.withHeaders({
        body,
        headers: { "server-timing": `queue;dur=${waitedMs}, model;dur=${processingMs}` }
      })
    }

    return handlers.handleAll({
      healthz: () => Effect.succeed({ status: "ok" as const }),
      readyz: () => lifecycle.isDraining() ? Effect.fail(new NotReady()) : Effect.succeed({ status: "ready" as const }),
      infer: ({ headers, payload }) =>
        admission.admit(
          ({ waitedMs }) =>
            Effect.map(model.infer(payload.prompt), ({ processingMs }) =>
              respond(payload.prompt, waitedMs, processingMs)),
          { maxWaitMs: headers[queueTimeoutHeader] }
        ).pipe(Effect.catchTag("Rejected", shed))
    })
  })
)
