/**
 * The JSON access log: one line per inference request, in the shape of
 * Effect's JSON logger, written in batches. A bypass of `Effect.logInfo`
 * (about 10 µs a line, BENCHMARKS.md "What was measured and changed"); each
 * line is encoded byte by byte into the batch buffer (section 17: string
 * lines with a date formatted per millisecond were 11–16 % of the router's CPU
 * per request, most of it `toISOString`'s `snprintf` and the string's building
 * and flattening; now ~5 %). Without `fiberId`, which the logger's other lines carry.
 */
import { Context, Effect, type Scope } from "effect"
import type { RequestOutcome } from "../core/RequestOutcome.ts"

/** What one access-log line says. */
export interface AccessEntry {
  readonly requestId: string
  readonly method: string
  readonly path: string
  readonly status: number
  readonly outcome: RequestOutcome | undefined
  /** Unrounded: the line shows it to a tenth of a millisecond. */
  readonly durationMs: number
}

/** Where JSON access-log lines go: stdout, like every other log line. Each write is whole lines of ASCII. */
export const AccessLogOutput = Context.Reference<(chunk: Uint8Array) => void>("inference-router/AccessLogOutput", {
  defaultValue: () => (chunk) => void process.stdout.write(chunk)
})

/**
 * Written at most every `flushMs`, or as soon as `batchBytes` are waiting. A
 * write to stdout costs much the same whatever its size: writing per time
 * window bounds the writes at any load, where a write per event-loop turn
 * carries only a line or two at light load. Envoy batches its access log the
 * same way.
 */
const flushMs = 100
const batchBytes = 64 * 1024
/**
 * More than the longest line: the fixed parts and a timestamp (~190 bytes), a
 * request id of at most 128 characters (at most 6 bytes each, escaped),
 * method, path, reason and upstream (each at most 64 characters, `quoted`
 * escapes to at most 6 bytes each) and four numbers.
 */
const maxLineBytes = 4096

/**
 * Lines are written into a buffer outside V8's heap as they come: strings
 * waiting for the flush would survive young-generation collections (copied at
 * each, then promoted). Pending lines are flushed when the scope closes, so a
 * drain loses none.
 */
export const jsonAccessLog: Effect.Effect<(entry: AccessEntry) => void, never, Scope.Scope> = Effect.gen(function*() {
  const write = yield* AccessLogOutput
  // One batch buffer for the life of the layer; each write gets a copy of its
  // lines, which the writer may keep (an asynchronous pipe). A fresh batch
  // buffer per write lived ~100 ms, long enough to be promoted, and the old
  // generation freed them only at its collections: +60 MiB peak RSS under load
  // (BENCHMARKS.md section 12). A copy handed over and dropped dies young.
  const batch = Buffer.allocUnsafeSlow(batchBytes)
  let used = 0
  let timer: ReturnType<typeof setTimeout> | undefined
  // Once released, a line is written at once: nothing may wait for a timer the exit cancels.
  let released = false
  const flush = () => {
    if (timer !== undefined) clearTimeout(timer)
    timer = undefined
    if (used === 0) return
    const chunk = Buffer.from(batch.subarray(0, used))
    used = 0
    write(chunk)
  }
  yield* Effect.addFinalizer(() =>
    Effect.sync(() => {
      released = true
      flush()
    })
  )
  const clock = timestamps()
  return (entry) => {
    // Unref'd: pending lines never keep the process alive; the finalizer writes them.
    if (timer === undefined) timer = setTimeout(flush, flushMs).unref()
    used = encodeLine(entry, clock(Date.now()), batch, used)
    if (used > batchBytes - maxLineBytes || released) flush()
  }
})

/**
 * The line's head up to the request id, with its timestamp, for a time in
 * milliseconds: one buffer, rewritten in place. Date formatting goes through
 * `snprintf` (about 0.5 µs; in the router, at a new millisecond every dozen
 * requests, more than the rest of the line): it runs once a second, and the
 * milliseconds are written by hand.
 */
export const timestamps = () => {
  const head = latin1(`{"message":"request","level":"INFO","timestamp":"${new Date(0).toISOString()}","annotations":{"requestId":`)
  const at = head.indexOf("1970")
  const millisAt = at + 20
  let second = 0
  return (now: number): Uint8Array => {
    const thisSecond = Math.floor(now / 1000)
    if (thisSecond !== second) {
      const iso = new Date(now).toISOString()
      // Years 0–9999 print in 24 characters; others (never, from Date.now()) in 27.
      if (iso.length !== 24) return latin1(`${head.toString("latin1", 0, at)}${iso}${head.toString("latin1", at + 24)}`)
      second = thisSecond
      head.write(iso, at, "latin1")
    }
    const millis = now - thisSecond * 1000
    const tens = Math.floor(millis / 10)
    head[millisAt] = 48 + Math.floor(tens / 10)
    head[millisAt + 1] = 48 + tens % 10
    head[millisAt + 2] = 48 + millis - tens * 10
    return head
  }
}

const latin1 = (text: string) => Buffer.from(text, "latin1")
const queueKey = latin1(`,"queueMs":`)
const modelKey = latin1(`,"modelMs":`)
const reasonKey = latin1(`,"reason":`)
const upstreamKey = latin1(`,"upstream":`)
const durationKey = latin1(`,"durationMs":`)
const lineEnd = latin1(`},"spans":{}}\n`)

/**
 * Writes one line at `at` in `into` and returns where it ends: what
 * `JSON.stringify` would print of the entry in the logger's shape, in ASCII
 * (non-ASCII characters escaped). `into` has room for `maxLineBytes` at `at`.
 */
export const encodeLine = (entry: AccessEntry, head: Uint8Array, into: Buffer, at: number): number => {
  into.set(head, at)
  at = writeId(entry.requestId, into, at + head.length)
  const request = methodAndPath(entry.method, entry.path)
  into.set(request, at)
  at = writeNumber(entry.status, into, at + request.length)
  const { outcome } = entry
  if (outcome !== undefined) {
    if (outcome.queueMs !== undefined) at = writeNumber(outcome.queueMs, into, put(queueKey, into, at))
    if (outcome.modelMs !== undefined) at = writeNumber(outcome.modelMs, into, put(modelKey, into, at))
    if (outcome.reason !== undefined) at = put(quoted(outcome.reason), into, put(reasonKey, into, at))
    if (outcome.upstream !== undefined) at = put(quoted(outcome.upstream), into, put(upstreamKey, into, at))
  }
  at = writeTenths(entry.durationMs, into, put(durationKey, into, at))
  return put(lineEnd, into, at)
}

/**
 * A few bytes copied by hand: `TypedArray#set` is a builtin call with its
 * checks, and nine of them cost more than the rest of the line.
 */
const put = (bytes: Uint8Array, into: Uint8Array, at: number): number => {
  for (let i = 0; i < bytes.length; i++) into[at + i] = bytes[i]
  return at + bytes.length
}

/**
 * `,"method":…,"path":…,"status":` for each method and path seen (a handful),
 * made once. The last pair is checked first: traffic is mostly one route.
 */
const requestParts = new Map<string, Map<string, Uint8Array>>()
let lastMethod: string | undefined
let lastPath: string | undefined
let lastPart: Uint8Array = new Uint8Array(0)
const methodAndPath = (method: string, path: string): Uint8Array => {
  if (method === lastMethod && path === lastPath) return lastPart
  let byPath = requestParts.get(method)
  if (byPath === undefined) {
    byPath = new Map()
    // Bounded, though Node's parser admits only its ~34 methods and paths are the inference routes.
    if (requestParts.size < 16) requestParts.set(method, byPath)
  }
  let bytes = byPath.get(path)
  if (bytes === undefined) {
    bytes = latin1(`,"method":${quotedText(method)},"path":${quotedText(path)},"status":`)
    if (byPath.size < 16) byPath.set(path, bytes)
  }
  lastMethod = method
  lastPath = path
  lastPart = bytes
  return bytes
}

/**
 * JSON text in ASCII (non-ASCII escaped as `\uXXXX`), at most 64 characters of
 * the text, never half a surrogate pair (strict JSON parsers refuse a lone one).
 */
export const quotedText = (text: string): string => {
  let cut = text.length > 64 ? 64 : text.length
  if (cut < text.length && /[\ud800-\udbff]/.test(text[cut - 1])) cut--
  return JSON.stringify(text.slice(0, cut)).replace(
    /[\u007f-\uffff]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`
  )
}

/** Reasons (a handful of error codes) and upstreams (the pool's members) as JSON bytes, each made once. */
const quotedCache = new Map<string, Uint8Array>()
const quoted = (text: string): Uint8Array => {
  let bytes = quotedCache.get(text)
  if (bytes === undefined) {
    bytes = latin1(quotedText(text))
    if (quotedCache.size < 256) quotedCache.set(text, bytes)
  }
  return bytes
}

const hex = "0123456789abcdef"

/**
 * A request id as a JSON string, at most its first 128 characters. Ids are
 * 1–128 visible ASCII characters (RequestObserver's rule), so only `"` and
 * `\` are escaped on the way; any other character outside visible ASCII is
 * escaped as `\uXXXX`, so no id can break a line.
 */
const writeId = (id: string, into: Uint8Array, at: number): number => {
  into[at++] = 34
  const length = Math.min(id.length, 128)
  for (let i = 0; i < length; i++) {
    const c = id.charCodeAt(i)
    if (c > 0x20 && c < 0x7f) {
      if (c === 34 || c === 92) into[at++] = 92
      into[at++] = c
    } else {
      into[at++] = 92
      into[at++] = 117
      into[at++] = hex.charCodeAt(c >> 12)
      into[at++] = hex.charCodeAt((c >> 8) & 15)
      into[at++] = hex.charCodeAt((c >> 4) & 15)
      into[at++] = hex.charCodeAt(c & 15)
    }
  }
  into[at++] = 34
  return at
}

/** A non-negative safe integer's decimal digits. */
const writeDigits = (n: number, into: Uint8Array, at: number): number => {
  let end = at + 1
  for (let power = 10; power <= n; power *= 10) end++
  for (let i = end - 1; i >= at; i--) {
    const rest = Math.floor(n / 10)
    into[i] = 48 + n - rest * 10
    n = rest
  }
  return end
}

/** A number as `JSON.stringify` prints it (NaN and ±Infinity as `null`): safe non-negative integers by hand, anything else by V8. */
const writeNumber = (n: number, into: Buffer, at: number): number =>
  Number.isSafeInteger(n) && n >= 0 ? writeDigits(n, into, at) : at + into.write(JSON.stringify(n), at, "latin1")

/**
 * Milliseconds to a tenth, as `JSON.stringify(Math.round(ms * 10) / 10)`
 * prints them (`15.3`, `4`): by integer arithmetic, since printing a
 * fractional double is V8's slow path.
 */
const writeTenths = (ms: number, into: Buffer, at: number): number => {
  const total = Math.round(ms * 10)
  if (!(Number.isSafeInteger(total) && total >= 0)) return writeNumber(total / 10, into, at)
  const whole = Math.floor(total / 10)
  const fraction = total - whole * 10
  at = writeDigits(whole, into, at)
  if (fraction === 0) return at
  into[at] = 46
  into[at + 1] = 48 + fraction
  return at + 2
}
