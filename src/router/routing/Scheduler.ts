/**
 * The cache-aware choice (UPSTREAM_SCHEDULER=cache-aware): among the
 * upstreams the balancer says may take a request (healthy, not ejected, under
 * their cap), the one with the lowest predicted time to first token
 * (Predictor.ts), counting what the prefix index (PrefixIndex.ts) says each
 * has cached, under a bound on load:
 *
 * - bounded load (consistent hashing with bounded loads, Mirrokni et al.): no
 *   upstream is given a request that would take it above
 *   `loadBound` × the pool's mean in flight (the request included). Whole
 *   requests make that coarse, so it has two roundings: rounded down (but
 *   never below the balanced level, which the least loaded meets) for any
 *   upstream, rounded up (as in the paper) for one that holds more of the
 *   prompt than any upstream within the rounded-down cap. Rounding up alone
 *   let a hot prefix's home sit a request above the bound (1.32× the mean at
 *   7 per upstream for a bound of 1.25); rounding down alone spilled a shared
 *   prefix's requests whenever its home held one more than the others, each
 *   spill a prefill from nothing (shared prefix at 32 requests/s: 30 %
 *   spills, hit rate 0.60 against 0.87). So a spill goes where it costs no
 *   prefill at the strict cap, and costs a prefill only past the loose one.
 *   A hot prefix spills to a second upstream, and since the decision is
 *   recorded in the index, the next request of that prefix finds it cached
 *   in both places;
 * - prefill queued ahead (the router's own requests there before their first
 *   token) drains with time at the upstream's learned prefill rate, and in
 *   order: when a request's first token comes, what was sent before it is
 *   done. A request arriving in the middle of another's long prefill is then
 *   told the remaining part, not the whole (the whole made a server that was
 *   about to be free look slower than prefilling the prompt elsewhere from
 *   nothing: one miss caused the next);
 * - near-ties (predictions within `tieMs` or `tieFraction` of the best) go to
 *   the one with the fewest requests in flight, then at random: with nothing
 *   cached anywhere the choice spreads like least-request;
 * - in flight counts from the moment of the pick (the caller's Ticket), so a
 *   burst cannot all choose one server on a count that has not moved yet.
 *
 * Pure state and arithmetic: the caller passes the time and the random source.
 */
import type { BlockKey } from "./PrefixIndex.ts"
import { PrefixIndex } from "./PrefixIndex.ts"
import { type PredictionInput, TtftPredictor } from "./Predictor.ts"

export type RouteReason = "cache" | "load" | "spill" | "only-healthy"

export interface Candidate {
  readonly id: string
  /** This router's requests in flight there. */
  readonly inFlight: number
}

export interface SchedulerSettings {
  /** UPSTREAM_LOAD_BOUND: at most this × the pool's mean in flight on one upstream (>= 1). */
  readonly loadBound: number
  readonly tieMs: number
  readonly tieFraction: number
  /** Block size when an upstream's metrics don't say (vLLM's default, the simulator's). */
  readonly defaultBlockSize: number
}

export const defaultSchedulerSettings: SchedulerSettings = { loadBound: 1.25, tieMs: 1, tieFraction: 0.05, defaultBlockSize: 16 }

/** One request as the scheduler sees it. */
export interface RoutingRequest {
  readonly promptTokens: number
  /** The prompt's block keys at a block size (computed once per size asked). */
  readonly keys: (blockSize: number) => ReadonlyArray<BlockKey>
}

/** What the upstream reports about itself (scraped /metrics, fresh). */
export interface UpstreamSignals {
  readonly waiting: number
  readonly running: number
  readonly blockSize: number | undefined
}

interface UpstreamState {
  /**
   * Uncached prompt tokens of this router's requests there still to prefill,
   * as of `queuedAt` (it drains at the learned prefill rate from then).
   */
  queuedPrefillTokens: number
  queuedAt: number
  /** Uncached tokens ever sent there: a request's mark is this after its own (what came after it is the difference). */
  enqueuedTokens: number
  /** In flight there from other router replicas (shared state), 0 without sharing. */
  remoteInFlight: number
  signals: UpstreamSignals | undefined
  /** Mean uncached prompt tokens of requests sent there (for scraped waiting requests the router didn't send). */
  meanUncached: number
  blockSize: number
}

export interface Decision<C extends Candidate> {
  readonly candidate: C
  readonly reason: RouteReason
  readonly cachedTokens: number
  readonly predictedMs: number
  /** What the prediction was made from (the learning compares the answer against it). */
  readonly input: PredictionInput
  readonly keys: ReadonlyArray<BlockKey>
  readonly promptTokens: number
}

export class CacheAwareScheduler {
  readonly index: PrefixIndex
  readonly predictor: TtftPredictor
  readonly settings: SchedulerSettings
  private readonly random: () => number
  private readonly states = new Map<string, UpstreamState>()
  /** Per decision sent: its upstream's enqueuedTokens just after it. */
  private readonly marks = new WeakMap<object, number>()

  constructor(settings: SchedulerSettings = defaultSchedulerSettings, index = new PrefixIndex(), predictor = new TtftPredictor(), random: () => number = Math.random) {
    this.settings = settings
    this.index = index
    this.predictor = predictor
    this.random = random
  }

  state(upstream: string): UpstreamState {
    let state = this.states.get(upstream)
    if (state === undefined) {
      state = { queuedPrefillTokens: 0, queuedAt: 0, enqueuedTokens: 0, remoteInFlight: 0, signals: undefined, meanUncached: 0, blockSize: this.settings.defaultBlockSize }
      this.states.set(upstream, state)
    }
    return state
  }

  /** Fresh scraped signals, or undefined once they went stale (then only the router's own counts are used). */
  setSignals(upstream: string, signals: UpstreamSignals | undefined): void {
    const state = this.state(upstream)
    state.signals = signals
    if (signals?.blockSize !== undefined) state.blockSize = signals.blockSize
  }

  /** Prefill still queued there at `now`: drained at the learned rate since it was last counted. */
  queuedPrefill(upstream: string, now: number): number {
    const state = this.state(upstream)
    if (state.queuedPrefillTokens > 0 && now > state.queuedAt) {
      const msPerToken = this.predictor.coefficients(upstream).prefillMsPerToken
      state.queuedPrefillTokens = msPerToken > 0 ? Math.max(0, state.queuedPrefillTokens - (now - state.queuedAt) / msPerToken) : 0
    }
    if (now > state.queuedAt) state.queuedAt = now
    return state.queuedPrefillTokens
  }

  setRemoteInFlight(upstream: string, count: number): void {
    this.state(upstream).remoteInFlight = Math.max(0, count)
  }

  /** Forgets an upstream (removed, or down): its index entries and learning. */
  drop(upstream: string): void {
    this.states.delete(upstream)
    this.index.drop(upstream)
    this.predictor.drop(upstream)
  }

  /** The pick. `candidates` is never empty (the balancer answers when none can take it). */
  choose<C extends Candidate>(candidates: ReadonlyArray<C>, request: RoutingRequest, now: number): Decision<C> {
    const n = candidates.length
    const loads = candidates.map((candidate) => candidate.inFlight + this.state(candidate.id).remoteInFlight)
    let total = 0
    for (const load of loads) total += load
    const strictCap = strictLoadCap(this.settings.loadBound, total, n)
    const looseCap = loadCap(this.settings.loadBound, total, n)

    const keysBySize = new Map<number, ReadonlyArray<BlockKey>>()
    const keysAt = (size: number) => {
      let keys = keysBySize.get(size)
      if (keys === undefined) keysBySize.set(size, keys = request.keys(size))
      return keys
    }

    // What each holds, and the most any candidate within the strict cap holds.
    const cached = new Array<number>(n)
    let bestWithinStrict = 0
    for (let i = 0; i < n; i++) {
      const state = this.state(candidates[i].id)
      const blocks = this.index.cachedPrefix(candidates[i].id, keysAt(state.blockSize), now)
      cached[i] = Math.min(request.promptTokens, blocks * state.blockSize)
      if (loads[i] + 1 <= strictCap && cached[i] > bestWithinStrict) bestWithinStrict = cached[i]
    }
    // Within the strict cap: a candidate. Past it, up to the loose one: only to save a prefill no
    // candidate within the strict cap could (the prefix's holders are all at the bound).
    const allowed = (i: number) => loads[i] + 1 <= strictCap || (loads[i] + 1 <= looseCap && cached[i] > bestWithinStrict)

    let best = -1
    let bestMs = Infinity
    let mostCached = 0
    let mostCachedOverBound = false
    const predicted = new Array<number>(n)
    const inputs = new Array<PredictionInput>(n)
    for (let i = 0; i < n; i++) {
      const candidate = candidates[i]
      const state = this.state(candidate.id)
      const cachedTokens = cached[i]
      const unknownWaiting = state.signals === undefined ? 0 : Math.max(0, state.signals.waiting - loads[i])
      const input: PredictionInput = {
        uncachedTokens: request.promptTokens - cachedTokens,
        queuedPrefillTokens: this.queuedPrefill(candidate.id, now) + unknownWaiting * state.meanUncached,
        inFlight: Math.max(loads[i], state.signals?.running ?? 0)
      }
      inputs[i] = input
      const overBound = !allowed(i)
      if (cachedTokens > mostCached) {
        mostCached = cachedTokens
        mostCachedOverBound = overBound
      } else if (cachedTokens === mostCached && cachedTokens > 0 && !overBound) {
        mostCachedOverBound = false
      }
      predicted[i] = this.predictor.predict(candidate.id, input)
      if (!overBound && predicted[i] < bestMs) {
        bestMs = predicted[i]
        best = i
      }
    }
    // Every candidate over the bound cannot happen (the least loaded is within the strict cap), but
    // rounding must never leave no answer.
    if (best < 0) {
      for (let i = 0; i < n; i++) if (predicted[i] < bestMs) bestMs = predicted[i], best = i
    }

    // Near-ties: fewest in flight, then at random.
    const slack = Math.max(this.settings.tieMs, bestMs * this.settings.tieFraction)
    let chosen = best
    let ties = 1
    for (let i = 0; i < n; i++) {
      if (i === best || !allowed(i) || predicted[i] > bestMs + slack) continue
      if (loads[i] < loads[chosen]) {
        chosen = i
        ties = 1
      } else if (loads[i] === loads[chosen] && this.random() * ++ties < 1) {
        chosen = i
      }
    }

    const reason: RouteReason = n === 1
      ? "only-healthy"
      : mostCached > 0 && mostCachedOverBound && cached[chosen] < mostCached
      ? "spill"
      : cached[chosen] > 0 && cached.some((c) => c < cached[chosen])
      ? "cache"
      : "load"
    const state = this.state(candidates[chosen].id)
    return {
      candidate: candidates[chosen],
      reason,
      cachedTokens: cached[chosen],
      predictedMs: predicted[chosen],
      input: inputs[chosen],
      keys: keysAt(state.blockSize),
      promptTokens: request.promptTokens
    }
  }

  /**
   * The request was sent: its blocks are cached there from now on (the
   * approximate index), and its uncached tokens queue for prefill until its
   * first token. Returns the keys the index learned (worth sharing).
   */
  sent(upstream: string, decision: Decision<Candidate>, now: number): Array<BlockKey> {
    const state = this.state(upstream)
    const news = this.index.recordDecision(upstream, decision.keys, now)
    const uncached = decision.input.uncachedTokens
    state.queuedPrefillTokens = this.queuedPrefill(upstream, now) + uncached
    state.enqueuedTokens += uncached
    this.marks.set(decision, state.enqueuedTokens)
    state.meanUncached = state.meanUncached === 0 ? uncached : state.meanUncached * 0.9 + uncached * 0.1
    return news
  }

  /**
   * Its first token came, or it ended without one: it and everything sent
   * there before it are prefilled; only what was sent after it can still be
   * queued.
   */
  firstToken(upstream: string, decision: Decision<Candidate>, now: number): void {
    const state = this.states.get(upstream)
    const mark = this.marks.get(decision)
    if (state === undefined || mark === undefined) return
    this.marks.delete(decision)
    state.queuedPrefillTokens = Math.min(this.queuedPrefill(upstream, now), Math.max(0, state.enqueuedTokens - mark))
  }

  /**
   * Learns from an answer: its time to first token, and what it reported
   * (usage.prompt_tokens and prompt_tokens_details.cached_tokens: the truth;
   * without both, the index's guess stands in).
   */
  learn(upstream: string, decision: Decision<Candidate>, ttftMs: number, reportedCachedTokens: number | undefined, reportedPromptTokens?: number): void {
    const uncached = uncachedOfUsage(decision.promptTokens, { cachedTokens: reportedCachedTokens, promptTokens: reportedPromptTokens }) ?? decision.input.uncachedTokens
    this.predictor.observe(upstream, { ...decision.input, uncachedTokens: uncached }, ttftMs)
  }
}

/** What an answer's usage reported, in the upstream's own tokens. */
export interface ReportedUsage {
  readonly promptTokens: number | undefined
  readonly cachedTokens: number | undefined
}

/**
 * The uncached part of a prompt of `promptTokens` router tokens, from the
 * usage the upstream reported in its own tokens: the router counts runs of
 * non-blanks (BlockKeys.ts), vLLM its tokenizer's tokens (~1.3 a word), so a
 * difference of the two would teach "nothing uncached" on any hit above ~77 %;
 * the reported fraction is what carries over. Undefined unless both numbers
 * were reported (cached_tokens needs vLLM's --enable-prompt-tokens-details).
 */
export const uncachedOfUsage = (promptTokens: number, usage: ReportedUsage | undefined): number | undefined => {
  if (usage?.cachedTokens === undefined || usage.promptTokens === undefined || !(usage.promptTokens > 0)) return undefined
  return promptTokens * Math.max(0, 1 - usage.cachedTokens / usage.promptTokens)
}

/** The decision's predicted cached tokens in the upstream's tokens (scaled by its reported prompt_tokens), for comparing with what it reported. */
export const predictedCachedInUpstreamTokens = (decision: Pick<Decision<Candidate>, "cachedTokens" | "promptTokens">, reportedPromptTokens: number | undefined): number =>
  reportedPromptTokens === undefined || decision.promptTokens <= 0
    ? decision.cachedTokens
    : Math.round(decision.cachedTokens * reportedPromptTokens / decision.promptTokens)

/**
 * The loose cap: the most requests one upstream may hold after this one is
 * placed, the bound × the mean (this request included) rounded up. Only a
 * holder of the prompt's prefix that no upstream within the strict cap holds
 * as much of may go past the strict cap, up to this.
 */
export const loadCap = (bound: number, total: number, n: number): number =>
  Math.max(Math.ceil((total + 1) / n), Math.ceil(bound * (total + 1) / n - 1e-9))

/**
 * The strict cap: the bound × the mean rounded down, but never below the
 * balanced level ⌈(total + 1) ÷ n⌉, which the least loaded always meets.
 */
export const strictLoadCap = (bound: number, total: number, n: number): number =>
  Math.max(Math.ceil((total + 1) / n), Math.floor(bound * (total + 1) / n + 1e-9))
