/**
 * An upstream's KV events, as vLLM publishes them (`--kv-events-config`
 * with the zmq publisher; the simulator's SIM_KV_EVENTS_ENDPOINT): a ZeroMQ
 * PUB socket sending three-frame messages `[topic, seq, payload]`, `seq` an
 * 8-byte big-endian counter per publisher, `payload` a msgpack
 * `KVEventBatch`: `[ts, events, data_parallel_rank?]` (or the same as a map
 * with those keys), each event in either of vLLM's layouts:
 *
 * - named fields (vLLM 0.26 on): a map whose `type` is the tag,
 *   `{type: "BlockStored", block_hashes, ...}`, `{type: "BlockRemoved", block_hashes, ...}`,
 *   `{type: "AllBlocksCleared"}`;
 * - positional (vLLM up to 0.25, msgspec `array_like`, trailing defaults omitted):
 *   ["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id?, medium?, lora_name?]
 *   ["BlockRemoved", block_hashes, medium?]
 *   ["AllBlocksCleared"]
 *
 * Hashes are integers (64-bit ones decoded as bigint) or bytes; eventKey
 * gives the index's string either way. A malformed message is skipped and
 * counted, never thrown: one bad publisher must not stop the router.
 */
import { Decoder } from "@msgpack/msgpack"
import { Predicate } from "effect"
import { eventKey } from "./BlockKeys.ts"
import type { KvEvent, KvEventBatch } from "./PrefixIndex.ts"

const decoder = new Decoder({ useBigInt64: true })

/** The most hashes one message may name: one engine step's blocks are thousands (128k tokens are 8,192 blocks of 16). */
export const maxHashesPerMessage = 65_536

/** The keys of a list of hashes; undefined when it is not one (a hash that is neither an integer, a string nor bytes, or too many). */
const hashes = (value: unknown): ReadonlyArray<string> | undefined => {
  if (!Array.isArray(value) || value.length > maxHashesPerMessage) return undefined
  const keys: Array<string> = []
  for (const hash of value) {
    const key = eventKey(hash)
    if (key === undefined) return undefined
    keys.push(key)
  }
  return keys
}

/**
 * Larger messages are refused by ZeroMQ (it drops the connection, which then reconnects: a gap):
 * vLLM's batches are one engine step's events, its token ids included well under this. One of 15 MB
 * (3 million hashes) held the event loop for seconds in a review; with this bound, the hash-count
 * bound and `receiveHighWaterMark` (messages ZeroMQ holds while the router is behind, dropped beyond:
 * a gap), one publisher can hold at most ~1 GiB and ~100 ms of decoding per message.
 */
export const maxKvMessageBytes = 1024 * 1024

const decodeEvent = (raw: unknown): KvEvent | undefined => {
  // Positional: [tag, block_hashes, ...]; named: {type, block_hashes, ...}.
  const positional = Array.isArray(raw)
  if (!positional && !Predicate.isObject(raw)) return undefined
  const tag: unknown = positional ? raw[0] : (raw as Record<string, unknown>).type
  if (!Predicate.isString(tag)) return undefined
  switch (tag) {
    case "BlockStored":
    case "BlockRemoved": {
      const blockHashes = hashes(positional ? raw[1] : (raw as Record<string, unknown>).block_hashes)
      return blockHashes === undefined ? undefined : { type: tag, blockHashes }
    }
    case "AllBlocksCleared":
      return { type: "AllBlocksCleared" }
    default:
      return undefined
  }
}

/** One message's frames as a batch; undefined when they are not a KV event batch. */
export const decodeKvMessage = (frames: ReadonlyArray<Uint8Array>): KvEventBatch | undefined => {
  if (frames.length < 2) return undefined
  const seqFrame = frames.length >= 3 ? frames[1] : undefined
  const payload = frames[frames.length - 1]
  if (seqFrame === undefined || seqFrame.length !== 8) return undefined
  const seq = Number(Buffer.from(seqFrame.buffer, seqFrame.byteOffset, 8).readBigUInt64BE(0))
  let decoded: unknown
  try {
    decoded = decoder.decode(payload)
  } catch {
    return undefined
  }
  const rawEvents: unknown = Array.isArray(decoded) ? decoded[1] : Predicate.isObject(decoded) ? (decoded as Record<string, unknown>).events : undefined
  if (!Array.isArray(rawEvents)) return undefined
  const events: Array<KvEvent> = []
  let hashCount = 0
  for (const raw of rawEvents) {
    const event = decodeEvent(raw)
    if (event === undefined) return undefined
    if (event.type !== "AllBlocksCleared" && (hashCount += event.blockHashes.length) > maxHashesPerMessage) return undefined
    events.push(event)
  }
  return { seq, events }
}

export interface KvEventsHandler {
  batch(batch: KvEventBatch): void
  malformed(): void
}

/**
 * Subscribes to `endpoint` (every topic) until the returned function is
 * called. ZeroMQ reconnects by itself when the publisher goes and comes back
 * (its sequence then starts again: the index sees a gap). `zeromq`, a native
 * addon, is loaded only here: a router without KV events never loads it
 * (the production bundle keeps it outside).
 */
export const subscribeKvEvents = (endpoint: string, handler: KvEventsHandler, failed: (error: unknown) => void = () => {}): () => void => {
  let closed = false
  let socket: import("zeromq").Subscriber | undefined
  void (async () => {
    try {
      const { Subscriber } = await import("zeromq")
      if (closed) return
      socket = new Subscriber({ reconnectInterval: 100, reconnectMaxInterval: 2_000, receiveHighWaterMark: 1_000, maxMessageSize: maxKvMessageBytes })
      socket.connect(endpoint)
      socket.subscribe()
    } catch (error) {
      return failed(error)
    }
    try {
      for await (const frames of socket) {
        // Nothing one message holds may end the subscription: what cannot be read is counted and skipped.
        let batch: KvEventBatch | undefined
        try {
          batch = decodeKvMessage(frames)
        } catch {
          batch = undefined
        }
        if (batch === undefined) handler.malformed()
        else handler.batch(batch)
      }
    } catch {
      // Closed under the loop: the end.
    }
  })()
  return () => {
    if (closed) return
    closed = true
    socket?.close()
  }
}
