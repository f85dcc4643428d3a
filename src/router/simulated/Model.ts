/**
 * The model behind the router. Today a simulation on Effect's Clock (so
 * TestClock drives it in tests):
 * - `infer` (for `/infer`): waits SIM_LATENCY_MS and reports how long it took;
 *   when SIM_TTFT_MS or SIM_ITL_MS is set, it is a whole generation instead
 *   (`processingMs` = the model's whole time).
 * - `generate` (for the OpenAI-compatible API): a stream of tokens (see
 *   Simulation.ts for the text), the first after the time to first token, the
 *   rest each after the inter-token latency, each with its standard deviation
 *   and scaled by load (SIM_LOAD_FACTOR is reached when every slot is busy).
 *   Each token is handed to `onToken`, whose effect must complete before the
 *   next token is produced: a client that reads slowly slows the generation
 *   instead of making the router buffer.
 * It knows nothing of HTTP; of admission only how busy the slots are.
 */
import { Clock, Context, Effect, Layer, Random } from "effect"
import { Admission } from "../core/Admission.ts"
import { defaultSimulation, RouterConfig, type RouterSettings } from "../core/Config.ts"
import { type FinishReason, hash32, planOutput, planText, tokenReader } from "./Simulation.ts"
import { UpstreamFailure, upstreamRefusal, Upstreams } from "../upstream/Upstreams.ts"

export interface Inference {
  /** Whole milliseconds the model spent on this prompt. */
  readonly processingMs: number
  /** `host:port` of the model server that answered (MODEL_BACKEND=upstream). */
  readonly upstream?: string | undefined
}

export interface GenerationRequest {
  /** What echo mode repeats (the prompt, or the last user message). */
  readonly echoText: string
  /** Tokens the request's input counts, for usage and the context length. */
  readonly promptTokens: number
  readonly maxTokens: number | undefined
  readonly stop: ReadonlyArray<string>
  readonly seed: number | undefined
}

export interface Generated {
  readonly text: string
  readonly completionTokens: number
  readonly finishReason: FinishReason
  /** Milliseconds from the start of generation to the first token (0 when none). */
  readonly firstTokenMs: number
  /** Whole milliseconds the model took. */
  readonly processingMs: number
}

export type OnToken = (token: string, index: number) => Effect.Effect<void>

/** Receives a generation's tokens from `generateUnsafe`. */
export interface TokenSink {
  /** One token; call `next` when ready for the next (at once, or once the client's socket drained). */
  token(text: string, index: number, next: () => void): void
  end(generated: Generated): void
}

/** What the token timer reads and arms: the system's by default, a hand-driven one in tests. */
export interface TimerClock {
  now(): number
  setTimeout(callback: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

const systemTimerClock: TimerClock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>)
}

/**
 * Timers for token delays, shared by every stream: callbacks due in the same
 * millisecond run from one `setTimeout`, as an engine emits the tokens of all
 * its running sequences per step. Streams at 100 tokens a second each meet in
 * the same millisecond by the dozen, so this replaces most timers with an
 * array push.
 */
export const makeTokenTimer = (clock: TimerClock = systemTimerClock) => {
  const due = new Map<number, Array<() => void>>()
  let armedFor = Infinity
  let timer: unknown
  /** The millisecond whose callbacks are running, if any. */
  let firing: number | undefined
  const fire = () => {
    timer = undefined
    armedFor = Infinity
    const now = clock.now()
    let next = Infinity
    for (const [at, callbacks] of due) {
      if (at > now) {
        if (at < next) next = at
        continue
      }
      due.delete(at)
      firing = at
      for (const callback of callbacks) callback()
      firing = undefined
    }
    // Callbacks may have added earlier-due entries (a zero delay): look again.
    for (const at of due.keys()) if (at < next) next = at
    if (next !== Infinity) arm(next)
  }
  const arm = (at: number) => {
    if (at >= armedFor) return
    if (timer !== undefined) clock.clearTimeout(timer)
    armedFor = at
    timer = clock.setTimeout(fire, Math.max(0, at - clock.now()))
  }
  return {
    /**
     * Runs `callback` about `ms` from now, in the nearest whole millisecond
     * (Node's own timers fire up to a millisecond late; rounding up here too
     * measured about a millisecond more than a bare setTimeout). Called from
     * a callback, "now" is when that callback was due, not when its timer ran
     * (up to a millisecond later; a longer stall is not made up for), as Node
     * counts a setTimeout from the loop's time: a stream's gaps then average
     * the configured gap, not that plus the timer's lateness (BENCHMARKS.md 6c).
     */
    after(ms: number, callback: () => void): void {
      const now = clock.now()
      const from = firing === undefined ? now : Math.max(firing, now - 1)
      const at = Math.round(from + ms)
      const list = due.get(at)
      if (list === undefined) due.set(at, [callback])
      else list.push(callback)
      arm(at)
    }
  }
}

export class Model extends Context.Service<Model, {
  /** `requestId` travels to an upstream model server (MODEL_BACKEND=upstream). */
  infer(prompt: string, requestId?: string): Effect.Effect<Inference, UpstreamFailure>
  generate(request: GenerationRequest, onToken: OnToken): Effect.Effect<Generated>
  /**
   * The same generation as `generate`, with plain callbacks and shared timers;
   * returns the function that stops it. Present only where it gives the same
   * tokens at the same times: fixed delays (no standard deviation, no load
   * factor) on the system clock. Under TestClock, or with varying delays,
   * `generate` runs instead. Why by hand: see BENCHMARKS.md, section 6.
   */
  readonly generateUnsafe?: ((request: GenerationRequest, sink: TokenSink) => () => void) | undefined
}>()("inference-router/Model") {
  /** How far a delay stretches at the share of slots busy (1 = none busy). */
  static readonly loadScale = (loadFactor: number, busyShare: number) => 1 + (loadFactor - 1) * Math.max(0, Math.min(1, busyShare))

  static readonly simulated = (
    latencyMs: number,
    settings: RouterSettings["simulation"] = defaultSimulation,
    /** Share of slots busy besides this request, 0..1. */
    busyShare: () => number = () => 0,
    /** True when time is the system's (not a TestClock): `generateUnsafe` may use Node's timers. */
    systemTime = false
  ): Model["Service"] => {
    const instant = Effect.succeed<Inference>({ processingMs: 0 })
    const ttftMs = settings.ttftMs ?? latencyMs
    const itlMs = settings.itlMs ?? 0

    /** A delay with its standard deviation (normal, by Box-Muller on Effect's Random), scaled by load, never negative. */
    const delay = (meanMs: number, stdDevMs: number): Effect.Effect<number> =>
      // The common case, computed without a generator: it runs once per token.
      stdDevMs === 0
        ? Effect.sync(() => settings.loadFactor === 1 ? meanMs : meanMs * Model.loadScale(settings.loadFactor, busyShare()))
        : Effect.gen(function*() {
        let value = meanMs
        if (stdDevMs > 0) {
          const u = 1 - (yield* Random.next)
          const v = yield* Random.next
          value += stdDevMs * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v)
        }
        return Math.max(0, value * Model.loadScale(settings.loadFactor, busyShare()))
      })

    const generate = (request: GenerationRequest, onToken: OnToken): Effect.Effect<Generated> =>
      Effect.clockWith((clock) =>
        Effect.gen(function*() {
          const startedAt = clock.currentTimeNanosUnsafe()
          const elapsedMs = () => Number(clock.currentTimeNanosUnsafe() - startedAt) / 1_000_000
          const plan = planFor(request)
          const nextToken = tokenReader(plan)
          let firstTokenMs = 0
          for (let i = 0; i < plan.tokens; i++) {
            if (i > 0 && fixedItl !== undefined) {
              // The common case, one prebuilt sleep: this runs once per token of every stream.
              if (fixedItl !== null) yield* fixedItl
            } else {
              const wait = i === 0 ? yield* delay(ttftMs, settings.ttftStdDevMs) : yield* delay(itlMs, settings.itlStdDevMs)
              if (wait > 0) yield* Effect.sleep(wait)
            }
            if (i === 0) firstTokenMs = elapsedMs()
            yield* onToken(nextToken(), i)
          }
          if (plan.tokens === 0 && ttftMs > 0) yield* Effect.sleep(yield* delay(ttftMs, settings.ttftStdDevMs))
          return {
            text: planOutput(plan),
            completionTokens: plan.tokens,
            finishReason: plan.finishReason,
            firstTokenMs: Math.round(firstTokenMs),
            processingMs: Math.round(elapsedMs())
          }
        })
      )

    /** The inter-token sleep when it neither varies nor scales with load (null: no wait at all). */
    const fixedItl = settings.itlStdDevMs === 0 && settings.loadFactor === 1
      ? (itlMs > 0 ? Effect.sleep(itlMs) : null)
      : undefined

    const planFor = (request: GenerationRequest) =>
      planText({
        mode: settings.mode,
        echoText: request.echoText,
        maxTokens: Math.min(request.maxTokens ?? settings.maxTokens, settings.maxModelLen),
        stop: request.stop,
        seed: (request.seed ?? hash32(request.echoText)) ^ settings.seed
      })

    const timer = makeTokenTimer()
    const generateUnsafe = (request: GenerationRequest, sink: TokenSink): () => void => {
      const startedAt = performance.now()
      const plan = planFor(request)
      const tokens = plan.tokens
      const nextToken = tokenReader(plan)
      let i = 0
      let firstTokenMs = 0
      let stopped = false
      const finish = () =>
        sink.end({
          text: planOutput(plan),
          completionTokens: tokens,
          finishReason: plan.finishReason,
          firstTokenMs: Math.round(firstTokenMs),
          processingMs: Math.round(performance.now() - startedAt)
        })
      // With no inter-token delay, tokens a sink takes at once are emitted in a loop, not by recursion.
      let emitting = false
      let again = false
      const next = () => {
        if (stopped) return
        if (i === tokens) return finish()
        if (itlMs > 0) timer.after(itlMs, emit)
        else if (emitting) again = true
        else emit()
      }
      const emit = () => {
        emitting = true
        do {
          again = false
          if (stopped) break
          if (i === 0) firstTokenMs = performance.now() - startedAt
          sink.token(nextToken(), i++, next)
        } while (again)
        emitting = false
      }
      const first = tokens === 0 ? finish : emit
      if (ttftMs > 0) timer.after(ttftMs, first)
      else first()
      return () => {
        stopped = true
      }
    }
    const fixedTimes = settings.ttftStdDevMs === 0 && settings.itlStdDevMs === 0 && settings.loadFactor === 1

    const noTokens: OnToken = () => Effect.void
    const tokenLevel = settings.ttftMs !== undefined || settings.itlMs !== undefined

    return Model.of({
      infer: (prompt) => {
        if (tokenLevel) {
          return Effect.map(
            generate({ echoText: prompt, promptTokens: 0, maxTokens: undefined, stop: [], seed: undefined }, noTokens),
            ({ processingMs }) => ({ processingMs })
          )
        }
        return latencyMs === 0 ? instant : Effect.clockWith((clock) => {
          // Nanoseconds, rounded to the nearest millisecond: Node's timers run on
          // the event loop's cached clock, so a 100 ms sleep measures 99.6 ms as
          // often as 100.4 ms, and the millisecond clock can even read 99.
          const startedAt = clock.currentTimeNanosUnsafe()
          return Effect.map(Effect.sleep(latencyMs), () => ({
            processingMs: Math.round(Number(clock.currentTimeNanosUnsafe() - startedAt) / 1_000_000)
          }))
        })
      },
      generate,
      generateUnsafe: systemTime && fixedTimes ? generateUnsafe : undefined
    })
  }

  /**
   * MODEL_BACKEND=upstream: `/infer` is a completion of the prompt on an
   * upstream model server (its defaults decide the length); `processingMs` is
   * the upstream's whole time. An upstream's refusal or failure is an
   * `UpstreamFailure` the handler answers in `/infer`'s envelope. `generate`
   * is not used: the OpenAI API is forwarded as it is (see OpenAiHandler).
   */
  static readonly upstream = (upstreams: Upstreams["Service"], modelRef: string): Model["Service"] =>
    Model.of({
      infer: (prompt, requestId) =>
        Effect.clockWith((clock) =>
          Effect.gen(function*() {
            const startedAt = clock.currentTimeNanosUnsafe()
            const answer = yield* upstreams.fetch({
              path: "/v1/completions",
              body: JSON.stringify({ model: modelRef, prompt }),
              headers: requestId === undefined ? { "content-type": "application/json" } : { "content-type": "application/json", "x-request-id": requestId }
            })
            if (answer.status >= 200 && answer.status < 300) {
              return { processingMs: Math.round(Number(clock.currentTimeNanosUnsafe() - startedAt) / 1_000_000), upstream: answer.upstream }
            }
            return yield* upstreamRefusal(answer.status, answer.upstream, answer.body, answer.headers["retry-after"])
          })
        ),
      generate: () => Effect.die(new Error("generate is not used with MODEL_BACKEND=upstream"))
    })

  /** A stand-in model for tests: `infer` as given, `generate` the default simulation's with no delays. */
  static readonly withInfer = (infer: Model["Service"]["infer"]): Model["Service"] =>
    Model.of({ ...Model.simulated(0), infer })

  static readonly layer: Layer.Layer<Model, never, RouterConfig | Admission | Upstreams> = Layer.effect(
    Model,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      const upstreams = yield* Upstreams
      if (upstreams.enabled) return Model.upstream(upstreams, config.modelRef)
      const admission = yield* Admission
      const slots = admission.limits.slots
      // The system's clock is the default one; tests put a TestClock in its place.
      const systemTime = (yield* Clock.Clock) === Context.get(Context.empty(), Clock.Clock)
      return Model.simulated(
        config.simLatencyMs,
        config.simulation,
        // The share of the other slots busy: one request alone runs at the base latency.
        () => slots <= 1 ? 0 : Math.max(0, admission.statsUnsafe().running - 1) / (slots - 1),
        systemTime
      )
    })
  )
}
