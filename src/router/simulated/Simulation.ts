/**
 * The simulated model's text, pure and deterministic (what llm-d-inference-sim
 * gives operators, without weights): offline tokenization, echo and seeded
 * random output, max_tokens, stop sequences and finish reasons. Timing lives
 * in Model.ts, on Effect's Clock.
 *
 * Tokenization rule: a token is a run of non-blank characters together with
 * the blanks before it (`/\s*\S+/g`); trailing blanks are not a token. So
 * "Hello, big world" is three tokens: "Hello,", " big", " world". Text
 * written without blanks is cut too, roughly as a BPE vocabulary cuts it: a
 * character of Thai, CJK, kana, Hangul or fullwidth forms is a token by
 * itself, and a run longer than `maxTokenChars` (base64, minified JSON, a
 * long URL) is cut every `maxTokenChars` characters (a 4,800-character
 * Chinese prompt was 2 tokens and had no block keys). Chat messages are
 * counted as their contents joined by newlines. The router's block keys
 * (routing/BlockKeys.ts) use this rule too: change both together.
 */

/** JavaScript's `\s`: ASCII blanks, and the Unicode spaces and line breaks it names. */
const isBlank = (code: number): boolean =>
  code <= 32
    ? code === 32 || (code >= 9 && code <= 13)
    : code >= 160 && (code === 160 || code === 5760 || (code >= 8192 && code <= 8202) || code === 8232 || code === 8233 || code === 8239 ||
      code === 8287 || code === 12288 || code === 65279)

// Tokens are found by a scan of character codes rather than the regular
// expression: every /v1 request counts its prompt's tokens, and the regex was a
// sixth of the CPU of a 200-token chat request (profile, BENCHMARKS.md 6b). The
// same rule; property tests hold the count and a plan's tokens equal to `tokenPattern`.

/** The most non-blank characters in one token: a longer run is cut into pieces this long. */
export const maxTokenChars = 16

/**
 * A character of a script written without blanks (Thai; CJK radicals, kana,
 * ideographs; Hangul syllables; CJK compatibility ideographs; fullwidth
 * forms): a token by itself. A blank in these ranges (U+3000) is a blank.
 */
export const isStandalone = (code: number): boolean =>
  code >= 0x0e00 &&
  (code <= 0x0e7f || (code >= 0x2e80 && (code <= 0x9fff || (code >= 0xac00 && code <= 0xd7a3) || (code >= 0xf900 && code <= 0xfaff) || (code >= 0xff00 && code <= 0xffef))))

/**
 * The rule as a regular expression (for tests): blanks, then one standalone character or up to
 * maxTokenChars others (one more when the last would split a surrogate pair).
 */
export const tokenPattern =
  /\s*(?:(?!\s)[\u0e00-\u0e7f\u2e80-\u9fff\uac00-\ud7a3\uf900-\ufaff\uff00-\uffef]|[^\s\u0e00-\u0e7f\u2e80-\u9fff\uac00-\ud7a3\uf900-\ufaff\uff00-\uffef]{1,16}(?:(?<=[\ud800-\udbff])[\udc00-\udfff])?)/g

/** Where the token starting at `from` ends (its blanks, then its non-blanks); `from` itself when only blanks are left. */
export const tokenEnd = (text: string, from: number): number => {
  const length = text.length
  let i = from
  while (i < length && isBlank(text.charCodeAt(i))) i++
  if (i === length) return from
  if (isStandalone(text.charCodeAt(i))) return i + 1
  const limit = Math.min(length, i + maxTokenChars)
  i++
  while (i < limit) {
    const code = text.charCodeAt(i)
    if (isBlank(code) || isStandalone(code)) break
    i++
  }
  // Never half a surrogate pair (an emoji): a client's strict UTF-8 or JSON decoder refuses a lone one.
  if (i === limit && i < length && isHighSurrogate(text.charCodeAt(i - 1)) && isLowSurrogate(text.charCodeAt(i))) i++
  return i
}

const isHighSurrogate = (code: number): boolean => code >= 0xd800 && code <= 0xdbff
const isLowSurrogate = (code: number): boolean => code >= 0xdc00 && code <= 0xdfff

/** How many tokens start before `end` (`text.length`: all of them). */
const tokensBefore = (text: string, end: number): number => {
  let count = 0
  for (let at = 0, next = tokenEnd(text, 0); at < end && next > at; at = next, next = tokenEnd(text, next)) count++
  return count
}

/** The text of a chat message's content, as the model reads it: a string, or the text parts of an array. */
export const contentText = (content: unknown): string =>
  typeof content === "string"
    ? content
    : Array.isArray(content)
    ? content.map((part) => typeof part?.text === "string" ? part.text : "").join("")
    : ""

export const countTokens = (text: string): number => tokensBefore(text, text.length)

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

/**
 * What a generation emits: the first `end` characters of `source`, as `tokens`
 * tokens (by the rule above; the last one may be cut short by a stop
 * sequence). Offsets into one string rather than an array of token strings:
 * a stream holds its plan for its whole life (seconds), and 200 small strings
 * per stream and the text built from them were most of what the router kept
 * per stream (BENCHMARKS.md 6d).
 */
export interface TextPlan {
  readonly source: string
  readonly end: number
  readonly tokens: number
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

/** The plan's tokens one by one: each call returns the next. */
export const tokenReader = (plan: TextPlan): () => string => {
  let at = 0
  return () => {
    const to = Math.min(tokenEnd(plan.source, at), plan.end)
    const token = plan.source.slice(at, to)
    at = to
    return token
  }
}

/** The plan's whole text. */
export const planOutput = (plan: TextPlan): string => plan.source.slice(0, plan.end)

/**
 * Cuts the plan where its text first contains a stop sequence, as a server
 * that checks the text after each token would: at the first token that
 * completes a sequence, the text ends where the earliest sequence it completed
 * begins (the sequence itself is not returned, nor any part of it).
 */
const applyStop = (plan: TextPlan, stop: ReadonlyArray<string>): TextPlan => {
  if (stop.length === 0) return plan
  const text = planOutput(plan)
  // Each sequence's first occurrence, and the earliest end of one. (Loops, not `Math.min(...)`:
  // a request may carry more stop sequences than a call takes arguments.)
  const found: Array<{ readonly at: number; readonly end: number }> = []
  let completed = Infinity
  for (const sequence of stop) {
    const at = sequence === "" ? -1 : text.indexOf(sequence)
    if (at === -1) continue
    found.push({ at, end: at + sequence.length })
    completed = Math.min(completed, at + sequence.length)
  }
  if (found.length === 0) return plan
  // The end of the token in which the first sequence is complete.
  let tokenEndAt = 0
  while (tokenEndAt < completed) tokenEndAt = tokenEnd(text, tokenEndAt)
  let cut = Infinity
  for (const match of found) if (match.end <= tokenEndAt) cut = Math.min(cut, match.at)
  return { source: plan.source, end: cut, tokens: tokensBefore(text, cut), finishReason: "stop" }
}

export const planText = (request: TextRequest): TextPlan => {
  let plan: TextPlan
  if (request.mode === "echo") {
    const source = request.echoText
    let end = 0
    let tokens = 0
    for (let next = tokenEnd(source, 0); tokens < request.maxTokens && next > end; next = tokenEnd(source, next)) {
      end = next
      tokens++
    }
    // "length" when a token was left out.
    plan = { source, end, tokens, finishReason: tokenEnd(source, end) > end ? "length" : "stop" }
  } else {
    const random = prng(request.seed)
    // A natural end somewhere up to max_tokens, as a model's end-of-sequence would.
    const natural = 1 + Math.floor(random() * Math.max(1, request.maxTokens))
    const tokens = Math.min(natural, request.maxTokens)
    const words: Array<string> = []
    for (let i = 0; i < tokens; i++) words.push(vocabulary[Math.floor(random() * vocabulary.length)])
    // One word (an `/infer`, one token) without join, which is a call into V8's runtime.
    const source = tokens === 1 ? words[0] : words.join(" ")
    plan = { source, end: source.length, tokens, finishReason: natural >= request.maxTokens ? "length" : "stop" }
  }
  return applyStop(plan, request.stop)
}
