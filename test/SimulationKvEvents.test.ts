/**
 * The KV events on the wire: a ZeroMQ SUB socket reads what the simulated
 * engine publishes, decodes it with an independent msgpack library as vLLM's
 * types (KVEventBatch = [ts, [event...], data_parallel_rank], events as vLLM
 * 0.26's named-field maps), and rebuilds the cache's block set from it. Nothing
 * of the publisher's code is used to decode. The older positional layouts are
 * checked field by field against vLLM's declarations.
 */
import { decode } from "@msgpack/msgpack"
import { afterEach, assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Schema } from "effect"
import { Subscriber } from "zeromq"
import { makeEngine, systemTimerClock } from "../src/router/simulated/Engine.ts"
import { decodeKvMessage } from "../src/router/routing/KvEvents.ts"
import type { KvEvent } from "../src/router/simulated/BlockCache.ts"
import { encodeKvEventBatch, KvEventPublisher, kvEventsFormats, sequenceFrame } from "../src/router/simulated/KvEventPublisher.ts"
import { planText } from "../src/router/simulated/Simulation.ts"
import { promptBlockHashes, tokenIds } from "../src/router/simulated/Tokens.ts"
import { killAll } from "./support/Processes.ts"
import { post, startRouter } from "./support/Routers.ts"

/** vLLM 0.26's event types (vllm/distributed/kv_events.py: msgspec structs, tag "type", no array_like). */
type WireEvent =
  | {
    readonly type: "BlockStored"
    readonly block_hashes: ReadonlyArray<number | bigint>
    readonly parent_block_hash: number | bigint | null
    readonly token_ids: ReadonlyArray<number>
    readonly block_size: number
    readonly lora_id: number | null
    readonly medium: string | null
    readonly lora_name: string | null
  }
  | { readonly type: "BlockRemoved"; readonly block_hashes: ReadonlyArray<number | bigint>; readonly medium: string | null }
  | { readonly type: "AllBlocksCleared" }

const words = (n: number, prefix: string) => Array.from({ length: n }, (_, i) => `${prefix}${i}`).join(" ")

describe("KV events over ZeroMQ (vLLM's wire format)", () => {
  it.live("a SUB socket decodes the batches as vLLM's types and rebuilds the engine's block set", () =>
    Effect.scoped(Effect.gen(function*() {
      const topic = "kv@pod-a@model-x"
      const publisher = yield* KvEventPublisher.make("tcp://127.0.0.1:*", topic)
      const engine = makeEngine(
        {
          blockSize: 4,
          kvBlocks: 12,
          maxRunning: 4,
          maxBatchedTokens: 64,
          ttftMs: 0,
          ttftStdDevMs: 0,
          itlMs: 0,
          itlStdDevMs: 0,
          prefillUsPerToken: 0,
          loadFactor: 1,
          modelName: "model-x",
          seed: 0
        },
        systemTimerClock,
        publisher.publish
      )
      const subscriber = new Subscriber()
      yield* Effect.addFinalizer(() => Effect.sync(() => subscriber.close()))
      subscriber.connect(publisher.endpoint)
      subscriber.subscribe("kv@")

      const index = new Set<string>()
      let lastSequence = -1
      let batches = 0
      const receive = Effect.promise(() => subscriber.receive()).pipe(Effect.map(([topicFrame, sequenceFrame, payload]) => {
        assert.strictEqual(topicFrame.toString(), topic)
        assert.strictEqual(sequenceFrame.length, 8)
        const sequence = Number(sequenceFrame.readBigUInt64BE())
        if (lastSequence >= 0) assert.strictEqual(sequence, lastSequence + 1, "consecutive sequence numbers")
        lastSequence = sequence
        const batch = decode(payload, { useBigInt64: true }) as [number, Array<WireEvent>, number]
        assert.lengthOf(batch, 3, "[ts, events, data_parallel_rank]")
        assert.strictEqual(batch[2], 0, "data_parallel_rank 0, as vLLM's publisher sets it")
        assert.isTrue(typeof batch[0] === "number" && Math.abs(batch[0] - Date.now() / 1000) < 60, "ts in seconds")
        batches++
        for (const event of batch[1]) {
          assert.isFalse(Array.isArray(event), "named fields, not a positional array")
          if (event.type === "BlockStored") {
            const { block_hashes: hashes, block_size: blockSize, lora_id: loraId, lora_name: loraName, medium, parent_block_hash: parent, token_ids: tokens } = event
            assert.strictEqual(blockSize, 4)
            assert.strictEqual(tokens.length, hashes.length * blockSize)
            assert.isNull(loraId)
            assert.isNull(loraName)
            assert.strictEqual(medium, "GPU")
            if (parent !== null) assert.isTrue(index.has(String(parent)), "a stored chain's parent is cached")
            for (const hash of hashes) index.add(String(hash))
          } else if (event.type === "BlockRemoved") {
            assert.strictEqual(event.medium, "GPU")
            for (const hash of event.block_hashes) assert.isTrue(index.delete(String(hash)), "only a stored block is removed")
          } else {
            assert.deepStrictEqual(event, { type: "AllBlocksCleared" })
            index.clear()
          }
        }
        return sequence
      }))

      // PUB drops what it sends before the subscription arrives: clear the cache until a batch gets through.
      let seen = false
      const firstBatch = yield* Effect.forkChild(Effect.tap(receive, () => Effect.sync(() => (seen = true))))
      while (!seen) {
        engine.resetPrefixCache()
        yield* Effect.sleep(10)
      }
      yield* Fiber.join(firstBatch)

      // A workload that stores, shares and evicts: 12 blocks of 4 tokens, prompts of 8-20 tokens, some repeated.
      const prompts = [words(20, "a"), words(8, "b"), words(20, "a"), words(16, "c"), words(12, "d"), words(8, "b"), words(20, "e")]
      for (const prompt of prompts) {
        yield* Effect.callback<void>((resume) => {
          engine.submit(tokenIds(prompt), planText({ mode: "echo", echoText: words(5, "o"), maxTokens: 5, stop: [], seed: 0 }), {
            token: (_text, _index, next) => next(),
            end: () => resume(Effect.void)
          })
        })
      }
      engine.resetPrefixCache()
      yield* Effect.callback<void>((resume) => {
        engine.submit(tokenIds(words(9, "f")), planText({ mode: "echo", echoText: "x", maxTokens: 1, stop: [], seed: 0 }), {
          token: (_text, _index, next) => next(),
          end: () => resume(Effect.void)
        })
      })
      const last = publisher.published() - 1
      while (lastSequence < last) yield* receive
      assert.isAbove(batches, 5)
      assert.deepStrictEqual(index, new Set([...engine.cachedHashes()].map(String)), "the events rebuild the cache's blocks")
      assert.strictEqual(index.size, 2, "after the reset: the 9-token prompt's two full blocks")
    })), { timeout: 20_000 })
})

describe("KV events from a router process (SIM_KV_EVENTS_ENDPOINT)", () => {
  afterEach(killAll)

  it("a router connecting to a subscriber's bound socket (llm-d's way) publishes its prompt's blocks under kv@<pod>@<model>", async () => {
    const subscriber = new Subscriber({ receiveTimeout: 100 })
    try {
      await subscriber.bind("tcp://127.0.0.1:*")
      subscriber.subscribe("kv@")
      const router = await startRouter({ SIM_LATENCY_MS: "0", SIM_BLOCK_SIZE: "4", POD_NAME: "sim-0", SIM_KV_EVENTS_ENDPOINT: subscriber.lastEndpoint! })
      /** The next message, or undefined after 100 ms. */
      const next = () => subscriber.receive().then((frames) => frames, () => undefined)
      // The subscription reaches the publisher some time after it connects: reset the cache until a batch gets through.
      const deadline = Date.now() + 15_000
      let first: Array<Buffer> | undefined
      while (first === undefined && Date.now() < deadline) {
        await post(router.port, "/reset_prefix_cache", {})
        first = await next()
      }
      assert.isDefined(first, "a batch arrived")
      assert.strictEqual(first![0].toString(), "kv@sim-0@m")
      while ((await next()) !== undefined) {
        // drain the other resets' batches
      }
      const prompt = words(10, "p")
      const answer = await post(router.port, "/v1/completions", { prompt, max_tokens: 1 })
      assert.strictEqual(answer.status, 200)
      const stored: Array<string> = []
      const until = Date.now() + 10_000
      while (stored.length < 2 && Date.now() < until) {
        const frames = await next()
        if (frames === undefined) continue
        const [, events] = decode(frames[2], { useBigInt64: true }) as [number, Array<WireEvent>]
        for (const event of events) if (event.type === "BlockStored") stored.push(...event.block_hashes.map(String))
      }
      assert.deepStrictEqual(stored, promptBlockHashes("m", prompt, 4).map(String), "the prompt's two full blocks, keyed as Tokens.promptBlockHashes says")
    } finally {
      subscriber.close()
    }
  }, 30_000)
})

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))
/** Up to 2^53 - 1: every msgpack integer width the encoder picks from. */
const Hash = Schema.Union([int(0, 127), int(128, 65_535), int(65_536, 4_294_967_295), int(4_294_967_296, Number.MAX_SAFE_INTEGER)])
const Event = Schema.Union([
  Schema.Struct({
    _tag: Schema.Literal("BlockStored"),
    blockHashes: Schema.Array(Hash).check(Schema.isMaxLength(40)),
    parentBlockHash: Schema.UndefinedOr(Hash),
    tokenIds: Schema.Array(int(0, 2_147_483_647)).check(Schema.isMaxLength(300)),
    blockSize: int(1, 1024)
  }),
  Schema.Struct({ _tag: Schema.Literal("BlockRemoved"), blockHashes: Schema.Array(Hash).check(Schema.isMaxLength(40)) }),
  Schema.Struct({ _tag: Schema.Literal("AllBlocksCleared") })
])

const exact = (value: unknown): unknown =>
  typeof value === "bigint" ? Number(value) : Array.isArray(value) ? value.map(exact) : value

describe("the KV event batch encoder", () => {
  it.prop(
    "any batch decodes (by an independent msgpack library) to vLLM's types in each layout, every integer exact",
    [Schema.Array(Event).check(Schema.isMaxLength(20)), Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 4e9 }))],
    ([events, ts]) => {
      // vLLM 0.26: named fields (msgspec's map with the tag "type" first), the batch [ts, events, rank].
      const named = decode(encodeKvEventBatch(ts, events), { useBigInt64: true }) as [number, Array<Record<string, unknown>>, number]
      assert.strictEqual(named[0], ts)
      assert.strictEqual(named[2], 0)
      assert.deepStrictEqual(
        named[1].map((event) => Object.entries(event).map(([key, value]) => [key, exact(value)])),
        events.map((event) =>
          event._tag === "BlockStored"
            ? [
              ["type", "BlockStored"],
              ["block_hashes", [...event.blockHashes]],
              ["parent_block_hash", event.parentBlockHash ?? null],
              ["token_ids", [...event.tokenIds]],
              ["block_size", event.blockSize],
              ["lora_id", null],
              ["medium", "GPU"],
              ["lora_name", null],
              ["extra_keys", event.blockHashes.map(() => null)],
              ["group_idx", 0],
              ["kv_cache_spec_kind", "full_attention"]
            ]
            : event._tag === "BlockRemoved"
            ? [["type", "BlockRemoved"], ["block_hashes", [...event.blockHashes]], ["medium", "GPU"], ["group_idx", 0]]
            : [["type", "AllBlocksCleared"]]
        )
      )
      // vLLM before 0.26 (since lora_name): array_like, BlockStored's 8 fields end with lora_name.
      const positional = (format: "array" | "array-legacy") =>
        events.map((event) =>
          event._tag === "BlockStored"
            ? ["BlockStored", [...event.blockHashes], event.parentBlockHash ?? null, [...event.tokenIds], event.blockSize, null, "GPU", ...(format === "array" ? [null] : [])]
            : event._tag === "BlockRemoved"
            ? ["BlockRemoved", [...event.blockHashes], "GPU"]
            : ["AllBlocksCleared"]
        )
      assert.deepStrictEqual(exact(decode(encodeKvEventBatch(ts, events, "array"), { useBigInt64: true })), [ts, positional("array"), 0])
      // vLLM before lora_name: 7 fields, the batch [ts, events].
      assert.deepStrictEqual(exact(decode(encodeKvEventBatch(ts, events, "array-legacy"), { useBigInt64: true })), [ts, positional("array-legacy")])
    }
  )

  it("long arrays (past 16 and 65,535 items) and long strings use msgpack's wider forms", () => {
    const tokenIds = Array.from({ length: 70_000 }, (_, i) => i)
    const batch = encodeKvEventBatch(1, [{ _tag: "BlockStored", blockHashes: [2 ** 40], parentBlockHash: undefined, tokenIds, blockSize: 70_000 }], "array")
    const [, [event]] = decode(batch) as [number, Array<Array<unknown>>]
    assert.deepStrictEqual(event[3], tokenIds)
    assert.strictEqual(event[1] instanceof Array && event[1][0], 2 ** 40)
    assert.strictEqual(sequenceFrame(2 ** 40 + 5).readBigUInt64BE(), BigInt(2 ** 40 + 5))
    const hundred = Array.from({ length: 100 }, (_, i) => 2 ** 33 + i)
    const [, [removed]] = decode(encodeKvEventBatch(1, [{ _tag: "BlockRemoved", blockHashes: hundred }])) as [number, Array<Record<string, unknown>>]
    assert.deepStrictEqual(removed, { type: "BlockRemoved", block_hashes: hundred, medium: "GPU", group_idx: 0 })
  })

  it("the router's own decoder reads every layout the simulator writes", () => {
    const events: Array<KvEvent> = [
      { _tag: "BlockStored", blockHashes: [5, 2 ** 40], parentBlockHash: 3, tokenIds: [1, 2, 3, 4], blockSize: 2 },
      { _tag: "BlockRemoved", blockHashes: [5] },
      { _tag: "AllBlocksCleared" }
    ]
    for (const format of kvEventsFormats) {
      assert.deepStrictEqual(decodeKvMessage([Buffer.from("t"), sequenceFrame(4), encodeKvEventBatch(1, events, format)]), {
        seq: 4,
        events: [{ type: "BlockStored", blockHashes: ["5", String(2 ** 40)] }, { type: "BlockRemoved", blockHashes: ["5"] }, { type: "AllBlocksCleared" }]
      }, format)
    }
  })
})
