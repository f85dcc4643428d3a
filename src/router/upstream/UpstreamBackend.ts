/**
 * The upstream pool as the router's `Backend` (core/Backend.ts), for
 * MODEL_BACKEND=upstream: a thin adapter over `Upstreams` and the relay.
 * - `/infer` is a completion of the prompt on an upstream model server (its
 *   defaults decide the length); `processingMs` is the upstream's whole time;
 * - `/v1/*` completions are forwarded as they came and the answer relayed
 *   (Relay.ts), on plain callbacks (see Upstreams.forwardUnsafe for why);
 * - the model server reads, counts and limits the request itself: nothing is
 *   refused before admission.
 */
import { Clock, type Context, Effect, Exit, Layer, Metric } from "effect"
import { requestIdHeader, simFailureHeader } from "../../api/Headers.ts"
import { chatCompletionsPath, completionsPath, type ModelCard, modelsPath } from "../../api/OpenAiApi.ts"
import { Backend, callbacks, type Completed, type Inference, routerModelCard } from "../core/Backend.ts"
import { RouterConfig } from "../core/Config.ts"
import { exportSlotsAsVllm, upstreamMetrics, vllmMetrics } from "../core/Metrics.ts"
import { relayUnsafe } from "./Relay.ts"
import type { UpstreamFailure } from "./Failure.ts"
import { upstreamRefusal, Upstreams, type UpstreamView } from "./Upstreams.ts"

/** The `max_model_len` an upstream's `/v1/models` answer gives for `modelRef` (or its first model), if any. */
export const reportedMaxModelLen = (status: number, body: string, modelRef: string): number | undefined => {
  if (status < 200 || status >= 300) return undefined
  try {
    const data: unknown = JSON.parse(body)?.data
    if (!Array.isArray(data) || data.length === 0) return undefined
    const card = data.find((entry) => entry?.id === modelRef) ?? data[0]
    const length = card?.max_model_len
    return Number.isSafeInteger(length) && length > 0 ? length : undefined
  } catch {
    return undefined
  }
}

/**
 * Sets the upstream gauges from the pool's view at scrape time (upstream
 * mode only: a simulated router has no pool, not an empty one), and
 * removes the series of an upstream that left the pool (a `dns+` name's pod
 * went away): a stale `router_upstream_available 1` would keep the
 * no-healthy-upstream alert quiet for the life of the process.
 */
export const upstreamGauges = () => {
  let exported = new Set<string>()
  return (view: ReadonlyArray<UpstreamView>, ready: boolean, context: Context.Context<never>) => {
    const current = new Set<string>()
    upstreamMetrics.healthy.updateUnsafe(view.filter((upstream) => upstream.available).length, context)
    upstreamMetrics.poolReady.updateUnsafe(ready ? 1 : 0, context)
    for (const upstream of view) {
      current.add(upstream.id)
      upstreamMetrics.inFlight(upstream.id).updateUnsafe(upstream.inFlight, context)
      upstreamMetrics.available(upstream.id).updateUnsafe(upstream.available ? 1 : 0, context)
      upstreamMetrics.connections(upstream.id).updateUnsafe(upstream.connections, context)
    }
    for (const id of exported) {
      if (current.has(id)) continue
      Metric.removeUnsafe(upstreamMetrics.inFlight(id), context)
      Metric.removeUnsafe(upstreamMetrics.available(id), context)
      Metric.removeUnsafe(upstreamMetrics.connections(id), context)
    }
    exported = current
  }
}

/** `log`: where a relay that could not answer says so (the router's logger). */
export const makeUpstreamBackend = (
  upstreams: Upstreams["Service"],
  modelRef: string,
  card: ModelCard,
  log: (message: string) => void = () => {}
): Backend["Service"] => {
  const vllm = vllmMetrics(modelRef)
  const exportPool = upstreamGauges()
  return Backend.of({
    ready: () => upstreams.ready(),
    infer: (prompt, requestId) =>
      Effect.clockWith((clock: Clock.Clock) =>
        Effect.gen(function*() {
          const startedAt = clock.currentTimeNanosUnsafe()
          const answer = yield* upstreams.fetch({
            path: completionsPath,
            body: JSON.stringify({ model: modelRef, prompt }),
            headers: { "content-type": "application/json", [requestIdHeader]: requestId }
          })
          if (answer.status >= 200 && answer.status < 300) {
            return {
              processingMs: Math.round(Number(clock.currentTimeNanosUnsafe() - startedAt) / 1_000_000),
              upstream: answer.upstream,
              version: answer.version,
              route: answer.route
            } satisfies Inference
          }
          return yield* upstreamRefusal(answer.status, answer.upstream, answer.body, answer.headers["retry-after"])
        })
      ) as Effect.Effect<Inference, UpstreamFailure>,
    check: () => undefined,
    complete: (call, reply) =>
      callbacks<Completed>((done) => {
        const headers: Record<string, string> = { "content-type": "application/json", [requestIdHeader]: call.requestId }
        // For tests of clients' retry paths through the router: a router upstream in simulated mode honours it.
        if (call.simFailure !== undefined) headers[simFailureHeader] = call.simFailure
        return relayUnsafe(upstreams, {
          path: call.kind === "chat" ? chatCompletionsPath : completionsPath,
          body: call.text,
          headers,
          answerHeaders: reply.answerHeaders,
          stream: call.body.stream === true
        }, reply.response, {
          onFirstByte: reply.firstByte,
          failBeforeHeaders: reply.fail,
          endWithErrorFrame: reply.fail,
          done: (failure, upstream) => done(Exit.succeed({ failure, upstream })),
          onceDrained: reply.onceDrained,
          log
        })
      }),
    // What the model servers report: one is asked (GET /v1/models); its card for this model (or its
    // first) gives max_model_len. One that does not answer the list leaves the router's own card.
    models: upstreams.fetch({ method: "GET", path: modelsPath, body: undefined, headers: {} }).pipe(
      Effect.map((answer) => [{ ...card, max_model_len: reportedMaxModelLen(answer.status, answer.body, modelRef) ?? card.max_model_len }])
    ),
    // The router's slots as vLLM's load (an endpoint picker in front of routers reads them), and the pool.
    exportMetrics: (admission, context) => {
      exportSlotsAsVllm(vllm, admission, context)
      exportPool(upstreams.view(), upstreams.ready(), context)
    }
  })
}

export const UpstreamBackend: Layer.Layer<Backend, never, Upstreams | RouterConfig> = Layer.effect(
  Backend,
  Effect.gen(function*() {
    const config = yield* RouterConfig
    const upstreams = yield* Upstreams
    const card = routerModelCard(config.modelRef, config.simulation.maxModelLen)
    const runFork = Effect.runForkWith(yield* Effect.context<never>())
    return makeUpstreamBackend(upstreams, config.modelRef, card, (message) => void runFork(Effect.logError(message)))
  })
)
