/**
 * `POST /infer`: parse → work → encode on the request pipeline (Pipeline.ts),
 * served from Node's request event (NodeRoutes) rather than as a route on
 * Effect's HTTP router.
 *
 * Why hand-written: the router sits on every inference request, and Effect's
 * HTTP server path alone (request and response objects, router, middleware, a
 * fiber per request) measured 0.77–0.94x the throughput of bare `node:http`
 * for a constant response, under the 0.85x goal before any of the router's
 * own work (BENCHMARKS.md). Here the HTTP part is plain Node; admission,
 * hang-ups and the drain are the pipeline's, the work is the backend's.
 *
 * The contract is still `InferenceGroup` in `api/RouterApi.ts`: the body, the
 * header, the success body and every error use its schemas, and the
 * typed-client tests check this handler against it.
 */
import { Cause, Effect, Exit, Layer, Result } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { BadGateway, GatewayTimeout, InvalidRequest, Overloaded, Unavailable } from "../../api/Errors.ts"
import { requestIdHeader, serverTimingHeader } from "../../api/Headers.ts"
import { InferenceGroup } from "../../api/RouterApi.ts"
import type { Rejected } from "../core/Admission.ts"
import { Backend, type BackendFailure, type Inference } from "../core/Backend.ts"
import { RouterConfig, type RouterSettings } from "../core/Config.ts"
import { type ContractError, encodeContractError, internalErrorBody } from "../core/ContractErrors.ts"
import { parseInferRequest } from "./InferRequestBody.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { type Dialect, Pipeline } from "./Pipeline.ts"
import { noteOutcome } from "../core/RequestOutcome.ts"
import { setServedBy } from "../core/ResponseHeaders.ts"

export const inferPath = InferenceGroup.endpoints.infer.path

/**
 * The success body, the contract's `InferResponse`, in which only `prompt` and
 * `processingMs` vary: the fixed parts are serialized once, which halves the
 * per-request encoding (a property test checks it against the schema).
 *
 * With its length in UTF-8 bytes, counted from the parts: the body is a
 * concatenation (a cons string), and `Buffer.byteLength` of it made V8 flatten
 * it into a copy first, only for Node to flatten it again with the headers
 * when it writes (~0.7 % of a request's CPU by `perf`; BENCHMARKS.md section 18).
 */
export const inferResponseEncoder = (
  settings: Pick<RouterSettings, "modelRef" | "podName" | "kvEndpoints">
): (prompt: string, processingMs: number) => { readonly body: string; readonly byteLength: number } => {
  const routerPod = settings.podName === undefined ? {} : { routerPod: settings.podName }
  const head = `${JSON.stringify({ modelRef: settings.modelRef }).slice(0, -1)},"prompt":`
  const middle = `,${JSON.stringify({ ...routerPod, kvEndpoints: settings.kvEndpoints.map((endpoint) => endpoint.shown) }).slice(1, -1)},"processingMs":`
  const fixedBytes = Buffer.byteLength(head) + Buffer.byteLength(middle) + 1
  return (prompt, processingMs) => {
    const quoted = JSON.stringify(prompt)
    // A number prints in ASCII: one byte a character.
    const ms = String(processingMs)
    return { body: head + quoted + middle + ms + "}", byteLength: fixedBytes + Buffer.byteLength(quoted) + ms.length }
  }
}

/** A backend's failure in `/infer`'s envelope. */
const backendError = (error: BackendFailure): ContractError => {
  const fields = { code: error.code, message: error.message }
  switch (error.status) {
    case 400:
      return new InvalidRequest(fields)
    case 429:
      return new Overloaded({ ...fields, retryAfterSeconds: error.retryAfterSeconds ?? 1 })
    case 503:
      return new Unavailable({ ...fields, retryAfterSeconds: error.retryAfterSeconds ?? 1 })
    case 504:
      return new GatewayTimeout(fields)
    default:
      return new BadGateway(fields)
  }
}

const internalError = "internal" as const
const internalBody = JSON.stringify(internalErrorBody)

/** `/infer`'s errors: the contract's envelope `{"error":{"code","message"}}`. */
const inferDialect: Dialect<ContractError | typeof internalError> = {
  fromContract: (error) => error,
  internal: internalError,
  encode: (error) => {
    if (error === internalError) return { status: 500, headers: {}, body: internalBody }
    const { body, headers, status } = encodeContractError(error)
    return { status, headers, body: JSON.stringify(body) }
  }
}

export const InferHandler = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  const backend = yield* Backend
  const routes = yield* NodeRoutes
  const route = (yield* Pipeline).route(inferDialect)
  const encodeResponse = inferResponseEncoder(config)

  const succeed = (request: IncomingMessage, response: ServerResponse, prompt: string, waitedMs: number, served: Inference) => {
    noteOutcome(request, { queueMs: waitedMs, modelMs: served.processingMs, upstream: served.upstream })
    if (response.destroyed) return
    const { body, byteLength } = encodeResponse(prompt, served.processingMs)
    const headers: Record<string, string | number> = route.headers(request)
    headers["content-type"] = "application/json"
    headers["content-length"] = byteLength
    headers[serverTimingHeader] = `queue;dur=${waitedMs}, model;dur=${served.processingMs}`
    // As the relay answers /v1/*: who served, its version, and why it was picked.
    setServedBy(headers, served)
    response.writeHead(200, headers)
    response.end(body)
  }

  const answer = (
    request: IncomingMessage,
    response: ServerResponse,
    prompt: string,
    waitedMs: number,
    exit: Exit.Exit<Inference, Rejected | BackendFailure>
  ) => {
    if (Exit.isSuccess(exit)) return succeed(request, response, prompt, waitedMs, exit.value)
    const failed = Cause.findError(exit.cause)
    if (Result.isSuccess(failed) && !isRejected(failed.success)) {
      // Its wait too, as /v1/* notes it: the near-timeout count's denominator is the waits observed.
      noteOutcome(request, { reason: failed.success.code, queueMs: waitedMs })
      return route.fail(request, response, backendError(failed.success))
    }
    route.answerFailure(request, response, exit.cause as Cause.Cause<Rejected>)
  }

  routes.add(
    "POST",
    inferPath,
    route.post((request, response, body, maxWaitMs) => {
      const parsed = parseInferRequest(body)
      if (parsed instanceof InvalidRequest) return route.fail(request, response, parsed)
      const requestId = request.headers[requestIdHeader] as string
      // The wait is the grant's: kept here rather than mapped onto the work's answer (an Exit and an object less per request).
      let waitedMs = 0
      route.run(
        request,
        response,
        maxWaitMs,
        (grant) => {
          waitedMs = grant.waitedMs
          return backend.infer(parsed.prompt, requestId)
        },
        (exit) => answer(request, response, parsed.prompt, waitedMs, exit)
      )
    })
  )
}))

const isRejected = (error: Rejected | BackendFailure): error is Rejected => (error as Rejected)._tag === "Rejected"
