/**
 * The access log's hand-written encoder prints what Effect's JSON logger
 * would print of the same entry (JSON.stringify of its shape, the duration
 * rounded to a tenth of a millisecond), in ASCII.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Schema } from "effect"
import { type AccessEntry, AccessLogOutput, encodeLine, jsonAccessLog, quotedText, timestamps } from "../src/router/edge/AccessLog.ts"

/** JSON in ASCII: what the encoder promises, so lines can be copied as Latin-1 bytes. */
const ascii = (json: string) => json.replace(/[\u007f-\uffff]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)

/** The line Effect's JSON logger prints for the entry (Logger.consoleJson's shape). */
const expected = (entry: AccessEntry, now: number) =>
  ascii(JSON.stringify({
    message: "request",
    level: "INFO",
    timestamp: new Date(now).toISOString(),
    annotations: {
      requestId: entry.requestId,
      method: entry.method,
      path: entry.path,
      status: entry.status,
      // The outcome's fields in a fixed order, as the router writes them.
      ...(entry.outcome?.queueMs === undefined ? {} : { queueMs: entry.outcome.queueMs }),
      ...(entry.outcome?.modelMs === undefined ? {} : { modelMs: entry.outcome.modelMs }),
      ...(entry.outcome?.reason === undefined ? {} : { reason: entry.outcome.reason }),
      ...(entry.outcome?.upstream === undefined ? {} : { upstream: entry.outcome.upstream }),
      durationMs: Math.round(entry.durationMs * 10) / 10
    },
    spans: {}
  })) + "\n"

const encode = (entry: AccessEntry, now: number, clock = timestamps()) => {
  const into = Buffer.alloc(4096 + 10, 0xff)
  const end = encodeLine(entry, clock(now), into, 10)
  // Nothing written outside the line.
  assert.isTrue(into.subarray(0, 10).every((byte) => byte === 0xff))
  assert.isTrue(into.subarray(end).every((byte) => byte === 0xff))
  return into.toString("latin1", 10, end)
}

const entry = (overrides: Partial<AccessEntry> = {}): AccessEntry => ({
  requestId: "6f0c1a2b-0000-4000-8000-000000000000",
  method: "POST",
  path: "/infer",
  status: 200,
  outcome: { queueMs: 0, modelMs: 100 },
  durationMs: 101.26,
  ...overrides
})

const VisibleId = Schema.String.check(Schema.isPattern(/^[\x21-\x7e]{1,128}$/))
const Millis = Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 4_102_444_800_000 }))
const Duration = Schema.Number.check(Schema.isBetween({ minimum: 0, maximum: 1e7 }))
const Outcome = Schema.UndefinedOr(Schema.Struct({
  queueMs: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 1e9 }))),
  modelMs: Schema.optional(Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 1e9 }))),
  reason: Schema.optional(Schema.Literals(["queue_full", "queue_timeout", "shutting_down", "client_closed"])),
  upstream: Schema.optional(Schema.Literals(["10.0.0.1:8000", "[fd00::1]:8000", "vllm-0.vllm.ns.svc:8000"]))
}))

describe("access-log encoding", () => {
  it.prop(
    "any entry prints as Effect's JSON logger prints it",
    [VisibleId, Schema.Literals(["POST", "GET"]), Schema.Literals(["/infer", "/v1/completions", "/v1/chat/completions"]), Schema.Int.check(Schema.isBetween({ minimum: 100, maximum: 599 })), Outcome, Duration, Millis],
    ([requestId, method, path, status, outcome, durationMs, now]) => {
      const line = { requestId, method, path, status, outcome, durationMs }
      assert.strictEqual(encode(line, now), expected(line, now))
    },
    { arbitrary: { runs: 500 } }
  )

  it("a duration prints as Math.round(ms * 10) / 10 does", () => {
    const samples = [0, 0.04, 0.05, 0.95, 1, 9.96, 15.27, 99.95, 100, 123456.789, 2 ** 31 / 10 + 0.33, 2 ** 53, 1e300]
    for (let i = 0; i < 20_000; i++) samples.push(Math.random() * 10 ** (i % 7))
    for (const durationMs of samples) assert.strictEqual(encode(entry({ durationMs }), 0), expected(entry({ durationMs }), 0), `ms = ${durationMs}`)
  })

  it("numbers that are not small integers print as JSON does", () => {
    for (const queueMs of [1.5, -3, 2 ** 60, Number.NaN, Number.POSITIVE_INFINITY]) {
      const line = entry({ outcome: { queueMs } })
      assert.strictEqual(encode(line, 0), expected(line, 0), `queueMs = ${queueMs}`)
      assert.doesNotThrow(() => JSON.parse(encode(line, 0)))
    }
  })

  it("a request id prints as JSON.stringify does (quotes and backslashes included); one outside the rule still gives valid JSON", () => {
    for (const requestId of ["req-1", `r"e\\q`, "\\", "\"", "~!#$%&'*+.^_`|:;<=>?@[]{}()/"]) {
      assert.strictEqual(encode(entry({ requestId }), 0), expected(entry({ requestId }), 0))
    }
    for (const requestId of ["with space", "tab\there", "caf\u00e9", "\u65e5\u672c", "line\nbreak"]) {
      assert.strictEqual(JSON.parse(encode(entry({ requestId }), 0)).annotations.requestId, requestId)
    }
    assert.strictEqual(JSON.parse(encode(entry({ requestId: "x".repeat(500) }), 0)).annotations.requestId, "x".repeat(128))
  })

  it("other strings print as JSON in ASCII, at most 64 characters of each", () => {
    for (const text of ["POST", "/v1/chat/completions", "queue_full", "caf\u00e9", "\u65e5\u672c", "emoji \u{1F600}", "tab\tquote\"", "\u007f"]) {
      const json = quotedText(text)
      assert.match(json, /^[\x20-\x7e]*$/)
      assert.strictEqual(JSON.parse(json), text)
      const line = entry({ method: text, outcome: { reason: text } })
      assert.strictEqual(encode(line, 0), expected(line, 0))
    }
    assert.strictEqual(JSON.parse(quotedText("r".repeat(100))), "r".repeat(64))
    // Cut at 64 characters, an emoji is dropped whole, not halved into a lone surrogate.
    assert.strictEqual(quotedText(`${"x".repeat(63)}\u{1F600}`), JSON.stringify("x".repeat(63)))
  })

  it.prop(
    "one clock through a random walk of times (forwards and back, within and across seconds) stamps each line as toISOString does",
    [Millis, Schema.Array(Schema.Int.check(Schema.isBetween({ minimum: -2500, maximum: 2500 })))],
    ([start, steps]) => {
      const clock = timestamps()
      let now = start
      for (const step of steps) {
        now += step % 3 === 0 ? step : step % 7
        assert.strictEqual(encode(entry(), now, clock), expected(entry(), now))
      }
    },
    { arbitrary: { runs: 200 } }
  )

  it("lines in the same millisecond share a head; each new millisecond gets its own timestamp", () => {
    const clock = timestamps()
    const now = Date.UTC(2026, 10, 30, 6, 14, 30, 7)
    for (const at of [now, now, now + 1, now + 999, now - 5000, now]) {
      assert.strictEqual(encode(entry(), at, clock), expected(entry(), at))
    }
    // A year past 9999 has a longer timestamp; its line is still exact.
    const far = Date.UTC(10000, 0, 1)
    assert.strictEqual(encode(entry(), far, clock), expected(entry(), far))
    assert.strictEqual(encode(entry(), now, clock), expected(entry(), now))
  })

  it.effect("batches: every write is whole lines within the batch, nothing is lost, and a line after release is written at once", () =>
    Effect.gen(function*() {
      const writes: Array<string> = []
      // The longest lines there can be: 128-character ids escaped to 6 bytes a character, every field.
      const longest = entry({
        requestId: "\u0001".repeat(128),
        outcome: { queueMs: 2 ** 60, modelMs: 1.5e300, reason: "\u65e5".repeat(100) },
        durationMs: 123456789.25
      })
      const lines = 500
      const log = yield* jsonAccessLog.pipe(Effect.provideService(AccessLogOutput, (chunk) => void writes.push(Buffer.from(chunk).toString("latin1"))))
      for (let i = 0; i < lines; i++) log(i % 2 === 0 ? longest : entry())
      assert.isAbove(writes.length, 0, "over 64 KiB waiting: written without waiting for the timer")
      for (const chunk of writes) {
        assert.isAtMost(chunk.length, 64 * 1024)
        assert.isTrue(chunk.endsWith("\n"))
      }
      return { writes, log, lines }
    }).pipe(
      Effect.scoped,
      Effect.flatMap(({ lines, log, writes }) =>
        Effect.sync(() => {
          // The scope closed: pending lines were flushed; one logged now is written at once.
          const written = writes.length
          log(entry({ requestId: "after-release" }))
          assert.strictEqual(writes.length, written + 1)
          const parsed = writes.join("").split("\n").filter((line) => line !== "").map((line) => JSON.parse(line))
          assert.strictEqual(parsed.length, lines + 1)
          assert.strictEqual(parsed.at(-1).annotations.requestId, "after-release")
        })
      )
    ))
})
