/**
 * Routing state shared by router replicas through Redis (`redis://` items of
 * KV_ENDPOINTS), so that a prefix one replica sent to an upstream is known as
 * cached there by all of them, and each counts the others' requests in flight.
 *
 * - Each replica keeps its own copy in memory (the PrefixIndex and the remote
 *   counts here): a decision reads memory only, never Redis.
 * - Writes are fire-and-forget: a decision's block keys go into a sorted set
 *   per upstream (`<prefix>blocks:<upstream>`, score = when, so expiry is one
 *   ZREMRANGEBYSCORE; kept to the upstream's capacity in blocks by a
 *   ZREMRANGEBYRANK every `trimEvery` writes) and out on a pub/sub channel; every replica applies the
 *   others' messages to its copy. Each replica publishes its in-flight counts
 *   every `loadIntervalMs`, and each change between them as it happens (+1
 *   at a pick, -1 at the end, on one endpoint only, so that it counts once):
 *   the others see a burst's picks within a pub/sub hop, not up to an
 *   interval later (an interval-old count let the replicas pile onto one
 *   upstream, then spill from it). The periodic counts correct any change
 *   lost; counts older than three intervals are not trusted.
 * - A replica that (re)connects reads the sorted sets back (the newest keys of
 *   the last `ttlMs`, at most the upstream's capacity, each with when it was
 *   recorded, handed over in chunks with the event loop free between them):
 *   a new replica starts warm, one that was cut off catches up. Nothing is
 *   ever deleted on one replica's word: a set ages out and is trimmed.
 * - Several endpoints: each block key lives on one of them (a hash of the
 *   key), loads go to all. Losing one loses only its share.
 * - Redis down, refusing or slow: no command waits in the client (no offline
 *   queue), at most `maxPendingWrites` writes are outstanding and none
 *   longer than `slowAfterMs` unanswered (more are dropped), the replica goes on with its local copy, logs once per outage,
 *   says so in a metric, and rejoins (reconnects, reads back) by itself. No
 *   request waits for or fails because of Redis.
 */
import { createClient } from "redis"
import { hash32 } from "../simulated/Simulation.ts"

const makeClient = (url: string) =>
  createClient({
    url,
    // Commands fail at once while disconnected instead of queueing in memory.
    disableOfflineQueue: true,
    socket: { connectTimeout: 1_000, reconnectStrategy: (retries: number) => reconnectDelay(retries) }
  })
type Client = ReturnType<typeof makeClient>

export interface SharedStateSettings {
  /** `redis://` URLs, credentials included (they never leave the process: logs show `shown`). */
  readonly endpoints: ReadonlyArray<{ readonly url: string; readonly shown: string }>
  /** Names this replica in messages (its own are ignored when they come back). */
  readonly replicaId: string
  /** Key and channel prefix, so that several pools can share one Redis. */
  readonly prefix: string
  readonly ttlMs: number
  readonly loadIntervalMs: number
  readonly maxPendingWrites: number
  /** Slow: no answer to the oldest unanswered write for this long (a Redis that accepts connections but does not answer). */
  readonly slowAfterMs: number
  /**
   * The most one replica can have in flight on one upstream (its MAX_CONCURRENCY: replicas of one
   * service share their settings): a count above it, a bug's or a rogue writer's, is read as this
   * (unbounded, one count would raise the pool's mean and with it the load bound for every pick).
   */
  readonly maxInFlightPerReplica: number
}

export interface SharedStateSink {
  /**
   * Another replica sent `keys` to `upstream` (`confirmed`: and the answer
   * started, so they are cached there), or a replica that (re)joined read them
   * back (`recovered`).
   */
  blocks(upstream: string, keys: ReadonlyArray<string>, how: "decided" | "confirmed" | "recovered", recordedAt?: ReadonlyArray<number>): void
  /** Blocks the upstream holds (its index capacity): the most kept in Redis and read back per endpoint. */
  capacity?(upstream: string): number
  /** An endpoint went down (false) or came back (true); `shown` has no credentials. */
  status(shown: string, up: boolean, reason: string): void
}

interface Shard {
  readonly shown: string
  readonly client: Client
  readonly subscriber: Client
  up: boolean
  /** Its last status line said down (one line per outage, the first failed connection included). */
  saidDown: boolean
  /** Writes sent and not yet answered. */
  pending: number
  /** While writes are pending: when the first was sent, or the last answered (`performance.now()`). */
  waitingSince: number
  /** A slowness check is scheduled for after this turn's I/O. */
  slowCheck: boolean
  /** At maxPendingWrites, or silent for slowAfterMs: not answering in time, written to no more until it catches up. */
  slow: boolean
  /** Upstreams whose sorted set this replica has read since it last (re)connected. */
  readonly loaded: Set<string>
  /**
   * The channels are subscribed: reading back before that would lose what
   * the others publish between the read and the subscription (a replica
   * that starts while the others are busy missed their first decisions).
   */
  subscribed: boolean
}

interface BlocksMessage {
  readonly r: string
  readonly u: string
  readonly k: ReadonlyArray<string>
  readonly t: number
  /** 1: confirmed by the answer. */
  readonly c?: 1
}
interface LoadMessage {
  readonly r: string
  readonly l: Record<string, number>
}
/** One change of a replica's count on one upstream since its last LoadMessage. */
interface LoadChangeMessage {
  readonly r: string
  readonly u: string
  readonly d: 1 | -1
}

/** Keys handed to the sink at once when reading back: the event loop is free between chunks. */
export const readBackChunk = 10_000
/** Writes to one upstream's set between two trims to its capacity (the trim is O(log n + removed)). */
const trimEvery = 16
/** Blocks per upstream when the sink does not say. */
const defaultCapacity = 8192

/** Reconnect after 50 ms, doubling to at most 2 s, with jitter: rejoins quickly, never hammers. */
const reconnectDelay = (retries: number) => Math.min(2_000, 50 * 2 ** Math.min(retries, 6)) + Math.floor(Math.random() * 50)

export class SharedState {
  readonly settings: SharedStateSettings
  private readonly shards: ReadonlyArray<Shard>
  private readonly sink: SharedStateSink
  private readonly now: () => number
  private readonly remote = new Map<string, { at: number; loads: Record<string, number> }>()
  private closed = false
  /** Writes per upstream set since it was last trimmed (per shard: its own share). */
  private readonly writesSinceTrim = new Map<string, number>()
  /** Decisions and removals not written because Redis was down or slow (loads, refreshed every interval, not counted). */
  droppedWrites = 0

  constructor(settings: SharedStateSettings, sink: SharedStateSink, now: () => number = Date.now) {
    this.settings = settings
    this.sink = sink
    this.now = now
    this.shards = settings.endpoints.map((endpoint) => this.connect(endpoint.url, endpoint.shown))
  }

  private get blocksChannel() {
    return `${this.settings.prefix}blocks`
  }
  private get loadChannel() {
    return `${this.settings.prefix}load`
  }

  private connect(url: string, shown: string): Shard {
    const client = makeClient(url)
    const subscriber = makeClient(url)
    const shard: Shard = { shown, client, subscriber, up: false, saidDown: false, pending: 0, waitingSince: 0, slowCheck: false, slow: false, loaded: new Set(), subscribed: false }
    // One line per outage: the first failure after being up, or the first of a replica that never connected.
    const down = (reason: string) => {
      if (this.closed || (!shard.up && shard.saidDown)) return
      shard.up = false
      shard.loaded.clear()
      shard.saidDown = true
      this.sink.status(shown, false, reason)
    }
    // node-redis rethrows `error` events nobody listens to; each failure is a reason to be down.
    client.on("error", (error: Error) => down(error.message || String(error)))
    subscriber.on("error", () => {})
    client.on("end", () => down("connection closed"))
    client.on("ready", () => {
      if (shard.up || this.closed) return
      shard.up = true
      shard.saidDown = false
      this.sink.status(shown, true, "connected")
    })
    // The first connection is retried here (node-redis's strategy covers reconnections); a
    // subscription that failed after connecting is retried without connecting again.
    const startClient = (which: Client, then?: () => Promise<unknown>) => {
      const attempt = () => {
        if (this.closed) return
        const connected = which.isOpen ? Promise.resolve() : which.connect()
        connected.then(then).catch((error: unknown) => {
          if (which === client) down(error instanceof Error && error.message !== "" ? error.message : String(error))
          setTimeout(attempt, reconnectDelay(3)).unref()
        })
      }
      attempt()
    }
    startClient(client)
    startClient(subscriber, () =>
      Promise.all([
        subscriber.subscribe(this.blocksChannel, (message) => this.receiveBlocks(message)),
        subscriber.subscribe(this.loadChannel, (message) => this.receiveLoad(message))
      ]).then(() => {
        shard.subscribed = true
      }))
    return shard
  }

  private receiveBlocks(text: string): void {
    let message: BlocksMessage
    try {
      message = JSON.parse(text)
    } catch {
      return
    }
    if (message.r === this.settings.replicaId || typeof message.u !== "string" || !Array.isArray(message.k)) return
    // Another router's message: only string keys are keys.
    const keys = message.k.every((key) => typeof key === "string") ? message.k : message.k.filter((key) => typeof key === "string")
    this.sink.blocks(message.u, keys, message.c === 1 ? "confirmed" : "decided")
  }

  private receiveLoad(text: string): void {
    let message: LoadMessage | LoadChangeMessage
    try {
      message = JSON.parse(text)
    } catch {
      return
    }
    if (typeof message !== "object" || message === null || message.r === this.settings.replicaId || typeof message.r !== "string") return
    if ("d" in message) {
      if (typeof message.u !== "string" || (message.d !== 1 && message.d !== -1)) return
      let entry = this.remote.get(message.r)
      // A change before any count: counted from 0, dated now (it expires like a count).
      if (entry === undefined) this.remote.set(message.r, entry = { at: this.now(), loads: {} })
      const before = entry.loads[message.u]
      entry.loads[message.u] = Math.max(0, (typeof before === "number" ? before : 0) + message.d)
      return
    }
    if (typeof message.l !== "object" || message.l === null) return
    // A copy: changes are applied to it in place.
    this.remote.set(message.r, { at: this.now(), loads: { ...message.l } })
  }

  private shardOf(key: string): Shard {
    return this.shards[this.shards.length === 1 ? 0 : hash32(key) % this.shards.length]
  }

  /**
   * Sends one write unless Redis is down or slow; never waits, never throws.
   * Slow: `maxPendingWrites` unanswered, or none answered for `slowAfterMs`
   * (a Redis that accepts connections but does not answer). Then nothing more is written to it, once said, until
   * its backlog is answered.
   */
  private write(shard: Shard, command: (client: Client) => Promise<unknown>, refresh = false): void {
    if (!shard.up || shard.slow || this.closed) {
      // A periodic refresh (the loads) is not lost data: the next one replaces it.
      if (!refresh) this.droppedWrites++
      return
    }
    if (shard.pending >= this.settings.maxPendingWrites) {
      this.markSlow(shard)
      this.droppedWrites++
      return
    }
    // On the monotonic clock: a wall-clock step is not Redis's silence.
    const now = performance.now()
    if (shard.pending > 0 && now - shard.waitingSince >= this.settings.slowAfterMs && !shard.slowCheck) {
      // Confirmed after this turn's I/O: a router that stalled (a long task) may have its answers waiting
      // in the socket, read only in the poll phase, after the timers that write.
      shard.slowCheck = true
      // Twice: a write from an I/O callback is in the poll phase itself, whose stall's answers the next poll reads.
      setImmediate(() =>
        setImmediate(() => {
          shard.slowCheck = false
          if (!shard.slow && shard.pending > 0 && performance.now() - shard.waitingSince >= this.settings.slowAfterMs) this.markSlow(shard)
        })
      )
    }
    // The time without an answer counts from the first write outstanding, or from the last answer.
    if (shard.pending === 0) shard.waitingSince = now
    shard.pending++
    let promise: Promise<unknown>
    try {
      promise = command(shard.client)
    } catch {
      shard.pending--
      this.droppedWrites++
      return
    }
    const answered = () => {
      shard.pending--
      shard.waitingSince = performance.now()
      if (shard.slow && shard.pending === 0) {
        shard.slow = false
        if (shard.up && !this.closed) this.sink.status(shard.shown, true, "answering again")
      }
    }
    promise.then(answered, () => {
      this.droppedWrites++
      answered()
    })
  }

  /** Written to no more until its backlog is answered; said once. */
  private markSlow(shard: Shard): void {
    shard.slow = true
    this.sink.status(shard.shown, false, `slow: ${shard.pending} writes unanswered, the oldest for ${Math.round(performance.now() - shard.waitingSince)} ms`)
  }

  /**
   * This replica sent `keys` to `upstream` (at wall-clock `at`; `confirmed`:
   * and the answer started): tell the others, and remember it in Redis.
   */
  decided(upstream: string, keys: ReadonlyArray<string>, at: number, confirmed = false): void {
    if (keys.length === 0) return
    const byShard = new Map<Shard, Array<string>>()
    for (const key of keys) {
      const shard = this.shardOf(key)
      let list = byShard.get(shard)
      if (list === undefined) byShard.set(shard, list = [])
      list.push(key)
    }
    const setKey = `${this.settings.prefix}blocks:${upstream}`
    const writes = (this.writesSinceTrim.get(upstream) ?? 0) + 1
    const trim = writes >= trimEvery
    this.writesSinceTrim.set(upstream, trim ? 0 : writes)
    const capacity = this.capacityOf(upstream)
    for (const [shard, list] of byShard) {
      const message = JSON.stringify({ r: this.settings.replicaId, u: upstream, k: list, t: at, ...(confirmed ? { c: 1 as const } : {}) } satisfies BlocksMessage)
      this.write(shard, (client) => {
        const multi = client.multi()
          .zAdd(setKey, list.map((value) => ({ score: at, value })))
          .zRemRangeByScore(setKey, "-inf", at - this.settings.ttlMs)
        // The newest `capacity` stay (ranks count from the lowest score, the oldest).
        if (trim) multi.zRemRangeByRank(setKey, 0, -capacity - 1)
        return multi
          .pExpire(setKey, this.settings.ttlMs)
          .publish(this.blocksChannel, message)
          .exec()
      })
    }
  }

  /** This replica's requests in flight per upstream (called every loadIntervalMs). */
  publishLoad(loads: Record<string, number>): void {
    const message = JSON.stringify({ r: this.settings.replicaId, l: loads } satisfies LoadMessage)
    for (const shard of this.shards) this.write(shard, (client) => client.publish(this.loadChannel, message), true)
  }

  /**
   * This replica's count on `upstream` changed by one (a pick, an end): told
   * at once on the first endpoint that is up (every replica hears every
   * endpoint's channel: sent on one, it counts once). Lost, the next periodic
   * count corrects it.
   */
  loadChanged(upstream: string, delta: 1 | -1): void {
    const shard = this.shards.find((candidate) => candidate.up && !candidate.slow)
    if (shard === undefined) return
    const message = JSON.stringify({ r: this.settings.replicaId, u: upstream, d: delta } satisfies LoadChangeMessage)
    this.write(shard, (client) => client.publish(this.loadChannel, message), true)
  }

  /** Requests in flight on `upstream` from the other replicas, as they last said (within three intervals). */
  remoteInFlight(upstream: string): number {
    const oldest = this.now() - 3 * this.settings.loadIntervalMs
    let total = 0
    for (const [replica, entry] of this.remote) {
      if (entry.at < oldest) {
        this.remote.delete(replica)
        continue
      }
      const count = entry.loads[upstream]
      if (typeof count === "number" && count > 0) total += Math.min(count, this.settings.maxInFlightPerReplica)
    }
    return total
  }

  private capacityOf(upstream: string): number {
    const capacity = this.sink.capacity?.(upstream) ?? defaultCapacity
    return Math.max(1, Math.floor(capacity))
  }

  /**
   * Reads back what the replicas recorded for `upstreams` in the last ttlMs
   * (the newest, at most the upstream's capacity), from every shard that is
   * up and has not been read since it (re)connected. Handed to the sink
   * oldest first, with when each was recorded, `readBackChunk` keys at a
   * time: a large set must not hold up the requests being decided meanwhile.
   */
  async catchUp(upstreams: ReadonlyArray<string>, wallNow: number): Promise<void> {
    await Promise.all(this.shards.map(async (shard) => {
      // (The client resubscribes a reconnected subscriber as it becomes ready.)
      if (!shard.up || !shard.subscribed || !shard.subscriber.isReady) return
      for (const upstream of upstreams) {
        if (shard.loaded.has(upstream)) continue
        shard.loaded.add(upstream)
        let entries: ReadonlyArray<{ readonly value: string; readonly score: number }>
        try {
          entries = await shard.client.zRangeWithScores(`${this.settings.prefix}blocks:${upstream}`, "+inf", wallNow - this.settings.ttlMs, {
            BY: "SCORE",
            REV: true,
            LIMIT: { offset: 0, count: this.capacityOf(upstream) }
          })
        } catch {
          shard.loaded.delete(upstream)
          continue
        }
        // Newest first from Redis; the index takes the most recent last.
        for (let end = entries.length; end > 0; end -= readBackChunk) {
          if (this.closed) return
          const chunk = entries.slice(Math.max(0, end - readBackChunk), end).reverse()
          this.sink.blocks(upstream, chunk.map((entry) => entry.value), "recovered", chunk.map((entry) => Number(entry.score)))
          if (end > readBackChunk) await new Promise<void>((resolve) => setImmediate(resolve))
        }
      }
    }))
  }

  /** Per endpoint (credentials masked): connected and answering, or not. */
  status(): ReadonlyArray<{ readonly shown: string; readonly up: boolean }> {
    return this.shards.map((shard) => ({ shown: shard.shown, up: shard.up && !shard.slow }))
  }

  /** Drops the connections at once: writes still outstanding are lost (a paused Redis must not hold up a shutdown). */
  close(): Promise<void> {
    this.closed = true
    for (const client of this.shards.flatMap((shard) => [shard.client, shard.subscriber])) {
      if (client.isOpen) client.destroy()
    }
    return Promise.resolve()
  }
}
