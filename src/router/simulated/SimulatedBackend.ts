/**
 * The simulated model as the router's `Backend` (core/Backend.ts): a thin
 * adapter over `Model`. What only a simulation does lives here: the prompt's
 * token count and the context length, the injected failures (SIM_FAILURE_RATE,
 * `x-sim-failure`), and the choice between the fiber-free generation (plain
 * callbacks on shared timers, where it gives the same tokens at the same
 * times) and the Effect one (TestClock, varying delays).
 */
import { type Context, Effect, Exit, Layer } from "effect"
import { simFailureHeader } from "../../api/Headers.ts"
import { invalidRequestError, type ModelCard, type OpenAiError, openAiError } from "../../api/OpenAiApi.ts"
import { Backend, callbacks, type CompletionCall, type CompletionReply, type Completed, type Generated, type Inference, routerModelCard } from "../core/Backend.ts"
import { type FailureType, RouterConfig, type SimulationSettings } from "../core/Config.ts"
import type { AdmissionStats } from "../core/Admission.ts"
import { exportSlotsAsVllm, vllmMetrics } from "../core/Metrics.ts"
import { type GenerationRequest, Model, type Generated as ModelGenerated } from "./Model.ts"
import { contentText, countTokens } from "./Simulation.ts"

/** What each injected failure answers, as llm-d-inference-sim's do. */
const injected: Record<FailureType, OpenAiError> = {
  rate_limit: openAiError(429, "rate_limit_error", "rate_limit_exceeded", "simulated failure: rate limit reached", null, { retryAfterSeconds: 1 }),
  invalid_api_key: openAiError(401, "authentication_error", "invalid_api_key", "simulated failure: invalid API key"),
  context_length: invalidRequestError("simulated failure: the prompt is longer than the model's context length", "messages", "context_length_exceeded"),
  invalid_request: invalidRequestError("simulated failure: invalid request"),
  model_not_found: openAiError(404, "invalid_request_error", "model_not_found", "simulated failure: model not found", "model"),
  server_error: openAiError(500, "server_error", "server_error", "simulated failure: the model failed")
}

const injectedContextLengthOfPrompt = invalidRequestError(
  "simulated failure: the prompt is longer than the model's context length",
  "prompt",
  "context_length_exceeded"
)

/** As the real check names the field: the prompt of a completion, the messages of a chat. */
const injectedFor = (type: FailureType, call: CompletionCall): OpenAiError | undefined =>
  type === "context_length" && call.kind === "completion" ? injectedContextLengthOfPrompt : injected[type]

/** The call as the model sees it. */
const generationOf = (call: CompletionCall): GenerationRequest => {
  const body = call.body
  let echoText: string
  let promptText: string
  let maxTokens: number | null | undefined
  // A chat's next turn has this reply as a message, after a newline; a completion's, after a blank.
  const replyPrefix = "messages" in body ? "\n" : " "
  if ("messages" in body) {
    promptText = body.messages.map((message) => contentText(message.content)).join("\n")
    const lastUser = body.messages.findLast((message) => message.role === "user")
    echoText = contentText(lastUser?.content ?? body.messages[body.messages.length - 1]?.content)
    maxTokens = body.max_completion_tokens ?? body.max_tokens
  } else {
    promptText = echoText = typeof body.prompt === "string" ? body.prompt : body.prompt[0] ?? ""
    maxTokens = body.max_tokens
  }
  const stop = body.stop === undefined || body.stop === null ? [] : typeof body.stop === "string" ? [body.stop] : body.stop
  return { echoText, promptText, replyPrefix, promptTokens: countTokens(promptText), maxTokens: maxTokens ?? undefined, stop, seed: body.seed ?? undefined }
}

/**
 * vLLM's series as a vLLM server with this engine exports them: running = in the engine's batch,
 * waiting = for a slot, or admitted and waiting for KV blocks; the prefix-cache counters follow the
 * engine's totals (each scrape adds what grew since the last). A model without an engine (a test's
 * stand-in) exports its slots instead.
 */
const engineMetrics = (model: Model["Service"], modelRef: string) => {
  const vllm = vllmMetrics(modelRef)
  const simulation = model.simulation
  let counted: { queries: number; hits: number; preemptions: number } | undefined
  return (admission: AdmissionStats, context: Context.Context<never>) => {
    if (simulation === undefined) return exportSlotsAsVllm(vllm, admission, context)
    const engine = simulation.stats()
    if (counted === undefined) {
      // The first scrape: the series exist (at 0) from then on, as vLLM's do from its start.
      vllm.cacheConfig(engine.blockSize, engine.kvBlocks).updateUnsafe(1, context)
      counted = { queries: 0, hits: 0, preemptions: 0 }
    }
    vllm.running.updateUnsafe(Math.max(0, admission.running - engine.waiting), context)
    vllm.waiting.updateUnsafe(admission.waiting + engine.waiting, context)
    vllm.kvCache.updateUnsafe(engine.usedBlocks / engine.kvBlocks, context)
    vllm.prefixQueries.updateUnsafe(engine.prefixQueries - counted.queries, context)
    vllm.prefixHits.updateUnsafe(engine.prefixHits - counted.hits, context)
    vllm.preemptions.updateUnsafe(engine.preemptions - counted.preemptions, context)
    counted = { queries: engine.prefixQueries, hits: engine.prefixHits, preemptions: engine.preemptions }
    vllm.loraRequests.updateUnsafe(Date.now() / 1000, context)
  }
}

export const makeSimulatedBackend = (model: Model["Service"], simulation: SimulationSettings, card: ModelCard): Backend["Service"] => {
  // Computed once per call: `check` and `complete` both need it.
  const generations = new WeakMap<CompletionCall, GenerationRequest>()
  const generation = (call: CompletionCall) => {
    let found = generations.get(call)
    if (found === undefined) generations.set(call, found = generationOf(call))
    return found
  }

  /** An injected failure: forced by the request's header, or drawn at SIM_FAILURE_RATE. */
  const failureFor = (call: CompletionCall): OpenAiError | undefined => {
    const forced = call.simFailure
    if (forced !== undefined) {
      const type = forced.trim() as FailureType
      return injectedFor(type, call) ?? invalidRequestError(
        `invalid request header ${simFailureHeader}: ${JSON.stringify(forced)}: expected one of ${Object.keys(injected).join(", ")}`,
        simFailureHeader
      )
    }
    if (simulation.failureRate > 0 && Math.random() * 100 < simulation.failureRate) {
      return injectedFor(simulation.failureTypes[Math.floor(Math.random() * simulation.failureTypes.length)], call)
    }
    return undefined
  }

  const check = (call: CompletionCall): OpenAiError | undefined => {
    const { maxTokens, promptTokens } = generation(call)
    const limit = simulation.maxModelLen
    // Without max_tokens the reply may take what the prompt leaves (as vLLM): at least one token must fit.
    if (promptTokens + (maxTokens ?? 1) > limit) {
      const field = call.kind === "chat" ? "messages" : "prompt"
      return invalidRequestError(
        maxTokens === undefined
          ? `This model's maximum context length is ${limit} tokens. However, the ${field} alone has ${promptTokens} tokens, which leaves none for the completion.`
          : `This model's maximum context length is ${limit} tokens. However, you requested ${promptTokens + maxTokens} tokens (${promptTokens} in the ${field}, ${maxTokens} for the completion).`,
        field,
        "context_length_exceeded"
      )
    }
    // vLLM refuses a prompt that could never fit its KV cache; a shorter one waits for blocks.
    const blocks = Math.ceil(promptTokens / simulation.blockSize)
    if (blocks > simulation.kvBlocks) {
      return invalidRequestError(
        `The prompt's ${promptTokens} tokens need ${blocks} KV-cache blocks of ${simulation.blockSize} tokens; this server has ${simulation.kvBlocks} (SIM_KV_BLOCKS).`,
        call.kind === "chat" ? "messages" : "prompt",
        "context_length_exceeded"
      )
    }
    return failureFor(call)
  }

  const complete = (call: CompletionCall, reply: CompletionReply) => {
    const request = generation(call)
    const generated = (done: ModelGenerated): Generated => ({
      text: done.text,
      promptTokens: request.promptTokens,
      completionTokens: done.completionTokens,
      finishReason: done.finishReason,
      processingMs: done.processingMs,
      cachedTokens: done.cachedTokens
    })
    const generateUnsafe = model.generateUnsafe
    if (generateUnsafe !== undefined) {
      return callbacks<Completed>((done) => {
        reply.begin()
        return generateUnsafe(request, {
          token: (token, index, next) => {
            if (reply.token(token, index)) next()
            else reply.onceDrained(next)
          },
          end: (end) => {
            const result = generated(end)
            reply.finish(result)
            done(Exit.succeed({ generated: result }))
          }
        })
      })
    }
    const drained = Effect.callback<void>((resume) => reply.onceDrained(() => resume(Effect.void)))
    return Effect.suspend(() => {
      reply.begin()
      return model.generate(request, (token, index) => reply.token(token, index) ? Effect.void : drained)
    }).pipe(Effect.map((end): Completed => {
      const result = generated(end)
      reply.finish(result)
      return { generated: result }
    }))
  }

  return Backend.of({
    ready: () => true,
    infer: (prompt) => {
      const inferUnsafe = model.inferUnsafe
      if (inferUnsafe === undefined) return model.infer(prompt)
      // Called once admitted: the engine takes the prompt now. Answered at once (SIM_LATENCY_MS=0): an Exit, no fiber.
      let finished: Inference | undefined
      let deliver: ((exit: Exit.Exit<Inference>) => void) | undefined
      const started = inferUnsafe(prompt, (inference) => deliver === undefined ? (finished = inference) : deliver(Exit.succeed(inference)))
      if (typeof started !== "function") return Exit.succeed(started)
      return callbacks<Inference>((done) => {
        if (finished !== undefined) done(Exit.succeed(finished))
        else deliver = done
        return started
      })
    },
    check,
    complete,
    models: Effect.succeed([card]),
    exportMetrics: engineMetrics(model, card.id),
    simulation: model.simulation
  })
}

export const SimulatedBackend: Layer.Layer<Backend, never, Model | RouterConfig> = Layer.effect(
  Backend,
  Effect.gen(function*() {
    const config = yield* RouterConfig
    const model = yield* Model
    const card = routerModelCard(config.modelRef, config.simulation.maxModelLen)
    return makeSimulatedBackend(model, config.simulation, card)
  })
)
