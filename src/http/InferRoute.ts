/**
 * `POST /infer`, served as a lean route of its own rather than through
 * HttpApiBuilder: on the hot path of every request, the builder's generic
 * per-request work (middleware chain, context merging, header and payload
 * codecs) measured at about 0.6x the throughput of this route (see
 * BENCHMARKS.md). The contract is still `InferenceGroup` in `api/RouterApi.ts`:
 * the body, the header, the success body and every error are encoded with its
 * schemas, and the typed-client tests check the route against it.
 */
import { Context, Effect, Schema } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { Admission, type Rejected } from "../Admission.ts"
import { InvalidRequest, Overloaded, Unavailable } from "../api/Errors.ts"
import { InferenceGroup, type InferResponse, QueueBudgetMs, queueTimeoutHeader } from "../api/RouterApi.ts"
import { RouterConfig } from "../Config.ts"
import { Model } from "../Model.ts"
import { makeBearerCheck } from "./Authorization.ts"
import { contractErrorResponse } from "./ContractErrors.ts"
import { readInferRequest } from "./InferRequestBody.ts"
import { noteOutcome } from "./RequestOutcome.ts"

export const inferPath = InferenceGroup.endpoints.infer.path as HttpRouter.PathInput

const decodeBudget = Schema.decodeUnknownResult(QueueBudgetMs)

export const InferRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const config = yield* RouterConfig
  const admission = yield* Admission
  const model = yield* Model
  const checkBearer = makeBearerCheck(config.apiKeys)
  const routerPod = config.podName === undefined ? {} : { routerPod: config.podName }

  // OVERLOAD_STATUS=503 is for meshes that retry on 5xx; the body and headers are the same.
  const shed = (request: HttpServerRequest.HttpServerRequest, rejected: Rejected) => {
    noteOutcome(request, { reason: rejected.reason })
    const fields = { code: rejected.reason, message: rejected.message, retryAfterSeconds: rejected.retryAfterSeconds }
    return Effect.succeed(contractErrorResponse(config.overloadStatus === 503 ? new Unavailable(fields) : new Overloaded(fields)))
  }

  const respond = (request: HttpServerRequest.HttpServerRequest, prompt: string, waitedMs: number, processingMs: number) => {
    noteOutcome(request, { queueMs: waitedMs, modelMs: processingMs })
    const body: InferResponse = {
      modelRef: config.modelRef,
      prompt,
      ...routerPod,
      kvEndpoints: config.kvEndpoints,
      processingMs
    }
    return HttpServerResponse.text(JSON.stringify(body), {
      contentType: "application/json",
      headers: { "server-timing": `queue;dur=${waitedMs}, model;dur=${processingMs}` }
    })
  }

  const handler = Effect.withFiber((fiber) => {
    const request = Context.getUnsafe(fiber.context, HttpServerRequest.HttpServerRequest)
    const denied = checkBearer(request.headers.authorization)
    if (denied !== undefined) return Effect.succeed(contractErrorResponse(denied))
    let maxWaitMs: number | undefined
    const budget = request.headers[queueTimeoutHeader]
    if (budget !== undefined) {
      const decoded = decodeBudget(budget)
      if (decoded._tag === "Failure") {
        return Effect.succeed(contractErrorResponse(
          new InvalidRequest({
            code: "invalid_header",
            message: `invalid request header ${queueTimeoutHeader}: ${JSON.stringify(budget)}: expected an integer >= 0 (milliseconds)`
          })
        ))
      }
      maxWaitMs = decoded.success
    }
    return readInferRequest(request, config.maxBodyBytes).pipe(
      Effect.flatMap(({ prompt }) =>
        admission.admit(
          ({ waitedMs }) => Effect.map(model.infer(prompt), ({ processingMs }) => respond(request, prompt, waitedMs, processingMs)),
          { maxWaitMs }
        )
      ),
      Effect.catch((error) => error._tag === "Rejected" ? shed(request, error) : Effect.succeed(contractErrorResponse(error)))
    )
  })

  yield* router.add("POST", inferPath, handler)
}))
