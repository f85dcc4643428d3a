/**
 * The relay's JSON check (upstream/JsonCheck.ts) accepts exactly what
 * `JSON.parse(bytes.toString("utf8"))` accepts: edge cases by hand, then
 * many generated texts (valid JSON, and the same with one byte changed,
 * inserted or removed; random bytes, non-UTF-8 ones included) from a fixed
 * seed, so every run checks the same cases.
 */
import { assert, describe, it } from "@effect/vitest"
import { isJson } from "../src/router/upstream/JsonCheck.ts"

const parses = (bytes: Buffer) => {
  try {
    JSON.parse(bytes.toString("utf8"))
    return true
  } catch {
    return false
  }
}

/** A small deterministic generator (mulberry32). */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const pieces = ["{", "}", "[", "]", ",", ":", "\"", "\\", "\\u", "0", "1", "9", "-", "+", ".", "e", "E", "a", "f", "F", "u", "n", "t", "r", "b", "/", " ", "\t", "\n", "\r", "\u0000", "\u001f", "\u00e9", "\u{1f600}", "\ufeff", "x", "true", "false", "null", "nul"]

const valueOf = (next: () => number, depth: number): unknown => {
  const kind = Math.floor(next() * (depth > 4 ? 5 : 7))
  switch (kind) {
    case 0:
      return null
    case 1:
      return next() < 0.5
    case 2:
      return [0, -0.5, 1e21, 123456789, -7, 3.25e-7, 42][Math.floor(next() * 7)]
    case 3:
    case 4:
      return Array.from({ length: Math.floor(next() * 6) }, () => pieces[Math.floor(next() * pieces.length)]).join("")
    case 5:
      return Array.from({ length: Math.floor(next() * 4) }, () => valueOf(next, depth + 1))
    default:
      return Object.fromEntries(Array.from({ length: Math.floor(next() * 4) }, (_, i) => [`k${i}${pieces[Math.floor(next() * pieces.length)]}`, valueOf(next, depth + 1)]))
  }
}

/** JSON with blanks between tokens here and there (JSON.stringify's indentation, sometimes a tab or CR). */
const textOf = (next: () => number) => {
  const text = JSON.stringify(valueOf(next, 0), null, next() < 0.3 ? 1 : next() < 0.5 ? "\t" : undefined) ?? "null"
  return next() < 0.2 ? ` \r\n${text}\t ` : text
}

const mutated = (next: () => number, text: Buffer): Buffer => {
  const at = Math.floor(next() * (text.length + 1))
  const piece = Buffer.from(pieces[Math.floor(next() * pieces.length)])
  const choice = next()
  if (choice < 0.33) return Buffer.concat([text.subarray(0, at), text.subarray(at + 1)])
  if (choice < 0.66) return Buffer.concat([text.subarray(0, at), piece, text.subarray(at)])
  return Buffer.concat([text.subarray(0, at), piece, text.subarray(at + 1)])
}

describe("isJson", () => {
  it("agrees with JSON.parse on edge cases", () => {
    const cases = [
      "", " ", "{}", "[]", "{ }", "[ ]", "0", "-0", "01", "-01", "1.", ".5", "1e", "1e+", "1E-2", "-", "+1", "0x1", "1 2", "[1,]", "[,]", "{\"a\":1,}",
      "{\"a\" : 1 , \"b\":[true,false,null]}", "{\"a\"}", "{1:2}", "\"\\u12\"", "\"\\u12g4\"", "\"\\uD800\"", "\"\\x\"", "\"\\/\"", "\"a\tb\"", "\"",
      "tru", "nulll", "truex", "[1]]", "[[1]", "{\"a\":1}}", "\ufeff{}", "\u00a0{}", "{\"é\":\"😀\"}", "\"\u0000\"", " \n\t\r1\r\n",
      "[".repeat(10_000) + "]".repeat(10_000), "[".repeat(10_000) + "]".repeat(9_999)
    ]
    for (const text of cases) {
      const bytes = Buffer.from(text)
      assert.strictEqual(isJson(bytes), parses(bytes), JSON.stringify(text.slice(0, 40)))
    }
    // Invalid UTF-8 inside a string decodes to U+FFFD (valid there), outside to a character that is not JSON.
    for (const bytes of [Buffer.from([0x22, 0xff, 0x22]), Buffer.from([0x22, 0xe2, 0x22]), Buffer.from([0xff]), Buffer.from([0x5b, 0x31, 0xc3, 0x5d]), Buffer.from([0x22, 0xc3])]) {
      assert.strictEqual(isJson(bytes), parses(bytes), bytes.toString("hex"))
    }
  })

  it("agrees with JSON.parse on generated texts, valid and one byte off", () => {
    const next = random(20261130)
    let valid = 0
    for (let i = 0; i < 6_000; i++) {
      let bytes: Buffer = Buffer.from(textOf(next))
      if (i % 3 !== 0) bytes = mutated(next, bytes)
      if (i % 11 === 0) bytes = mutated(next, bytes)
      const expected = parses(bytes)
      if (expected) valid++
      assert.strictEqual(isJson(bytes), expected, bytes.toString("hex"))
    }
    // Both kinds well represented.
    assert.isAbove(valid, 1_500)
    assert.isBelow(valid, 5_000)
    for (let i = 0; i < 3_000; i++) {
      const bytes = Buffer.from(Array.from({ length: Math.floor(next() * 8) }, () => next() < 0.5 ? Math.floor(next() * 256) : Buffer.from(pieces[Math.floor(next() * pieces.length)])[0]))
      assert.strictEqual(isJson(bytes), parses(bytes), bytes.toString("hex"))
    }
  })
})
