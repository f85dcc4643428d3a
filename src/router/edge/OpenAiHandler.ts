/**
 * The OpenAI-compatible API (`api/OpenAiApi.ts`): parse → work → encode on
 * the request pipeline (Pipeline.ts), like `/infer`, behind the same admission:
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
import { Cause, Effect, Exit, Fiber, Layer, Schema } from "effect"
import { randomUUID } from "node:crypto"
import type { IncomingMessage, ServerResponse } from "node:http"
// The module binding: the global `performance` is a getter, read per token here (RequestObserver.ts does the same).
import { performance } from "node:perf_hooks"
import {
  accelBufferingHeader,
  bearerChallenge,
  queueTimeoutHeader,
  rejectReasonHeader,
  requestIdHeader,
  serverTimingHeader,
  simFailureHeader,
  wwwAuthenticateHeader
} from "../../api/Headers.ts"
import {
  ChatCompletionRequest,
  chatCompletionsPath,
  CompletionRequest,
  completionsPath,
  errorTypeOf,
  invalidRequestError,
  type ModelList,
  modelsPath,
  OpenAiError,
  openAiError,
  openAiErrorBody,
  type Usage
} from "../../api/OpenAiApi.ts"
import { metricContext } from "../../shared/Metrics.ts"
import type { Rejected } from "../core/Admission.ts"
import { Backend, type BackendFailure, type CompletionCall, type CompletionReply, type Completed, type Generated } from "../core/Backend.ts"
import { RouterConfig } from "../core/Config.ts"
import { isShedReason, vllmMetrics } from "../core/Metrics.ts"
import type { ContractError } from "../core/ContractErrors.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { type Dialect, Pipeline } from "./Pipeline.ts"
import { addOutcome, noteOutcome } from "../core/RequestOutcome.ts"

/** The access log's reason for a client cut off for taking none of its answer (CLIENT_STALL_TIMEOUT_MS). */
const clientStalled = "client_stalled"
import { errorStatus } from "../../api/Errors.ts"
import { oneLine } from "../../shared/SchemaMessage.ts"

/**
 * An error of the pipeline's (the token, a header, the body, admission, the drain) in OpenAI's form,
 * with the contract's status for it (`errorStatus`).
 */
const fromContract = (error: ContractError): OpenAiError => {
  const status = errorStatus[error._tag]
  switch (error._tag) {
    case "Unauthorized":
      return openAiError(status, errorTypeOf(status), "invalid_api_key", error.message)
    case "InvalidRequest":
      return invalidRequestError(error.message, error.code === "invalid_header" ? queueTimeoutHeader : null, error.code)
    case "Overloaded":
    case "Unavailable":
      return openAiError(status, errorTypeOf(status), error.code, error.message, null, {
        retryAfterSeconds: error.retryAfterSeconds,
        rejectReason: error.code
      })
    default:
      return openAiError(status, errorTypeOf(status), error.code, error.message)
  }
}

/** A backend's failure (an upstream's), in OpenAI's form; the pool's own rejections name their reason, as admission's do. */
const fromBackend = (failure: BackendFailure): OpenAiError =>
  openAiError(failure.status, errorTypeOf(failure.status), failure.code, failure.message, null, {
    ...(failure.retryAfterSeconds === undefined ? {} : { retryAfterSeconds: failure.retryAfterSeconds }),
    ...(isShedReason(failure.code) ? { rejectReason: failure.code } : {})
  })

/** OpenAI's errors: `{"error":{"message","type","param","code"}}`, from the contract's `OpenAiError`. */
export const openAiDialect: Dialect<OpenAiError> = {
  fromContract,
  internal: openAiError(500, "server_error", "internal_error", "the router failed to handle this request"),
  encode: (error) => {
    const headers: Record<string, string> = {}
    if (error.retryAfterSeconds !== undefined) headers["retry-after"] = String(error.retryAfterSeconds)
    if (error.rejectReason !== undefined) headers[rejectReasonHeader] = error.rejectReason
    if (error.status === 401) headers[wwwAuthenticateHeader] = bearerChallenge
    return { status: error.status, headers, body: JSON.stringify(openAiErrorBody(error)) }
  }
}

type Kind = "completion" | "chat"

const decoders = {
  completion: Schema.decodeUnknownResult(CompletionRequest),
  chat: Schema.decodeUnknownResult(ChatCompletionRequest)
}

/** The first field a schema failure names, for OpenAI's `param`. */
const paramOf = (message: string): string | null => /\["?([A-Za-z_]+)"?\]/.exec(message)?.[1] ?? null

/** What every backend is sent: the request decoded, or the error naming what is wrong with it. */
const parse = (kind: Kind, text: string, modelRef: string): CompletionCall["body"] | OpenAiError => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    return invalidRequestError("request body is not valid JSON", null, "invalid_json")
  }
  // The schema would say only "Expected CompletionRequest" of a body that is no object at all.
  if (typeof json !== "object" || json === null || Array.isArray(json)) {
    return invalidRequestError(`invalid request body: expected a JSON object, got ${json === null ? "null" : Array.isArray(json) ? "an array" : `a ${typeof json}`}`)
  }
  const decoded = decoders[kind](json)
  if (decoded._tag === "Failure") {
    const message = oneLine(decoded.failure.message)
    return invalidRequestError(`invalid request body: ${message}`, paramOf(message))
  }
  const body = decoded.success
  if (body.model !== undefined && body.model !== modelRef) {
    return openAiError(404, "invalid_request_error", "model_not_found", `the model "${body.model}" does not exist; this router serves "${modelRef}"`, "model")
  }
  if (body.n !== undefined && body.n !== null && body.n !== 1) return invalidRequestError("only n=1 is supported", "n")
  let maxTokens: number | null | undefined
  if ("messages" in body) {
    if (body.messages.length === 0) return invalidRequestError("messages must not be empty", "messages")
    // OpenAI and vLLM refuse these too: only an assistant's message may come without content.
    const empty = body.messages.findIndex((message) => message.role !== "assistant" && (message.content === undefined || message.content === null))
    if (empty !== -1) return invalidRequestError(`messages[${empty}] (role "${body.messages[empty].role}") has no content`, "messages")
    maxTokens = body.max_completion_tokens ?? body.max_tokens
  } else {
    const prompts = typeof body.prompt === "string" ? [body.prompt] : body.prompt
    if (prompts.length !== 1) return invalidRequestError("exactly one prompt is supported", "prompt")
    maxTokens = body.max_tokens
  }
  if (maxTokens !== null && maxTokens !== undefined && maxTokens < 1) return invalidRequestError("max_tokens must be at least 1", "max_tokens")
  return body
}

const frame = (data: unknown) => `data: ${JSON.stringify(data)}\n\n`
const doneFrame = "data: [DONE]\n\n"

/** Ends a started stream with one error frame and `[DONE]`: a stream is never cut silently. */
const endWithErrorFrame = (response: ServerResponse, error: OpenAiError) =>
  response.end(frame(openAiErrorBody(error)) + doneFrame)

export const OpenAiHandler = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RouterConfig
  const backend = yield* Backend
  const routes = yield* NodeRoutes
  const route = (yield* Pipeline).route(openAiDialect)
  const metrics = metricContext(yield* Effect.context<never>())
  const vllm = vllmMetrics(config.modelRef)
  const modelRef = config.modelRef

  const usageOf = (generated: Generated): Usage => ({
    prompt_tokens: generated.promptTokens,
    completion_tokens: generated.completionTokens,
    total_tokens: generated.promptTokens + generated.completionTokens,
    ...(generated.cachedTokens === undefined ? {} : { prompt_tokens_details: { cached_tokens: generated.cachedTokens } })
  })

  /**
   * Waits until the client's socket drained (or closed). A client that takes none of its answer for
   * CLIENT_STALL_TIMEOUT_MS is cut off, as Envoy's stream idle timeout cuts one: otherwise a few
   * sockets left unread would hold every slot for good. Its close ends the work as a hang-up (499).
   */
  const stallMs = config.clientStallTimeoutMs
  const onceDrained = (request: IncomingMessage, response: ServerResponse, resume: () => void) => {
    let stalled: ReturnType<typeof setTimeout> | undefined
    const done = () => {
      if (stalled !== undefined) clearTimeout(stalled)
      response.off("drain", done)
      response.off("close", done)
      resume()
    }
    response.on("drain", done)
    response.on("close", done)
    if (stallMs > 0) {
      stalled = setTimeout(() => {
        addOutcome(request, { reason: clientStalled })
        response.destroy()
      }, stallMs).unref()
    }
  }

  /** One admitted completion: the reply the backend writes to, the work, and how it is answered. */
  const serve = (request: IncomingMessage, response: ServerResponse, call: CompletionCall, maxWaitMs: number | undefined) => {
    const arrivedAt = performance.now()
    const stream = call.body.stream === true
    const includeUsage = call.body.stream_options?.include_usage === true
    // The id and a token frame's ends are the simulated backend's alone: made on first use, not for every forwarded request.
    let answerId: string | undefined
    const idOf = () => (answerId ??= `${call.kind === "chat" ? "chatcmpl" : "cmpl"}-${randomUUID()}`)
    const created = Math.floor(Date.now() / 1000)
    const object = call.kind === "chat" ? "chat.completion.chunk" : "text_completion"
    const choice = (text: string | undefined, finish: string | null, first = false) =>
      call.kind === "chat"
        ? { index: 0, delta: first ? { role: "assistant", content: text ?? "" } : text === undefined ? {} : { content: text }, logprobs: null, finish_reason: finish }
        : { index: 0, text: text ?? "", logprobs: null, finish_reason: finish }
    let lastTokenAt = 0
    let firstTokenAt = 0
    // Set when the slot is granted.
    let queueMs: number | undefined
    let grantedAt = 0

    // A token's frame is fixed but for the token: its two ends are serialized once per stream.
    let tokenEnds: Array<string> | undefined
    const tokenFrame = (token: string) => {
      tokenEnds ??= JSON.stringify({ id: idOf(), object, created, model: modelRef, choices: [choice("\u0000", null)] }).split("\"\\u0000\"")
      return `data: ${tokenEnds[0]}${JSON.stringify(token)}${tokenEnds[1]}\n\n`
    }

    /** A stream's last frames: the role for an empty chat answer, the finish, the usage when asked, [DONE]. */
    const tail = (generated: Generated) =>
      (generated.completionTokens === 0 && call.kind === "chat" ? frame({ id: idOf(), object, created, model: modelRef, choices: [choice("", null, true)] }) : "") +
      frame({ id: idOf(), object, created, model: modelRef, choices: [choice(undefined, generated.finishReason)] }) +
      (includeUsage ? frame({ id: idOf(), object, created, model: modelRef, choices: [], usage: usageOf(generated) }) : "") +
      doneFrame

    const reply: CompletionReply = {
      begin: () => {
        if (!stream || response.destroyed) return
        response.writeHead(200, {
          ...route.headers(request),
          "content-type": "text/event-stream; charset=utf-8",
          "cache-control": "no-cache",
          [accelBufferingHeader]: "no"
        })
        response.flushHeaders()
      },
      token: (token, index) => {
        const now = performance.now()
        if (index === 0) {
          vllm.timeToFirstToken.updateUnsafe((now - arrivedAt) / 1000, metrics)
          firstTokenAt = now
        } else vllm.interTokenLatency.updateUnsafe((now - lastTokenAt) / 1000, metrics)
        lastTokenAt = now
        if (!stream || response.destroyed) return true
        // The chat role travels on the first chunk, as vLLM sends it.
        return response.write(
          index === 0 ? frame({ id: idOf(), object, created, model: modelRef, choices: [choice(token, null, true)] }) : tokenFrame(token)
        )
      },
      onceDrained: (resume) => onceDrained(request, response, resume),
      finish: (generated) => {
        if (stream) {
          if (!response.destroyed) response.end(tail(generated))
          return
        }
        const usage = usageOf(generated)
        const body = call.kind === "chat"
          ? {
            id: idOf(),
            object: "chat.completion",
            created,
            model: modelRef,
            choices: [{ index: 0, message: { role: "assistant", content: generated.text }, logprobs: null, finish_reason: generated.finishReason }],
            usage
          }
          : {
            id: idOf(),
            object: "text_completion",
            created,
            model: modelRef,
            choices: [{ index: 0, text: generated.text, logprobs: null, finish_reason: generated.finishReason }],
            usage
          }
        route.sendJson(request, response, 200, JSON.stringify(body), { [serverTimingHeader]: `queue;dur=${queueMs}, model;dur=${generated.processingMs}` })
      },
      response,
      answerHeaders: () => route.headers(request),
      firstByte: () => vllm.timeToFirstToken.updateUnsafe((performance.now() - arrivedAt) / 1000, metrics),
      fail: (failure) => {
        if (!response.headersSent) route.fail(request, response, fromBackend(failure))
        else endWithErrorFrame(response, fromBackend(failure))
      }
    }

    const answer = (exit: Exit.Exit<Completed, Rejected>) => {
      if (Exit.isFailure(exit)) {
        return route.answerFailure(request, response, exit.cause, {
          queueMs,
          started: (error) => endWithErrorFrame(response, error)
        })
      }
      const { failure, generated, upstream } = exit.value
      if (failure !== undefined) return noteOutcome(request, { reason: failure.code, queueMs, upstream })
      vllm.e2eLatency.updateUnsafe((performance.now() - arrivedAt) / 1000, metrics)
      // Relayed: the model server's whole answer is the model time.
      if (generated === undefined) return noteOutcome(request, { queueMs, modelMs: Math.round(performance.now() - grantedAt), upstream })
      vllm.promptTokens.updateUnsafe(generated.promptTokens, metrics)
      vllm.generationTokens.updateUnsafe(generated.completionTokens, metrics)
      if (generated.completionTokens > 1 && firstTokenAt > 0) {
        vllm.timePerOutputToken.updateUnsafe((lastTokenAt - firstTokenAt) / 1000 / (generated.completionTokens - 1), metrics)
      }
      vllm.requestSuccess(generated.finishReason).updateUnsafe(1, metrics)
      noteOutcome(request, { queueMs, modelMs: generated.processingMs })
    }

    route.run(request, response, maxWaitMs, ({ waitedMs }) => {
      queueMs = waitedMs
      grantedAt = performance.now()
      vllm.queueTime.updateUnsafe(waitedMs / 1000, metrics)
      return backend.complete(call, reply)
    }, answer)
  }

  const handle = (kind: Kind) =>
    route.post((request, response, text, maxWaitMs) => {
      const body = parse(kind, text, modelRef)
      if (body instanceof OpenAiError) return route.fail(request, response, body)
      const forced = request.headers[simFailureHeader]
      const call: CompletionCall = {
        kind,
        body,
        text,
        requestId: request.headers[requestIdHeader] as string,
        simFailure: typeof forced === "string" ? forced : undefined
      }
      const refused = backend.check(call)
      if (refused !== undefined) return route.fail(request, response, refused)
      serve(request, response, call, maxWaitMs)
    })

  /**
   * `/v1/models`: answered in a fiber (an upstream may be asked; not a hot path, not admitted),
   * interrupted when the client hangs up, and with the router's scope when it stops.
   */
  const runFork = Effect.runForkWith(yield* Effect.context<never>())
  const scope = yield* Effect.scope
  const listModels = (request: IncomingMessage, response: ServerResponse) => {
    const fiber = runFork(backend.models)
    Fiber.runIn(fiber, scope)
    const hangUp = () => fiber.interruptUnsafe()
    response.on("close", hangUp)
    fiber.addObserver((exit) => {
      response.off("close", hangUp)
      if (Exit.isSuccess(exit)) {
        const body: ModelList = { object: "list", data: exit.value }
        return route.sendJson(request, response, 200, JSON.stringify(body))
      }
      const failed = Cause.findErrorOption(exit.cause)
      if (failed._tag === "Some") return route.fail(request, response, fromBackend(failed.value))
      // Stopped with the router (503 shutting_down), by a hang-up (nothing to answer), or a defect (500).
      route.answerFailure(request, response, exit.cause as Cause.Cause<never>)
    })
  }

  routes.add("POST", completionsPath, handle("completion"))
  routes.add("POST", chatCompletionsPath, handle("chat"))
  routes.add("GET", modelsPath, route.get(listModels))
}))
