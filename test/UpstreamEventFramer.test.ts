/**
 * Finding whole server-sent events in an upstream's bytes (EventFramer.ts):
 * the WHATWG line endings (CRLF, LF, CR, mixed), split anywhere between
 * chunks, passed on byte for byte; a fragment is never released; one event
 * past the bound is reported; the work is linear in the bytes.
 */
import { assert, describe, it } from "@effect/vitest"
import { EventFramer } from "../src/router/upstream/EventFramer.ts"

/** Feeds `chunks`; returns the bytes released and whether a fragment is left. */
const run = (chunks: ReadonlyArray<string>, max = 1 << 20) => {
  const framer = new EventFramer(max)
  const released: Array<string> = []
  for (const chunk of chunks) {
    const framed = framer.push(Buffer.from(chunk, "latin1"))
    if (framed._tag === "TooLarge") return { released, tooLarge: true, fragment: framer.cutMidEvent }
    if (framed.bytes !== undefined) released.push(framed.bytes.toString("latin1"))
  }
  return { released, tooLarge: false, fragment: framer.cutMidEvent }
}

/** Every way to split `text` in two, three pieces: the bytes released never depend on the split. */
const splits = (text: string): Array<Array<string>> => {
  const out: Array<Array<string>> = [[text]]
  for (let i = 1; i < text.length; i++) {
    out.push([text.slice(0, i), text.slice(i)])
    for (let j = i + 1; j < text.length; j++) out.push([text.slice(0, i), text.slice(i, j), text.slice(j)])
  }
  return out
}

describe("finding whole events in an upstream's stream", () => {
  const streams: Record<string, { text: string; whole: string }> = {
    LF: { text: "data: a\n\ndata: b\nid: 2\n\ndata: par", whole: "data: a\n\ndata: b\nid: 2\n\n" },
    CRLF: { text: "data: a\r\n\r\ndata: b\r\n\r\ndata: par", whole: "data: a\r\n\r\ndata: b\r\n\r\n" },
    CR: { text: "data: a\r\rdata: b\r\rdata: par", whole: "data: a\r\rdata: b\r\r" },
    mixed: { text: ": comment\r\ndata: a\n\rdata: b\r\n\ndata: par", whole: ": comment\r\ndata: a\n\rdata: b\r\n\n" }
  }
  for (const [name, { text, whole }] of Object.entries(streams)) {
    it(`releases exactly the whole events, however the bytes are split (${name})`, () => {
      for (const chunks of splits(text)) {
        const { released, fragment } = run(chunks)
        const joined = released.join("")
        // Whole events only, and all of them except at most a CRLF's LF that arrived alone (it follows with the next event).
        assert.isTrue(joined === whole || (whole.endsWith("\r\n") && joined === whole.slice(0, -1)), `${JSON.stringify(chunks)} released ${JSON.stringify(joined)}`)
        assert.isTrue(fragment, `${JSON.stringify(chunks)}: the partial event is known`)
      }
    })
  }

  it("holds nothing back when the stream ends on an event's end", () => {
    for (const text of ["data: a\n\n", "data: a\r\n\r\n", "data: a\r\r", "data: a\n\ndata: [DONE]\n\n"]) {
      for (const chunks of splits(text)) {
        const { released, fragment } = run(chunks)
        assert.isFalse(fragment, JSON.stringify(chunks))
        // All of it, but for a CRLF's LF that arrived alone: what was released already ends the event.
        const joined = released.join("")
        assert.isTrue(joined === text || (text.endsWith("\r\n") && joined === text.slice(0, -1)), `${JSON.stringify(chunks)} released ${JSON.stringify(joined)}`)
      }
    }
  })

  it("releases each event as soon as it is whole (a CRLF stream is not held to its end)", () => {
    const framer = new EventFramer(1 << 20)
    const first = framer.push(Buffer.from("data: 1\r\n\r\n"))
    assert.strictEqual(first._tag === "Events" && first.bytes?.toString(), "data: 1\r\n\r\n")
    const partial = framer.push(Buffer.from("data: 2\r\n"))
    assert.isTrue(partial._tag === "Events" && partial.bytes === undefined)
    const second = framer.push(Buffer.from("\r\n"))
    assert.strictEqual(second._tag === "Events" && second.bytes?.toString(), "data: 2\r\n\r\n")
  })

  it("reports one event longer than the bound, in one chunk or many", () => {
    assert.isTrue(run(["data: " + "x".repeat(2000)], 1024).tooLarge)
    assert.isTrue(run(Array.from({ length: 40 }, () => "x".repeat(50)), 1024).tooLarge)
    // Many events, each under the bound, in one large chunk: fine.
    const many = "data: 0123456789\n\n".repeat(1000)
    const { released, tooLarge } = run([many], 1024)
    assert.isFalse(tooLarge)
    assert.strictEqual(released.join(""), many)
  })

  it("takes linear time: a 20 MB event in 64 KiB chunks costs about what 20 MB of small events cost", () => {
    const chunk = Buffer.alloc(64 * 1024, "x".charCodeAt(0))
    const time = (push: (framer: EventFramer) => void) => {
      const startedAt = performance.now()
      push(new EventFramer(64 << 20))
      return performance.now() - startedAt
    }
    const oneEvent = time((framer) => {
      for (let i = 0; i < 320; i++) framer.push(chunk)
      framer.push(Buffer.from("\n\n"))
    })
    const small = Buffer.from("data: xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\r\n\r\n".repeat(1000))
    const smallEvents = time((framer) => {
      for (let i = 0; i < 20_000_000 / small.length; i++) framer.push(small)
    })
    // Quadratic re-concatenation took seconds here; linear work takes well under one.
    assert.isBelow(oneEvent, 1000, `one 20 MB event: ${oneEvent} ms`)
    assert.isBelow(smallEvents, 2000, `20 MB of small events: ${smallEvents} ms`)
  })
})
