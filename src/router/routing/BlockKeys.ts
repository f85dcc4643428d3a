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
import { blockHashes, blockSeed, tokenIds } from "../simulated/Tokens.ts"

export type TokenIds = ArrayLike<number>

/** The simulator's token ids for `text` (its tokenization rule). */
export const tokenIdsOf = (text: string): TokenIds => tokenIds(text)

/** One id per UTF-16 code unit (not used by the router: see the module's comment). */
export const characterIds = (text: string): TokenIds => {
  const ids = new Uint16Array(text.length)
  for (let i = 0; i < text.length; i++) ids[i] = text.charCodeAt(i)
  return ids
}

const seeds = new Map<string, number>()

/** The keys of every full block of `ids`, as strings (the index's key type). */
export const blockKeysOf = (model: string, ids: TokenIds, blockSize: number): Array<string> => {
  let seed = seeds.get(model)
  if (seed === undefined) {
    seed = blockSeed(model)
    if (seeds.size < 1_000) seeds.set(model, seed)
  }
  return blockHashes(seed, ids, blockSize).map(String)
}

/** A key as published in a KV event (an integer, or bytes in newer vLLM versions) in the index's form. */
export const eventKey = (hash: unknown): string =>
  typeof hash === "number" || typeof hash === "bigint" ? String(hash) : hash instanceof Uint8Array ? Buffer.from(hash).toString("hex") : String(hash)
