/**
 * The model behind the router. Simulated, it is a vLLM-like engine (Engine.ts:
 * continuous batching in steps over a prefix cache of blocks) on a timer
 * clock, the system's or one on Effect's Clock (so TestClock drives it in
 * tests):
 * - `infer` (for `/infer`): the prompt through the engine for one token, so
 *   about SIM_LATENCY_MS; when SIM_TTFT_MS or SIM_ITL_MS is set, a whole
 *   generation instead (`processingMs` = the model's whole time).
 * - `generate` (for the OpenAI-compatible API): a stream of tokens (see
 *   Simulation.ts for the text) at the engine's steps. Each token is handed
 *   to `onToken`, whose effect must complete before the next is handed out: a
 *   client that reads slowly gets its tokens later, while the engine generates
 *   on (its blocks freed when done, as vLLM does); the router buffers nothing
 *   (the text not yet taken is an offset into the planned text).
 * It knows nothing of HTTP; of admission only how busy the slots are. The
 * routes reach it through SimulatedBackend.ts.
 */
import { Clock, Context, Effect, Exit, Layer } from "effect"
import { Admission } from "../core/Admission.ts"
import type { Inference, SimulationView } from "../core/Backend.ts"
import { defaultSimulation, RouterConfig, type RouterSettings } from "../core/Config.ts"
import { type Engine, makeEngine, type SequenceResult, type SequenceSink, systemTimerClock, type TimerClock } from "./Engine.ts"
import { KvEventPublisher } from "./KvEventPublisher.ts"
import type { KvEvent } from "./BlockCache.ts"
import { hash32, planText } from "./Simulation.ts"
import { tokenIds } from "./Tokens.ts"

export { makeTokenTimer, type TimerClock } from "./Engine.ts"

export interface GenerationRequest {
  /** What echo mode repeats (the prompt, or the last user message). */
  readonly echoText: string
  /** Tokens the request's input counts, for usage and the context length. */
  readonly promptTokens: number
  readonly maxTokens: number | undefined
  readonly stop: ReadonlyArray<string>
  readonly seed: number | undefined
  /** The whole prompt as the model reads it (chat messages joined by newlines), for the prefix cache; unset: `echoText`. */
  readonly promptText?: string | undefined
  /**
   * What stands between the prompt and the reply when a client sends both back in its next request:
   * "\n" in a chat (messages are joined by newlines), " " after a completion prompt; unset: nothing.
   * The reply's first token is cached with it (Engine.submit).
   */
  readonly replyPrefix?: string | undefined
}

/** A whole generation: what the engine reports for one sequence. */
export type Generated = SequenceResult

export type OnToken = (token: string, index: number) => Effect.Effect<void>

/** Receives a generation's tokens from `generateUnsafe`. */
export interface TokenSink {
  /** One token; call `next` when ready for the next (at once, or once the client's socket drained). */
  token(text: string, index: number, next: () => void): void
  end(generated: Generated): void
}

/** A TimerClock on Effect's Clock: what `context`'s Clock says (a TestClock in tests), timers as sleeping fibers. */
export const effectTimerClock = (clock: Clock.Clock, context: Context.Context<never>): TimerClock => {
  const runFork = Effect.runForkWith(context)
  return {
    now: () => Number(clock.currentTimeNanosUnsafe()) / 1_000_000,
    setTimeout: (callback, ms) => {
      // Cleared: the fiber still wakes, and does nothing.
      const handle = { cleared: false }
      runFork(Effect.andThen(Effect.sleep(ms), Effect.sync(() => handle.cleared || callback())))
      return handle
    },
    clearTimeout: (handle) => {
      ;(handle as { cleared: boolean }).cleared = true
    }
  }
}

export interface SimulatedOptions {
  /** Seeds the block hashes (MODEL_REF). */
  readonly modelName?: string | undefined
  /** Most sequences running at once (MAX_CONCURRENCY). */
  readonly maxRunning?: number | undefined
  /** Receives each engine step's KV events. */
  readonly publish?: ((events: ReadonlyArray<KvEvent>) => void) | undefined
}

export class Model extends Context.Service<Model, {
  infer(prompt: string): Effect.Effect<Inference>
  generate(request: GenerationRequest, onToken: OnToken): Effect.Effect<Generated>
  /**
   * The same generation as `generate`, with plain callbacks; returns the
   * function that stops it. Present on the system clock; under TestClock
   * `generate` runs instead. Why by hand: see BENCHMARKS.md, section 6.
   */
  readonly generateUnsafe?: ((request: GenerationRequest, sink: TokenSink) => () => void) | undefined
  /**
   * `infer` with a plain callback, started at once: returns the inference
   * when it completed at once (no time to wait: SIM_LATENCY_MS=0), else the
   * function that stops it. Present on the system clock.
   */
  readonly inferUnsafe?: ((prompt: string, done: (inference: Inference) => void) => Inference | (() => void)) | undefined
  /** Present when simulated. */
  readonly simulation?: SimulationView | undefined
}>()("inference-router/Model") {
  /** How far a delay stretches at the share of slots busy (1 = none busy). */
  static readonly loadScale = (loadFactor: number, busyShare: number) => 1 + (loadFactor - 1) * Math.max(0, Math.min(1, busyShare))

  static readonly simulated = (
    latencyMs: number,
    settings: RouterSettings["simulation"] = defaultSimulation,
    /** Share of slots busy besides this request, 0..1 (SIM_LOAD_FACTOR); unset: the engine's own running share. */
    busyShare?: (() => number) | undefined,
    /** True when time is the system's (not a TestClock): the engine runs on Node's timers, `generateUnsafe` is offered. */
    systemTime = false,
    options: SimulatedOptions = {}
  ): Model["Service"] => {
    const engineOn = (clock: TimerClock): Engine =>
      makeEngine(
        {
          blockSize: settings.blockSize,
          kvBlocks: settings.kvBlocks,
          maxRunning: options.maxRunning ?? Number.MAX_SAFE_INTEGER,
          maxBatchedTokens: settings.maxBatchedTokens,
          ttftMs: settings.ttftMs ?? latencyMs,
          ttftStdDevMs: settings.ttftStdDevMs,
          itlMs: settings.itlMs ?? 0,
          itlStdDevMs: settings.itlStdDevMs,
          prefillUsPerToken: settings.prefillUsPerToken,
          loadFactor: settings.loadFactor,
          modelName: options.modelName ?? "",
          seed: settings.seed
        },
        clock,
        options.publish,
        busyShare
      )
    // One engine (one cache) per model: on Node's timers, or on the Clock of the first Effect that needs it.
    let engine: Engine | undefined = systemTime ? engineOn(systemTimerClock) : undefined
    const engineEffect: Effect.Effect<Engine> = Effect.suspend(() =>
      engine !== undefined
        ? Effect.succeed(engine)
        : Effect.clockWith((clock) => Effect.map(Effect.context<never>(), (context) => (engine ??= engineOn(effectTimerClock(clock, context)))))
    )

    const planFor = (request: GenerationRequest) =>
      planText({
        mode: settings.mode,
        echoText: request.echoText,
        // What the context leaves after the prompt, as vLLM caps an unset max_tokens (the check refused the rest).
        maxTokens: Math.min(request.maxTokens ?? settings.maxTokens, Math.max(0, settings.maxModelLen - request.promptTokens)),
        stop: request.stop,
        seed: (request.seed ?? hash32(request.echoText)) ^ settings.seed
      })

    const submit = (on: Engine, request: GenerationRequest, sink: SequenceSink) =>
      on.submit(tokenIds(request.promptText ?? request.echoText), planFor(request), sink, request.replyPrefix)

    const generate = (request: GenerationRequest, onToken: OnToken): Effect.Effect<Generated> =>
      Effect.flatMap(engineEffect, (on) =>
        Effect.context<never>().pipe(Effect.flatMap((context) => {
          const runFork = Effect.runForkWith(context)
          return Effect.callback<Generated>((resume) => {
            let stop = () => {}
            stop = submit(on, request, {
              token: (text, index, next) => {
                const effect = onToken(text, index)
                if (effect === Effect.void) return next()
                runFork(effect).addObserver((exit) => {
                  if (Exit.isSuccess(exit)) return next()
                  // The token's consumer failed: the generation stops and fails with it.
                  stop()
                  resume(Effect.failCause(exit.cause))
                })
              },
              end: (generated) => resume(Effect.succeed(generated))
            })
            return Effect.sync(() => stop())
          })
        })))

    const generateUnsafe = (request: GenerationRequest, sink: TokenSink): () => void => submit(engine!, request, sink)

    const tokenLevel = settings.ttftMs !== undefined || settings.itlMs !== undefined
    const takeAll: SequenceSink["token"] = (_text, _index, next) => next()
    // Without token-level timing, /infer is one token: about SIM_LATENCY_MS.
    const noStop: ReadonlyArray<string> = []
    const inferRequest = (prompt: string): GenerationRequest => ({ echoText: prompt, promptTokens: 0, maxTokens: tokenLevel ? undefined : 1, stop: noStop, seed: undefined })

    const inferUnsafe = (prompt: string, done: (inference: Inference) => void): Inference | (() => void) => {
      let sync: Inference | undefined
      let started = false
      const stop = submit(engine!, inferRequest(prompt), {
        token: takeAll,
        end: ({ processingMs }) => started ? done({ processingMs }) : (sync = { processingMs })
      })
      started = true
      return sync ?? stop
    }

    return Model.of({
      infer: (prompt) =>
        Effect.flatMap(engineEffect, (on) =>
          Effect.callback<Inference>((resume) => {
            const stop = submit(on, inferRequest(prompt), { token: takeAll, end: ({ processingMs }) => resume(Effect.succeed({ processingMs })) })
            return Effect.sync(stop)
          })),
      generate,
      generateUnsafe: systemTime ? generateUnsafe : undefined,
      inferUnsafe: systemTime ? inferUnsafe : undefined,
      simulation: {
        stats: () =>
          engine?.stats() ?? {
            running: 0,
            waiting: 0,
            usedBlocks: 0,
            kvBlocks: settings.kvBlocks,
            blockSize: settings.blockSize,
            prefixQueries: 0,
            prefixHits: 0,
            preemptions: 0
          },
        resetPrefixCache: (resetRunning) => engine?.resetPrefixCache(resetRunning) ?? true
      }
    })
  }

  /** A stand-in model for tests: `infer` as given, `generate` the default simulation's with no delays. */
  static readonly withInfer = (infer: Model["Service"]["infer"]): Model["Service"] =>
    Model.of({ ...Model.simulated(0), infer })

  /** The simulated model (MODEL_BACKEND=simulated; the upstream backend has its own, upstream/UpstreamBackend.ts). */
  static readonly layer: Layer.Layer<Model, never, RouterConfig | Admission> = Layer.effect(
    Model,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      const admission = yield* Admission
      const slots = admission.limits.slots
      // The system's clock is the default one; tests put a TestClock in its place.
      const systemTime = (yield* Clock.Clock) === Context.get(Context.empty(), Clock.Clock)
      const simulation = config.simulation
      const publisher = simulation.kvEventsEndpoint === undefined
        ? undefined
        : yield* KvEventPublisher.make(
          simulation.kvEventsEndpoint,
          simulation.kvEventsTopic ?? `kv@${config.podName ?? "router"}@${config.modelRef}`,
          simulation.kvEventsFormat
        )
      return Model.simulated(
        config.simLatencyMs,
        simulation,
        // The share of the other slots busy: one request alone runs at the base latency.
        () => slots <= 1 ? 0 : Math.max(0, admission.statsUnsafe().running - 1) / (slots - 1),
        systemTime,
        { modelName: config.modelRef, maxRunning: slots, publish: publisher?.publish }
      )
    })
  )
}
