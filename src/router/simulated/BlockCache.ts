/**
 * The simulated server's KV cache: `capacity` blocks of `blockSize` tokens,
 * as vLLM's prefix caching keeps them.
 *
 * A sequence holds its blocks (a reference each) while it runs: the cached
 * blocks its prompt begins with, and fresh ones for the rest. A fresh block
 * that fills gets its chained key and becomes cached (BlockStored), unless a
 * block with that key is cached already (two sequences computed the same
 * prefix at once: the later copy stays private and is freed on release, so
 * the events never name one key twice). A released block stays cached while
 * unreferenced, and is evicted (BlockRemoved) least recently used first when
 * a fresh block is needed and no slot is empty. A sequence releases its blocks
 * last first, so a prompt's tail is evicted before its prefix, as in vLLM.
 */

import { LruCursor } from "./LruCursor.ts"

/** vLLM's KV cache events (vllm/distributed/kv_events.py), as the cache emits them. */
export type KvEvent =
  | {
    readonly _tag: "BlockStored"
    /** Consecutive blocks, each the parent of the next. */
    readonly blockHashes: ReadonlyArray<number>
    /** The parent of the first block; undefined for a prompt's first block. */
    readonly parentBlockHash: number | undefined
    /** The blocks' token ids, blockSize per block. */
    readonly tokenIds: ReadonlyArray<number>
    readonly blockSize: number
  }
  | { readonly _tag: "BlockRemoved"; readonly blockHashes: ReadonlyArray<number> }
  | { readonly _tag: "AllBlocksCleared" }

/** One block of the cache, held by `refs` sequences; `hash` is set while it is cached. */
export interface Block {
  hash: number | undefined
  refs: number
}

export class BlockCache {
  /** Cached blocks by key, referenced or not. */
  private readonly cached = new Map<number, Block>()
  /** The unreferenced cached blocks, least recently used first (a Map keeps insertion order). */
  private readonly evictable = new Map<number, Block>()
  /** Finds the least recently used of `evictable` (LruCursor.ts says why not `keys().next()`). */
  private readonly lru = new LruCursor(this.evictable)
  /** Blocks holding data: referenced, or cached and evictable. Never more than `capacity`. */
  private allocated = 0

  readonly capacity: number
  readonly blockSize: number
  /** Undefined: nobody listens, no event is built. */
  private readonly publish: ((event: KvEvent) => void) | undefined

  constructor(capacity: number, blockSize: number, publish?: (event: KvEvent) => void) {
    this.capacity = capacity
    this.blockSize = blockSize
    this.publish = publish
  }

  /** An unreferenced cached block joins the eviction order, as its most recently used. */
  private setEvictable(hash: number, block: Block): void {
    this.evictable.set(hash, block)
    this.lru.changed()
  }

  /** How many of `hashes`' leading blocks are cached, at most `max`. */
  hits(hashes: ReadonlyArray<number>, max: number): number {
    const limit = Math.min(max, hashes.length)
    let count = 0
    while (count < limit && this.cached.has(hashes[count])) count++
    return count
  }

  /** Blocks a reservation of fresh blocks could have now (empty slots and evictable blocks), not counting `hits` of `hashes`. */
  private available(hashes: ReadonlyArray<number>, hits: number): number {
    let pinned = 0
    for (let i = 0; i < hits; i++) if (this.cached.get(hashes[i])!.refs === 0) pinned++
    return this.capacity - this.allocated + this.evictable.size - pinned
  }

  /**
   * References the first `hits` cached blocks of `hashes` and `fresh` new
   * blocks, evicting as needed; undefined (and nothing changed) when they
   * don't fit. `hits` must be at most `this.hits(hashes, …)`.
   */
  reserve(hashes: ReadonlyArray<number>, hits: number, fresh: number): Array<Block> | undefined {
    if (fresh > this.available(hashes, hits)) return undefined
    const blocks: Array<Block> = []
    for (let i = 0; i < hits; i++) {
      const block = this.cached.get(hashes[i])!
      if (block.refs === 0) {
        this.evictable.delete(block.hash!)
        this.lru.changed()
      }
      block.refs++
      blocks.push(block)
    }
    let removed: Array<number> | undefined
    for (let i = 0; i < fresh; i++) {
      if (this.allocated < this.capacity) {
        this.allocated++
      } else {
        // The least recently used unreferenced block makes room (available() counted it).
        const hash = this.lru.oldest()
        this.evictable.delete(hash)
        this.cached.delete(hash)
        ;(removed ??= []).push(hash)
      }
      blocks.push({ hash: undefined, refs: 1 })
    }
    if (removed !== undefined) this.publish?.({ _tag: "BlockRemoved", blockHashes: removed })
    return blocks
  }

  /** `reserve(hashes, 0, 1)`'s block (one a sequence's next tokens need), without its array. */
  freshBlock(): Block | undefined {
    if (this.allocated < this.capacity) {
      this.allocated++
    } else {
      if (this.evictable.size === 0) return undefined
      // The least recently used unreferenced block makes room.
      const hash = this.lru.oldest()
      this.evictable.delete(hash)
      this.cached.delete(hash)
      this.publish?.({ _tag: "BlockRemoved", blockHashes: [hash] })
    }
    return { hash: undefined, refs: 1 }
  }

  /**
   * `blocks[i]` (fresh, now full) gets the key `hashes[i]`; `parent` is the
   * first one's parent key (undefined for a prompt's first block), `tokenIds`
   * the blocks' ids from `idsFrom`, blockSize each. Published as BlockStored,
   * one event per run of consecutive newly cached blocks.
   */
  store(
    blocks: ReadonlyArray<Block>,
    hashes: ReadonlyArray<number>,
    parent: number | undefined,
    tokenIds: ArrayLike<number>,
    idsFrom: number
  ): void {
    let run: Array<number> = []
    let runParent = parent
    let runFrom = idsFrom
    const flush = (next: number) => {
      if (run.length > 0 && this.publish !== undefined) {
        this.publish({
          _tag: "BlockStored",
          blockHashes: run,
          parentBlockHash: runParent,
          tokenIds: Array.prototype.slice.call(tokenIds, runFrom, runFrom + run.length * this.blockSize) as Array<number>,
          blockSize: this.blockSize
        })
        run = []
      }
      runFrom = next
    }
    for (let i = 0; i < blocks.length; i++) {
      const block = blocks[i]
      const hash = hashes[i]
      if (this.cached.has(hash)) {
        // Computed twice at once: this copy stays private.
        flush(idsFrom + (i + 1) * this.blockSize)
        runParent = hash
        continue
      }
      if (run.length === 0) runFrom = idsFrom + i * this.blockSize
      block.hash = hash
      this.cached.set(hash, block)
      run.push(hash)
      if (block.refs === 0) this.setEvictable(hash, block)
    }
    flush(0)
  }

  /**
   * `store` for one block (a generated token filled it): the same, without the arrays and the
   * closure, as it runs once per block of every sequence's output.
   */
  storeBlock(block: Block, hash: number, parent: number | undefined, tokenIds: ArrayLike<number>, idsFrom: number): void {
    // Computed twice at once: this copy stays private.
    if (this.cached.has(hash)) return
    block.hash = hash
    this.cached.set(hash, block)
    if (block.refs === 0) this.setEvictable(hash, block)
    this.publish?.({
      _tag: "BlockStored",
      blockHashes: [hash],
      parentBlockHash: parent,
      tokenIds: Array.prototype.slice.call(tokenIds, idsFrom, idsFrom + this.blockSize) as Array<number>,
      blockSize: this.blockSize
    })
  }

  /** Drops a sequence's references, its last block first. */
  release(blocks: ReadonlyArray<Block>): void {
    for (let i = blocks.length - 1; i >= 0; i--) {
      const block = blocks[i]
      if (--block.refs > 0) continue
      if (block.hash !== undefined && this.cached.get(block.hash) === block) this.setEvictable(block.hash, block)
      else this.allocated--
    }
  }

  /** Forgets every cached block (vLLM's reset_prefix_cache): blocks in use stay, private, until released. */
  reset(): void {
    for (const block of this.cached.values()) {
      if (block.refs === 0) this.allocated--
      block.hash = undefined
    }
    this.cached.clear()
    this.evictable.clear()
    this.lru.reset()
    this.publish?.({ _tag: "AllBlocksCleared" })
  }

  /** Blocks referenced by running sequences. */
  get usedBlocks(): number {
    return this.allocated - this.evictable.size
  }

  /** Blocks holding data (referenced or cached); at most `capacity`. */
  get allocatedBlocks(): number {
    return this.allocated
  }

  /** The keys of the cached blocks. */
  cachedHashes(): Set<number> {
    return new Set(this.cached.keys())
  }

  /** The keys of the unreferenced cached blocks, next to be evicted first. */
  evictionOrder(): Array<number> {
    return [...this.evictable.keys()]
  }

  /** Whether a cached block with this key is referenced (for tests). */
  isReferenced(hash: number): boolean {
    return (this.cached.get(hash)?.refs ?? 0) > 0
  }
}
