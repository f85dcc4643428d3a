/**
 * The simulated server's token ids, chained block hashes and reference-counted
 * LRU block cache: examples, and properties over random schedules of sequences
 * (start, compute, finish, reset) on small caches.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { type Block, BlockCache, type KvEvent } from "../src/router/simulated/BlockCache.ts"
import { countTokens } from "../src/router/simulated/Simulation.ts"
import { blockHash, blockHashes, blockSeed, promptBlockHashes, tokenId, tokenIds, tokensWithIds } from "../src/router/simulated/Tokens.ts"

describe("token ids and block hashes", () => {
  it("a token's id depends on its text only; the tokens are Simulation's", () => {
    const text = "Hello, big  world \n again"
    assert.deepStrictEqual(tokensWithIds(text).map((t) => t.text), ["Hello,", " big", "  world", " \n again".slice(0, 8)])
    assert.strictEqual(tokenIds(text).length, countTokens(text))
    assert.deepStrictEqual(tokenIds("a b a"), [tokenId("a"), tokenId(" b"), tokenId(" a")])
    assert.notStrictEqual(tokenId("a"), tokenId(" a"))
    for (const id of tokenIds(text)) assert.isTrue(Number.isInteger(id) && id >= 0 && id < 2 ** 31)
  })

  it("full blocks only, each chained from its parent and the model's seed", () => {
    const ids = [1, 2, 3, 4, 5, 6, 7]
    const seed = blockSeed("model-a")
    const hashes = blockHashes(seed, ids, 3)
    assert.strictEqual(hashes.length, 2)
    assert.strictEqual(hashes[0], blockHash(seed, ids, 0, 3))
    assert.strictEqual(hashes[1], blockHash(hashes[0], ids, 3, 6))
    // The same block after another parent, or under another model, is another key.
    assert.notStrictEqual(blockHash(seed, [4, 5, 6], 0, 3), hashes[1])
    assert.notStrictEqual(blockHashes(blockSeed("model-b"), ids, 3)[0], hashes[0])
    // A shared prefix gives shared keys, up to the first block that differs.
    const other = blockHashes(seed, [1, 2, 3, 4, 5, 9, 7], 3)
    assert.strictEqual(other[0], hashes[0])
    assert.notStrictEqual(other[1], hashes[1])
    for (const hash of hashes) assert.isTrue(Number.isSafeInteger(hash) && hash >= 0)
    assert.deepStrictEqual(promptBlockHashes("model-a", "a b c d", 2), blockHashes(seed, tokenIds("a b c d"), 2))
  })
})

describe("the block cache (examples)", () => {
  const hashesOf = (...ids: Array<number>) => blockHashes(7, ids, 1)

  it("a referenced block is never evicted; unreferenced ones go least recently used first, a sequence's tail before its prefix", () => {
    const events: Array<KvEvent> = []
    const cache = new BlockCache(4, 1, (event) => events.push(event))
    const a = hashesOf(1, 2)
    const blocksA = cache.reserve(a, 0, 2)!
    cache.store(blocksA, a, undefined, [1, 2], 0)
    cache.release(blocksA)
    // Released last block first: a[1] is older in the LRU than a[0].
    assert.deepStrictEqual(cache.evictionOrder(), [a[1], a[0]])
    const b = hashesOf(3, 4)
    const blocksB = cache.reserve(b, 0, 2)!
    assert.strictEqual(cache.allocatedBlocks, 4)
    // Full: one more block evicts a's tail, then a's head; b's blocks are referenced and stay.
    const c = cache.reserve([], 0, 1)!
    assert.deepStrictEqual(events.at(-1), { _tag: "BlockRemoved", blockHashes: [a[1]] })
    assert.isUndefined(cache.reserve([], 0, 2), "only one evictable block left")
    assert.strictEqual(cache.allocatedBlocks, 4)
    cache.release(c)
    cache.release(blocksB)
    assert.strictEqual(cache.usedBlocks, 0)
  })

  it("a hit re-references cached blocks and refreshes them in the LRU", () => {
    const cache = new BlockCache(3, 2)
    const ids = [1, 2, 3, 4]
    const hashes = blockHashes(7, ids, 2)
    const first = cache.reserve(hashes, 0, 2)!
    cache.store(first, hashes, undefined, ids, 0)
    cache.release(first)
    assert.strictEqual(cache.hits(hashes, 2), 2)
    assert.strictEqual(cache.hits(hashes, 1), 1, "at most max")
    const again = cache.reserve(hashes, 2, 1)!
    assert.strictEqual(again[0], first[0])
    assert.isTrue(cache.isReferenced(hashes[0]))
    assert.deepStrictEqual(cache.evictionOrder(), [])
    // A concurrent duplicate stays private: no second BlockStored for the same key.
    const events: Array<KvEvent> = []
    const dup = new BlockCache(4, 2, (event) => events.push(event))
    const x = dup.reserve(hashes, 0, 1)!
    const y = dup.reserve(hashes, 0, 1)!
    dup.store(x, hashes, undefined, ids, 0)
    dup.store(y, hashes, undefined, ids, 0)
    assert.strictEqual(events.length, 1)
    dup.release(y)
    assert.strictEqual(dup.allocatedBlocks, 1, "the private copy is freed on release")
  })

  it("reset forgets every cached block; blocks in use stay private until released", () => {
    const events: Array<KvEvent> = []
    const cache = new BlockCache(4, 1, (event) => events.push(event))
    const h = hashesOf(1, 2)
    const held = cache.reserve(h, 0, 2)!
    cache.store(held, h, undefined, [1, 2], 0)
    const spare = cache.reserve([], 0, 1)!
    cache.store(spare, [99], undefined, [9], 0)
    cache.release(spare)
    cache.reset()
    assert.deepStrictEqual(events.at(-1), { _tag: "AllBlocksCleared" })
    assert.strictEqual(cache.cachedHashes().size, 0)
    assert.strictEqual(cache.allocatedBlocks, 2)
    cache.release(held)
    assert.strictEqual(cache.allocatedBlocks, 0)
  })
})

const int = (minimum: number, maximum: number) => Schema.Int.check(Schema.isBetween({ minimum, maximum }))

const Op = Schema.Union([
  Schema.Struct({ op: Schema.Literal("start"), prompt: Schema.Array(int(0, 2)).check(Schema.isMaxLength(14)), output: int(0, 5) }),
  Schema.Struct({ op: Schema.Literal("compute"), which: int(0, 20) }),
  Schema.Struct({ op: Schema.Literal("finish"), which: int(0, 20) }),
  Schema.Struct({ op: Schema.Literal("reset") })
])
const Scenario = Schema.Struct({
  capacity: int(1, 10),
  blockSize: int(1, 3),
  ops: Schema.Array(Op).check(Schema.isMinLength(20), Schema.isMaxLength(60))
})

interface Live {
  readonly ids: ReadonlyArray<number>
  readonly hashes: ReadonlyArray<number>
  readonly hits: number
  readonly blocks: Array<Block>
  computed: boolean
}

describe("the block cache (properties)", () => {
  it.prop(
    "capacity never exceeded; referenced blocks never evicted; hits <= queries; each key removed at most once, only after stored; events replay to the cache",
    [Scenario],
    ([{ blockSize, capacity, ops }]) => {
      const events: Array<KvEvent> = []
      const cache = new BlockCache(capacity, blockSize, (event) => events.push(event))
      const live: Array<Live> = []
      const index = new Set<number>()
      let queries = 0
      let hitTokens = 0
      const replay = () => {
        for (const event of events.splice(0)) {
          if (event._tag === "BlockStored") {
            assert.strictEqual(event.tokenIds.length, event.blockHashes.length * blockSize)
            for (const hash of event.blockHashes) {
              assert.isFalse(index.has(hash), "stored once while cached")
              index.add(hash)
            }
          } else if (event._tag === "BlockRemoved") {
            for (const hash of event.blockHashes) {
              assert.isTrue(index.has(hash), "removed only after stored, at most once")
              index.delete(hash)
            }
          } else {
            index.clear()
          }
        }
      }
      for (const step of ops) {
        const orderBefore = cache.evictionOrder()
        const eventsBefore = events.length
        if (step.op === "start") {
          const hashes = blockHashes(5, step.prompt, blockSize)
          const total = Math.ceil((step.prompt.length + step.output) / blockSize)
          if (total > capacity) continue
          const hits = cache.hits(hashes, Math.floor(Math.max(0, step.prompt.length - 1) / blockSize))
          queries += step.prompt.length
          const blocks = cache.reserve(hashes, hits, total - hits)
          if (blocks === undefined) continue
          hitTokens += hits * blockSize
          live.push({ ids: step.prompt, hashes, hits, blocks, computed: false })
        } else if (step.op === "compute" && live.length > 0) {
          const sequence = live[step.which % live.length]
          if (sequence.computed) continue
          sequence.computed = true
          const fresh = sequence.hashes.length - sequence.hits
          cache.store(
            sequence.blocks.slice(sequence.hits, sequence.hits + fresh),
            sequence.hashes.slice(sequence.hits),
            sequence.hits === 0 ? undefined : sequence.hashes[sequence.hits - 1],
            sequence.ids,
            sequence.hits * blockSize
          )
        } else if (step.op === "finish" && live.length > 0) {
          const [sequence] = live.splice(step.which % live.length, 1)
          cache.release(sequence.blocks)
        } else if (step.op === "reset") {
          cache.reset()
        }
        // Evicted least recently used first: every block that was evictable ahead of an evicted one
        // was evicted too, or has been referenced since (a hit), so it is no longer evictable.
        const removed = events.slice(eventsBefore).flatMap((event) => event._tag === "BlockRemoved" ? event.blockHashes : [])
        if (removed.length > 0) {
          const last = Math.max(...removed.map((hash) => orderBefore.indexOf(hash)))
          const stillEvictable = new Set(cache.evictionOrder())
          for (const hash of orderBefore.slice(0, last + 1)) {
            assert.isFalse(stillEvictable.has(hash), "a block more recently used than the evicted one would be evicted first")
          }
          assert.deepStrictEqual(removed.filter((hash) => orderBefore.includes(hash)), orderBefore.filter((hash) => removed.includes(hash)), "in LRU order")
        }
        replay()
        assert.isAtMost(cache.allocatedBlocks, capacity)
        assert.isAtMost(hitTokens, queries)
        const cached = cache.cachedHashes()
        assert.deepStrictEqual(index, cached, "the events replayed give the cache's keys")
        let referenced = 0
        for (const sequence of live) {
          for (const block of sequence.blocks) {
            assert.isAtLeast(block.refs, 1)
            if (block.hash !== undefined) assert.isTrue(cached.has(block.hash), "a referenced block is never evicted")
          }
        }
        for (const block of new Set(live.flatMap((sequence) => sequence.blocks))) referenced += block.refs > 0 ? 1 : 0
        assert.strictEqual(cache.usedBlocks, referenced)
      }
      for (const sequence of live) cache.release(sequence.blocks)
      assert.strictEqual(cache.usedBlocks, 0)
    },
    { arbitrary: { runs: Number(process.env.PROPERTY_RUNS ?? 300) } }
  )
})
