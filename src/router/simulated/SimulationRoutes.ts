/**
 * vLLM's own endpoints beside the OpenAI API, as the simulated server serves
 * them: `POST /tokenize` and `POST /detokenize` (the tokenization rule of
 * Simulation.ts, ids of Tokens.ts) and `POST /reset_prefix_cache`. With
 * MODEL_BACKEND=upstream there is no simulated server: they answer 404.
 *
 * Ids are hashes of token text, so /detokenize knows only the ids this
 * server has handed out from /tokenize (a bounded vocabulary: Tokens.ts's
 * Vocabulary); any other is a 400 naming it.
 */
import { ByteSize, Effect, Schema } from "effect"
import { HttpIncomingMessage, HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { bearerChallenge, wwwAuthenticateHeader } from "../../api/Headers.ts"
import { openAiError, openAiErrorBody } from "../../api/OpenAiApi.ts"
import { RouterConfig } from "../core/Config.ts"
import { Backend } from "../core/Backend.ts"
import { makeBearerCheck } from "../core/Authorization.ts"
import { contentText } from "./Simulation.ts"
import { tokensWithIds, Vocabulary } from "./Tokens.ts"
import { oneLine } from "../../shared/SchemaMessage.ts"

export const tokenizePath = "/tokenize"
export const detokenizePath = "/detokenize"
export const resetPrefixCachePath = "/reset_prefix_cache"

/** The routes this module serves (for the router's route table: 405s and metric labels). */
export const simulationRouteSpecs = [
  { method: "POST", path: tokenizePath },
  { method: "POST", path: detokenizePath },
  { method: "POST", path: resetPrefixCachePath }
] as const

const Int = Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))
const Message = Schema.Struct({ role: Schema.String, content: Schema.Unknown })
const TokenizeRequest = Schema.Union([
  Schema.Struct({
    model: Schema.optionalKey(Schema.NullOr(Schema.String)),
    prompt: Schema.String,
    return_token_strs: Schema.optionalKey(Schema.NullOr(Schema.Boolean))
  }),
  Schema.Struct({
    model: Schema.optionalKey(Schema.NullOr(Schema.String)),
    messages: Schema.Array(Message),
    return_token_strs: Schema.optionalKey(Schema.NullOr(Schema.Boolean))
  })
])
const DetokenizeRequest = Schema.Struct({
  model: Schema.optionalKey(Schema.NullOr(Schema.String)),
  tokens: Schema.Array(Int)
})
const decodeTokenize = Schema.decodeUnknownResult(TokenizeRequest)
const decodeDetokenize = Schema.decodeUnknownResult(DetokenizeRequest)

/** An error in OpenAI's shape, from the contract's `OpenAiError`. */
const errorResponse = (status: number, type: string, code: string, message: string, param: string | null = null) =>
  HttpServerResponse.jsonUnsafe(openAiErrorBody(openAiError(status, type, code, message, param)), {
    status,
    // As every 401 of the router: the scheme the client should use.
    headers: status === 401 ? { [wwwAuthenticateHeader]: bearerChallenge } : undefined
  })

const badRequest = (message: string, param: string | null = null) => errorResponse(400, "invalid_request_error", "invalid_request", message, param)

/**
 * What /detokenize remembers of /tokenize's tokens: at most 8 M characters (about 16 MB of strings)
 * in at most 200,000 tokens, least recently used forgotten first; a token longer than 256
 * characters is not kept.
 */
export const vocabularyLimits = { maxChars: 8_000_000, maxEntries: 200_000, maxTokenChars: 256 } as const

export const SimulationRoutes = HttpRouter.use(Effect.fnUntraced(function*(router) {
  const config = yield* RouterConfig
  const backend = yield* Backend
  const simulation = backend.simulation
  const checkBearer = makeBearerCheck(config.apiKeys)
  const maxBodySize = ByteSize.bytes(config.maxBodyBytes)
  const vocabulary = new Vocabulary(vocabularyLimits.maxChars, vocabularyLimits.maxEntries, vocabularyLimits.maxTokenChars)

  const refuse = (response: HttpServerResponse.HttpServerResponse) => ({ refused: response, body: undefined })

  /** Authorization, the simulated backend, a JSON body: the body, or the response that refuses the request. */
  const jsonBody = Effect.gen(function*() {
    const request = yield* HttpServerRequest.HttpServerRequest
    const denied = checkBearer(request.headers.authorization)
    if (denied !== undefined) return refuse(errorResponse(401, "authentication_error", "invalid_api_key", denied.message))
    if (simulation === undefined) {
      return refuse(errorResponse(404, "invalid_request_error", "not_found", "served by the simulated model only (MODEL_BACKEND=simulated)"))
    }
    // MAX_BODY_BYTES, as the other routes read bodies: by the declared length first, then as read.
    const tooLarge = errorResponse(413, "invalid_request_error", "payload_too_large", `the request body is longer than MAX_BODY_BYTES (${config.maxBodyBytes})`)
    const declared = Number(request.headers["content-length"] ?? 0)
    if (declared > config.maxBodyBytes) return refuse(tooLarge)
    const text = yield* request.text.pipe(
      Effect.provideService(HttpIncomingMessage.MaxBodySize, maxBodySize),
      Effect.orElseSucceed(() => undefined)
    )
    if (text === undefined) return refuse(tooLarge)
    if (text.trim() === "") return { refused: undefined, body: {} as unknown }
    try {
      return { refused: undefined, body: JSON.parse(text) as unknown }
    } catch {
      return refuse(badRequest("request body is not valid JSON"))
    }
  })

  const schemaMessage = (error: Schema.SchemaError) => `invalid request body: ${oneLine(error.message)}`

  const wrongModel = (model: string | null | undefined) =>
    model !== undefined && model !== null && model !== config.modelRef
      ? errorResponse(404, "invalid_request_error", "model_not_found", `the model "${model}" does not exist; this router serves "${config.modelRef}"`, "model")
      : undefined

  yield* router.add(
    "POST",
    tokenizePath,
    Effect.gen(function*() {
      const read = yield* jsonBody
      if (read.refused !== undefined) return read.refused
      const decoded = decodeTokenize(read.body)
      if (decoded._tag === "Failure") return badRequest(schemaMessage(decoded.failure))
      const body = decoded.success
      const refused = wrongModel(body.model)
      if (refused !== undefined) return refused
      const text = "prompt" in body ? body.prompt : body.messages.map((message) => contentText(message.content)).join("\n")
      const tokens = tokensWithIds(text)
      for (const token of tokens) vocabulary.remember(token.id, token.text)
      return HttpServerResponse.jsonUnsafe({
        count: tokens.length,
        max_model_len: config.simulation.maxModelLen,
        tokens: tokens.map((token) => token.id),
        token_strs: body.return_token_strs === true ? tokens.map((token) => token.text) : null
      })
    })
  )

  yield* router.add(
    "POST",
    detokenizePath,
    Effect.gen(function*() {
      const read = yield* jsonBody
      if (read.refused !== undefined) return read.refused
      const decoded = decodeDetokenize(read.body)
      if (decoded._tag === "Failure") return badRequest(schemaMessage(decoded.failure), "tokens")
      const refused = wrongModel(decoded.success.model)
      if (refused !== undefined) return refused
      let prompt = ""
      for (const id of decoded.success.tokens) {
        const text = vocabulary.lookUp(id)
        if (text === undefined) {
          return badRequest(
            `token id ${id} is unknown: this simulated server detokenizes only ids it returned from ${tokenizePath} recently, of tokens up to ${vocabularyLimits.maxTokenChars} characters`,
            "tokens"
          )
        }
        prompt += text
      }
      return HttpServerResponse.jsonUnsafe({ prompt })
    })
  )

  // As vLLM's: the body is not read, `?reset_running_requests=true` resets even while requests run, and the
  // answer is 200 either way (vLLM's API server does not check the engine's result; it logs a refusal).
  yield* router.add(
    "POST",
    resetPrefixCachePath,
    Effect.gen(function*() {
      const request = yield* HttpServerRequest.HttpServerRequest
      const denied = checkBearer(request.headers.authorization)
      if (denied !== undefined) return errorResponse(401, "authentication_error", "invalid_api_key", denied.message)
      if (simulation === undefined) {
        return errorResponse(404, "invalid_request_error", "not_found", "served by the simulated model only (MODEL_BACKEND=simulated)")
      }
      // FastAPI's reading of a bool query parameter.
      const resetRunning = ["true", "1", "yes", "on"].includes(new URL(request.url, "http://x").searchParams.get("reset_running_requests")?.toLowerCase() ?? "")
      if (!simulation.resetPrefixCache(resetRunning)) {
        yield* Effect.logWarning(`Failed to reset prefix cache because some blocks (${simulation.stats().usedBlocks}) are not freed yet`)
      }
      return HttpServerResponse.empty({ status: 200 })
    })
  )
}))
