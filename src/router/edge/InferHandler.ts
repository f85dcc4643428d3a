/**
 * `POST /infer`, served from Node's request event (NodeRoutes) rather than as a
 * route on Effect's HTTP router.
 *
 * Why hand-written: the router sits on every inference request, and Effect's
 * HTTP server path alone (request and response objects, router, middleware, a
 * fiber per request) measured 0.77–0.94x the throughput of bare `node:http`
 * for a constant response, under the 0.85x goal before any of the router's
 * own work (BENCHMARKS.md). Here the HTTP part is plain Node; what needs
 * Effect's guarantees stays Effect:
 * - A request that finds a slot free (and nobody queued) takes it at once
 *   (`Admission.enterUnsafe`, on Effect's Semaphore) and runs the model as a
 *   fiber, or not at all when the model's answer is ready at once; otherwise
 *   `Admission.admit` queues it, in a fiber, with its deadline.
 * - Node's `close` interrupts that fiber when the client hangs up (leaving
 *   the queue or stopping the model), and the end of a drain interrupts it
 *   like the router's other request fibers (answered 503 `shutting_down`).
 *
 * The contract is still `InferenceGroup` in `api/RouterApi.ts`: the body, the
 * header, the success body and every error use its schemas, and the
 * typed-client tests check this handler against it.
 */
import { Cause, Effect, Exit, Fiber, Layer, Result, Schema } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { Admission, type Rejected } from "../core/Admission.ts"
import { BadGateway, GatewayTimeout, InvalidRequest, Overloaded, Unavailable } from "../../api/Errors.ts"
import { InferenceGroup, QueueBudgetMs, queueTimeoutHeader, requestIdHeader } from "../../api/RouterApi.ts"
import { RouterConfig, type RouterSettings } from "../core/Config.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { type Inference, Model } from "../simulated/Model.ts"
import { type UpstreamFailure, upstreamHeader } from "../upstream/Upstreams.ts"
import { makeBearerCheck } from "./Authorization.ts"
import { type ContractError, shuttingDown, writeContractError, writeJson } from "./ContractErrors.ts"
import { internalErrorBody } from "./ErrorEnvelope.ts"
import { checkBodyHeaders, parseInferRequest, readBody } from "./InferRequestBody.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { noteOutcome } from "./RequestOutcome.ts"
import { closesEarly, makeCommonHeaders } from "./ResponseHeaders.ts"

export const inferPath = InferenceGroup.endpoints.infer.path

const decodeBudget = Schema.decodeUnknownResult(QueueBudgetMs)


interface Served {
  readonly waitedMs: number
  readonly processingMs: number
  readonly upstream?: string | undefined
}

/**
 * The success body, the contract's `InferResponse`, in which only `prompt` and
 * `processingMs` vary: the fixed parts are serialized once, which halves the
 * per-request encoding (a property test checks it against the schema).
 */
export const inferResponseEncoder = (
  settings: Pick<RouterSettings, "modelRef" | "podName" | "kvEndpoints">
): (prompt: string, processingMs: number) => string => {
  const routerPod = settings.podName === undefined ? {} : { routerPod: settings.podName }
  const head = `${JSON.stringify({ modelRef: settings.modelRef }).slice(0, -1)},"prompt":`
  const middle = `,${JSON.stringify({ ...routerPod, kvEndpoints: settings.kvEndpoints.map((endpoint) => endpoint.shown) }).slice(1, -1)},"processingMs":`
  return (prompt, processingMs) => head + JSON.stringify(prompt) + middle + processingMs + "}"
}

/** An upstream model server's failure in `/infer`'s envelope (MODEL_BACKEND=upstream). */
const upstreamError = (error: UpstreamFailure): ContractError => {
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

export const InferHandler = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  const admission = yield* Admission
  const model = yield* Model
  const lifecycle = yield* Lifecycle
  const routes = yield* NodeRoutes
  // Released when the server stops, after its grace period: the requests
  // still running are then interrupted and answered 503.
  const scope = yield* Effect.scope
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const checkBearer = makeBearerCheck(config.apiKeys)

  const commonHeaders = makeCommonHeaders(lifecycle.isDraining)

  const encodeResponse = inferResponseEncoder(config)

  const fail = (request: IncomingMessage, response: ServerResponse, error: ContractError) => {
    // A client that hung up gets no answer.
    if (response.destroyed) return
    const headers = commonHeaders(request)
    if (closesEarly(request)) headers.connection = "close"
    writeContractError(response, error, headers)
  }

  // OVERLOAD_STATUS=503 is for meshes that retry on 5xx; the body and headers are the same.
  const shed = (request: IncomingMessage, response: ServerResponse, rejected: Rejected) => {
    noteOutcome(request, { reason: rejected.reason })
    const fields = { code: rejected.reason, message: rejected.message, retryAfterSeconds: rejected.retryAfterSeconds }
    fail(request, response, config.overloadStatus === 503 ? new Unavailable(fields) : new Overloaded(fields))
  }

  const succeed = (request: IncomingMessage, response: ServerResponse, prompt: string, served: Served) => {
    noteOutcome(request, { queueMs: served.waitedMs, modelMs: served.processingMs })
    if (response.destroyed) return
    const body = encodeResponse(prompt, served.processingMs)
    const requestId = request.headers[requestIdHeader] as string
    const serverTiming = `queue;dur=${served.waitedMs}, model;dur=${served.processingMs}`
    const length = Buffer.byteLength(body)
    if (served.upstream !== undefined) response.setHeader(upstreamHeader, served.upstream)
    response.writeHead(
      200,
      lifecycle.isDraining()
        ? { "content-type": "application/json", "content-length": length, "server-timing": serverTiming, [requestIdHeader]: requestId, connection: "close" }
        : { "content-type": "application/json", "content-length": length, "server-timing": serverTiming, [requestIdHeader]: requestId }
    )
    response.end(body)
  }

  const answer = (
    request: IncomingMessage,
    response: ServerResponse,
    prompt: string,
    exit: Exit.Exit<Served, Rejected | UpstreamFailure>
  ) => {
    if (Exit.isSuccess(exit)) return succeed(request, response, prompt, exit.value)
    const failed = Cause.findError(exit.cause)
    if (Result.isSuccess(failed)) {
      const error = failed.success
      if (error._tag === "Rejected") return shed(request, response, error)
      noteOutcome(request, { reason: error.code })
      return fail(request, response, upstreamError(error))
    }
    // Interrupted: either the client hung up (nothing to answer) or the server
    // is stopping at the end of a drain.
    if (Cause.hasInterruptsOnly(exit.cause)) {
      if (response.destroyed) return
      noteOutcome(request, { reason: shuttingDown.code })
      return fail(request, response, shuttingDown)
    }
    runFork(Effect.logError("request failed", exit.cause).pipe(
      Effect.annotateLogs({ requestId: request.headers[requestIdHeader] })
    ))
    if (!response.destroyed) writeJson(response, 500, internalErrorBody, commonHeaders(request))
  }

  const served = (waitedMs: number) => ({ processingMs, upstream }: Inference): Served => ({ waitedMs, processingMs, upstream })
  const servedAtOnce = served(0)

  /** Answers when the fiber ends; interrupts it if the client hangs up first. */
  const answerWhenDone = (
    request: IncomingMessage,
    response: ServerResponse,
    prompt: string,
    fiber: Fiber.Fiber<Served, Rejected | UpstreamFailure>
  ) => {
    const done = fiber.pollUnsafe()
    if (done !== undefined) return answer(request, response, prompt, done)
    Fiber.runIn(fiber, scope)
    const hangUp = () => fiber.interruptUnsafe()
    response.on("close", hangUp)
    fiber.addObserver((exit) => {
      response.off("close", hangUp)
      answer(request, response, prompt, exit)
    })
  }

  const admitAndRun = (request: IncomingMessage, response: ServerResponse, prompt: string, maxWaitMs: number | undefined) => {
    const leave = admission.enterUnsafe()
    if (leave === undefined) {
      // All slots busy, or others queued first: wait in line (or be shed).
      const queued = admission.admit(({ waitedMs }) => Effect.map(model.infer(prompt, request.headers[requestIdHeader] as string), served(waitedMs)), { maxWaitMs })
      return answerWhenDone(request, response, prompt, runFork(queued))
    }
    // A slot was free: the common case while the router is not saturated.
    const inference = model.infer(prompt, request.headers[requestIdHeader] as string)
    if (Exit.isExit(inference)) {
      // The model answered at once (a stub, a cached answer): no fiber needed.
      const ready = inference as Exit.Exit<Inference, UpstreamFailure> // isExit forgets the type parameters
      leave(ready)
      return answer(request, response, prompt, Exit.map(ready, servedAtOnce))
    }
    const running = inference.pipe(Effect.onExit((exit) => Effect.sync(() => leave(exit))), Effect.map(servedAtOnce))
    answerWhenDone(request, response, prompt, runFork(running))
  }

  routes.add("POST", inferPath, (request, response, awaitsContinue) => {
    const denied = checkBearer(request.headers.authorization)
    if (denied !== undefined) return fail(request, response, denied)
    let maxWaitMs: number | undefined
    const budget = request.headers[queueTimeoutHeader]
    if (budget !== undefined) {
      const decoded = decodeBudget(budget)
      if (decoded._tag === "Failure") {
        return fail(
          request,
          response,
          new InvalidRequest({
            code: "invalid_header",
            message: `invalid request header ${queueTimeoutHeader}: ${JSON.stringify(budget)}: expected an integer >= 0 (milliseconds)`
          })
        )
      }
      maxWaitMs = decoded.success
    }
    const unreadable = checkBodyHeaders(request.headers, config.maxBodyBytes)
    if (unreadable !== undefined) return fail(request, response, unreadable)
    if (awaitsContinue) response.writeContinue()
    readBody(request, config.maxBodyBytes, (body) => {
      if (typeof body !== "string") return fail(request, response, body)
      const parsed = parseInferRequest(body)
      if (parsed instanceof InvalidRequest) return fail(request, response, parsed)
      admitAndRun(request, response, parsed.prompt, maxWaitMs)
    })
  })
}))
