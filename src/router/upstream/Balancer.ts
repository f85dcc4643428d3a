/**
 * Which upstream takes the next request, and which are out of rotation.
 * Pure state and arithmetic: the caller passes the time (Effect's Clock, so
 * TestClock drives ejections in tests) and the random source.
 *
 * - Choosing: Envoy's LEAST_REQUEST with two choices, weighted: two distinct
 *   candidates drawn in proportion to their weights, the one with fewer
 *   requests in flight per unit of weight wins (a tie goes to the first
 *   draw). Idle, the draw alone decides, so weights hold exactly; under load,
 *   in-flight counts stay proportional to weights and a slow upstream gets
 *   fewer requests.
 * - Candidates: healthy (active checks, and reachable: a connection refused
 *   takes an upstream out at once until a check passes, as gRPC's
 *   TRANSIENT_FAILURE), not ejected, under the per-upstream cap. One that
 *   asked to be left alone (429/503 with Retry-After) is chosen only when no
 *   other can be. A failed attempt counts as in flight for as long as a
 *   success typically takes (Retry.ts), so failing fast never makes an
 *   upstream look idle.
 * - Panic (Envoy's panic threshold): when fewer than `panicThresholdPercent`
 *   of the upstreams are in rotation, ejections are ignored: every reachable,
 *   healthy upstream is a candidate (better a chance than a certain 503). An
 *   upstream failing its checks or refusing connections never is.
 * - Passive ejection: `ejectAfter` consecutive failures eject an upstream for
 *   `ejectBaseMs` times its ejection count (at most 10 times), never more
 *   than `maxEjectedPercent` of the pool at once (at least one of two or
 *   more). It returns by itself when the time is up; the count is forgotten
 *   once it has stayed back for `ejectBaseMs`. A passing active check after a
 *   failed one (the upstream was seen down and is back) ends an ejection
 *   (Envoy's `successful_active_health_check_uneject_host`).
 */
import type { UpstreamTarget } from "./Targets.ts"
import type { PoolShedReason } from "../core/Metrics.ts"

export interface Endpoint {
  /** `host:port` (the address for `dns+` items). */
  readonly id: string
  readonly target: UpstreamTarget
  readonly address: string
  /** This endpoint's share: the target's weight, split among a name's addresses. */
  weight: number
  inFlight: number
  /** The last active check passed (true when there are no active checks). */
  healthy: boolean
  consecutiveFailures: number
  ejections: number
  ejectedUntil: number
  /** Retry-After from a 429/503: chosen last until then. */
  backoffUntil: number
  /** A connection failed: out of rotation until then, or until an active check passes. */
  unreachableUntil: number
  /** Connection failures since it was last reached: each doubles the time out (1 s to 30 s). */
  unreachableCount: number
}

export interface BalancerSettings {
  readonly maxConcurrency: number
  readonly ejectAfter: number
  readonly ejectBaseMs: number
  readonly maxEjectedPercent: number
  /** Below this share of upstreams in rotation, every upstream is a candidate (0: never). */
  readonly panicThresholdPercent: number
}

/** Why no upstream could be picked: one of the pool's shed reasons. */
export type NoUpstream = PoolShedReason

export const makeEndpoint = (target: UpstreamTarget, address: string, id: string, weight: number, healthy: boolean): Endpoint => ({
  id,
  target,
  address,
  weight,
  inFlight: 0,
  healthy,
  consecutiveFailures: 0,
  ejections: 0,
  ejectedUntil: 0,
  backoffUntil: 0,
  unreachableUntil: 0,
  unreachableCount: 0
})

export const isEjected = (endpoint: Endpoint, now: number) => endpoint.ejectedUntil > now

/** Healthy by the active checks and not known to refuse connections. */
export const isReachable = (endpoint: Endpoint, now: number) => endpoint.healthy && endpoint.unreachableUntil <= now

/** In rotation: reachable and not ejected. */
export const isAvailable = (endpoint: Endpoint, now: number) => isReachable(endpoint, now) && !isEjected(endpoint, now)

export class Balancer {
  endpoints: ReadonlyArray<Endpoint> = []

  readonly settings: BalancerSettings
  private readonly random: () => number

  constructor(settings: BalancerSettings, random: () => number = Math.random) {
    this.settings = settings
    this.random = random
  }

  availableCount(now: number): number {
    let count = 0
    for (const endpoint of this.endpoints) if (isAvailable(endpoint, now)) count++
    return count
  }

  /**
   * The endpoint for the next attempt, none of `exclude` (those already tried);
   * `choose` (a request's route, routing/Route.ts) replaces least request's draw among the candidates.
   */
  pick(now: number, exclude?: ReadonlySet<Endpoint>, choose?: (pool: ReadonlyArray<Endpoint>, now: number) => Endpoint): Endpoint | NoUpstream {
    const cap = this.settings.maxConcurrency
    const panic = this.inPanic(now)
    let anyAvailable = false
    const ready: Array<Endpoint> = []
    const backingOff: Array<Endpoint> = []
    for (const endpoint of this.endpoints) {
      if (!isReachable(endpoint, now) || (!panic && isEjected(endpoint, now)) || exclude?.has(endpoint)) continue
      anyAvailable = true
      if (cap > 0 && endpoint.inFlight >= cap) continue
      ;(endpoint.backoffUntil > now ? backingOff : ready).push(endpoint)
    }
    const pool = ready.length > 0 ? ready : backingOff
    if (pool.length === 0) return anyAvailable ? "upstreams_saturated" : "no_healthy_upstream"
    if (choose !== undefined) return choose(pool, now)
    if (pool.length === 1) return pool[0]
    const first = this.draw(pool, undefined)
    const second = this.draw(pool, first)
    return second.inFlight * first.weight < first.inFlight * second.weight ? second : first
  }

  /** True when some upstream can be chosen now (in rotation, or ejected but chosen in panic): readiness. */
  canServe(now: number): boolean {
    if (this.availableCount(now) > 0) return true
    if (!this.inPanic(now)) return false
    for (const endpoint of this.endpoints) if (isReachable(endpoint, now)) return true
    return false
  }

  /** True when too few upstreams are in rotation: then every one is a candidate. */
  inPanic(now: number): boolean {
    const threshold = this.settings.panicThresholdPercent
    if (threshold <= 0 || this.endpoints.length === 0) return false
    return this.availableCount(now) * 100 < threshold * this.endpoints.length
  }

  /** One endpoint of `pool` other than `skip`, drawn in proportion to weight. */
  private draw(pool: ReadonlyArray<Endpoint>, skip: Endpoint | undefined): Endpoint {
    let total = 0
    for (const endpoint of pool) if (endpoint !== skip) total += endpoint.weight
    let point = this.random() * total
    let last = pool[0]
    for (const endpoint of pool) {
      if (endpoint === skip) continue
      last = endpoint
      point -= endpoint.weight
      if (point < 0) return endpoint
    }
    return last
  }

  succeeded(endpoint: Endpoint, now: number): void {
    endpoint.consecutiveFailures = 0
    endpoint.unreachableCount = 0
    if (endpoint.ejections > 0 && now >= endpoint.ejectedUntil + this.settings.ejectBaseMs) endpoint.ejections = 0
  }

  /** A connection to it failed: out of rotation at once, for a doubling time or until an active check passes. */
  unreachable(endpoint: Endpoint, now: number): void {
    endpoint.unreachableCount++
    endpoint.unreachableUntil = now + Math.min(30_000, 1_000 * 2 ** Math.min(endpoint.unreachableCount - 1, 5))
  }

  /** An active check's result; a pass after a failure (or a failed connection) ends an ejection. True when the health changed. */
  checked(endpoint: Endpoint, healthy: boolean, now: number): boolean {
    const wasDown = !isReachable(endpoint, now)
    if (healthy) {
      endpoint.unreachableUntil = 0
      endpoint.unreachableCount = 0
      if (wasDown && isEjected(endpoint, now)) endpoint.ejectedUntil = now
    }
    if (endpoint.healthy === healthy) return false
    endpoint.healthy = healthy
    return true
  }

  /** Records a failure; true when it ejected the endpoint. */
  failed(endpoint: Endpoint, now: number): boolean {
    endpoint.consecutiveFailures++
    if (endpoint.consecutiveFailures < this.settings.ejectAfter || isEjected(endpoint, now)) return false
    const size = this.endpoints.length
    const share = Math.floor(size * this.settings.maxEjectedPercent / 100)
    const limit = size >= 2 && this.settings.maxEjectedPercent > 0 ? Math.max(1, share) : share
    let ejected = 0
    for (const other of this.endpoints) if (isEjected(other, now)) ejected++
    if (ejected >= limit) return false
    endpoint.ejections++
    endpoint.ejectedUntil = now + this.settings.ejectBaseMs * Math.min(endpoint.ejections, 10)
    endpoint.consecutiveFailures = 0
    return true
  }

  /** Honours an upstream's Retry-After (seconds, at most a minute). */
  backOff(endpoint: Endpoint, now: number, retryAfterSeconds: number): void {
    endpoint.backoffUntil = Math.max(endpoint.backoffUntil, now + Math.min(60, retryAfterSeconds) * 1000)
  }
}
