/**
 * The OpenAI-compatible API (`api/OpenAiApi.ts`), served from Node's request
 * event like `/infer` (NodeRoutes), behind the same admission:
 * - a request waits in the same queue, with the same deadlines, budgets,
 *   overload answers and reason headers, and holds its slot from admission to
 *   its last token;
 * - a stream's headers are written only once it is admitted, so a shed
 *   request gets an ordinary 429/503 a client can act on;
 * - a client that hangs up interrupts the generation (its slot is free at
 *   once); one that reads slowly slows it (each token waits for the socket to
 *   drain), so the router never buffers without bound;
 * - at the end of a drain, a running stream ends with one error frame and
 *   `[DONE]`, a request not yet answered gets 503 `shutting_down`.
 */
import { Cause, Effect, Exit, Fiber, Layer, Result, Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
import { type Rejected, Admission } from "../core/Admission.ts"
import {
  ChatCompletionRequest,
  type ChatCompletionRequest as ChatCompletionRequestType,
  type CompletionRequest as CompletionRequestType,
  chatCompletionsPath,
  CompletionRequest,
  completionsPath,
  type ModelList,
  modelsPath,
  type OpenAiErrorBody,
  simFailureHeader,
  type Usage
} from "../../api/OpenAiApi.ts"
import { QueueBudgetMs, queueTimeoutHeader, requestIdHeader } from "../../api/RouterApi.ts"
import { metricContext } from "../../shared/Metrics.ts"
import { type FailureType, RouterConfig } from "../core/Config.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { vllmMetrics } from "../core/Metrics.ts"
import { type Generated, Model, type TokenSink } from "../simulated/Model.ts"
import { countTokens } from "../simulated/Simulation.ts"
import { relayUnsafe } from "../upstream/Relay.ts"
import { type UpstreamFailure, Upstreams } from "../upstream/Upstreams.ts"
import { makeBearerCheck } from "./Authorization.ts"
import { checkBodyHeaders, readBody } from "./InferRequestBody.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { noteOutcome } from "./RequestOutcome.ts"
import { closesEarly, makeCommonHeaders } from "./ResponseHeaders.ts"

/** An OpenAI error, with the status and headers it is answered with. */
interface ApiError {
  readonly status: number
  readonly type: string
  readonly code: string | null
  readonly param: string | null
  readonly message: string
  readonly headers?: Record<string, string>
}

const apiError = (status: number, type: string, code: string | null, message: string, param: string | null = null): ApiError => ({
  status,
  type,
  code,
  param,
  message
})

const badRequest = (message: string, param: string | null = null, code: string | null = null) =>
  apiError(400, "invalid_request_error", code, message, param)

/** What each injected failure answers, as llm-d-inference-sim's do. */
const injected: Record<FailureType, ApiError> = {
  rate_limit: { ...apiError(429, "rate_limit_error", "rate_limit_exceeded", "simulated failure: rate limit reached"), headers: { "retry-after": "1" } },
  invalid_api_key: apiError(401, "authentication_error", "invalid_api_key", "simulated failure: invalid API key"),
  context_length: badRequest("simulated failure: the prompt is longer than the model's context length", "messages", "context_length_exceeded"),
  invalid_request: badRequest("simulated failure: invalid request"),
  model_not_found: apiError(404, "invalid_request_error", "model_not_found", "simulated failure: model not found", "model"),
  server_error: apiError(500, "server_error", "server_error", "simulated failure: the model failed")
}

type Kind = "completion" | "chat"

interface Parsed {
  readonly kind: Kind
  readonly echoText: string
  readonly promptTokens: number
  readonly maxTokens: number | undefined
  readonly stop: ReadonlyArray<string>
  readonly seed: number | undefined
  readonly stream: boolean
  readonly includeUsage: boolean
}

const decodeCompletion = Schema.decodeUnknownResult(CompletionRequest)
const decodeChat = Schema.decodeUnknownResult(ChatCompletionRequest)
const decodeBudget = Schema.decodeUnknownResult(QueueBudgetMs)

/** The text of a message's content: a string, or the text parts of an array. */
const contentText = (content: unknown): string =>
  typeof content === "string"
    ? content
    : Array.isArray(content)
    ? content.map((part) => typeof part?.text === "string" ? part.text : "").join("")
    : ""

/** The first field a schema failure names, for OpenAI's `param`. */
const paramOf = (message: string): string | null => /\["?([A-Za-z_]+)"?\]/.exec(message)?.[1] ?? null

export const OpenAiHandler = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  const admission = yield* Admission
  const model = yield* Model
  const upstreams = yield* Upstreams
  const lifecycle = yield* Lifecycle
  const routes = yield* NodeRoutes
  const scope = yield* Effect.scope
  const context = yield* Effect.context<never>()
  const runFork = Effect.runForkWith(context)
  const metrics = metricContext(context)
  const vllm = vllmMetrics(config.modelRef)
  const checkBearer = makeBearerCheck(config.apiKeys)
  const simulation = config.simulation
  const startedAt = Math.floor(Date.now() / 1000)

  const headersOf = makeCommonHeaders(lifecycle.isDraining)

  const sendJson = (request: IncomingMessage, response: ServerResponse, status: number, body: unknown, extra: Record<string, string> = {}) => {
    if (response.destroyed || response.headersSent) return
    const text = JSON.stringify(body)
    const headers: Record<string, string | number> = { ...headersOf(request), ...extra, "content-type": "application/json", "content-length": Buffer.byteLength(text) }
    if (closesEarly(request)) headers.connection = "close"
    response.writeHead(status, headers)
    response.end(text)
  }

  const fail = (request: IncomingMessage, response: ServerResponse, error: ApiError) => {
    const body: OpenAiErrorBody = { error: { message: error.message, type: error.type, param: error.param, code: error.code } }
    sendJson(request, response, error.status, body, error.headers)
  }

  const rejection = (rejected: Rejected): ApiError => {
    const status = config.overloadStatus
    return {
      ...apiError(status, status === 429 ? "rate_limit_error" : "service_unavailable", rejected.reason, rejected.message),
      headers: { "retry-after": String(rejected.retryAfterSeconds), "x-router-reject-reason": rejected.reason }
    }
  }

  const shuttingDown: ApiError = {
    ...apiError(503, "service_unavailable", "shutting_down", "the router is shutting down and could not finish this request"),
    headers: { "retry-after": "1", "x-router-reject-reason": "shutting_down" }
  }

  /** The request as the model sees it, or the error that names what is wrong with it. */
  const parse = (kind: Kind, json: unknown): Parsed | ApiError => {
    const decoded: Result.Result<CompletionRequestType | ChatCompletionRequestType, Schema.SchemaError> = kind === "completion"
      ? decodeCompletion(json)
      : decodeChat(json)
    if (decoded._tag === "Failure") {
      const message = decoded.failure.message.replace(/\s*\n\s*/g, " ")
      return badRequest(`invalid request body: ${message}`, paramOf(message))
    }
    const body = decoded.success
    if (body.model !== undefined && body.model !== config.modelRef) {
      return apiError(404, "invalid_request_error", "model_not_found", `the model "${body.model}" does not exist; this router serves "${config.modelRef}"`, "model")
    }
    if (body.n !== undefined && body.n !== null && body.n !== 1) return badRequest("only n=1 is supported", "n")
    // The prompt's text, echo text and token count are the simulated model's: an upstream model
    // server reads (and counts, and limits) the request itself.
    const simulated = !upstreams.enabled
    let echoText = ""
    let promptText = ""
    let maxTokens: number | null | undefined
    if ("messages" in body) {
      if (body.messages.length === 0) return badRequest("messages must not be empty", "messages")
      if (simulated) {
        promptText = body.messages.map((message) => contentText(message.content)).join("\n")
        const lastUser = body.messages.findLast((message) => message.role === "user")
        echoText = contentText(lastUser?.content ?? body.messages[body.messages.length - 1].content)
      }
      maxTokens = body.max_completion_tokens ?? body.max_tokens
    } else {
      const prompts = typeof body.prompt === "string" ? [body.prompt] : body.prompt
      if (prompts.length !== 1) return badRequest("exactly one prompt is supported", "prompt")
      promptText = echoText = prompts[0]
      maxTokens = body.max_tokens
    }
    if (maxTokens !== null && maxTokens !== undefined && maxTokens < 1) return badRequest("max_tokens must be at least 1", "max_tokens")
    const promptTokens = simulated ? countTokens(promptText) : 0
    const limit = simulation.maxModelLen
    if (simulated && promptTokens + (maxTokens ?? 0) > limit) {
      return badRequest(
        `This model's maximum context length is ${limit} tokens. However, you requested ${promptTokens + (maxTokens ?? 0)} tokens (${promptTokens} in the ${kind === "chat" ? "messages" : "prompt"}, ${maxTokens ?? 0} for the completion).`,
        kind === "chat" ? "messages" : "prompt",
        "context_length_exceeded"
      )
    }
    const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop
    return {
      kind,
      echoText,
      promptTokens,
      maxTokens: maxTokens ?? undefined,
      stop,
      seed: body.seed ?? undefined,
      stream: body.stream === true,
      includeUsage: body.stream_options?.include_usage === true
    }
  }

  /** An injected failure: forced by the request's header, or drawn at SIM_FAILURE_RATE. */
  const failureFor = (request: IncomingMessage): ApiError | undefined => {
    const forced = request.headers[simFailureHeader]
    if (typeof forced === "string") {
      const type = forced.trim() as FailureType
      return injected[type] ?? badRequest(`invalid request header ${simFailureHeader}: ${JSON.stringify(forced)}: expected one of ${Object.keys(injected).join(", ")}`, simFailureHeader)
    }
    if (simulation.failureRate > 0 && Math.random() * 100 < simulation.failureRate) {
      return injected[simulation.failureTypes[Math.floor(Math.random() * simulation.failureTypes.length)]]
    }
    return undefined
  }

  const usageOf = (parsed: Parsed, generated: Generated): Usage => ({
    prompt_tokens: parsed.promptTokens,
    completion_tokens: generated.completionTokens,
    total_tokens: parsed.promptTokens + generated.completionTokens
  })

  /** Writes `text` to the stream; waits for the socket to drain when its buffer is full. */
  const send = (response: ServerResponse, text: string): Effect.Effect<void> => {
    if (response.destroyed) return Effect.void
    if (response.write(text)) return Effect.void
    return drained(response)
  }

  /** Waits until the client's socket drained (or closed). */
  const drained = (response: ServerResponse): Effect.Effect<void> =>
    Effect.callback<void>((resume) => {
      const done = () => {
        response.off("drain", done)
        response.off("close", done)
        resume(Effect.void)
      }
      response.on("drain", done)
      response.on("close", done)
      return Effect.sync(() => {
        response.off("drain", done)
        response.off("close", done)
      })
    })

  /**
   * Requests served without a fiber (see `runWithoutFiber`), each with the
   * function that interrupts it: at the end of a drain they end as fibers
   * are interrupted (an error frame after a started stream, else a 503).
   */
  const running = new Set<() => void>()
  yield* Effect.addFinalizer(() => Effect.sync(() => {
    for (const stop of [...running]) stop()
  }))

  /**
   * Runs `effect` (admission, then the work) in a fiber that a hang-up
   * interrupts, and that ends with the server, after its grace period (a
   * request still running then is answered as shutting down); `onExit` answers.
   */
  const runUntilHangUp = <A, E>(response: ServerResponse, effect: Effect.Effect<A, E>, onExit: (exit: Exit.Exit<A, E>) => void) => {
    const fiber = runFork(effect)
    Fiber.runIn(fiber, scope)
    const hangUp = () => fiber.interruptUnsafe()
    response.on("close", hangUp)
    fiber.addObserver((exit) => {
      response.off("close", hangUp)
      onExit(exit)
    })
  }

  /**
   * The same, without a fiber, for a request that found a slot free: `start`
   * begins the work, hands it the function that completes it, and returns the
   * function that stops it. A hang-up or the end of a drain stops it and ends
   * it as an interruption, as `runUntilHangUp`'s fiber would be.
   */
  const runWithoutFiber = <A>(response: ServerResponse, start: (complete: (value: A) => void) => () => void, onExit: (exit: Exit.Exit<A>) => void) => {
    let ended = false
    let stop = () => {}
    const end = (exit: Exit.Exit<A>) => {
      if (ended) return
      ended = true
      running.delete(interrupt)
      response.off("close", interrupt)
      onExit(exit)
    }
    const interrupt = () => {
      stop()
      end(Exit.interrupt())
    }
    running.add(interrupt)
    response.on("close", interrupt)
    stop = start((value) => end(Exit.succeed(value)))
  }

  const frame = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`
  const done = "data: [DONE]\n\n"

  /** Ends the response with one error frame and `[DONE]`: a started stream is never cut silently. */
  const endWithErrorFrame = (response: ServerResponse, error: ApiError) =>
    response.end(frame({ error: { message: error.message, type: error.type, param: null, code: error.code } }) + done)

  /**
   * Answers a request whose work did not succeed: shed by admission, stopped
   * by a hang-up (nothing to answer) or the end of a drain (503, or an error
   * frame after a started stream), or failed (logged; 500 or an error frame).
   */
  const answerFailure = (request: IncomingMessage, response: ServerResponse, cause: Cause.Cause<Rejected>, queueMs: number) => {
    const rejected = Cause.findError(cause)
    if (Result.isSuccess(rejected)) {
      noteOutcome(request, { reason: rejected.success.reason })
      return fail(request, response, rejection(rejected.success))
    }
    if (response.destroyed || response.writableEnded) return
    const stopping = Cause.hasInterruptsOnly(cause)
    if (stopping) noteOutcome(request, { reason: "shutting_down", queueMs })
    else runFork(Effect.logError("request failed", cause).pipe(Effect.annotateLogs({ requestId: request.headers[requestIdHeader] })))
    const error = stopping ? shuttingDown : apiError(500, "server_error", "internal_error", "the router failed to handle this request")
    if (!response.headersSent) return fail(request, response, error)
    endWithErrorFrame(response, error)
  }

  const serve = (request: IncomingMessage, response: ServerResponse, parsed: Parsed, maxWaitMs: number | undefined) => {
    const arrivedAt = performance.now()
    const id = `${parsed.kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID()}`
    const created = Math.floor(Date.now() / 1000)
    const object = parsed.kind === "chat" ? "chat.completion.chunk" : "text_completion"
    const choice = (text: string | undefined, finish: string | null, first = false) =>
      parsed.kind === "chat"
        ? { index: 0, delta: first ? { role: "assistant", content: text ?? "" } : text === undefined ? {} : { content: text }, logprobs: null, finish_reason: finish }
        : { index: 0, text: text ?? "", logprobs: null, finish_reason: finish }
    let lastTokenAt = 0
    let queueMs = 0

    // A token's frame is fixed but for the token: its two ends are serialized once per stream.
    const [tokenHead, tokenTail] = JSON.stringify({ id, object, created, model: config.modelRef, choices: [choice("\u0000", null)] })
      .split("\"\\u0000\"")
    const tokenFrame = (token: string) => `data: ${tokenHead}${JSON.stringify(token)}${tokenTail}\n\n`

    /** Notes a token's timing and writes its frame; false when the client's socket is full. */
    const writeToken = (token: string, index: number): boolean => {
      const now = performance.now()
      if (index === 0) {
        vllm.timeToFirstToken.updateUnsafe((now - arrivedAt) / 1000, metrics)
      } else {
        vllm.interTokenLatency.updateUnsafe((now - lastTokenAt) / 1000, metrics)
      }
      lastTokenAt = now
      if (!parsed.stream || response.destroyed) return true
      // The chat role travels on the first chunk, as vLLM sends it.
      return response.write(
        index === 0 ? frame({ id, object, created, model: config.modelRef, choices: [choice(token, null, true)] }) : tokenFrame(token)
      )
    }

    const onToken = (token: string, index: number) => writeToken(token, index) ? Effect.void : drained(response)

    const generation = { echoText: parsed.echoText, promptTokens: parsed.promptTokens, maxTokens: parsed.maxTokens, stop: parsed.stop, seed: parsed.seed }

    /** Admitted: the stream's headers go out now (a shed stream gets a plain 429/503 instead). */
    const begin = (waitedMs: number) => {
      queueMs = waitedMs
      vllm.queueTime.updateUnsafe(waitedMs / 1000, metrics)
      if (parsed.stream && !response.destroyed) {
        response.writeHead(200, {
          ...headersOf(request),
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-cache",
          "x-accel-buffering": "no"
        })
        response.flushHeaders()
      }
    }

    /** A stream's last frames: the role for an empty chat answer, the finish, the usage when asked, [DONE]. */
    const tail = (generated: Generated) =>
      (generated.completionTokens === 0 && parsed.kind === "chat" ? frame({ id, object, created, model: config.modelRef, choices: [choice("", null, true)] }) : "") +
      frame({ id, object, created, model: config.modelRef, choices: [choice(undefined, generated.finishReason)] }) +
      (parsed.includeUsage ? frame({ id, object, created, model: config.modelRef, choices: [], usage: usageOf(parsed, generated) }) : "") +
      done

    const sink = (end: (generated: Generated) => void): TokenSink => ({
      token: (token, index, next) => {
        if (writeToken(token, index)) next()
        else response.once("drain", next)
      },
      end
    })

    const work = ({ waitedMs }: { readonly waitedMs: number }) =>
      Effect.gen(function*() {
        begin(waitedMs)
        const generateUnsafe = model.generateUnsafe
        const generated = generateUnsafe === undefined
          ? yield* model.generate(generation, onToken)
          : yield* Effect.callback<Generated>((resume) => Effect.sync(generateUnsafe(generation, sink((generated) => resume(Effect.succeed(generated))))))
        if (parsed.stream) yield* send(response, tail(generated))
        return generated
      })

    const answer = (exit: Exit.Exit<Generated, Rejected>) => {
      if (Exit.isSuccess(exit)) {
        const generated = exit.value
        const usage = usageOf(parsed, generated)
        vllm.e2eLatency.updateUnsafe((performance.now() - arrivedAt) / 1000, metrics)
        vllm.promptTokens.updateUnsafe(usage.prompt_tokens, metrics)
        vllm.generationTokens.updateUnsafe(usage.completion_tokens, metrics)
        vllm.requestSuccess(generated.finishReason).updateUnsafe(1, metrics)
        noteOutcome(request, { queueMs, modelMs: generated.processingMs })
        if (parsed.stream) return void response.end()
        const body = parsed.kind === "chat"
          ? {
            id,
            object: "chat.completion",
            created,
            model: config.modelRef,
            choices: [{ index: 0, message: { role: "assistant", content: generated.text }, logprobs: null, finish_reason: generated.finishReason }],
            usage
          }
          : {
            id,
            object: "text_completion",
            created,
            model: config.modelRef,
            choices: [{ index: 0, text: generated.text, logprobs: null, finish_reason: generated.finishReason }],
            usage
          }
        return sendJson(request, response, 200, body, { "server-timing": `queue;dur=${queueMs}, model;dur=${generated.processingMs}` })
      }
      answerFailure(request, response, exit.cause, queueMs)
    }

    const generateUnsafe = model.generateUnsafe
    const leave = generateUnsafe === undefined ? undefined : admission.enterUnsafe()
    if (generateUnsafe !== undefined && leave !== undefined) {
      begin(0)
      return runWithoutFiber<Generated>(
        response,
        (complete) =>
          generateUnsafe(generation, sink((generated) => {
            if (parsed.stream && !response.destroyed) response.write(tail(generated))
            complete(generated)
          })),
        (exit) => {
          leave(Exit.void)
          answer(exit)
        }
      )
    }
    runUntilHangUp(response, admission.admit(work, { maxWaitMs }), answer)
  }

  const upstreamApiError = (error: UpstreamFailure): ApiError => ({
    ...apiError(
      error.status,
      error.status === 400 ? "invalid_request_error" : error.status === 429 ? "rate_limit_error" : error.status === 503 ? "service_unavailable" : "server_error",
      error.code,
      error.message
    ),
    ...(error.retryAfterSeconds === undefined ? {} : { headers: { "retry-after": String(error.retryAfterSeconds) } })
  })

  /** Forwards one admitted request and relays the answer (upstream/Relay.ts); returns the function that aborts it. */
  const relay = (request: IncomingMessage, response: ServerResponse, parsed: Parsed, body: string, arrivedAt: number, done: (failure: UpstreamFailure | undefined) => void): () => void => {
    const outgoing: Record<string, string> = { "content-type": "application/json", "x-request-id": request.headers[requestIdHeader] as string }
    const forced = request.headers[simFailureHeader]
    // For tests of clients' retry paths through the router: a router upstream in simulated mode honours it.
    if (typeof forced === "string") outgoing[simFailureHeader] = forced
    return relayUnsafe(upstreams, {
      path: parsed.kind === "chat" ? chatCompletionsPath : completionsPath,
      body,
      headers: outgoing,
      answerHeaders: () => closesEarly(request) ? { ...headersOf(request), connection: "close" } : headersOf(request)
    }, response, {
      onFirstByte: () => vllm.timeToFirstToken.updateUnsafe((performance.now() - arrivedAt) / 1000, metrics),
      failBeforeHeaders: (failure) => fail(request, response, upstreamApiError(failure)),
      endWithErrorFrame: (failure) => endWithErrorFrame(response, upstreamApiError(failure)),
      done
    })
  }

  /** MODEL_BACKEND=upstream: the request, admitted, forwarded to an upstream as it came. */
  const forward = (request: IncomingMessage, response: ServerResponse, parsed: Parsed, body: string, maxWaitMs: number | undefined) => {
    const arrivedAt = performance.now()
    let queueMs = 0
    /** How it ended, for metrics and the access log. */
    const answer = (exit: Exit.Exit<UpstreamFailure | undefined, Rejected>) => {
      if (Exit.isFailure(exit)) return answerFailure(request, response, exit.cause, queueMs)
      const failure = exit.value
      if (failure !== undefined) return noteOutcome(request, { reason: failure.code, queueMs })
      vllm.e2eLatency.updateUnsafe((performance.now() - arrivedAt) / 1000, metrics)
      noteOutcome(request, { queueMs })
    }
    const leave = admission.enterUnsafe()
    if (leave !== undefined) {
      // A slot was free: the common case, no fiber.
      vllm.queueTime.updateUnsafe(0, metrics)
      return runWithoutFiber<UpstreamFailure | undefined>(response, (complete) => relay(request, response, parsed, body, arrivedAt, complete), (exit) => {
        leave(Exit.void)
        answer(exit)
      })
    }
    const work = ({ waitedMs }: { readonly waitedMs: number }) =>
      Effect.callback<UpstreamFailure | undefined>((resume) => {
        queueMs = waitedMs
        vllm.queueTime.updateUnsafe(waitedMs / 1000, metrics)
        return Effect.sync(relay(request, response, parsed, body, arrivedAt, (failure) => resume(Effect.succeed(failure))))
      })
    runUntilHangUp(response, admission.admit(work, { maxWaitMs }), answer)
  }

  const handle = (kind: Kind) => (request: IncomingMessage, response: ServerResponse, awaitsContinue: boolean) => {
    const denied = checkBearer(request.headers.authorization)
    if (denied !== undefined) {
      return fail(request, response, {
        ...apiError(401, "authentication_error", "invalid_api_key", denied.message),
        headers: { "www-authenticate": `Bearer realm="inference-router"` }
      })
    }
    let maxWaitMs: number | undefined
    const budget = request.headers[queueTimeoutHeader]
    if (budget !== undefined) {
      const decoded = decodeBudget(budget)
      if (Result.isFailure(decoded)) {
        return fail(request, response, badRequest(`invalid request header ${queueTimeoutHeader}: ${JSON.stringify(budget)}: expected an integer >= 0 (milliseconds)`, queueTimeoutHeader))
      }
      maxWaitMs = decoded.success
    }
    const unreadable = checkBodyHeaders(request.headers, config.maxBodyBytes)
    if (unreadable !== undefined) {
      return fail(request, response, apiError(unreadable._tag === "PayloadTooLarge" ? 413 : 415, "invalid_request_error", unreadable.code, unreadable.message))
    }
    if (awaitsContinue) response.writeContinue()
    readBody(request, config.maxBodyBytes, (body) => {
      if (typeof body !== "string") {
        return fail(request, response, apiError(body._tag === "PayloadTooLarge" ? 413 : 400, "invalid_request_error", body.code, body.message))
      }
      let json: unknown
      try {
        json = JSON.parse(body)
      } catch {
        return fail(request, response, badRequest("request body is not valid JSON", null, "invalid_json"))
      }
      const parsed = parse(kind, json)
      if ("status" in parsed) return fail(request, response, parsed)
      if (upstreams.enabled) return forward(request, response, parsed, body, maxWaitMs)
      const failure = failureFor(request)
      if (failure !== undefined) return fail(request, response, failure)
      serve(request, response, parsed, maxWaitMs)
    })
  }

  routes.add("POST", completionsPath, handle("completion"))
  routes.add("POST", chatCompletionsPath, handle("chat"))
  routes.add("GET", modelsPath, (request, response) => {
    const denied = checkBearer(request.headers.authorization)
    if (denied !== undefined) return fail(request, response, apiError(401, "authentication_error", "invalid_api_key", denied.message))
    const body: ModelList = {
      object: "list",
      data: [{ id: config.modelRef, object: "model", created: startedAt, owned_by: "inference-router", root: config.modelRef, parent: null, max_model_len: simulation.maxModelLen }]
    }
    sendJson(request, response, 200, body)
  })
}))
