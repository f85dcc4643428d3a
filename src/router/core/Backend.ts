/**
 * The model behind the router, as the request pipeline sees it: the simulated
 * model and the upstream pool both implement this, so no route asks which one
 * it is. The composition (`edge/RouterServer.ts`) picks one by MODEL_BACKEND.
 *
 * A backend's work is run by the pipeline (`edge/Pipeline.ts`), which holds
 * the admission slot, wires the client's hang-up and the drain, and answers.
 * Work is an Effect, or plain callbacks where a benchmark showed a fiber's
 * cost on the hot path (BENCHMARKS.md sections 6 and 7; docs/architecture.md
 * lists every such place): the pipeline runs either form the same way.
 */
import { Context, Effect, Exit } from "effect"
import type { ChatCompletionRequest, CompletionRequest, ModelCard, OpenAiError } from "../../api/OpenAiApi.ts"
import type { AdmissionStats } from "./Admission.ts"

/** No usable answer from the backend: the status says what the client should do (400: fix the request, 429/503: later). */
export interface BackendFailure {
  readonly status: 400 | 429 | 502 | 503 | 504
  readonly code: string
  readonly message: string
  readonly retryAfterSeconds: number | undefined
}

/** Work that reports through callbacks: `start` begins it and returns the function that stops it. */
export interface Callbacks<A, E> {
  readonly _tag: "Callbacks"
  start(done: (exit: Exit.Exit<A, E>) => void): () => void
}

/** An admitted request's work: an Effect (no fiber when it is an Exit already), or callbacks. */
export type Work<A, E = never> = Effect.Effect<A, E> | Callbacks<A, E>

export const callbacks = <A, E = never>(start: Callbacks<A, E>["start"]): Callbacks<A, E> => ({ _tag: "Callbacks", start })

export const isCallbacks = <A, E>(work: Work<A, E>): work is Callbacks<A, E> => (work as Callbacks<A, E>)._tag === "Callbacks"

/** The work as an Effect (for a request that waits in the queue, in a fiber anyway). */
export const workEffect = <A, E>(work: Work<A, E>): Effect.Effect<A, E> =>
  isCallbacks(work)
    ? Effect.callback<A, E>((resume) => {
      const stop = work.start((exit) => resume(exit))
      return Effect.sync(stop)
    })
    : work

/** `/infer`'s answer. */
export interface Inference {
  /** Whole milliseconds the model spent on this prompt. */
  readonly processingMs: number
  /** `host:port` of the model server that answered (upstream backend). */
  readonly upstream?: string | undefined
  /** The `version` label of the model server that answered (upstream backend). */
  readonly version?: string | undefined
  /** Why the scheduler picked it, for `x-inference-route` (upstream backend, a scheduler other than least request). */
  readonly route?: string | undefined
}

/** One decoded `/v1/completions` or `/v1/chat/completions` request. */
export interface CompletionCall {
  readonly kind: "completion" | "chat"
  readonly body: CompletionRequest | ChatCompletionRequest
  /** The body as received: what a model server is sent. */
  readonly text: string
  readonly requestId: string
  /** The `x-sim-failure` header, if any (a simulated backend fails as asked; an upstream is sent it). */
  readonly simFailure: string | undefined
}

/** A generation's end, at token level. */
export interface Generated {
  readonly text: string
  readonly promptTokens: number
  readonly completionTokens: number
  readonly finishReason: "stop" | "length"
  /** Whole milliseconds the model took. */
  readonly processingMs: number
  /** Prompt tokens found in the model's prefix cache (usage.prompt_tokens_details.cached_tokens); unset: not known. */
  readonly cachedTokens?: number | undefined
}

/**
 * Where a backend writes a completion's answer; the pipeline provides it. A
 * model that produces tokens hands them over one by one (the route encodes
 * OpenAI's JSON or frames); a model server's own answer is relayed as bytes.
 */
export interface CompletionReply {
  // -- tokens (the route encodes them)
  /** The model is about to produce tokens: a stream's headers go out now (a shed stream got a plain 429/503 instead). */
  begin(): void
  /** One token; false when the client's socket is full: call `onceDrained` before the next. */
  token(text: string, index: number): boolean
  /**
   * Calls `resume` once the client's socket drained, or closed: a client that takes nothing for
   * CLIENT_STALL_TIMEOUT_MS is cut off (its connection closed, as a hang-up). Tokens and relayed bytes alike.
   */
  onceDrained(resume: () => void): void
  /** The last token was handed over: the route writes the end of the answer. */
  finish(generated: Generated): void
  // -- bytes (a model server's answer, relayed)
  /** The client's response, for a relay that writes the model server's bytes (a subset of Node's). */
  readonly response: ClientResponse
  /** The router's own answer headers (request id, `Connection: close` while draining). */
  answerHeaders(): Record<string, string | number>
  /** The first body byte arrived (time to first token). */
  firstByte(): void
  // -- either
  /** No usable answer: an error response, or one error frame and `[DONE]` after a started stream. */
  fail(failure: BackendFailure): void
}

/** What the client's response offers a relay: the subset of Node's ServerResponse used. */
export interface ClientResponse {
  readonly headersSent: boolean
  readonly destroyed: boolean
  writeHead(status: number, headers: Record<string, string | number>): unknown
  flushHeaders(): void
  write(chunk: Buffer | string): boolean
  end(chunk?: Buffer | string): unknown
  once(event: "drain", listener: () => void): unknown
}

/** How a completion ended: `failure` when the client got an error instead of an answer. */
export interface Completed {
  readonly failure?: BackendFailure | undefined
  readonly generated?: Generated | undefined
  /** Relayed: the model server whose answer the client got (`host:port`). */
  readonly upstream?: string | undefined
}

export class Backend extends Context.Service<Backend, {
  /** True while it can take requests (synchronous: probes read it). */
  ready(): boolean
  /** `/infer`: the model's work on one prompt, once admitted. */
  infer(prompt: string, requestId: string): Work<Inference, BackendFailure>
  /**
   * What this backend refuses before admission (an injected failure, the
   * simulated context length); undefined when the call may queue.
   */
  check(call: CompletionCall): OpenAiError | undefined
  /** A completion, once admitted: written to `reply`. */
  complete(call: CompletionCall, reply: CompletionReply): Work<Completed>
  /** `/v1/models`: the models served, as the model servers report them. */
  readonly models: Effect.Effect<ReadonlyArray<ModelCard>, BackendFailure>
  /**
   * Sets the backend's own series when `/metrics` is scraped, from the admission's state now:
   * vLLM's load gauges and prefix-cache counters (the simulated engine's, or the slots' where the
   * router runs no engine), the pool's per-upstream gauges.
   */
  exportMetrics(admission: AdmissionStats, context: Context.Context<never>): void
  /** The simulated server's engine and prefix cache (its /tokenize, /detokenize, /reset_prefix_cache); absent upstream. */
  readonly simulation?: SimulationView | undefined
}>()("inference-router/Backend") {}

/** The simulated engine's counts, read by the metrics at scrape time. */
export interface SimulationStats {
  /** Sequences in the engine's batch. */
  readonly running: number
  /** Admitted requests waiting for blocks (or for the engine's first step). */
  readonly waiting: number
  readonly usedBlocks: number
  readonly kvBlocks: number
  readonly blockSize: number
  /** Prompt tokens looked up in the prefix cache since start, and of those found cached. */
  readonly prefixQueries: number
  readonly prefixHits: number
  /** Requests preempted since start (their blocks taken back). */
  readonly preemptions: number
}

/** What a simulated model server shows of its engine (simulated/Engine.ts). */
export interface SimulationView {
  stats(): SimulationStats
  /** vLLM's reset_prefix_cache: false (nothing done) while blocks are in use, unless `resetRunning`. */
  resetPrefixCache(resetRunning?: boolean): boolean
}

/**
 * The router's own card for `/v1/models`: the served model and the simulator's
 * context length (an upstream backend replaces `max_model_len` with what a
 * model server reports).
 */
export const routerModelCard = (modelRef: string, maxModelLen: number): ModelCard => ({
  id: modelRef,
  object: "model",
  created: Math.floor(Date.now() / 1000),
  owned_by: "inference-router",
  root: modelRef,
  parent: null,
  max_model_len: maxModelLen
})
