/**
 * A prompt's block keys: the prompt as token ids, cut into full blocks of
 * `blockSize`, each block's key a hash chained from its parent's key and its
 * token ids, seeded with the model name (vLLM's prefix-caching hash; a partial
 * last block has no key: it is never shared). Two prompts share their first n
 * keys exactly when they share their first n blocks of tokens, so a key
 * stands for its whole prefix.
 *
 * Token ids come from the upstream's tokenizer when the router knows it (the
 * simulator's rule, or `/tokenize`); otherwise from characters (one id per
 * UTF-16 code unit), which is self-consistent for the approximate index: the
 * router only ever compares its own keys with its own keys.
 */
// PROVISIONAL until the simulator's module (H-sim, issue 22) lands: same shape, to be replaced by its import.
const simulatorBlockKeys = (model: string, ids: ReadonlyArray<number>, blockSize: number): Array<string> => {
  const keys: Array<string> = []
  let h1 = 0x811c9dc5
  let h2 = 0x01000193
  for (let i = 0; i < model.length; i++) {
    h1 = Math.imul(h1 ^ model.charCodeAt(i), 0x01000193)
    h2 = Math.imul(h2 ^ model.charCodeAt(i), 0x5bd1e995)
  }
  for (let start = 0; start + blockSize <= ids.length; start += blockSize) {
    for (let i = start; i < start + blockSize; i++) {
      h1 = Math.imul(h1 ^ ids[i], 0x01000193)
      h2 = Math.imul(h2 ^ (ids[i] >>> 0), 0x5bd1e995) ^ (h1 >>> 13)
    }
    keys.push(`${(h1 >>> 0).toString(16)}${(h2 >>> 0).toString(16).padStart(8, "0")}`)
  }
  return keys
}

export type TokenIds = ReadonlyArray<number>

/** One id per UTF-16 code unit: the fallback when the upstream's tokenizer is unknown. */
export const characterIds = (text: string): TokenIds => {
  const ids = new Array<number>(text.length)
  for (let i = 0; i < text.length; i++) ids[i] = text.charCodeAt(i)
  return ids
}

/** The keys of every full block of `ids`, as strings (the index's key type). */
export const blockKeysOf = (model: string, ids: TokenIds, blockSize: number): Array<string> =>
  simulatorBlockKeys(model, ids, blockSize).map(String)
