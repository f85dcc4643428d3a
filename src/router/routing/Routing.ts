/**
 * UPSTREAM_SCHEDULER=cache-aware, put together: the scheduler
 * (Scheduler.ts) fed by
 * - each request's prompt (its block keys, the simulator's tokenization),
 * - the upstreams' `/metrics`, read every UPSTREAM_METRICS_INTERVAL_MS and
 *   not trusted once older than three intervals,
 * - their KV events (UPSTREAMS items with `;kv-events=`),
 * - the answers (time to first token of streams, reported `cached_tokens`),
 * - and, with `redis://` items in KV_ENDPOINTS, the other replicas' decisions
 *   and loads (SharedState.ts).
 * Decisions read memory only. An upstream that leaves the pool, fails its
 * active health check or keeps refusing connections is forgotten here (its
 * index entries and learned costs); what Redis holds for it is left to age
 * out (one replica's view is not the pool's).
 */
// The module binding: the global `performance` is a getter (RequestObserver.ts does the same).
import { performance } from "node:perf_hooks"
import { Clock, Duration, Effect, Metric, Schedule } from "effect"
import { randomUUID } from "node:crypto"
import { hostname } from "node:os"
import { request as httpRequest } from "undici"
import { metricContext } from "../../shared/Metrics.ts"
import { type Endpoint, isReachable } from "../upstream/Balancer.ts"
import { hostPort } from "../upstream/Targets.ts"
import { contentText } from "../simulated/Simulation.ts"
import { blockKeysOf, tokenIdsOfParts } from "./BlockKeys.ts"
import { subscribeKvEvents } from "./KvEvents.ts"
import { PrefixIndex } from "./PrefixIndex.ts"
import type { Route, RouteScheduler } from "./Route.ts"
import { routingMetrics } from "./RoutingMetrics.ts"
import type { RoutingSettings } from "./RoutingSettings.ts"
import { CacheAwareScheduler, type Candidate, type Decision, defaultSchedulerSettings, predictedCachedInUpstreamTokens, type RoutingRequest } from "./Scheduler.ts"
import { SharedState } from "./SharedState.ts"
import { parseVllmMetrics } from "./VllmMetrics.ts"

export interface RoutingOptions {
  readonly settings: RoutingSettings
  /** KV_ENDPOINTS items: the `redis://` ones are shared state (value: with credentials; shown: masked). */
  readonly kvEndpoints: ReadonlyArray<{ readonly shown: string; readonly url: string }>
  /** Names the pool in Redis keys, so that routers of different models can share one Redis. */
  readonly pool: string
  /** MAX_CONCURRENCY: the most another replica (same settings) can have in flight on one upstream. */
  readonly slots?: number
  /** Reads an upstream's /metrics text (tests pass their own). */
  readonly fetchMetrics?: (url: string, timeoutMs: number) => Promise<string>
  readonly random?: () => number
}

/**
 * The prompt a completion request carries, as the simulator reads it: its
 * text is `parts` joined by newlines (a chat's messages; kept apart, the
 * tokenizer reads them without a joined copy); undefined when there is none
 * to route on.
 */
export const promptOf = (
  body: string | undefined
): { readonly model: string; readonly parts: ReadonlyArray<string>; readonly stream: boolean; readonly cacheSalt?: string | undefined } | undefined => {
  if (body === undefined) return undefined
  let parsed: unknown
  try {
    parsed = JSON.parse(body)
  } catch {
    return undefined
  }
  if (typeof parsed !== "object" || parsed === null) return undefined
  const { cache_salt, messages, model, prompt, stream } = parsed as Record<string, unknown>
  const modelName = typeof model === "string" ? model : ""
  let parts: ReadonlyArray<string> | undefined
  if (Array.isArray(messages)) parts = messages.map((message) => contentText(message?.content))
  else if (typeof prompt === "string") parts = [prompt]
  else if (Array.isArray(prompt) && typeof prompt[0] === "string") parts = [prompt[0]]
  // An empty text (no messages, or one empty one) is nothing to route on.
  return parts === undefined || parts.length === 0 || (parts.length === 1 && parts[0] === "") ? undefined : {
      model: modelName,
      parts,
      stream: stream === true,
      // vLLM's per-tenant salt: in the key seed (BlockKeys.ts), so salted prompts match only their own salt's.
      ...(typeof cache_salt === "string" && cache_salt !== "" ? { cacheSalt: cache_salt } : {})
    }
}

const cachedTokensField = Buffer.from("\"cached_tokens\"")
/** In every completion chunk and answer, in no error body: a chunk without it is not a first token. */
const choicesField = Buffer.from("\"choices\"")
const cachedTokensValue = /"cached_tokens"\s*:\s*([0-9]+)/
/** The same usage's prompt_tokens, in the upstream's tokens: the cached fraction is what carries over to the router's (Scheduler.ts uncachedOfUsage). */
const promptTokensValue = /"prompt_tokens"\s*:\s*([0-9]+)/

/**
 * An upstream's /metrics are read at most this far: vLLM's are tens of kB. Read whole every
 * UPSTREAM_METRICS_INTERVAL_MS, an exporter gone wrong (700 MB of series, in a review) held
 * gigabytes and stalled the event loop for seconds.
 */
export const maxMetricsBytes = 4 * 1024 * 1024

export const fetchUpstreamMetrics = async (url: string, timeoutMs: number): Promise<string> => {
  const answer = await httpRequest(url, { headersTimeout: timeoutMs, bodyTimeout: timeoutMs })
  if (answer.statusCode !== 200) {
    await answer.body.dump()
    throw new Error(`status ${answer.statusCode}`)
  }
  const chunks: Array<Buffer> = []
  let size = 0
  for await (const chunk of answer.body) {
    size += (chunk as Buffer).length
    if (size > maxMetricsBytes) {
      answer.body.destroy()
      throw new Error(`its /metrics exceed ${maxMetricsBytes} bytes`)
    }
    chunks.push(chunk as Buffer)
  }
  return Buffer.concat(chunks).toString("utf8")
}

const baseUrl = (endpoint: Endpoint) => `${endpoint.target.protocol}//${hostPort(endpoint.address, endpoint.target.port)}${endpoint.target.prefix}`

const kvEventsEndpoint = (endpoint: Endpoint): string | undefined => {
  const option = endpoint.target.kvEvents
  return option === undefined ? undefined : typeof option === "number" ? `tcp://${hostPort(endpoint.address, option)}` : option
}

/** The cache-aware RouteScheduler, its background work scoped. */
export const makeCacheAwareRouting = (options: RoutingOptions) =>
  Effect.gen(function*() {
    const { settings } = options
    const clock = yield* Clock.Clock
    const now = () => clock.currentTimeMillisUnsafe()
    const fullContext = yield* Effect.context<never>()
    const context = metricContext(fullContext)
    const runFork = Effect.runForkWith(fullContext)
    const log = (effect: Effect.Effect<void>) => void runFork(effect)
    const scheduler = new CacheAwareScheduler(
      { ...defaultSchedulerSettings, loadBound: settings.loadBound },
      new PrefixIndex(),
      undefined,
      options.random
    )
    const fetchMetrics = options.fetchMetrics ?? fetchUpstreamMetrics
    let endpoints: () => ReadonlyArray<Endpoint> = () => []

    // Shared state: only redis:// items; others are ignored with one line (docs/routing.md).
    const redisItems = options.kvEndpoints.filter((item) => item.url.startsWith("redis://"))
    for (const item of options.kvEndpoints) {
      if (!item.url.startsWith("redis://")) yield* Effect.logInfo(`KV_ENDPOINTS item ${item.shown} is not a redis:// URL: not used for shared routing state`)
    }
    const loadIntervalMs = 100
    const shared = redisItems.length === 0 ? undefined : new SharedState(
      {
        endpoints: redisItems,
        replicaId: `${hostname()}-${randomUUID().slice(0, 8)}`,
        prefix: `inference-router:${options.pool}:`,
        ttlMs: scheduler.index.settings.ttlMs,
        loadIntervalMs,
        maxPendingWrites: 10_000,
        // Twenty load counts unanswered: a frozen Redis is said within seconds, not after 10,000 writes.
        slowAfterMs: 2_000,
        maxInFlightPerReplica: options.slots ?? Number.MAX_SAFE_INTEGER
      },
      {
        blocks: (upstream, keys, how, recordedAt) => {
          // Only this replica's pool: a message naming another (garbage, or a replica of other settings) would hold memory for nothing.
          if (!endpoints().some((endpoint) => endpoint.id === upstream)) return
          if (how === "confirmed") scheduler.index.confirm(upstream, keys, now())
          else if (how === "decided" || recordedAt === undefined) scheduler.index.recordDecision(upstream, keys, now())
          else {
            // Read back: each lives its lifetime from when it was recorded (wall clock), on this replica's clock.
            const at = now()
            const shift = at - Date.now() + scheduler.index.settings.ttlMs
            scheduler.index.recover(upstream, keys, recordedAt.map((recorded) => recorded + shift), at)
          }
        },
        capacity: (upstream) => scheduler.index.capacityOf(upstream),
        status: (shown, up, reason) => {
          routingMetrics.sharedUp(shown).updateUnsafe(up ? 1 : 0, context)
          log(
            up
              ? Effect.logInfo(`shared routing state at ${shown} connected`)
              : Effect.logWarning(`shared routing state at ${shown} unavailable (${reason}); deciding on this replica's own state until it returns`)
          )
        }
      }
    )
    if (shared !== undefined) {
      for (const item of redisItems) routingMetrics.sharedUp(item.shown).updateUnsafe(0, context)
      yield* Effect.addFinalizer(() => Effect.promise(() => shared.close()))
    }

    // Per upstream: the last good scrape, the KV events subscription, whether it was healthy.
    const lastScrape = new Map<string, number>()
    const subscriptions = new Map<string, () => void>()
    const known = new Set<string>()
    let droppedReported = 0
    yield* Effect.addFinalizer(() => Effect.sync(() => subscriptions.forEach((close) => close())))

    const forget = (id: string, departed: boolean) => {
      known.delete(id)
      // Its signals series goes (a last `signals_fresh 1` would keep the stale alert quiet); one that left the pool takes its other series too.
      Metric.removeUnsafe(routingMetrics.signalsFresh(id), context)
      if (departed) {
        Metric.removeUnsafe(routingMetrics.indexBlocks(id), context)
        Metric.removeUnsafe(routingMetrics.kvEventGaps(id), context)
        Metric.removeUnsafe(routingMetrics.kvEventsMalformed(id), context)
        Metric.removeUnsafe(routingMetrics.kvEventBatches(id), context)
        Metric.removeUnsafe(routingMetrics.kvEventsMatching(id), context)
      } else {
        routingMetrics.indexBlocks(id).updateUnsafe(0, context)
        // Its subscription ends with it: not matching until it is followed again.
        if (subscriptions.has(id)) routingMetrics.kvEventsMatching(id).updateUnsafe(0, context)
      }
      lastScrape.delete(id)
      subscriptions.get(id)?.()
      subscriptions.delete(id)
      scheduler.drop(id)
      // Not in Redis: the others may still reach it, and what is there ages out and is trimmed.
    }

    /**
     * Down for the pool, not for one request: its active health check failed
     * (the pool's decision), or connections to it failed this many times in a
     * row (without active checks, the only sign of a restart with a cold
     * cache). One refused connection is not enough: a blip would wipe what
     * was learned about it.
     */
    const forgetAfterRefusals = 3
    const isDown = (endpoint: Endpoint) => !endpoint.healthy || endpoint.unreachableCount >= forgetAfterRefusals

    /** Follows the pool: subscribes to new upstreams' KV events, forgets removed ones and those down (isDown). */
    let ticks = 0
    const followPool = Effect.sync(() => {
      const at = now()
      if (++ticks % 10 === 0) scheduler.index.sweep(at)
      const current = new Map(endpoints().map((endpoint) => [endpoint.id, endpoint]))
      for (const id of known) {
        const endpoint = current.get(id)
        if (endpoint === undefined || isDown(endpoint)) forget(id, endpoint === undefined)
      }
      for (const id of known) {
        routingMetrics.indexBlocks(id).updateUnsafe(scheduler.index.size(id), context)
        if (subscriptions.has(id)) routingMetrics.kvEventsMatching(id).updateUnsafe(scheduler.index.matchesEvents(id) ? 1 : 0, context)
      }
      for (const [id, endpoint] of current) {
        if (!isReachable(endpoint, at) || isDown(endpoint) || known.has(id)) continue
        known.add(id)
        // 0 until its first good scrape: one that never answers is stale from the start.
        if (settings.metricsIntervalMs > 0) routingMetrics.signalsFresh(id).updateUnsafe(0, context)
        const kv = kvEventsEndpoint(endpoint)
        if (kv === undefined) continue
        let gapsLogged = 0
        routingMetrics.kvEventBatches(id).updateUnsafe(0, context)
        routingMetrics.kvEventsMatching(id).updateUnsafe(0, context)
        subscriptions.set(id, subscribeKvEvents(kv, {
          batch: (batch) => {
            routingMetrics.kvEventBatches(id).updateUnsafe(1, context)
            const outcome = scheduler.index.applyBatch(id, batch, now())
            if (outcome !== "gap" && outcome !== "restart") return
            routingMetrics.kvEventGaps(id).updateUnsafe(1, context)
            if (gapsLogged++ < 3) {
              log(Effect.logWarning(
                outcome === "gap"
                  ? `upstream ${id}: KV events from ${kv} skipped to ${batch.seq}; what was cached before ages out (docs/routing.md)`
                  : `upstream ${id}: KV events from ${kv} went back to ${batch.seq} (the publisher restarted); what it had stored is forgotten`
              ))
            }
          },
          malformed: () => routingMetrics.kvEventsMalformed(id).updateUnsafe(1, context)
        }, (error) => log(Effect.logError(`upstream ${id}: cannot subscribe to KV events at ${kv} (${error}); its index stays approximate`))))
      }
      if (shared !== undefined) {
        const loads: Record<string, number> = {}
        for (const [id, endpoint] of current) {
          loads[id] = endpoint.inFlight
          scheduler.setRemoteInFlight(id, shared.remoteInFlight(id))
        }
        shared.publishLoad(loads)
        // The counter adds what it is given: the drops since the last tick.
        routingMetrics.sharedWritesDropped.updateUnsafe(shared.droppedWrites - droppedReported, context)
        droppedReported = shared.droppedWrites
      }
    })

    const staleAfterMs = 3 * settings.metricsIntervalMs
    const scrapeOne = (endpoint: Endpoint) =>
      Effect.tryPromise(() => fetchMetrics(`${baseUrl(endpoint)}/metrics`, Math.max(50, settings.metricsIntervalMs))).pipe(
        Effect.map((text) => {
          const signals = parseVllmMetrics(text)
          // (Forgotten while the scrape ran: its series must not come back.)
          if (signals === undefined || !known.has(endpoint.id)) return
          lastScrape.set(endpoint.id, now())
          scheduler.setSignals(endpoint.id, signals)
          if (signals.numGpuBlocks !== undefined) scheduler.index.setCapacity(endpoint.id, signals.numGpuBlocks)
          routingMetrics.signalsFresh(endpoint.id).updateUnsafe(1, context)
        }),
        Effect.ignore
      )
    const scrapeAll = Effect.suspend(() => Effect.forEach(endpoints().filter((endpoint) => known.has(endpoint.id)), scrapeOne, { concurrency: "unbounded", discard: true })).pipe(
      Effect.andThen(Effect.sync(() => {
        const oldest = now() - staleAfterMs
        for (const [id, at] of lastScrape) {
          if (at >= oldest) continue
          lastScrape.delete(id)
          scheduler.setSignals(id, undefined)
          routingMetrics.signalsFresh(id).updateUnsafe(0, context)
        }
      }))
    )

    const tick = Math.min(loadIntervalMs, settings.metricsIntervalMs > 0 ? settings.metricsIntervalMs : loadIntervalMs)
    // A tick that throws is logged and the next one runs: the loops must outlive a bad tick.
    const guarded = <A, E>(effect: Effect.Effect<A, E>, what: string) => Effect.ignoreCause(effect, { log: "Error", message: `routing: ${what} failed` })
    yield* Effect.forkScoped(Effect.repeat(guarded(followPool, "following the pool"), Schedule.spaced(Duration.millis(tick))))
    if (settings.metricsIntervalMs > 0) {
      yield* Effect.forkScoped(Effect.repeat(guarded(scrapeAll, "reading upstream metrics"), Schedule.spaced(Duration.millis(settings.metricsIntervalMs))))
    }
    if (shared !== undefined) {
      // A replica that (re)joined reads back what the others recorded.
      const catchUp = Effect.promise(() => shared.catchUp([...known], Date.now()))
      yield* Effect.forkScoped(Effect.repeat(guarded(catchUp, "reading back the shared state"), Schedule.spaced(Duration.millis(loadIntervalMs))))
    }

    const route = (request: { readonly path: string; readonly body: string | undefined }): Route | undefined => {
      const startedAt = performance.now()
      const prompt = promptOf(request.body)
      if (prompt === undefined) return undefined
      const ids = tokenIdsOfParts(prompt.parts)
      const routing: RoutingRequest = { promptTokens: ids.length, keys: (blockSize) => blockKeysOf(prompt.model, ids, blockSize, prompt.cacheSalt) }
      let decision: Decision<Candidate & { readonly endpoint: Endpoint }> | undefined
      let sentAt = 0
      let firstAt: number | undefined
      let reported: number | undefined
      let reportedPrompt: number | undefined
      let retried = false
      /** The upstream this replica told the others it sent the request to (told again, -1, when it ends). */
      let loadTold: string | undefined
      return {
        choose: (pool, at) => {
          const first = decision === undefined && !retried
          // Consecutive failures count as load, as least request counts them: failing fast never looks idle.
          const candidates = pool.map((endpoint) => ({ id: endpoint.id, inFlight: endpoint.inFlight + endpoint.consecutiveFailures, endpoint }))
          // The other replicas' counts as of their last message (changes come as they happen), not as of the last tick.
          if (shared !== undefined) for (const endpoint of pool) scheduler.setRemoteInFlight(endpoint.id, shared.remoteInFlight(endpoint.id))
          decision = scheduler.choose(candidates, routing, at)
          // The first attempt's decision, from the request's arrival here (parse and keys included).
          if (first) routingMetrics.decisionSeconds.updateUnsafe((performance.now() - startedAt) / 1000, context)
          return decision.candidate.endpoint
        },
        sent: (endpoint, at) => {
          if (decision === undefined || decision.candidate.endpoint !== endpoint) return
          sentAt = at
          firstAt = undefined
          reported = undefined
          reportedPrompt = undefined
          // Only what this replica did not know goes out: a shared prefix's keys not with every request.
          const news = scheduler.sent(endpoint.id, decision, at)
          if (shared !== undefined) {
            if (news.length > 0) shared.decided(endpoint.id, news, Date.now())
            shared.loadChanged(endpoint.id, 1)
            loadTold = endpoint.id
          }
          routingMetrics.decisions(decision.reason).updateUnsafe(1, context)
        },
        // The predicted numbers only when asked for (UPSTREAM_ROUTE_HEADER_CACHED_TOKENS): they tell a client what others' prompts left cached.
        header: () =>
          decision === undefined
            ? "cache-aware; reason=only-healthy"
            : settings.routeHeaderCachedTokens === true
            ? `cache-aware; reason=${decision.reason}; cached-tokens=${decision.cachedTokens}; predicted-ttft-ms=${Math.round(decision.predictedMs)}`
            : `cache-aware; reason=${decision.reason}`,
        data: (chunk, at) => {
          if (decision === undefined) return
          if (firstAt === undefined && chunk.indexOf(choicesField) >= 0) {
            firstAt = at
            scheduler.firstToken(decision.candidate.id, decision, at)
            // An answer started: its prompt was prefilled there, so its blocks are cached there now (not
            // when the stream ends: with KV events a decision's stand-in entries live seconds only).
            const news = scheduler.index.confirm(decision.candidate.id, decision.keys, at)
            if (news.length > 0) shared?.decided(decision.candidate.id, news, Date.now(), true)
          }
          if (chunk.indexOf(cachedTokensField) >= 0) {
            const text = chunk.toString("utf8")
            const match = cachedTokensValue.exec(text)
            if (match !== null) reported = Number(match[1])
            const promptMatch = promptTokensValue.exec(text)
            if (promptMatch !== null) reportedPrompt = Number(promptMatch[1])
          }
        },
        ended: (endpoint) => {
          if (loadTold !== undefined) {
            shared?.loadChanged(loadTold, -1)
            loadTold = undefined
          }
          if (decision === undefined || decision.candidate.endpoint !== endpoint) return
          if (firstAt === undefined) scheduler.firstToken(endpoint.id, decision, now())
          if (reported !== undefined) {
            // In the upstream's tokens: the router's count scaled by the answer's prompt_tokens.
            const predicted = predictedCachedInUpstreamTokens(decision, reportedPrompt)
            routingMetrics.predictedCachedTokens.updateUnsafe(predicted, context)
            routingMetrics.reportedCachedTokens.updateUnsafe(reported, context)
            routingMetrics.cachedTokensError.updateUnsafe(Math.abs(predicted - reported), context)
          }
          // Only a stream's first chunk is its first token; a whole answer's first byte is its end.
          if (prompt.stream && firstAt !== undefined) {
            const observedMs = firstAt - sentAt
            routingMetrics.ttftPredictionError.updateUnsafe(Math.abs(decision.predictedMs - observedMs) / 1000, context)
            routingMetrics.ttftPredictedSeconds.updateUnsafe(decision.predictedMs / 1000, context)
            routingMetrics.ttftObservedSeconds.updateUnsafe(observedMs / 1000, context)
            scheduler.learn(endpoint.id, decision, observedMs, reported, reportedPrompt)
          }
          decision = undefined
          retried = true
        }
      }
    }

    let routeFailures = 0
    return {
      // A request the scheduler cannot route (a bug, not bad input: bad input has no prompt) goes by least request.
      route: (request) => {
        try {
          return route(request)
        } catch (error) {
          if (routeFailures++ < 3) log(Effect.logError("routing: a request fell back to least request", String(error)))
          return undefined
        }
      },
      attach: (pool) => {
        endpoints = pool
      },
      scheduler,
      shared
    } satisfies RouteScheduler & { readonly scheduler: CacheAwareScheduler; readonly shared: SharedState | undefined }
  })
