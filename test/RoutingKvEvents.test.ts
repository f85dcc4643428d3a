/**
 * KV events over a real ZeroMQ socket in vLLM's wire format (frames
 * `[topic, seq (8 bytes big-endian), msgpack KVEventBatch]`, events as tagged
 * arrays), encoded here independently of the subscriber: integer, 64-bit and
 * byte hashes, omitted trailing fields, gaps and bad messages.
 */
import { encode } from "@msgpack/msgpack"
import { afterEach, assert, describe, it } from "@effect/vitest"
import { Effect, References } from "effect"
import { PrometheusMetrics } from "effect/observability"
import { Publisher } from "zeromq"
import { decodeKvMessage, maxHashesPerMessage, subscribeKvEvents } from "../src/router/routing/KvEvents.ts"
import { type KvEventBatch, PrefixIndex } from "../src/router/routing/PrefixIndex.ts"
import { makeCacheAwareRouting } from "../src/router/routing/Routing.ts"
import { defaultRouting } from "../src/router/routing/RoutingSettings.ts"
import { makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, type UpstreamTarget } from "../src/router/upstream/Targets.ts"
import { metricContext } from "../src/shared/Metrics.ts"
import { until } from "./support/Processes.ts"

const seqFrame = (seq: number) => {
  const frame = Buffer.alloc(8)
  frame.writeBigUInt64BE(BigInt(seq))
  return frame
}
const message = (seq: number, events: ReadonlyArray<unknown>) => [Buffer.from("kv-events"), seqFrame(seq), Buffer.from(encode([Date.now() / 1000, events], { useBigInt64: true }))]

const closers: Array<() => void> = []
afterEach(() => {
  for (const close of closers.splice(0)) close()
})

describe("decoding vLLM's KV event messages", () => {
  it("reads every event type, with trailing defaults present or omitted", () => {
    const batch = decodeKvMessage(message(7, [
      ["BlockStored", [1, 2], null, [10, 11, 12, 13], 2, null, "GPU"],
      ["BlockStored", [3], 2, [14, 15], 2],
      ["BlockRemoved", [1], "GPU"],
      ["BlockRemoved", [2]],
      ["AllBlocksCleared"]
    ]))
    assert.deepStrictEqual(batch, {
      seq: 7,
      events: [
        { type: "BlockStored", blockHashes: ["1", "2"] },
        { type: "BlockStored", blockHashes: ["3"] },
        { type: "BlockRemoved", blockHashes: ["1"] },
        { type: "BlockRemoved", blockHashes: ["2"] },
        { type: "AllBlocksCleared" }
      ]
    })
  })

  it("reads vLLM 0.26's named-field events (maps tagged by type), in an array or a map batch", () => {
    const events = [
      { type: "BlockStored", block_hashes: [1, 2], parent_block_hash: null, token_ids: [10, 11, 12, 13], block_size: 2, lora_id: null, medium: "GPU", lora_name: null, group_idx: 0 },
      { type: "BlockRemoved", block_hashes: [1], medium: "GPU" },
      { type: "AllBlocksCleared" }
    ]
    const expected: KvEventBatch = {
      seq: 3,
      events: [{ type: "BlockStored", blockHashes: ["1", "2"] }, { type: "BlockRemoved", blockHashes: ["1"] }, { type: "AllBlocksCleared" }]
    }
    assert.deepStrictEqual(decodeKvMessage([Buffer.from("kv-events"), seqFrame(3), Buffer.from(encode([1.5, events, 0]))]), expected)
    assert.deepStrictEqual(decodeKvMessage([Buffer.from("kv-events"), seqFrame(3), Buffer.from(encode({ ts: 1.5, events, data_parallel_rank: 0 }))]), expected)
    assert.isUndefined(decodeKvMessage([Buffer.from("t"), seqFrame(0), Buffer.from(encode([1, [{ type: "BlockStored" }]]))]))
    assert.isUndefined(decodeKvMessage([Buffer.from("t"), seqFrame(0), Buffer.from(encode([1, [{ kind: "AllBlocksCleared" }]]))]))
  })

  it("keys 64-bit and byte hashes as the index does", () => {
    const big = 2n ** 63n + 5n
    const batch = decodeKvMessage(message(0, [["BlockStored", [big, new Uint8Array([0xab, 0x01])], null, [], 16]]))
    assert.deepStrictEqual(batch?.events[0], { type: "BlockStored", blockHashes: [big.toString(), "ab01"] })
  })

  it("refuses what is not a batch, without throwing", () => {
    assert.isUndefined(decodeKvMessage([Buffer.from("t"), seqFrame(0), Buffer.from([0xc1])]))
    assert.isUndefined(decodeKvMessage([Buffer.from("t"), Buffer.from([1]), Buffer.from(encode([0, []]))]))
    assert.isUndefined(decodeKvMessage(message(0, [["Unknown", 1]])))
    assert.isUndefined(decodeKvMessage([Buffer.from("only")]))
    // A hash that is neither an integer nor bytes (a map whose toString is no function made String() throw, which ended the subscription).
    assert.isUndefined(decodeKvMessage(message(0, [["BlockStored", [{ toString: 1 }], null, [], 16]])))
    assert.isUndefined(decodeKvMessage(message(0, [["BlockRemoved", [null]]])))
    // More hashes in one message than an engine step stores, in one event or several: refused, not applied for seconds.
    assert.isUndefined(decodeKvMessage(message(0, [["BlockRemoved", Array.from({ length: maxHashesPerMessage + 1 }, (_, i) => i)]])))
    const half = Array.from({ length: maxHashesPerMessage / 2 + 1 }, (_, i) => i)
    assert.isUndefined(decodeKvMessage(message(0, [["BlockRemoved", half], ["BlockRemoved", half]])))
    // A hash longer than any block hash (vLLM's are 8 or 32 bytes) would hold its length in the index.
    assert.isUndefined(decodeKvMessage(message(0, [["BlockStored", ["x".repeat(65)], null, [], 16]])))
    assert.isUndefined(decodeKvMessage(message(0, [["BlockStored", [new Uint8Array(65)], null, [], 16]])))
    // String hashes (some publishers send them) are keys as they are.
    assert.deepStrictEqual(decodeKvMessage(message(0, [["BlockRemoved", ["ab", 7]]]))?.events, [{ type: "BlockRemoved", blockHashes: ["ab", "7"] }])
  })
})

describe("subscribing over ZeroMQ", () => {
  it("follows a publisher: the index tracks its blocks, a gap is detected, bad messages are counted", async () => {
    const publisher = new Publisher()
    await publisher.bind("tcp://127.0.0.1:*")
    closers.push(() => publisher.close())
    const index = new PrefixIndex()
    // Its events name the router's keys (decided here first), so a gap demotes them rather than dropping them.
    index.recordDecision("u", ["1", "2", "3"], 0)
    let malformed = 0
    let received = 0
    const outcomes: Array<string> = []
    closers.push(subscribeKvEvents(publisher.lastEndpoint!, {
      batch: (batch) => {
        received++
        outcomes.push(index.applyBatch("u", batch, 0))
      },
      malformed: () => malformed++
    }))
    // A PUB socket drops what it sends before the subscriber has joined: empty batches until one arrives.
    let seq = 0
    await until(async () => {
      await publisher.send(message(seq++, []))
      return received > 0
    }, "the subscriber joined")
    const next = () => seq++
    await publisher.send(message(next(), [["BlockStored", [1, 2, 3], null, [], 16]]))
    await publisher.send(message(next(), [["BlockRemoved", [3]]]))
    await publisher.send([Buffer.from("kv-events"), seqFrame(next()), Buffer.from("not msgpack")])
    await publisher.send(message(next(), [["BlockStored", [{ toString: 1 }], null, [], 16]]))
    seq++ // one batch lost
    await publisher.send(message(next(), [["BlockStored", [4], 2, [], 16]]))
    await until(() => index.keys("u", 0).has("4"), "the last batch")
    // Both unreadable messages counted, and the subscription went on.
    assert.strictEqual(malformed, 2)
    assert.deepStrictEqual([...index.keys("u", 0)].sort(), ["1", "2", "4"])
    assert.strictEqual(outcomes.at(-1), "gap")
    assert.strictEqual(index.gapCount("u"), 1)
  })
})

describe("an upstream's KV event series", () => {
  it.live("go when it leaves the pool, as its other series do", () =>
    Effect.gen(function*() {
      const publisher = new Publisher()
      yield* Effect.promise(() => publisher.bind("tcp://127.0.0.1:*"))
      closers.push(() => publisher.close())
      const routing = yield* makeCacheAwareRouting({ settings: { ...defaultRouting, scheduler: "cache-aware", metricsIntervalMs: 0 }, kvEndpoints: [], pool: "t" })
      const target = parseTarget(`http://127.0.0.1:9;kv-events=${publisher.lastEndpoint}`) as UpstreamTarget
      // A port of its own: no other test's series under this name.
      const id = `127.0.0.1:${9_000 + Math.floor(Math.random() * 999)}`
      let pool = [makeEndpoint(target, "127.0.0.1", id, 1, true)]
      routing.attach(() => pool)
      const series = () => PrometheusMetrics.formatUnsafe(metricContext(context)).split("\n").filter((line) => line.includes(`upstream="${id}"`) && line.includes("kv_event"))
      const context = yield* Effect.context<never>()
      // From subscribing: none received, none matching (a wrong endpoint would stay so).
      yield* Effect.promise(() =>
        until(() => series().includes(`router_routing_kv_event_batches_total{upstream="${id}"} 0`), "the received count at 0")
      )
      assert.include(series(), `router_routing_kv_events_matching{upstream="${id}"} 0`)
      let seq = 0
      // Batches with a gap each, until one is counted; a bad message too.
      yield* Effect.promise(() =>
        until(async () => {
          seq += 2
          await publisher.send(message(seq, []))
          await publisher.send([Buffer.from("kv-events"), seqFrame(seq + 1), Buffer.from("not msgpack")])
          return series().some((line) => line.startsWith("router_routing_kv_event_gaps_total")) && series().some((line) => line.startsWith("router_routing_kv_events_malformed_total"))
        }, "a gap and a bad message counted")
      )
      const received = series().find((line) => line.startsWith("router_routing_kv_event_batches_total"))
      assert.isAbove(Number(received?.split(" ").at(-1)), 0)
      // Empty batches name no key the router computes: still approximate.
      assert.include(series(), `router_routing_kv_events_matching{upstream="${id}"} 0`)
      pool = []
      yield* Effect.promise(() => until(() => series().length === 0, "its KV event series removed"))
    }).pipe(Effect.scoped, Effect.provideService(References.MinimumLogLevel, "None")))
})
