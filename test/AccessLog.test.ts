/**
 * The access log's hand-written formatting prints what JSON.stringify and
 * Number#toString would: durations to a tenth of a millisecond, request ids
 * as JSON strings.
 */
import { assert, describe, it } from "@effect/vitest"
import { quoted, quotedId, tenths } from "../src/router/edge/RequestObserver.ts"

describe("access-log formatting", () => {
  it("a duration prints as Math.round(ms * 10) / 10 does", () => {
    const samples = [0, 0.04, 0.05, 0.95, 1, 9.96, 15.27, 99.95, 100, 123456.789, 2 ** 31 / 10 + 0.33]
    for (let i = 0; i < 20_000; i++) samples.push(Math.random() * 10 ** (i % 7))
    for (const ms of samples) assert.strictEqual(tenths(ms), String(Math.round(ms * 10) / 10), `ms = ${ms}`)
  })

  it("a request id prints as JSON.stringify does (visible ASCII, quotes and backslashes included)", () => {
    for (const id of ["req-1", "6f0c1a2b-0000-4000-8000-000000000000", `r"e\\q`, "\\", "\"", "~!#$%&'*+.^_`|:;<=>?@[]{}()/"]) {
      assert.strictEqual(quotedId(id), JSON.stringify(id))
    }
  })

  it("other strings print as JSON in ASCII (lines are copied into the batch as Latin-1 bytes)", () => {
    for (const text of ["POST", "/v1/chat/completions", "queue_full", "caf\u00e9", "\u65e5\u672c", "emoji \u{1F600}", "tab\tquote\"", "\u007f"]) {
      const json = quoted(text)
      assert.match(json, /^[\x20-\x7e]*$/)
      assert.strictEqual(JSON.parse(json), text)
    }
  })
})
