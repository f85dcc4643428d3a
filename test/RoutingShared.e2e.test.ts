/**
 * Routing state shared through a real Redis (Debian's redis-server on an
 * ephemeral port): replicas learn each other's decisions and loads, a new one
 * starts warm, Redis stopped and restarted mid-test costs nothing but
 * sharing, and several endpoints shard the keys.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { Effect, References } from "effect"
import { createClient } from "redis"
import { makeCacheAwareRouting } from "../src/router/routing/Routing.ts"
import { defaultRouting } from "../src/router/routing/RoutingSettings.ts"
import { readBackChunk, SharedState, type SharedStateSink } from "../src/router/routing/SharedState.ts"
import { makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, type UpstreamTarget } from "../src/router/upstream/Targets.ts"
import { freePort, killAll, until } from "./support/Processes.ts"
import { redisServerPath, startRedis } from "./support/RedisServer.ts"

interface Replica {
  readonly state: SharedState
  readonly blocks: Map<string, Set<string>>
  readonly events: Array<string>
  readonly hows: Array<string>
  /** Per read-back call: its keys and when each was recorded. */
  readonly readBack: Array<{ readonly keys: ReadonlyArray<string>; readonly recordedAt: ReadonlyArray<number> }>
}

const replicas: Array<SharedState> = []
afterEach(async () => {
  await Promise.all(replicas.splice(0).map((state) => state.close()))
  killAll()
})

const replica = (id: string, urls: ReadonlyArray<string>, prefix = "t:", loadIntervalMs = 50, capacity?: number, slowAfterMs = 60_000): Replica => {
  const blocks = new Map<string, Set<string>>()
  const events: Array<string> = []
  const hows: Array<string> = []
  const readBack: Replica["readBack"] = []
  const sink: SharedStateSink = {
    ...(capacity === undefined ? {} : { capacity: () => capacity }),
    blocks: (upstream, keys, how, recordedAt) => {
      hows.push(how)
      if (how === "recovered") readBack.push({ keys: [...keys], recordedAt: [...(recordedAt ?? [])] })
      let set = blocks.get(upstream)
      if (set === undefined) blocks.set(upstream, set = new Set())
      for (const key of keys) set.add(key)
    },
    status: (shown, up, reason) => events.push(`${shown} ${up ? "up" : "down"}${up ? "" : `: ${reason}`}`)
  }
  const state = new SharedState(
    { endpoints: urls.map((url) => ({ url, shown: url })), replicaId: id, prefix, ttlMs: 60_000, loadIntervalMs, maxPendingWrites: 1_000, slowAfterMs, maxInFlightPerReplica: 64 },
    sink
  )
  replicas.push(state)
  return { state, blocks, events, hows, readBack }
}

/** A plain client, to look at what the replicas keep in Redis. */
const inspect = async (url: string) => {
  const client = createClient({ url })
  await client.connect()
  closers.push(() => client.destroy())
  return client
}
const closers: Array<() => void> = []
afterEach(() => closers.splice(0).forEach((close) => close()))

const allUp = (r: Replica) => r.state.status().every((s) => s.up)
const has = (r: Replica, upstream: string, keys: ReadonlyArray<string>) => keys.every((key) => r.blocks.get(upstream)?.has(key) ?? false)
const keys = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}${i}`)

describe.skipIf(redisServerPath() === undefined)("routing state shared through Redis", () => {
  it("three replicas learn each other's decisions and loads; a new replica starts warm", async () => {
    const redis = await startRedis()
    // Counts trusted for a minute: the test publishes them itself, and a slow machine must not age them out.
    const [a, b, c] = ["a", "b", "c"].map((id) => replica(id, [redis.url], "t:", 60_000))
    await until(() => [a, b, c].every(allUp), "replicas connected")
    // Subscriptions settle after `ready`: publish until the others have heard.
    await until(() => {
      a.state.decided("u1", keys("k", 4), Date.now())
      return has(b, "u1", keys("k", 4)) && has(c, "u1", keys("k", 4))
    }, "b and c learn a's decision")
    assert.isFalse(a.blocks.has("u1"), "a replica ignores its own messages")
    assert.deepStrictEqual([...new Set(b.hows)], ["decided"])
    await until(() => {
      a.state.decided("u1", ["answered"], Date.now(), true)
      return b.hows.includes("confirmed")
    }, "b hears a confirmation")
    await until(() => {
      b.state.publishLoad({ u1: 3, u2: 1 })
      c.state.publishLoad({ u1: 2 })
      return a.state.remoteInFlight("u1") === 5 && a.state.remoteInFlight("u2") === 1
    }, "a counts the others' in flight")
    // Changes between the periodic counts: each counted once, as it happens.
    b.state.loadChanged("u1", 1)
    b.state.loadChanged("u1", 1)
    c.state.loadChanged("u2", 1)
    await until(() => a.state.remoteInFlight("u1") === 7 && a.state.remoteInFlight("u2") === 2, "a hears b's and c's picks")
    b.state.loadChanged("u1", -1)
    await until(() => a.state.remoteInFlight("u1") === 6, "a hears b's request end")
    // The next periodic count replaces what the changes made of it.
    await until(() => {
      b.state.publishLoad({ u1: 1 })
      return a.state.remoteInFlight("u1") === 3
    }, "a takes b's count again")
    // A count no replica could have (over its MAX_CONCURRENCY) is read as that many, not trusted.
    await until(() => {
      c.state.publishLoad({ u3: 100_000 })
      return a.state.remoteInFlight("u3") === 64
    }, "a bounds c's implausible count")

    const late = replica("d", [redis.url])
    await until(() => allUp(late), "d connected")
    // It reads back once its subscription is in place (connected is not yet subscribed).
    await until(async () => {
      await late.state.catchUp(["u1"], Date.now())
      return has(late, "u1", keys("k", 4))
    }, "d read what a recorded")
    assert.deepStrictEqual([...new Set(late.hows)], ["recovered"])
  })

  it("Redis stopped mid-run: writes are dropped without waiting, one status line; restarted: rejoins and shares again", async () => {
    const redis = await startRedis()
    const a = replica("a", [redis.url])
    const b = replica("b", [redis.url])
    await until(() => allUp(a) && allUp(b), "replicas connected")
    await redis.stop()
    await until(() => !allUp(a) && !allUp(b), "both see Redis down")
    const dropped = a.state.droppedWrites
    const started = performance.now()
    for (let i = 0; i < 1_000; i++) a.state.decided("u1", [`x${i}`], Date.now())
    assert.isBelow(performance.now() - started, 500, "a decision never waits for Redis")
    assert.strictEqual(a.state.droppedWrites - dropped, 1_000)
    assert.isFalse(b.state.remoteInFlight("u1") > 0)

    await redis.start()
    await until(() => allUp(a) && allUp(b), "both rejoin", 20_000)
    await until(() => {
      a.state.decided("u2", ["after"], Date.now())
      return has(b, "u2", ["after"])
    }, "sharing works again")
    // One line per outage and one per return, not one per failed command.
    assert.strictEqual(a.events.filter((line) => line.includes("down")).length, 1, a.events.join("\n"))
    assert.strictEqual(a.events.filter((line) => line.endsWith(" up")).length, 2, a.events.join("\n"))
  })

  it("a paused (slow) Redis: writes stop at maxPendingWrites, said once, nothing waits; resumed: answering again", async () => {
    const redis = await startRedis()
    const a = replica("a", [redis.url])
    await until(() => allUp(a), "connected")
    redis.pause()
    const started = performance.now()
    for (let i = 0; i < 5_000; i++) a.state.decided("u1", [`s${i}`], Date.now())
    assert.isBelow(performance.now() - started, 1_000)
    assert.isAtLeast(a.state.droppedWrites, 4_000)
    assert.isFalse(allUp(a))
    assert.deepStrictEqual(a.events.filter((line) => line.includes("slow")).length, 1, a.events.join("\n"))
    redis.resume()
    await until(() => allUp(a), "answering again")
    redis.pause()
    for (let i = 0; i < 10; i++) a.state.decided("u1", [`t${i}`], Date.now())
    // Closing does not wait for the writes a paused Redis holds.
    const closing = performance.now()
    await a.state.close()
    assert.isBelow(performance.now() - closing, 500)
    redis.resume()
  })

  it("a Redis that stops answering is said slow after slowAfterMs, long before maxPendingWrites; answering again once resumed", async () => {
    const redis = await startRedis()
    const a = replica("a", [redis.url], "t:", 50, undefined, 300)
    await until(() => allUp(a), "connected")
    redis.pause()
    // Only the periodic load counts: a few writes a second, as an idle replica sends.
    await until(() => {
      a.state.publishLoad({ u1: 1 })
      return !allUp(a)
    }, "a sees Redis slow")
    const slow = a.events.filter((line) => line.includes("slow"))
    assert.lengthOf(slow, 1, a.events.join("\n"))
    assert.match(slow[0], /writes unanswered, the oldest for \d+ ms/)
    redis.resume()
    await until(() => allUp(a), "answering again")
  })

  it("a Redis never reached (nothing listens there) is said once, with the cause", async () => {
    const closed = await freePort()
    const a = replica("a", [`redis://127.0.0.1:${closed}`])
    await until(() => a.events.length > 0, "a status line")
    await new Promise((resolve) => setTimeout(resolve, 500)) // reconnecting meanwhile
    assert.lengthOf(a.events, 1, a.events.join("\n"))
    assert.match(a.events[0], new RegExp(`^redis://127.0.0.1:${closed} down: .*ECONNREFUSED`))
  })

  it("several endpoints shard the keys; losing one loses only its share", async () => {
    const one = await startRedis()
    const two = await startRedis()
    const a = replica("a", [one.url, two.url])
    const b = replica("b", [one.url, two.url])
    await until(() => allUp(a) && allUp(b), "replicas connected")
    const written = keys("s", 40)
    await until(() => {
      a.state.decided("u1", written, Date.now())
      return has(b, "u1", written)
    }, "b learns every key through both shards")
    await two.stop()
    await until(() => a.state.status().filter((s) => s.up).length === 1, "a sees one shard down")
    const fresh = keys("f", 40)
    const late = replica("c", [one.url, two.url])
    await until(() => late.state.status()[0].up, "c connected to the remaining shard")
    // Read back once subscribed (connected is not yet subscribed): some keys arrive.
    await until(async () => {
      await late.state.catchUp(["u1"], Date.now())
      return (late.blocks.get("u1")?.size ?? 0) > 0
    }, "c read back the remaining shard")
    const kept = written.filter((key) => late.blocks.get("u1")?.has(key))
    // Roughly half live on each shard (a hash): some, not all, survive.
    assert.isAbove(kept.length, 5)
    assert.isBelow(kept.length, 35)
    a.state.decided("u1", fresh, Date.now())
  })

  it("keeps each upstream's set within its capacity, and reads back the newest, oldest first, in chunks", async () => {
    const redis = await startRedis()
    const a = replica("a", [redis.url], "t:", 50, 50)
    await until(() => allUp(a), "connected")
    const started = Date.now()
    // 32 writes of 10 keys (320 in all), a millisecond apart: the set is trimmed to the newest 50 every 16 writes.
    for (let i = 0; i < 32; i++) a.state.decided("u1", keys(`w${i}-`, 10), started + i)
    const client = await inspect(redis.url)
    await until(async () => (await client.zScore("t:blocks:u1", "w31-9")) !== null, "the last write landed")
    assert.strictEqual(await client.zCard("t:blocks:u1"), 50)
    const late = replica("b", [redis.url], "t:", 50, 50)
    await until(async () => {
      await late.state.catchUp(["u1"], Date.now())
      return late.readBack.length > 0
    }, "b read back")
    const read = late.readBack.flatMap((call) => call.keys)
    // The newest 50: the last five writes, the oldest of them first.
    assert.deepStrictEqual(read, Array.from({ length: 5 }, (_, i) => keys(`w${27 + i}-`, 10)).flat())
    const recorded = late.readBack.flatMap((call) => call.recordedAt)
    assert.deepStrictEqual(recorded, [...recorded].sort((x, y) => x - y), "oldest first")
    assert.strictEqual(recorded[0], started + 27)

    // A large set: handed over in chunks, the event loop free between them.
    const many = keys("m", 2 * readBackChunk + 5_000)
    const big = replica("c", [redis.url], "t:", 50, many.length)
    await until(() => allUp(big), "c connected")
    big.state.decided("u2", many, Date.now())
    await until(async () => (await client.zCard("t:blocks:u2")) === many.length, "the large set written")
    const reader = replica("d", [redis.url], "t:", 50, many.length)
    // Other work, one turn of the event loop at a time: what had been read back when each turn ran.
    const seen: Array<number> = []
    let reading = true
    const turn = () => {
      seen.push(reader.readBack.length)
      if (reading) setImmediate(turn)
    }
    setImmediate(turn)
    await until(async () => {
      await reader.state.catchUp(["u2"], Date.now())
      return reader.readBack.length > 0
    }, "d read back")
    reading = false
    assert.deepStrictEqual(reader.readBack.map((call) => call.keys.length), [readBackChunk, readBackChunk, 5_000])
    assert.isTrue(seen.includes(1) || seen.includes(2), "other work ran between the chunks")
  })

  it.live("a read-back entry lives from when it was recorded; an upstream down is not deleted from Redis", () =>
    Effect.gen(function*() {
      const redis = yield* Effect.promise(() => startRedis())
      const routing = yield* makeCacheAwareRouting({
        settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0 },
        kvEndpoints: [{ shown: redis.url, url: redis.url }],
        pool: "p"
      })
      const ttlMs = routing.scheduler.index.settings.ttlMs
      const target = parseTarget("http://10.0.0.1:9") as UpstreamTarget
      const upstream = makeEndpoint(target, "10.0.0.1", "10.0.0.1:9", 1, true)
      // As other replicas recorded them: almost a lifetime ago (forgotten in 1.5 s), and just now.
      const client = yield* Effect.promise(() => inspect(redis.url))
      const setKey = `inference-router:p:blocks:${upstream.id}`
      const old = Date.now() - ttlMs + 1_500
      yield* Effect.promise(() => client.zAdd(setKey, [{ score: old, value: "old1" }, { score: old, value: "old2" }, { score: Date.now(), value: "new1" }]))
      routing.attach(() => [upstream])
      yield* Effect.promise(() => until(() => routing.scheduler.index.keys(upstream.id, Date.now()).has("new1"), "read back"))
      // Another replica's message naming a server outside this pool (garbage, or other settings) is not kept.
      yield* Effect.promise(() =>
        until(async () => {
          await client.publish("inference-router:p:blocks", JSON.stringify({ r: "other", u: "10.9.9.9:9", k: ["foreign1"], t: Date.now() }))
          await client.publish("inference-router:p:blocks", JSON.stringify({ r: "other", u: upstream.id, k: ["mine1"], t: Date.now() }))
          return routing.scheduler.index.keys(upstream.id, Date.now()).has("mine1")
        }, "the message for its own upstream applied")
      )
      assert.strictEqual(routing.scheduler.index.size("10.9.9.9:9"), 0)
      const later = Date.now() + 2_000
      assert.strictEqual(routing.scheduler.index.cachedPrefix(upstream.id, ["old1", "old2"], later), 0, "gone when its lifetime from its recording is up")
      assert.strictEqual(routing.scheduler.index.cachedPrefix(upstream.id, ["new1"], later), 1)
      // Its active check fails: forgotten here, not in Redis (the other replicas decide for themselves).
      upstream.healthy = false
      yield* Effect.promise(() => until(() => routing.scheduler.index.size(upstream.id) === 0, "forgotten"))
      yield* Effect.sleep("300 millis")
      assert.strictEqual(yield* Effect.promise(() => client.zCard(setKey)), 3)
    }).pipe(Effect.scoped, Effect.provideService(References.MinimumLogLevel, "None")))
})
