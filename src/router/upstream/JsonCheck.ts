/**
 * Whether bytes are one JSON text, exactly as `JSON.parse(bytes.toString("utf8"))`
 * would accept them, without decoding or building anything: the relay checks
 * every whole non-streamed answer, and JSON.parse of a small completion
 * (string, objects, then garbage) was the largest single cost the upstream
 * path added per request (bench:upstream profile).
 *
 * Bytes of 0x80 and above decode to non-ASCII characters (or U+FFFD, never
 * swallowing an ASCII byte), valid inside strings and nowhere else; that is
 * why the check can stay on bytes. Nesting is counted on an explicit stack,
 * so no depth overflows.
 */

// Each step takes the bytes and a position and returns the position after what it read, or -1:
// plain functions of locals, which V8 inlines and keeps in registers (module-level state was 2x slower).

const skipBlanks = (bytes: Uint8Array, at: number): number => {
  while (at < bytes.length) {
    const c = bytes[at]
    if (c !== 32 && c !== 10 && c !== 13 && c !== 9) return at
    at++
  }
  return at
}

const isHex = (c: number) => (c >= 48 && c <= 57) || (c >= 97 && c <= 102) || (c >= 65 && c <= 70)

/** A string whose opening quote is at `at`. */
const string = (bytes: Uint8Array, at: number): number => {
  at++
  while (at < bytes.length) {
    const c = bytes[at++]
    if (c === 34) return at
    if (c < 32) return -1
    if (c === 92) {
      const escaped = bytes[at++]
      if (escaped === 117) {
        for (let k = 0; k < 4; k++) if (!isHex(bytes[at++])) return -1
      } else if (
        escaped !== 34 && escaped !== 92 && escaped !== 47 && escaped !== 98 && escaped !== 102 && escaped !== 110 && escaped !== 114 &&
        escaped !== 116
      ) return -1
    }
  }
  return -1
}

/** One or more digits. */
const digits = (bytes: Uint8Array, at: number): number => {
  const start = at
  while (at < bytes.length && bytes[at] >= 48 && bytes[at] <= 57) at++
  return at > start ? at : -1
}

const number = (bytes: Uint8Array, at: number): number => {
  if (bytes[at] === 45) at++
  if (bytes[at] === 48) at++
  else if ((at = digits(bytes, at)) < 0) return -1
  if (bytes[at] === 46 && (at = digits(bytes, at + 1)) < 0) return -1
  if (bytes[at] === 101 || bytes[at] === 69) {
    at++
    if (bytes[at] === 43 || bytes[at] === 45) at++
    return digits(bytes, at)
  }
  return at
}

const literal = (bytes: Uint8Array, at: number, word: string): number => {
  for (let k = 0; k < word.length; k++) if (bytes[at + k] !== word.charCodeAt(k)) return -1
  return at + word.length
}

/** An object's key and its colon, blanks around them. */
const key = (bytes: Uint8Array, at: number): number => {
  at = skipBlanks(bytes, at)
  if (bytes[at] !== 34 || (at = string(bytes, at)) < 0) return -1
  at = skipBlanks(bytes, at)
  return bytes[at] === 58 ? at + 1 : -1
}

/** Whether `bytes` is one JSON text as `JSON.parse(bytes.toString("utf8"))` reads it (blanks around it allowed). */
export const isJson = (bytes: Uint8Array): boolean => {
  /** Open containers, innermost last: 1 an array, 2 an object. */
  const open: Array<number> = []
  let at = 0
  value: for (;;) {
    at = skipBlanks(bytes, at)
    const c = bytes[at]
    if (c === 123) {
      at = skipBlanks(bytes, at + 1)
      if (bytes[at] === 125) at++
      else {
        open.push(2)
        if ((at = key(bytes, at)) < 0) return false
        continue
      }
    } else if (c === 91) {
      at = skipBlanks(bytes, at + 1)
      if (bytes[at] === 93) at++
      else {
        open.push(1)
        continue
      }
    } else if (c === 34) at = string(bytes, at)
    else if (c === 45 || (c >= 48 && c <= 57)) at = number(bytes, at)
    else if (c === 116) at = literal(bytes, at, "true")
    else if (c === 102) at = literal(bytes, at, "false")
    else if (c === 110) at = literal(bytes, at, "null")
    else return false
    if (at < 0) return false
    // A value ended: separators and closing brackets until the next value, or the end.
    for (;;) {
      at = skipBlanks(bytes, at)
      if (open.length === 0) return at === bytes.length
      const inObject = open[open.length - 1] === 2
      const d = bytes[at++]
      if (d === 44) {
        if (inObject && (at = key(bytes, at)) < 0) return false
        continue value
      }
      if (d !== (inObject ? 125 : 93)) return false
      open.pop()
    }
  }
}
