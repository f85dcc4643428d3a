/**
 * The simulated server's KV events over ZeroMQ, in vLLM's wire format
 * (vllm/distributed/kv_events.py, ZmqEventPublisher), so that a subscriber
 * written for vLLM (llm-d-kv-cache, Dynamo's KV router, vLLM's own
 * examples/online_serving/kv_events_subscriber.py of the same version) reads ours:
 *
 * - a PUB socket; an endpoint with `*` in it (or ipc/inproc) binds, any other connects, as vLLM decides;
 * - one message per engine step that changed the cache, three frames:
 *   topic (SIM_KV_EVENTS_TOPIC), sequence number (8 bytes, big-endian, from 0), payload;
 * - payload: msgpack of KVEventBatch `[ts, [event, ...], data_parallel_rank]` (ts in
 *   seconds; the rank 0, as vLLM's publisher always sets it), each event in one of
 *   vLLM's layouts (SIM_KV_EVENTS_FORMAT):
 *   - `map` (vLLM 0.26 on, PR #42892: named fields, msgspec's tag first):
 *     `{type: "BlockStored", block_hashes, parent_block_hash, token_ids, block_size,
 *     lora_id: nil, medium: "GPU", lora_name: nil, extra_keys: [nil per block], group_idx: 0,
 *     kv_cache_spec_kind: "full_attention"}`, `{type: "BlockRemoved", block_hashes,
 *     medium: "GPU", group_idx: 0}`, `{type: "AllBlocksCleared"}`;
 *   - `array` (vLLM before 0.26, `array_like`, with `lora_name` from PR #27577): `["BlockStored",
 *     block_hashes, parent | nil, token_ids, block_size, nil, "GPU", nil]`,
 *     `["BlockRemoved", block_hashes, "GPU"]`, `["AllBlocksCleared"]`;
 *   - `array-legacy` (vLLM before `lora_name`): the same without it (7 fields), and
 *     the batch `[ts, events]` without the rank.
 *   Block hashes are unsigned integers below 2^53.
 *
 * The msgpack subset is written here by hand (maps, arrays, strings, nil, unsigned
 * integers, float64): a few dozen lines instead of a dependency, and the
 * subscriber test decodes with an independent msgpack library. vLLM's replay
 * socket (a ROUTER answering missed sequence numbers) is not served.
 */
import { Effect, type Scope } from "effect"
import type { KvEvent } from "./BlockCache.ts"

/** Grows as it is written; `bytes()` is what was written. */
class Writer {
  private buffer = Buffer.alloc(256)
  private length = 0

  private room(bytes: number) {
    if (this.length + bytes <= this.buffer.length) return
    const bigger = Buffer.alloc(Math.max(this.buffer.length * 2, this.length + bytes))
    this.buffer.copy(bigger, 0, 0, this.length)
    this.buffer = bigger
  }

  byte(value: number) {
    this.room(1)
    this.buffer[this.length++] = value
  }

  nil() {
    this.byte(0xc0)
  }

  /** An unsigned integer below 2^53, in msgpack's smallest form. */
  uint(value: number) {
    if (value < 128) return this.byte(value)
    if (value < 256) {
      this.byte(0xcc)
      return this.byte(value)
    }
    if (value < 65536) {
      this.room(3)
      this.buffer[this.length] = 0xcd
      this.buffer.writeUInt16BE(value, this.length + 1)
      this.length += 3
      return
    }
    if (value < 4294967296) {
      this.room(5)
      this.buffer[this.length] = 0xce
      this.buffer.writeUInt32BE(value, this.length + 1)
      this.length += 5
      return
    }
    this.room(9)
    this.buffer[this.length] = 0xcf
    this.buffer.writeUInt32BE(Math.floor(value / 4294967296), this.length + 1)
    this.buffer.writeUInt32BE(value >>> 0, this.length + 5)
    this.length += 9
  }

  float64(value: number) {
    this.room(9)
    this.buffer[this.length] = 0xcb
    this.buffer.writeDoubleBE(value, this.length + 1)
    this.length += 9
  }

  str(value: string) {
    const size = Buffer.byteLength(value)
    if (size < 32) this.byte(0xa0 | size)
    else if (size < 256) {
      this.byte(0xd9)
      this.byte(size)
    } else {
      this.room(5)
      this.buffer[this.length] = 0xdb
      this.buffer.writeUInt32BE(size, this.length + 1)
      this.length += 5
    }
    this.room(size)
    this.length += this.buffer.write(value, this.length)
  }

  map(size: number) {
    if (size < 16) return this.byte(0x80 | size)
    this.room(3)
    this.buffer[this.length] = 0xde
    this.buffer.writeUInt16BE(size, this.length + 1)
    this.length += 3
  }

  array(size: number) {
    if (size < 16) return this.byte(0x90 | size)
    if (size < 65536) {
      this.room(3)
      this.buffer[this.length] = 0xdc
      this.buffer.writeUInt16BE(size, this.length + 1)
      this.length += 3
      return
    }
    this.room(5)
    this.buffer[this.length] = 0xdd
    this.buffer.writeUInt32BE(size, this.length + 1)
    this.length += 5
  }

  uints(values: ReadonlyArray<number>) {
    this.array(values.length)
    for (const value of values) this.uint(value)
  }

  bytes(): Buffer {
    return this.buffer.subarray(0, this.length)
  }
}

/** The storage tier vLLM names for blocks in GPU memory. */
const medium = "GPU"

/** vLLM's layouts of a KV event (SIM_KV_EVENTS_FORMAT): see the module's comment for the versions. */
export type KvEventsFormat = "map" | "array" | "array-legacy"

export const kvEventsFormats: ReadonlyArray<KvEventsFormat> = ["map", "array", "array-legacy"]

const writeParent = (writer: Writer, parent: number | undefined) => parent === undefined ? writer.nil() : writer.uint(parent)

const writeMapEvent = (writer: Writer, event: KvEvent) => {
  switch (event._tag) {
    case "BlockStored":
      writer.map(11)
      writer.str("type")
      writer.str("BlockStored")
      writer.str("block_hashes")
      writer.uints(event.blockHashes)
      writer.str("parent_block_hash")
      writeParent(writer, event.parentBlockHash)
      writer.str("token_ids")
      writer.uints(event.tokenIds)
      writer.str("block_size")
      writer.uint(event.blockSize)
      writer.str("lora_id")
      writer.nil()
      writer.str("medium")
      writer.str(medium)
      writer.str("lora_name")
      writer.nil()
      // One entry per block (no multimodal input, adapter or salt here), as vLLM 0.26 sends them.
      writer.str("extra_keys")
      writer.array(event.blockHashes.length)
      for (let i = 0; i < event.blockHashes.length; i++) writer.nil()
      writer.str("group_idx")
      writer.uint(0)
      writer.str("kv_cache_spec_kind")
      writer.str("full_attention")
      break
    case "BlockRemoved":
      writer.map(4)
      writer.str("type")
      writer.str("BlockRemoved")
      writer.str("block_hashes")
      writer.uints(event.blockHashes)
      writer.str("medium")
      writer.str(medium)
      writer.str("group_idx")
      writer.uint(0)
      break
    case "AllBlocksCleared":
      writer.map(1)
      writer.str("type")
      writer.str("AllBlocksCleared")
      break
  }
}

const writeArrayEvent = (writer: Writer, event: KvEvent, withLoraName: boolean) => {
  switch (event._tag) {
    case "BlockStored":
      writer.array(withLoraName ? 8 : 7)
      writer.str("BlockStored")
      writer.uints(event.blockHashes)
      writeParent(writer, event.parentBlockHash)
      writer.uints(event.tokenIds)
      writer.uint(event.blockSize)
      writer.nil()
      writer.str(medium)
      if (withLoraName) writer.nil()
      break
    case "BlockRemoved":
      writer.array(3)
      writer.str("BlockRemoved")
      writer.uints(event.blockHashes)
      writer.str(medium)
      break
    case "AllBlocksCleared":
      writer.array(1)
      writer.str("AllBlocksCleared")
      break
  }
}

/** One KVEventBatch, as vLLM's msgspec encoder writes it in `format`. */
export const encodeKvEventBatch = (ts: number, events: ReadonlyArray<KvEvent>, format: KvEventsFormat = "map"): Buffer => {
  const writer = new Writer()
  const legacy = format === "array-legacy"
  writer.array(legacy ? 2 : 3)
  writer.float64(ts)
  writer.array(events.length)
  for (const event of events) {
    if (format === "map") writeMapEvent(writer, event)
    else writeArrayEvent(writer, event, !legacy)
  }
  // data_parallel_rank: vLLM's publisher sets its rank (0 without data parallelism).
  if (!legacy) writer.uint(0)
  return Buffer.from(writer.bytes())
}

/** The sequence-number frame: 8 bytes, big-endian. */
export const sequenceFrame = (sequence: number): Buffer => {
  const frame = Buffer.alloc(8)
  frame.writeBigUInt64BE(BigInt(sequence))
  return frame
}

/** Whether vLLM would bind this endpoint (else it connects). */
export const bindsEndpoint = (endpoint: string) =>
  endpoint.includes("*") || endpoint.includes("::") || endpoint.startsWith("ipc://") || endpoint.startsWith("inproc://")

export interface KvEventPublisher {
  /** Queues one batch (one engine step's events); never blocks, never throws. */
  readonly publish: (events: ReadonlyArray<KvEvent>) => void
  /** The endpoint as bound (a `*` port resolved) or connected. */
  readonly endpoint: string
  /** Batches published so far: the next batch's sequence number. */
  readonly published: () => number
}

export const KvEventPublisher = {
  /** A PUB socket on `endpoint`, closed with the scope; a bind or connect that fails is a defect naming the setting. */
  make: (endpoint: string, topic: string, format: KvEventsFormat = "map"): Effect.Effect<KvEventPublisher, never, Scope.Scope> =>
    Effect.acquireRelease(
      Effect.tryPromise({
        try: async () => {
          const { Publisher } = await import("zeromq")
          const socket = new Publisher({ linger: 0 })
          if (bindsEndpoint(endpoint)) await socket.bind(endpoint)
          else socket.connect(endpoint)
          return socket
        },
        catch: (error) => new Error(`SIM_KV_EVENTS_ENDPOINT=${endpoint}: cannot open a ZeroMQ PUB socket there: ${String(error)}`)
      }).pipe(Effect.orDie),
      (socket) => Effect.sync(() => socket.close())
    ).pipe(Effect.map((socket): KvEventPublisher => {
      const topicFrame = Buffer.from(topic)
      let sequence = 0
      // zeromq's send is one at a time: batches queue behind the one being sent (a PUB socket drops at its high-water mark, never waits for subscribers).
      const queue: Array<Array<Buffer>> = []
      let sending = false
      const pump = async () => {
        sending = true
        while (queue.length > 0) {
          const message = queue.shift()!
          try {
            await socket.send(message)
          } catch {
            // Closed: the rest is dropped, as a PUB socket would drop them.
            queue.length = 0
          }
        }
        sending = false
      }
      return {
        endpoint: socket.lastEndpoint ?? endpoint,
        published: () => sequence,
        publish: (events) => {
          if (events.length === 0 || socket.closed) return
          queue.push([topicFrame, sequenceFrame(sequence++), encodeKvEventBatch(Date.now() / 1000, events, format)])
          if (!sending) void pump()
        }
      }
    }))
}
