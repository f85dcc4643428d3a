/**
 * The OpenAI-compatible API: the request fields and response shapes of vLLM's
 * OpenAI server (Completions, Chat Completions, Models), so clients, gateways
 * and endpoint pickers that speak it can use the router. Unknown request
 * fields are ignored. Errors are OpenAI's `{"error":{"message","type","param",
 * "code"}}`. With `"stream": true` the success is server-sent events (one
 * `data:` line per chunk, then `data: [DONE]`); the schemas below give the
 * chunks' shape too.
 */
import { Schema } from "effect"
import { HttpApiEndpoint, HttpApiGroup, HttpApiSchema, OpenApi } from "effect/http-api"
import { queueTimeoutHeader, rejectReasonHeader, simFailureHeader } from "./Headers.ts"

export const completionsPath = "/v1/completions"
export const chatCompletionsPath = "/v1/chat/completions"
export const modelsPath = "/v1/models"


/**
 * Most stop sequences a request may carry. OpenAI allows 4, vLLM any number;
 * every sequence is searched for in the output, so an unbounded list costs
 * the event loop (60,000 blocked it ~170 ms a request). 16 leaves room for
 * clients that send a model's several end markers.
 */
export const maxStopSequences = 16

const StopField = Schema.optionalKey(Schema.NullOr(Schema.Union([
  Schema.String,
  Schema.Array(Schema.String).check(Schema.isMaxLength(maxStopSequences))
])).annotate({ description: `A stop sequence, or at most ${maxStopSequences}` }))
const Int = Schema.Int

/** A finite number, at least 0 (JSON's 1e400 parses as Infinity). */
const NonNegative = Schema.Number.check(Schema.isFinite(), Schema.isGreaterThanOrEqualTo(0))

const commonFields = {
  model: Schema.optionalKey(Schema.String).annotate({ description: "The served model (GET /v1/models); another is a 404" }),
  stop: StopField,
  temperature: Schema.optionalKey(Schema.NullOr(NonNegative)).annotate({ description: "A finite number >= 0 (vLLM's rule)" }),
  top_p: Schema.optionalKey(Schema.NullOr(Schema.Number.check(Schema.isFinite(), Schema.isBetween({ minimum: 0, maximum: 1 })))),
  seed: Schema.optionalKey(Schema.NullOr(Int)),
  n: Schema.optionalKey(Schema.NullOr(Int)).annotate({ description: "Only 1 is served" }),
  stream: Schema.optionalKey(Schema.NullOr(Schema.Boolean)),
  stream_options: Schema.optionalKey(Schema.NullOr(Schema.Struct({
    include_usage: Schema.optionalKey(Schema.NullOr(Schema.Boolean))
  }))),
  user: Schema.optionalKey(Schema.NullOr(Schema.String))
}

export const CompletionRequest = Schema.Struct({
  ...commonFields,
  prompt: Schema.Union([Schema.String, Schema.Array(Schema.String)]),
  max_tokens: Schema.optionalKey(Schema.NullOr(Int))
}).annotate({ identifier: "CompletionRequest", description: "Unknown fields are ignored" })
export type CompletionRequest = typeof CompletionRequest.Type

const ContentPart = Schema.Struct({ type: Schema.String, text: Schema.optionalKey(Schema.String) })

/** The roles OpenAI's and vLLM's chat APIs accept (`function`: OpenAI's deprecated tool role). */
export const chatRoles = ["system", "developer", "user", "assistant", "tool", "function"] as const

export const ChatMessage = Schema.Struct({
  role: Schema.Literals(chatRoles),
  content: Schema.optionalKey(Schema.NullOr(Schema.Union([Schema.String, Schema.Array(ContentPart)]))),
  name: Schema.optionalKey(Schema.String)
})

export const ChatCompletionRequest = Schema.Struct({
  ...commonFields,
  messages: Schema.Array(ChatMessage),
  max_tokens: Schema.optionalKey(Schema.NullOr(Int)),
  max_completion_tokens: Schema.optionalKey(Schema.NullOr(Int))
}).annotate({ identifier: "ChatCompletionRequest", description: "Unknown fields are ignored" })
export type ChatCompletionRequest = typeof ChatCompletionRequest.Type

export const Usage = Schema.Struct({
  prompt_tokens: Int,
  completion_tokens: Int,
  total_tokens: Int,
  /** Prompt tokens the model server found in its prefix cache (as vLLM fills it). */
  prompt_tokens_details: Schema.optionalKey(Schema.NullOr(Schema.Struct({ cached_tokens: Int })))
})
export type Usage = typeof Usage.Type

const FinishReason = Schema.NullOr(Schema.Literals(["stop", "length", "error"]))

export const CompletionResponse = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("text_completion"),
  created: Int,
  model: Schema.String,
  choices: Schema.Array(Schema.Struct({
    index: Int,
    text: Schema.String,
    logprobs: Schema.Null,
    finish_reason: FinishReason
  })),
  usage: Schema.optionalKey(Schema.NullOr(Usage))
}).annotate({ identifier: "CompletionResponse", description: "Also the shape of each streamed chunk" })
export type CompletionResponse = typeof CompletionResponse.Type

export const ChatCompletionResponse = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("chat.completion"),
  created: Int,
  model: Schema.String,
  choices: Schema.Array(Schema.Struct({
    index: Int,
    message: Schema.Struct({ role: Schema.Literal("assistant"), content: Schema.String }),
    logprobs: Schema.Null,
    finish_reason: FinishReason
  })),
  usage: Usage
}).annotate({ identifier: "ChatCompletionResponse" })
export type ChatCompletionResponse = typeof ChatCompletionResponse.Type

export const ChatCompletionChunk = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("chat.completion.chunk"),
  created: Int,
  model: Schema.String,
  choices: Schema.Array(Schema.Struct({
    index: Int,
    delta: Schema.Struct({ role: Schema.optionalKey(Schema.Literal("assistant")), content: Schema.optionalKey(Schema.String) }),
    logprobs: Schema.Null,
    finish_reason: FinishReason
  })),
  usage: Schema.optionalKey(Schema.NullOr(Usage))
}).annotate({ identifier: "ChatCompletionChunk" })
export type ChatCompletionChunk = typeof ChatCompletionChunk.Type

export const ModelCard = Schema.Struct({
  id: Schema.String,
  object: Schema.Literal("model"),
  created: Int,
  owned_by: Schema.String,
  root: Schema.String,
  parent: Schema.Null,
  max_model_len: Int
})
export type ModelCard = typeof ModelCard.Type
export const ModelList = Schema.Struct({ object: Schema.Literal("list"), data: Schema.Array(ModelCard) }).annotate({
  identifier: "ModelList"
})
export type ModelList = typeof ModelList.Type

/** OpenAI's error body. */
export const OpenAiErrorBody = Schema.Struct({
  error: Schema.Struct({
    message: Schema.String,
    type: Schema.String,
    param: Schema.NullOr(Schema.String),
    code: Schema.NullOr(Schema.String)
  })
}).annotate({ identifier: "OpenAiErrorBody" })
export type OpenAiErrorBody = typeof OpenAiErrorBody.Type

const errorFields = { message: Schema.String, type: Schema.String, param: Schema.NullOr(Schema.String), code: Schema.NullOr(Schema.String) }

/** One error class per status OpenAI clients act on. */
export class OpenAiError extends Schema.TaggedError<OpenAiError>()("OpenAiError", {
  ...errorFields,
  status: Int,
  retryAfterSeconds: Schema.optionalKey(Int),
  /** `x-router-reject-reason` for the router's own overload answers. */
  rejectReason: Schema.optionalKey(Schema.String)
}) {}

const errorResponse = (status: number, description: string) =>
  OpenAiError.pipe(HttpApiSchema.encodeToWithHeaders({
    body: OpenAiErrorBody.pipe(HttpApiSchema.status(status)).annotate({ description }),
    headers: {}
  }, {
    decode: ({ body }) => new OpenAiError({ ...body.error, status }),
    encode: (error) => ({ body: { error: { message: error.message, type: error.type, param: error.param, code: error.code } }, headers: {} })
  }))

const rejectionResponse = (status: number, description: string) =>
  OpenAiError.pipe(HttpApiSchema.encodeToWithHeaders({
    body: OpenAiErrorBody.pipe(HttpApiSchema.status(status)).annotate({ description }),
    headers: { "retry-after": Schema.optionalKey(Schema.String), [rejectReasonHeader]: Schema.optionalKey(Schema.String) }
  }, {
    decode: ({ body, headers }) =>
      new OpenAiError({
        ...body.error,
        status,
        ...(headers["retry-after"] === undefined ? {} : { retryAfterSeconds: Number(headers["retry-after"]) }),
        ...(headers[rejectReasonHeader] === undefined ? {} : { rejectReason: headers[rejectReasonHeader] })
      }),
    encode: (error) => ({
      body: { error: { message: error.message, type: error.type, param: error.param, code: error.code } },
      headers: {
        ...(error.retryAfterSeconds === undefined ? {} : { "retry-after": String(error.retryAfterSeconds) }),
        ...(error.rejectReason === undefined ? {} : { [rejectReasonHeader]: error.rejectReason })
      }
    })
  }))

const errors = [
  errorResponse(400, "Invalid request: a field, the context length, n other than 1"),
  errorResponse(401, "Missing or wrong bearer token"),
  errorResponse(404, "A model this router does not serve"),
  errorResponse(413, "Body over MAX_BODY_BYTES"),
  errorResponse(415, "Not JSON"),
  rejectionResponse(429, "Shed by admission (queue full or queue timeout), with Retry-After"),
  errorResponse(500, "The model failed (or a simulated server_error)"),
  rejectionResponse(503, "Shutting down, or shed with OVERLOAD_STATUS=503")
]

const headers = { [queueTimeoutHeader]: Schema.optionalKey(Schema.String), [simFailureHeader]: Schema.optionalKey(Schema.String) }

export class OpenAiGroup extends HttpApiGroup.make("openai", { topLevel: true })
  .add(
    HttpApiEndpoint.post("completions", completionsPath, {
      payload: CompletionRequest,
      headers,
      success: CompletionResponse,
      error: errors
    }).annotate(OpenApi.Description, "Text completion, behind admission control; `stream: true` answers server-sent events"),
    HttpApiEndpoint.post("chatCompletions", chatCompletionsPath, {
      payload: ChatCompletionRequest,
      headers,
      success: ChatCompletionResponse,
      error: errors
    }).annotate(OpenApi.Description, "Chat completion, behind admission control; `stream: true` answers server-sent events (ChatCompletionChunk)"),
    HttpApiEndpoint.get("models", modelsPath, { success: ModelList, error: [errors[1]] }).annotate(
      OpenApi.Description,
      "The served model"
    )
  )
{}

/** An OpenAI error as the router answers it. */
export const openAiError = (
  status: number,
  type: string,
  code: string | null,
  message: string,
  param: string | null = null,
  extra: { readonly retryAfterSeconds?: number; readonly rejectReason?: string } = {}
): OpenAiError => new OpenAiError({ status, type, code, message, param, ...extra })

/** A 400 `invalid_request_error`, naming the field at fault in `param`. */
export const invalidRequestError = (message: string, param: string | null = null, code: string | null = null): OpenAiError =>
  openAiError(400, "invalid_request_error", code, message, param)

/** OpenAI's `type` for a status the router answers with. */
export const errorTypeOf = (status: number): string =>
  status === 401
    ? "authentication_error"
    : status === 429
    ? "rate_limit_error"
    : status === 503
    ? "service_unavailable"
    : status >= 500
    ? "server_error"
    : "invalid_request_error"

/** The error's body, with all four of OpenAI's fields. */
export const openAiErrorBody = (error: OpenAiError): OpenAiErrorBody => ({
  error: { message: error.message, type: error.type, param: error.param, code: error.code }
})
