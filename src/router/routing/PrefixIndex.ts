/**
 * What each upstream has in its prefix cache, as block keys (chained block
 * hashes: a key stands for its whole prefix, see BlockKeys.ts). Pure state:
 * the caller passes the time (Effect's Clock, so TestClock drives ageing).
 *
 * Two sources per upstream, used together:
 * - approximate: the router's own decisions ("this prompt went there, so its
 *   blocks are cached there now"), least recently used first out once the
 *   upstream's capacity (`vllm:cache_config_info`'s `num_gpu_blocks`) is
 *   reached, and forgotten after `ttlMs` untouched. With KV events on that
 *   name blocks by the router's keys (see "matching" below), a decision's
 *   entries live only `pendingTtlMs`: they stand in for the `BlockStored` that
 *   follows once the prompt is prefilled, so a burst of one prefix doesn't
 *   scatter before the first event arrives.
 * - precise: the upstream's own KV events (`BlockStored`, `BlockRemoved`,
 *   `AllBlocksCleared`), applied exactly. Events carry a sequence number per
 *   publisher; a gap (missed batches) means removals may have been missed, so
 *   the precise set is no longer trusted as exact: its blocks become
 *   approximate entries (aged and evicted like decisions, and still removed
 *   by later `BlockRemoved`s), placed at the least recently used end so that
 *   they never evict the router's own entries, and the precise set starts
 *   again from the next batch. That is the healing: stale entries age out
 *   instead of being believed forever, fresh ones are exact again at once. A
 *   sequence number lower than the last one is a publisher restart (its cache
 *   is gone): the precise set is cleared.
 * - matching: a real vLLM names blocks by its own hashes, never the router's
 *   keys. An upstream's events count for the lifetimes above only once one of
 *   its stored blocks was found to be a router key (a simulated server's
 *   are); until then its decisions live `ttlMs` as without events, and a gap
 *   drops its foreign hashes instead of demoting them (they can never match).
 *   `AllBlocksCleared` clears the upstream's entries either way.
 */

export type BlockKey = string

export type KvEvent =
  | { readonly type: "BlockStored"; readonly blockHashes: ReadonlyArray<BlockKey> }
  | { readonly type: "BlockRemoved"; readonly blockHashes: ReadonlyArray<BlockKey> }
  | { readonly type: "AllBlocksCleared" }

export interface KvEventBatch {
  /** The publisher's sequence number of this batch (consecutive when nothing was lost). */
  readonly seq: number
  readonly events: ReadonlyArray<KvEvent>
}

export interface PrefixIndexSettings {
  /** Blocks an upstream holds when its metrics don't say (`num_gpu_blocks`). */
  readonly defaultCapacity: number
  /** An approximate entry untouched this long is forgotten. */
  readonly ttlMs: number
  /** With KV events: how long a decision's entries stand in for the events that confirm them. */
  readonly pendingTtlMs: number
}

export const defaultPrefixIndexSettings: PrefixIndexSettings = { defaultCapacity: 8192, ttlMs: 10 * 60_000, pendingTtlMs: 2_000 }

interface UpstreamCache {
  /**
   * key -> when it is forgotten, fixed when it was last touched (so an entry
   * made before KV events were followed keeps its lifetime when they start);
   * Map order is least recently touched first.
   */
  approximate: Map<BlockKey, number>
  capacity: number
  /** Present once the upstream publishes KV events. */
  precise: Set<BlockKey> | undefined
  /** One of its stored blocks was a router key: its events name blocks as the router does (not a real vLLM's own hashes). */
  matched: boolean
  lastSeq: number | undefined
  gaps: number
}

/** The precise set's bound while the server's capacity is unknown, or when it reports less. */
export const minPreciseBound = 65_536
/** A capacity above this (a /metrics gone wrong: a huge or infinite num_gpu_blocks) is read as this. */
const maxCapacity = 4 * 1024 * 1024

/** Its KV events name the router's keys: decisions then only stand in for them briefly. */
const followsEvents = (cache: UpstreamCache) => cache.precise !== undefined && cache.matched

/** Why a batch was applied as it was. */
export type BatchOutcome = "applied" | "gap" | "restart" | "duplicate"

export class PrefixIndex {
  private readonly upstreams = new Map<string, UpstreamCache>()
  readonly settings: PrefixIndexSettings

  constructor(settings: PrefixIndexSettings = defaultPrefixIndexSettings) {
    this.settings = settings
  }

  private cache(upstream: string): UpstreamCache {
    let cache = this.upstreams.get(upstream)
    if (cache === undefined) {
      cache = { approximate: new Map(), capacity: this.settings.defaultCapacity, precise: undefined, matched: false, lastSeq: undefined, gaps: 0 }
      this.upstreams.set(upstream, cache)
    }
    return cache
  }

  /** The upstream's cache size in blocks, as its `vllm:cache_config_info` reports it. */
  setCapacity(upstream: string, blocks: number): void {
    const cache = this.cache(upstream)
    cache.capacity = Number.isFinite(blocks) ? Math.min(maxCapacity, Math.max(1, Math.floor(blocks))) : maxCapacity
    this.trim(cache)
  }

  /** Forgets an upstream (removed from the pool, or found down). */
  drop(upstream: string): void {
    this.upstreams.delete(upstream)
  }

  upstreamIds(): ReadonlyArray<string> {
    return [...this.upstreams.keys()]
  }

  /** Whether the upstream's precise set is being followed (it has sent KV events). */
  isPrecise(upstream: string): boolean {
    return this.upstreams.get(upstream)?.precise !== undefined
  }

  /** Whether its KV events have named a router key (so they count as exact for it). */
  matchesEvents(upstream: string): boolean {
    const cache = this.upstreams.get(upstream)
    return cache !== undefined && followsEvents(cache)
  }

  /** Blocks the upstream holds, as last reported (or the default). */
  capacityOf(upstream: string): number {
    return this.upstreams.get(upstream)?.capacity ?? this.settings.defaultCapacity
  }

  gapCount(upstream: string): number {
    return this.upstreams.get(upstream)?.gaps ?? 0
  }

  /**
   * Records that `keys` (a prompt's blocks, in order) were sent to `upstream`
   * at `now`. `longLived`: kept `ttlMs` even with KV events (an answer's
   * blocks, see `confirm`).
   *
   * Returns the keys worth telling other replicas: those this index did not
   * hold, or held only since more than a quarter of their lifetime ago (a
   * shared prefix's keys then go out a few times per lifetime, not with
   * every request).
   */
  recordDecision(upstream: string, keys: ReadonlyArray<BlockKey>, now: number, longLived = false): Array<BlockKey> {
    const cache = this.cache(upstream)
    const ttl = longLived || !followsEvents(cache) ? this.settings.ttlMs : this.settings.pendingTtlMs
    const expires = now + ttl
    const news: Array<BlockKey> = []
    // Least recently used to a granularity: an entry touched again within ttl/64 of its last move
    // keeps its place, its expiry renewed in place. Moving it (delete, then set with this
    // decision's copy of the key) made the Map hold every decision's new key strings: each was
    // promoted at the next young collection and died in the old generation, which then filled
    // (6,041-token prompts: 40 ms major collections every two or three seconds, the decision's p99).
    const reorderAfterMs = ttl / 64
    for (const key of keys) {
      if (cache.precise?.has(key)) {
        cache.matched = true
        continue
      }
      const before = cache.approximate.get(key)
      if (before === undefined || before - now < ttl * 0.75) news.push(key)
      if (before !== undefined && before - now < ttl - reorderAfterMs) cache.approximate.delete(key)
      cache.approximate.set(key, expires)
    }
    this.trim(cache)
    return news
  }

  /**
   * The upstream answered a prompt with these blocks (its first token came):
   * they are cached there now, whatever events were missed (a subscription
   * that started late, a batch lost). They are kept as approximate entries
   * for the full lifetime (`ttlMs`), bounded by the capacity like any, and
   * a `BlockRemoved` naming them removes them. Not in the precise set: these
   * are the router's keys, and a real vLLM's events name blocks by its own
   * hashes, so no `BlockRemoved` would ever remove them there (the set grew
   * with every answered prompt, without bound, and old prompts stayed
   * "cached" forever).
   */
  confirm(upstream: string, keys: ReadonlyArray<BlockKey>, now: number): Array<BlockKey> {
    return this.recordDecision(upstream, keys, now, true)
  }

  /**
   * Entries read back from the shared state (another replica's decisions and
   * answers): `expiresAt[i]` is when `keys[i]` is forgotten, counted from
   * when it was recorded there, not from now (a reconnect must not bring
   * back, for a whole lifetime, blocks the server has long evicted). With KV
   * events that name the router's keys, they stand in for events for
   * `pendingTtlMs` at most, like a decision: this replica's own events say
   * what is there. `keys` come oldest first; an entry that lives longer
   * already is left as it is.
   */
  recover(upstream: string, keys: ReadonlyArray<BlockKey>, expiresAt: ReadonlyArray<number>, now: number): void {
    const cache = this.cache(upstream)
    const latest = followsEvents(cache) ? now + this.settings.pendingTtlMs : Number.POSITIVE_INFINITY
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]
      const expires = Math.min(expiresAt[i] ?? now, latest)
      if (expires < now || cache.precise?.has(key)) continue
      const before = cache.approximate.get(key)
      if (before !== undefined && before >= expires) continue
      cache.approximate.delete(key)
      cache.approximate.set(key, expires)
    }
    this.trim(cache)
  }

  /**
   * Applies one batch of the upstream's KV events. A batch whose sequence
   * number is not the next one is a gap (see the header) and is still applied;
   * one equal to the last seen is a duplicate and is skipped; a lower one is
   * a restart of the publisher (a gap, and what it held is gone).
   */
  applyBatch(upstream: string, batch: KvEventBatch, now: number): BatchOutcome {
    const cache = this.cache(upstream)
    let outcome: BatchOutcome = "applied"
    if (cache.lastSeq !== undefined && batch.seq === cache.lastSeq) return "duplicate"
    if (cache.precise === undefined) {
      cache.precise = new Set()
    } else if (cache.lastSeq !== undefined && batch.seq < cache.lastSeq) {
      // A restarted publisher counts from 0 again, and its first batches may have been missed:
      // whatever comes lower than the last is not a replay (a batch is published once).
      outcome = "restart"
      cache.gaps++
      cache.precise = new Set()
    } else if (cache.lastSeq !== undefined && batch.seq !== cache.lastSeq + 1) {
      outcome = "gap"
      cache.gaps++
      // Demoted at the least recently used end (oldest first, as believed): they go before any of
      // the router's own entries when the capacity is reached. Foreign hashes (a server whose
      // events never named a router key) can never match: dropped.
      if (cache.matched && cache.precise.size > 0) {
        const demoted = new Map<BlockKey, number>()
        const expires = now + this.settings.pendingTtlMs
        for (const key of cache.precise) demoted.set(key, expires)
        for (const [key, at] of cache.approximate) if (!demoted.has(key)) demoted.set(key, at)
        cache.approximate = demoted
      }
      cache.precise = new Set()
    }
    cache.lastSeq = batch.seq
    for (const event of batch.events) {
      switch (event.type) {
        case "BlockStored":
          for (const key of event.blockHashes) {
            cache.precise.add(key)
            if (cache.approximate.delete(key)) cache.matched = true
          }
          break
        case "BlockRemoved":
          for (const key of event.blockHashes) {
            cache.precise.delete(key)
            cache.approximate.delete(key)
          }
          break
        case "AllBlocksCleared":
          cache.precise.clear()
          cache.approximate.clear()
          break
      }
    }
    this.trim(cache)
    return outcome
  }

  /**
   * How many of `keys` (a prompt's blocks, in order), counted from the first,
   * the upstream has: the prompt's cached prefix in blocks.
   */
  cachedPrefix(upstream: string, keys: ReadonlyArray<BlockKey>, now: number): number {
    const cache = this.upstreams.get(upstream)
    if (cache === undefined) return 0
    let count = 0
    for (const key of keys) {
      if (cache.precise?.has(key)) {
        count++
        continue
      }
      const expires = cache.approximate.get(key)
      if (expires === undefined || now > expires) break
      count++
    }
    return count
  }

  /** Every key the upstream is believed to hold now (tests, the shared snapshot). */
  keys(upstream: string, now: number): Set<BlockKey> {
    const cache = this.upstreams.get(upstream)
    const found = new Set<BlockKey>(cache?.precise ?? [])
    if (cache === undefined) return found
    for (const [key, expires] of cache.approximate) if (now <= expires) found.add(key)
    return found
  }

  /** Drops the approximate entries whose time is up (they count for nothing already; this frees them). */
  sweep(now: number): void {
    for (const cache of this.upstreams.values()) {
      for (const [key, expires] of cache.approximate) if (now > expires) cache.approximate.delete(key)
    }
  }

  /** Blocks held for the upstream (precise and approximate, expired ones included until swept or evicted). */
  size(upstream: string): number {
    const cache = this.upstreams.get(upstream)
    return cache === undefined ? 0 : (cache.precise?.size ?? 0) + cache.approximate.size
  }

  /**
   * Approximate entries beyond the capacity go, least recently touched first; the precise set
   * beyond the larger of the server's capacity and `minPreciseBound` (the default capacity is a
   * guess, a real server may hold more) loses its first stored: entries beyond what the server can
   * hold are there because removals were lost, or the events are not a real cache's.
   */
  private trim(cache: UpstreamCache): void {
    let over = cache.precise === undefined ? 0 : cache.precise.size - Math.max(cache.capacity, minPreciseBound)
    if (over > 0) {
      for (const key of cache.precise!) {
        if (over-- <= 0) break
        cache.precise!.delete(key)
      }
    }
    // The capacity bounds the approximate entries alone: the precise set may name the same blocks
    // (a simulated server hashes as the router does) or none of them (a real vLLM's own hashes),
    // and a full precise set must not leave the router's keys no room.
    let excess = cache.approximate.size - cache.capacity
    if (excess <= 0) return
    for (const key of cache.approximate.keys()) {
      if (excess-- <= 0) break
      cache.approximate.delete(key)
    }
  }
}
