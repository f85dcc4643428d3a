/**
 * Token ids for the simulated model, and the chained block hashes of vLLM's
 * prefix caching, pure and deterministic.
 *
 * A token (by Simulation.ts's rule: a run of non-blanks with the blanks before
 * it, a long run cut in pieces, each character of a script without blanks its own) has the id FNV-1a(text) with the top bit cleared: the same text, the same
 * id, on every server and across restarts, so a router can hash a prompt the
 * way the model server does without asking it.
 *
 * A full block of `blockSize` token ids has a 53-bit key chained from its
 * parent's key (the block before it) and its own ids; the first block's parent
 * is the seed (the model's name, hashed), as vLLM seeds its first block with
 * NONE_HASH. 53 bits: exact as a JavaScript number, in JSON and as msgpack's
 * uint64. A partial block has no key (it is never shared).
 */
import { LruCursor } from "./LruCursor.ts"
import { hash32, tokenEnd } from "./Simulation.ts"

/** One token's id: FNV-1a of its text, in 31 bits (vocabulary ids are non-negative int32 in vLLM). */
export const tokenId = (token: string): number => hash32(token) & 0x7fffffff

/**
 * The id of the token `prefix + text.slice(from, to)` (tokenId of it), without building either
 * string: the engine keys every generated token (FNV-1a reads the characters in order).
 */
export const tokenIdAt = (text: string, from: number, to: number, prefix: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < prefix.length; i++) {
    h ^= prefix.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  for (let i = from; i < to; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h & 0x7fffffff
}

/**
 * Calls `each(id, start, end)` for every token of `text` (the tokenization rule
 * of Simulation.ts), hashing as it scans: no token strings are built.
 */
const scanTokens = (text: string, each: (id: number, start: number, end: number) => void): void => {
  const length = text.length
  let at = 0
  while (at < length) {
    const i = tokenEnd(text, at)
    if (i === at) return
    let h = 0x811c9dc5
    for (let j = at; j < i; j++) {
      h ^= text.charCodeAt(j)
      h = Math.imul(h, 0x01000193)
    }
    each((h >>> 0) & 0x7fffffff, at, i)
    at = i
  }
}

/** The ids of `text`'s tokens, in order. */
export const tokenIds = (text: string): Array<number> => {
  const ids: Array<number> = []
  scanTokens(text, (id) => ids.push(id))
  return ids
}

/** The tokens of `text`, each with its id (for /tokenize, which also teaches /detokenize the ids). */
export const tokensWithIds = (text: string): Array<{ readonly id: number; readonly text: string }> => {
  const tokens: Array<{ id: number; text: string }> = []
  scanTokens(text, (id, start, end) => tokens.push({ id, text: text.slice(start, end) }))
  return tokens
}

/** The seed of a model's first block: its name, hashed to 53 bits. */
export const blockSeed = (modelName: string): number => mix53(hash32(modelName), hash32(`${modelName}\u0000`), [], 0, 0)

/**
 * A 53-bit hash of `ids[from..to)` chained from `parent` (two 32-bit lanes,
 * cyrb53's mixing). Not cryptographic: collisions are as unlikely as 53 bits
 * make them, which is what a simulation needs.
 */
const mix53 = (parentLow: number, parentHigh: number, ids: ArrayLike<number>, from: number, to: number): number => {
  let h1 = 0xdeadbeef ^ parentLow
  let h2 = 0x41c6ce57 ^ parentHigh
  for (let i = from; i < to; i++) {
    const id = ids[i]
    h1 = Math.imul(h1 ^ id, 2654435761)
    h2 = Math.imul(h2 ^ id, 1597334677)
  }
  h1 = Math.imul(h1 ^ (h1 >>> 16), 2246822507)
  h1 ^= Math.imul(h2 ^ (h2 >>> 13), 3266489909)
  h2 = Math.imul(h2 ^ (h2 >>> 16), 2246822507)
  h2 ^= Math.imul(h1 ^ (h1 >>> 13), 3266489909)
  return 4294967296 * (2097151 & h2) + (h1 >>> 0)
}

/** The key of the block `ids[from..to)` whose parent block's key is `parent` (the seed for the first block). */
export const blockHash = (parent: number, ids: ArrayLike<number>, from: number, to: number): number =>
  mix53(parent >>> 0, Math.floor(parent / 4294967296), ids, from, to)

/** The keys of the full blocks of `ids`, each chained from the one before, the first from `seed`. */
export const blockHashes = (seed: number, ids: ArrayLike<number>, blockSize: number): Array<number> => {
  const hashes: Array<number> = []
  let parent = seed
  for (let from = 0; from + blockSize <= ids.length; from += blockSize) {
    parent = blockHash(parent, ids, from, from + blockSize)
    hashes.push(parent)
  }
  return hashes
}

/** The keys of a prompt's full blocks, as this model's server computes them (for routers that score by prefix). */
export const promptBlockHashes = (modelName: string, text: string, blockSize: number): Array<number> =>
  blockHashes(blockSeed(modelName), tokenIds(text), blockSize)

/**
 * What /detokenize can turn back into text: the token texts /tokenize handed out, the least
 * recently used forgotten past `maxChars` characters in all or `maxEntries` tokens. A token
 * longer than `maxTokenChars` is not kept (a real vocabulary has no such token; a client that
 * sends one runs of thousands of characters must not make the server keep them).
 */
export class Vocabulary {
  /** Least recently used first (a Map keeps insertion order; a use moves a token to the end). */
  private readonly texts = new Map<number, string>()
  private chars = 0
  /** Finds the least recently used (LruCursor.ts says why not `keys().next()`). */
  private readonly lru = new LruCursor(this.texts)

  readonly maxChars: number
  readonly maxEntries: number
  readonly maxTokenChars: number

  constructor(maxChars: number, maxEntries: number, maxTokenChars: number) {
    this.maxChars = maxChars
    this.maxEntries = maxEntries
    this.maxTokenChars = maxTokenChars
  }

  remember(id: number, text: string): void {
    if (text.length > this.maxTokenChars) return
    const known = this.texts.get(id)
    if (known !== undefined) {
      this.texts.delete(id)
      this.lru.changed()
      this.chars -= known.length
    }
    this.texts.set(id, text)
    this.lru.changed()
    this.chars += text.length
    while (this.chars > this.maxChars || this.texts.size > this.maxEntries) {
      const oldest = this.lru.oldest()
      this.chars -= this.texts.get(oldest)!.length
      this.texts.delete(oldest)
    }
  }

  /** The token's text, if remembered (it becomes the most recently used). */
  lookUp(id: number): string | undefined {
    const text = this.texts.get(id)
    if (text !== undefined) {
      this.texts.delete(id)
      this.texts.set(id, text)
      this.lru.changed()
      this.lru.changed()
    }
    return text
  }

  /** Tokens and characters kept. */
  get size(): { readonly entries: number; readonly chars: number } {
    return { entries: this.texts.size, chars: this.chars }
  }
}
