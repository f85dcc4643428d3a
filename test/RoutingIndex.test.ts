/**
 * The prefix index: approximate entries (decisions, LRU by capacity, aged),
 * precise entries (KV events), sequence gaps and their healing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { blockKeysOf, characterIds, eventKey, simulatorTokenIds, tokenIdsOf, tokenIdsOfParts } from "../src/router/routing/BlockKeys.ts"
import { type KvEvent, minPreciseBound, PrefixIndex } from "../src/router/routing/PrefixIndex.ts"
import { type Block, BlockCache, type KvEvent as SimulatorEvent } from "../src/router/simulated/BlockCache.ts"
import { blockHashes, blockSeed, promptBlockHashes } from "../src/router/simulated/Tokens.ts"

const settings = { defaultCapacity: 100, ttlMs: 1_000, pendingTtlMs: 50 }
const keys = (...names: Array<string>) => names

describe("block keys", () => {
  it("are chained: prompts share their first n keys exactly when they share n full blocks", () => {
    const a = blockKeysOf("m", characterIds("abcdefgh" + "ijklmnop" + "qrstuvwx"), 8)
    const b = blockKeysOf("m", characterIds("abcdefgh" + "ijklmnop" + "QRSTUVWX"), 8)
    const c = blockKeysOf("m", characterIds("Abcdefgh" + "ijklmnop" + "qrstuvwx"), 8)
    assert.strictEqual(a.length, 3)
    assert.deepStrictEqual(a.slice(0, 2), b.slice(0, 2))
    assert.notStrictEqual(a[2], b[2])
    // Same second block after a different first: a different key (the chain).
    assert.notStrictEqual(a[1], c[1])
  })

  it.prop(
    "token ids are the simulator's, for any text (blanks of every kind included)",
    [Schema.Array(Schema.Literals(["a", "bc", " ", "\t", "\n", "\u00a0", "\u2028", "\u3000", "é", "😀", "  "])).check(Schema.isMaxLength(60))],
    ([parts]) => {
      const text = parts.join("")
      assert.deepStrictEqual(Array.from(tokenIdsOf(text)), Array.from(simulatorTokenIds(text)))
      // Read as messages (cut anywhere), the same ids as their newline-joined text.
      const cut = Math.floor(parts.length / 2)
      const messages = [parts.slice(0, cut).join(""), parts.slice(cut).join(""), ""]
      assert.deepStrictEqual(Array.from(tokenIdsOfParts(messages)), Array.from(simulatorTokenIds(messages.join("\n"))))
    }
  )

  it("are the simulator's keys for its tokens", () => {
    const text = Array.from({ length: 40 }, (_, i) => `word${i % 7}`).join(" ")
    assert.deepStrictEqual(blockKeysOf("llama", tokenIdsOf(text), 4), promptBlockHashes("llama", text, 4).map(String))
  })

  it("ignore a partial last block and depend on the model", () => {
    assert.strictEqual(blockKeysOf("m", characterIds("abcdefghijk"), 8).length, 1)
    assert.notDeepEqual(blockKeysOf("m", characterIds("abcdefgh"), 8), blockKeysOf("n", characterIds("abcdefgh"), 8))
  })
})

describe("approximate entries", () => {
  it("count the cached prefix from the first block, stopping at the first miss", () => {
    const index = new PrefixIndex(settings)
    index.recordDecision("u", keys("a", "b", "c"), 0)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b", "c", "d"), 0), 3)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "x", "c"), 0), 1)
    assert.strictEqual(index.cachedPrefix("u", keys("x", "b", "c"), 0), 0)
    assert.strictEqual(index.cachedPrefix("other", keys("a"), 0), 0)
  })

  it("are forgotten after ttlMs untouched; a touch renews them", () => {
    const index = new PrefixIndex(settings)
    index.recordDecision("u", keys("a", "b"), 0)
    index.recordDecision("u", keys("a"), 600)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 1_000), 2)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 1_001), 1)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 1_601), 0)
  })

  it("say which keys are news (worth sharing): unknown ones, or known for more than a quarter of their life", () => {
    const index = new PrefixIndex(settings)
    assert.deepStrictEqual(index.recordDecision("u", keys("a", "b"), 0), ["a", "b"])
    assert.deepStrictEqual(index.recordDecision("u", keys("a", "b", "c"), 100), ["c"])
    assert.deepStrictEqual(index.recordDecision("u", keys("a"), 351), ["a"])
    index.applyBatch("v", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["x"] }] }, 0)
    assert.deepStrictEqual(index.confirm("v", keys("x", "y"), 0), ["y"])
    assert.deepStrictEqual(index.confirm("v", keys("x", "y"), 0), [])
    // A decision's stand-in (50 ms with events) confirmed: news (its lifetime is the full one now).
    index.recordDecision("v", keys("z"), 0)
    assert.deepStrictEqual(index.confirm("v", keys("z"), 10), ["z"])
    assert.strictEqual(index.cachedPrefix("v", keys("z"), 900), 1)
  })

  it("are freed by a sweep once their time is up", () => {
    const index = new PrefixIndex(settings)
    index.recordDecision("u", keys("a", "b"), 0)
    index.recordDecision("u", keys("c"), 500)
    index.sweep(1_000)
    assert.strictEqual(index.size("u"), 3)
    index.sweep(1_001)
    assert.strictEqual(index.size("u"), 1)
    assert.deepStrictEqual([...index.keys("u", 1_001)], ["c"])
  })

  it("hold at most the upstream's capacity, least recently touched out first", () => {
    const index = new PrefixIndex(settings)
    index.setCapacity("u", 3)
    index.recordDecision("u", keys("a", "b", "c"), 0)
    // Touched again after ttl/64 (15.6 ms here): most recent now.
    index.recordDecision("u", keys("a"), 20)
    index.recordDecision("u", keys("d"), 40)
    assert.deepStrictEqual([...index.keys("u", 40)].sort(), ["a", "c", "d"])
    index.setCapacity("u", 1)
    assert.deepStrictEqual([...index.keys("u", 40)], ["d"])
  })

  it("keep the place of an entry touched again within ttl/64 of its last move, its lifetime renewed", () => {
    const index = new PrefixIndex(settings)
    index.setCapacity("u", 3)
    index.recordDecision("u", keys("a", "b", "c"), 0)
    index.recordDecision("u", keys("a"), 10)
    index.recordDecision("u", keys("d"), 12)
    // "a" was not moved: it went first.
    assert.deepStrictEqual([...index.keys("u", 12)].sort(), ["b", "c", "d"])
    const renewed = new PrefixIndex(settings)
    renewed.recordDecision("u", keys("a", "b"), 0)
    renewed.recordDecision("u", keys("a"), 10)
    assert.deepStrictEqual([...renewed.keys("u", 1_005)], ["a"])
  })
})

describe("precise entries (KV events)", () => {
  it("follow BlockStored, BlockRemoved and AllBlocksCleared exactly", () => {
    const index = new PrefixIndex(settings)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["a", "b", "c"] }] }, 0)
    index.applyBatch("u", { seq: 1, events: [{ type: "BlockRemoved", blockHashes: ["c"] }] }, 0)
    assert.isTrue(index.isPrecise("u"))
    // Precise entries do not age.
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b", "c"), 1e9), 2)
    index.applyBatch("u", { seq: 2, events: [{ type: "AllBlocksCleared" }] }, 0)
    assert.strictEqual(index.cachedPrefix("u", keys("a"), 0), 0)
  })

  it("hold no more blocks than the server can (its capacity, or minPreciseBound until known): the oldest go", () => {
    const index = new PrefixIndex(settings)
    const stored = (from: number, count: number) => Array.from({ length: count }, (_, i) => `h${from + i}`)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: stored(0, minPreciseBound + 10) }] }, 0)
    assert.strictEqual(index.size("u"), minPreciseBound)
    assert.strictEqual(index.cachedPrefix("u", ["h0"], 0), 0, "the oldest went")
    assert.strictEqual(index.cachedPrefix("u", [`h${minPreciseBound + 9}`], 0), 1)
    index.setCapacity("u", minPreciseBound * 2)
    index.applyBatch("u", { seq: 1, events: [{ type: "BlockStored", blockHashes: stored(minPreciseBound + 10, minPreciseBound) }] }, 0)
    assert.strictEqual(index.size("u"), minPreciseBound * 2)
  })

  it("let a decision stand in for its events for pendingTtlMs only", () => {
    const index = new PrefixIndex(settings)
    // Its events name the router's keys (a simulated server): a decided block comes back stored.
    index.recordDecision("u", keys("m"), 0)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["m"] }] }, 0)
    assert.isTrue(index.matchesEvents("u"))
    index.recordDecision("u", keys("a", "b"), 0)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 50), 2)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 51), 0)
    // Confirmed by an event: exact from then on.
    index.recordDecision("u", keys("a", "b"), 100)
    index.applyBatch("u", { seq: 1, events: [{ type: "BlockStored", blockHashes: ["a"] }] }, 100)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 10_000), 1)
  })

  it("keep the lifetime of entries made before the upstream's events were followed", () => {
    const index = new PrefixIndex(settings)
    index.recordDecision("u", keys("a"), 0)
    index.applyBatch("u", { seq: 0, events: [] }, 10)
    assert.strictEqual(index.cachedPrefix("u", keys("a"), 900), 1)
  })

  it("take an answered prompt's blocks as stored, even when their events were missed", () => {
    const index = new PrefixIndex(settings)
    index.applyBatch("u", { seq: 3, events: [] }, 0)
    index.confirm("u", keys("a", "b"), 0)
    // For the full lifetime (1,000 ms here), not the 50 ms of a decision's stand-in.
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 900), 2)
    index.applyBatch("u", { seq: 4, events: [{ type: "BlockRemoved", blockHashes: ["b"] }] }, 0)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 900), 1)
  })

  it("with KV events in hashes of the server's own (a real vLLM), confirmed prompts stay within the capacity and age out", () => {
    const index = new PrefixIndex(settings)
    index.setCapacity("u", 50)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["vllm-1", "vllm-2"] }] }, 0)
    for (let i = 0; i < 500; i++) index.confirm("u", keys(`p${i}-0`, `p${i}-1`), i)
    // The capacity's 50 of the router's keys, and the server's own 2.
    assert.isAtMost(index.size("u"), 52)
    assert.strictEqual(index.cachedPrefix("u", keys("p499-0", "p499-1"), 500), 2)
    // An old prompt went (least recently used first); the last one ages out.
    assert.strictEqual(index.cachedPrefix("u", keys("p0-0", "p0-1"), 500), 0)
    assert.strictEqual(index.cachedPrefix("u", keys("p499-0", "p499-1"), 1_600), 0)
    // The server's own events still count, exactly.
    assert.strictEqual(index.cachedPrefix("u", keys("vllm-1", "vllm-2"), 1_600), 2)
    // Its events filling the capacity leave the router's keys their room.
    index.applyBatch("u", { seq: 1, events: [{ type: "BlockStored", blockHashes: Array.from({ length: 50 }, (_, i) => `vllm-x${i}`) }] }, 1_600)
    index.confirm("u", keys("q-0", "q-1"), 1_600)
    assert.strictEqual(index.cachedPrefix("u", keys("q-0", "q-1"), 1_600), 2)
  })

  it("detect a sequence gap: what was believed ages out, later events are exact again", () => {
    const index = new PrefixIndex(settings)
    index.recordDecision("u", keys("a", "b"), 0)
    assert.strictEqual(index.applyBatch("u", { seq: 5, events: [{ type: "BlockStored", blockHashes: ["a", "b"] }] }, 0), "applied")
    assert.strictEqual(index.applyBatch("u", { seq: 5, events: [{ type: "BlockRemoved", blockHashes: ["a"] }] }, 0), "duplicate")
    assert.strictEqual(index.cachedPrefix("u", keys("a"), 0), 1)
    // 6 and 7 lost: "b" may have been removed meanwhile.
    assert.strictEqual(index.applyBatch("u", { seq: 8, events: [{ type: "BlockStored", blockHashes: ["c"] }] }, 100), "gap")
    assert.strictEqual(index.gapCount("u"), 1)
    assert.strictEqual(index.cachedPrefix("u", keys("a", "b"), 100), 2)
    // The demoted entries are approximate now: gone after the pending ttl; "c" is exact.
    assert.strictEqual(index.cachedPrefix("u", keys("a"), 151), 0)
    assert.strictEqual(index.cachedPrefix("u", keys("c"), 10_000), 1)
    // A removal still removes a demoted entry.
    index.applyBatch("u", { seq: 9, events: [{ type: "BlockRemoved", blockHashes: ["b"] }] }, 100)
    assert.isFalse(index.keys("u", 100).has("b"))
  })

  it("treat a publisher restart (sequence back to 0) as a gap, not a duplicate", () => {
    const index = new PrefixIndex(settings)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["a"] }] }, 0)
    index.applyBatch("u", { seq: 1, events: [] }, 0)
    assert.strictEqual(index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["z"] }] }, 0), "restart")
    assert.isTrue(index.keys("u", 0).has("z"))
    assert.isFalse(index.keys("u", 0).has("a"), "what the publisher held before its restart is gone")
    assert.strictEqual(index.gapCount("u"), 1)
  })

  it("treat any sequence number below the last as a restart, its first batch missed or not", () => {
    const index = new PrefixIndex(settings)
    index.applyBatch("u", { seq: 10, events: [{ type: "BlockStored", blockHashes: ["a"] }] }, 0)
    // Restarted; its batch 0 was lost: 5 and on are new events, not replays of the old 5.
    assert.strictEqual(index.applyBatch("u", { seq: 5, events: [{ type: "BlockStored", blockHashes: ["x"] }] }, 0), "restart")
    assert.strictEqual(index.applyBatch("u", { seq: 6, events: [{ type: "BlockStored", blockHashes: ["y"] }] }, 0), "applied")
    assert.deepStrictEqual([...index.keys("u", 0)].sort(), ["x", "y"])
    // The same number again is still a duplicate.
    assert.strictEqual(index.applyBatch("u", { seq: 6, events: [{ type: "BlockRemoved", blockHashes: ["y"] }] }, 0), "duplicate")
  })

  it("with events in a server's own hashes (a real vLLM), a decision lives its full lifetime: no hole before the answer", () => {
    const index = new PrefixIndex({ defaultCapacity: 1_000, ttlMs: 10 * 60_000, pendingTtlMs: 2_000 })
    const prompt = Array.from({ length: 100 }, (_, i) => `k${i}`)
    index.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["vllm-1"] }] }, 0)
    index.recordDecision("u", prompt, 0)
    assert.isFalse(index.matchesEvents("u"))
    assert.strictEqual(index.cachedPrefix("u", prompt, 2_500), 100)
    // Once its events name a router key, they are trusted: decisions stand in for them briefly.
    index.applyBatch("u", { seq: 1, events: [{ type: "BlockStored", blockHashes: ["k0"] }] }, 2_500)
    assert.isTrue(index.matchesEvents("u"))
    index.recordDecision("u", ["n0"], 3_000)
    assert.strictEqual(index.cachedPrefix("u", ["n0"], 5_001), 0)
  })

  it("a gap never evicts the router's own entries: foreign hashes are dropped, the router's demoted at the old end", () => {
    const prompt = Array.from({ length: 100 }, (_, i) => `k${i}`)
    // A real vLLM's hashes: dropped at a gap.
    const foreign = new PrefixIndex({ ...settings, defaultCapacity: 100 })
    foreign.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: Array.from({ length: 80 }, (_, i) => `vllm-${i}`) }] }, 0)
    foreign.confirm("u", prompt, 0)
    assert.strictEqual(foreign.applyBatch("u", { seq: 2, events: [] }, 10), "gap")
    assert.strictEqual(foreign.cachedPrefix("u", prompt, 10), 100)
    assert.strictEqual(foreign.size("u"), 100)
    // The router's keys (a simulated server): demoted, and the first to go when the capacity is reached.
    const matched = new PrefixIndex({ ...settings, defaultCapacity: 100 })
    matched.recordDecision("u", ["s0", "s1"], 0)
    matched.applyBatch("u", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["s0", "s1"] }] }, 0)
    matched.confirm("u", prompt, 0)
    assert.strictEqual(matched.applyBatch("u", { seq: 2, events: [] }, 10), "gap")
    assert.strictEqual(matched.cachedPrefix("u", prompt, 10), 100)
    assert.strictEqual(matched.cachedPrefix("u", ["s0", "s1"], 10), 0, "the demoted entries made room")
  })

  it("entries read back from the shared state live from when they were recorded; with events, briefly", () => {
    const index = new PrefixIndex(settings)
    // Recorded long ago (expiring at 100, 600, -5): the expired one is not brought back.
    index.recover("u", keys("a", "b", "c"), [100, 600, -5], 0)
    assert.deepStrictEqual([...index.keys("u", 0)].sort(), ["a", "b"])
    assert.deepStrictEqual([...index.keys("u", 101)], ["b"])
    // An entry that lives longer already keeps its lifetime.
    index.recordDecision("u", keys("b"), 0)
    index.recover("u", keys("b"), [10], 0)
    assert.strictEqual(index.cachedPrefix("u", keys("b"), 900), 1)
    // With events naming the router's keys: a stand-in for pendingTtlMs at most (this replica's events say what is there).
    const precise = new PrefixIndex(settings)
    precise.recordDecision("v", keys("m"), 0)
    precise.applyBatch("v", { seq: 0, events: [{ type: "BlockStored", blockHashes: ["m"] }] }, 0)
    precise.recover("v", keys("x"), [1_000], 0)
    assert.strictEqual(precise.cachedPrefix("v", keys("x"), 50), 1)
    assert.strictEqual(precise.cachedPrefix("v", keys("x"), 51), 0)
  })

  // A reference LRU block cache emitting events as vLLM does; replaying its events (without gaps)
  // must reproduce its contents exactly, whatever the order of stores, hits and evictions.
  const Operation = Schema.Struct({ prompt: Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 5 }))).check(Schema.isMaxLength(6)) })
  it.prop("replayed in order, the events reproduce a reference cache's contents", [Schema.Array(Operation).check(Schema.isMaxLength(40))], ([operations]) => {
    const capacity = 6
    const cache = new Map<string, true>()
    const index = new PrefixIndex(settings)
    let seq = 0
    for (const { prompt } of operations) {
      const blockKeys = prompt.map((_, i) => prompt.slice(0, i + 1).join("."))
      const events: Array<KvEvent> = []
      for (const key of blockKeys) {
        if (cache.has(key)) {
          cache.delete(key)
          cache.set(key, true)
          continue
        }
        if (cache.size >= capacity) {
          const oldest = cache.keys().next().value!
          cache.delete(oldest)
          events.push({ type: "BlockRemoved", blockHashes: [oldest] })
        }
        cache.set(key, true)
        events.push({ type: "BlockStored", blockHashes: [key] })
      }
      if (prompt.length === 5) {
        cache.clear()
        events.push({ type: "AllBlocksCleared" })
      }
      index.applyBatch("u", { seq: seq++, events }, 0)
      assert.deepStrictEqual([...index.keys("u", 1e12)].sort(), [...cache.keys()].sort())
    }
  })
})

/** The simulator's cache and its events, as the index receives them (one batch per operation, numbered). */
const asIndexEvent = (event: SimulatorEvent): KvEvent =>
  event._tag === "AllBlocksCleared" ? { type: "AllBlocksCleared" } : { type: event._tag, blockHashes: event.blockHashes.map((hash) => eventKey(hash)!) }

const SimOperation = Schema.Struct({
  /** Which of a few prompts (sharing prefixes) arrives; -1 resets the cache. */
  prompt: Schema.Int.check(Schema.isBetween({ minimum: -1, maximum: 7 })),
  /** How many blocks of it. */
  blocks: Schema.Int.check(Schema.isBetween({ minimum: 1, maximum: 6 })),
  /** Released at once (else it stays running until the next operations release it). */
  releaseNow: Schema.Boolean,
  /** This batch of events is lost on the way (a gap). */
  lost: Schema.Boolean
})

describe("the index against the simulator's true cache", () => {
  const blockSize = 2
  const seed = blockSeed("m")
  // Prompts share prefixes: prompt p is the family (p % 3) prefix followed by its own tail.
  const promptIds = (p: number, blocks: number) =>
    Array.from({ length: blocks * blockSize }, (_, i) => (i < 4 ? 100 + (p % 3) : 200 + p * 10 + i))

  const run = (operations: ReadonlyArray<typeof SimOperation.Type>, withLosses: boolean) => {
    const batch: Array<KvEvent> = []
    const cache = new BlockCache(8, blockSize, (event) => batch.push(asIndexEvent(event)))
    const index = new PrefixIndex({ defaultCapacity: 8, ttlMs: 1_000, pendingTtlMs: 10 })
    const running: Array<Array<Block>> = []
    let seq = 0
    let now = 0
    let lostSince = false
    const storedSinceLoss = new Set<string>()
    for (const operation of operations) {
      now += 100
      if (operation.prompt === -1) {
        cache.reset()
      } else {
        const ids = promptIds(operation.prompt, operation.blocks)
        const hashes = blockHashes(seed, ids, blockSize)
        const hits = cache.hits(hashes, hashes.length)
        const blocks = cache.reserve(hashes, hits, hashes.length - hits)
        if (blocks !== undefined) {
          cache.store(blocks.slice(hits), hashes.slice(hits), hits === 0 ? undefined : hashes[hits - 1], ids, hits * blockSize)
          if (operation.releaseNow) cache.release(blocks)
          else running.push(blocks)
        } else {
          for (const held of running.splice(0)) cache.release(held)
        }
      }
      const events = batch.splice(0)
      const number = seq++
      if (withLosses && operation.lost) {
        lostSince = true
        storedSinceLoss.clear()
        continue
      }
      index.applyBatch("u", { seq: number, events }, now)
      for (const event of events) {
        if (event.type === "BlockStored") for (const key of event.blockHashes) storedSinceLoss.add(key)
        if (event.type === "BlockRemoved") for (const key of event.blockHashes) storedSinceLoss.delete(key)
        if (event.type === "AllBlocksCleared") storedSinceLoss.clear()
      }
      const truth = new Set([...cache.cachedHashes()].map(String))
      const believed = index.keys("u", now + 11)
      if (!withLosses || !lostSince) {
        assert.deepStrictEqual([...believed].sort(), [...truth].sort())
        // And the prefix it reports is the simulator's, for every prompt.
        for (let p = 0; p < 8; p++) {
          const hashes = blockHashes(seed, promptIds(p, 6), blockSize)
          assert.strictEqual(index.cachedPrefix("u", hashes.map(String), now), cache.hits(hashes, hashes.length))
        }
      } else {
        // After a loss, once the demoted entries aged: nothing believed that isn't cached, and
        // every block stored since the loss (still cached) is known.
        for (const key of believed) assert.isTrue(truth.has(key), `believed ${key} not cached`)
        for (const key of storedSinceLoss) if (truth.has(key)) assert.isTrue(believed.has(key))
      }
    }
  }

  it.prop("replaying its events, the index holds exactly the cached blocks and reports its hits", [Schema.Array(SimOperation).check(Schema.isMaxLength(40))], ([operations]) => run(operations, false))

  it.prop("with batches lost, it never believes an uncached block once the demoted entries aged, and knows every block stored since", [Schema.Array(SimOperation).check(Schema.isMaxLength(40))], ([operations]) => run(operations, true))
})
