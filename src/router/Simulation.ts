/**
 * The simulated model's text, pure and deterministic (what llm-d-inference-sim
 * gives operators, without weights): offline tokenization, echo and seeded
 * random output, max_tokens, stop sequences and finish reasons. Timing lives
 * in Model.ts, on Effect's Clock.
 *
 * Tokenization rule: a token is a run of non-blank characters together with
 * the blanks before it (`/\s*\S+/g`); trailing blanks are not a token. So
 * "Hello, big world" is three tokens: "Hello,", " big", " world". Chat
 * messages are counted as their contents joined by newlines.
 */

/** JavaScript's `\s`: ASCII blanks, and the Unicode spaces and line breaks it names. */
const isBlank = (code: number): boolean =>
  code <= 32
    ? code === 32 || (code >= 9 && code <= 13)
    : code >= 160 && (code === 160 || code === 5760 || (code >= 8192 && code <= 8202) || code === 8232 || code === 8233 || code === 8239 ||
      code === 8287 || code === 12288 || code === 65279)

// Both by a scan of character codes rather than the regular expression: every
// /v1 request counts its prompt's tokens, and the regex was a sixth of the CPU
// of a 200-token chat request (profile, BENCHMARKS.md 6b). The same rule; a
// property test holds them equal to `/\s*\S+/g`.
export const tokenize = (text: string): Array<string> => {
  const tokens: Array<string> = []
  let start = 0
  let i = 0
  const length = text.length
  while (i < length) {
    while (i < length && isBlank(text.charCodeAt(i))) i++
    if (i === length) break
    while (i < length && !isBlank(text.charCodeAt(i))) i++
    tokens.push(text.slice(start, i))
    start = i
  }
  return tokens
}

export const countTokens = (text: string): number => {
  let count = 0
  let inToken = false
  for (let i = 0; i < text.length; i++) {
    const blank = isBlank(text.charCodeAt(i))
    if (!blank && !inToken) count++
    inToken = !blank
  }
  return count
}

/** mulberry32: a small seeded PRNG, the same sequence for the same seed on every platform. */
export const prng = (seed: number) => {
  let state = seed >>> 0
  return () => {
    state = (state + 0x6d2b79f5) >>> 0
    let t = state
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

/** FNV-1a: a stable 32-bit hash of the prompt, so a request without a seed still gives the same text. */
export const hash32 = (text: string): number => {
  let h = 0x811c9dc5
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i)
    h = Math.imul(h, 0x01000193)
  }
  return h >>> 0
}

const vocabulary = (
  "the a model router token request answer simulated inference cluster latency stream queue slot " +
  "response context prompt value result system user data time server client result fast small " +
  "large first next last good new old kind way part place case point fact"
).split(" ")

export type FinishReason = "stop" | "length"

export interface TextPlan {
  /** The tokens to emit, in order (stop sequences already applied). */
  readonly tokens: ReadonlyArray<string>
  readonly finishReason: FinishReason
}

export interface TextRequest {
  readonly mode: "echo" | "random"
  /** What echo mode repeats: the prompt, or the last user message. */
  readonly echoText: string
  readonly maxTokens: number
  readonly stop: ReadonlyArray<string>
  /** Seeds random mode; the same seed and request give the same text. */
  readonly seed: number
}

/** Cuts `tokens` where the text first contains a stop sequence (the sequence itself is not returned). */
const applyStop = (tokens: ReadonlyArray<string>, stop: ReadonlyArray<string>): TextPlan | undefined => {
  if (stop.length === 0) return undefined
  let text = ""
  for (let i = 0; i < tokens.length; i++) {
    const next = text + tokens[i]
    let cut = -1
    for (const sequence of stop) {
      if (sequence === "") continue
      const at = next.indexOf(sequence)
      if (at !== -1 && (cut === -1 || at < cut)) cut = at
    }
    if (cut !== -1) {
      const kept = tokens.slice(0, i)
      const partial = next.slice(text.length, cut)
      return { tokens: partial === "" ? kept : [...kept, partial], finishReason: "stop" }
    }
    text = next
  }
  return undefined
}

export const planText = (request: TextRequest): TextPlan => {
  let tokens: Array<string>
  let finishReason: FinishReason
  if (request.mode === "echo") {
    const all = tokenize(request.echoText)
    tokens = all.slice(0, request.maxTokens)
    finishReason = all.length > request.maxTokens ? "length" : "stop"
  } else {
    const random = prng(request.seed)
    // A natural end somewhere up to max_tokens, as a model's end-of-sequence would.
    const natural = 1 + Math.floor(random() * Math.max(1, request.maxTokens))
    const length = Math.min(natural, request.maxTokens)
    tokens = []
    for (let i = 0; i < length; i++) {
      const word = vocabulary[Math.floor(random() * vocabulary.length)]
      tokens.push(i === 0 ? word : ` ${word}`)
    }
    finishReason = natural >= request.maxTokens ? "length" : "stop"
  }
  return applyStop(tokens, request.stop) ?? { tokens, finishReason }
}
