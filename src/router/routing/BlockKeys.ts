/**
 * A prompt's block keys, as the simulator (and vLLM's prefix caching)
 * computes them: the prompt as token ids, cut into full blocks of
 * `blockSize`, each block's key a hash chained from its parent's key and its
 * token ids, the first seeded with the model name (simulated/Tokens.ts: the
 * same function, so keys from KV events and keys computed here agree). A
 * partial last block has no key: it is never shared. Two prompts share their
 * first n keys exactly when they share their first n blocks of tokens, so a
 * key stands for its whole prefix.
 *
 * Token ids come from the simulator's tokenization rule for every upstream
 * (the upstreams in tests and benchmarks are simulators, and a prompt's ids
 * are then the server's own); for another server they are only
 * self-consistent, which the approximate index needs (it compares the
 * router's keys with its own). `characterIds` is the per-character variant,
 * kept for that comparison in tests; asking an upstream's /tokenize is not
 * built. Keys are strings in the index: vLLM publishes integer or byte
 * hashes depending on its version, and a string holds either.
 */
import { isStandalone, maxTokenChars } from "../simulated/Simulation.ts"
import { blockHash, blockSeed, tokenIds } from "../simulated/Tokens.ts"

export type TokenIds = ArrayLike<number>

/** JavaScript's `\s` (the simulator's blanks, simulated/Tokens.ts). */
const isBlank = (code: number): boolean =>
  code <= 32
    ? code === 32 || (code >= 9 && code <= 13)
    : code >= 160 && (code === 160 || code === 5760 || (code >= 8192 && code <= 8202) || code === 8232 || code === 8233 || code === 8239 ||
      code === 8287 || code === 12288 || code === 65279)

/**
 * The simulator's token ids for `text` (its tokenization rule: a run of
 * non-blanks with the blanks before it, a run longer than 16 characters cut
 * every 16, a character of a script written without blanks (Thai, CJK, kana,
 * Hangul) a token by itself; FNV-1a of its text in 31 bits; the
 * same ids as simulated/Tokens.ts's tokenIds, a test compares them), in a
 * typed array: half the ids are above a small integer's range, so in a plain
 * array each would be a heap number, and a 2,000-token prompt's ids were most
 * of what a decision allocated (its p99 was young-generation collections).
 */
export const tokenIdsOf = (text: string): TokenIds => tokenIdsOfParts([text])

/**
 * tokenIdsOf(parts.join(separator)), without building the joined text (a
 * chat prompt's messages are joined by newlines; joining copied the whole
 * prompt once more per decision). A token is a run of blanks then a run of
 * non-blanks (cut as above), hashed as it is read, so the scan carries its
 * state across the parts and separators.
 */
export const tokenIdsOfParts = (parts: ReadonlyArray<string>, separator = "\n"): TokenIds => {
  let length = separator.length * Math.max(0, parts.length - 1)
  for (const part of parts) length += part.length
  // At most one token per two characters after the first (a blank before each, or a piece of 16),
  // unless standalone characters (one token each) come: at the first, the array grows to one per character.
  let ids = new Uint32Array((length >> 1) + 1)
  let count = 0
  let h = 0x811c9dc5
  /** Non-blanks in the token being read (0: none yet, only blanks or nothing). */
  let run = 0
  const scan = (text: string) => {
    for (let i = 0; i < text.length; i++) {
      const code = text.charCodeAt(i)
      // Most characters: a non-blank below U+0E00 (none there is standalone; the blanks there are 9-13, 32, 160).
      if (code > 32 && code < 0x0e00 && code !== 160) {
        if (run === maxTokenChars) {
          ids[count++] = (h >>> 0) & 0x7fffffff
          h = 0x811c9dc5
          run = 0
        }
        h ^= code
        h = Math.imul(h, 0x01000193)
        run++
        continue
      }
      const blank = isBlank(code)
      // The token being read ends before a blank, a standalone character, or a piece's maxTokenChars+1-th character.
      if (run > 0 && (blank || run === maxTokenChars || isStandalone(code))) {
        ids[count++] = (h >>> 0) & 0x7fffffff
        h = 0x811c9dc5
        run = 0
      }
      h ^= code
      h = Math.imul(h, 0x01000193)
      if (blank) continue
      if (isStandalone(code)) {
        if (ids.length < length) {
          const bigger = new Uint32Array(length)
          bigger.set(ids.subarray(0, count))
          ids = bigger
        }
        ids[count++] = (h >>> 0) & 0x7fffffff
        h = 0x811c9dc5
      } else {
        run++
      }
    }
  }
  for (let p = 0; p < parts.length; p++) {
    if (p > 0) scan(separator)
    scan(parts[p])
  }
  // Trailing blanks make no token.
  if (run > 0) ids[count++] = (h >>> 0) & 0x7fffffff
  return ids.subarray(0, count)
}

/** The simulator's own function (for tests comparing the two). */
export const simulatorTokenIds = (text: string): TokenIds => tokenIds(text)

/** One id per UTF-16 code unit (not used by the router: see the module's comment). */
export const characterIds = (text: string): TokenIds => {
  const ids = new Uint16Array(text.length)
  for (let i = 0; i < text.length; i++) ids[i] = text.charCodeAt(i)
  return ids
}

const seeds = new Map<string, number>()

/**
 * The keys of every full block of `ids`, as strings (the index's key type).
 * `cacheSalt` (a request's `cache_salt`, vLLM's per-tenant salt: vLLM mixes it
 * into the first block's hash) goes into the seed, so a salted prompt's keys
 * match no other salt's and no unsalted prompt's: the index never says one
 * tenant's prefix is cached for another's request.
 */
export const blockKeysOf = (model: string, ids: TokenIds, blockSize: number, cacheSalt?: string): Array<string> => {
  const seedName = cacheSalt === undefined ? model : `${model}\u0000cache_salt\u0000${cacheSalt}`
  let seed = seeds.get(seedName)
  if (seed === undefined) {
    seed = blockSeed(seedName)
    if (seeds.size < 1_000) seeds.set(seedName, seed)
  }
  // simulated/Tokens.ts's blockHashes, each key made a string as it comes (no array of numbers between).
  const keys: Array<string> = []
  let parent = seed
  for (let from = 0; from + blockSize <= ids.length; from += blockSize) {
    parent = blockHash(parent, ids, from, from + blockSize)
    keys.push(String(parent))
  }
  return keys
}

/** A key as published in a KV event (an integer, or bytes in newer vLLM versions) in the index's form. */
export const eventKey = (hash: unknown): string | undefined =>
  typeof hash === "number" || typeof hash === "bigint"
    ? String(hash)
    // Longer ones are no block hash (vLLM's are 8 or 32 bytes): each would hold its length in the index.
    : typeof hash === "string"
    ? hash.length <= 64 ? hash : undefined
    : hash instanceof Uint8Array && hash.length <= 64
    ? Buffer.from(hash).toString("hex")
    : undefined
