/**
 * Finds where server-sent events end in an upstream's stream, so the relay
 * passes on whole events only, as the upstream wrote them. Per the WHATWG
 * event-stream grammar, a line ends with CRLF, LF or CR, and an event ends
 * at an empty line; a CRLF may be split across two chunks.
 *
 * Linear: each byte is looked at once (line ends are found with
 * `Buffer.indexOf`, natively), and a partial event's chunks are kept as they
 * came, joined once when the event is whole. One event may hold at most
 * `maxEventBytes`; past that, `push` reports it and the stream must end.
 *
 * Not `eventsource-parser`: it decodes to strings and builds each event's
 * fields, and the relay needs the byte ranges of whole events to copy.
 */

const LF = 10
const CR = 13

export type Framed =
  /** Whole events to write as they are (possibly none). */
  | { readonly _tag: "Events"; readonly bytes: Buffer | undefined }
  /** The event being read is longer than the bound. */
  | { readonly _tag: "TooLarge" }

const none: Framed = { _tag: "Events", bytes: undefined }

export class EventFramer {
  private readonly maxEventBytes: number
  /** Chunks of the event being read (after the last whole event). */
  private pending: Array<Buffer> = []
  private pendingBytes = 0
  /** The last byte seen ended a line (so a line end now is an empty line). */
  private atLineStart = true
  /** The last byte seen was a CR (so an LF now belongs to the same line end). */
  private afterCR = false
  /** The pending bytes hold more than line ends (a field, a comment). */
  private pendingHasContent = false

  constructor(maxEventBytes: number) {
    this.maxEventBytes = maxEventBytes
  }

  /** The whole events completed by `chunk`, or TooLarge. */
  push(chunk: Buffer): Framed {
    const length = chunk.length
    let cut = -1 // the end (exclusive) of the last whole event in `chunk`
    let i = 0
    let nextLF = -2
    let nextCR = -2
    while (i < length) {
      if (this.afterCR) {
        this.afterCR = false
        // The LF of a CRLF: part of the line end just seen (kept with its event when in the same chunk;
        // the bytes written are the upstream's either way, so a client reads the same CRLF).
        if (chunk[i] === LF) {
          if (cut === i) cut = i + 1
          i++
          continue
        }
      }
      // The next line end at or after i.
      if (nextLF !== -1 && nextLF < i) nextLF = chunk.indexOf(LF, i)
      if (nextCR !== -1 && nextCR < i) nextCR = chunk.indexOf(CR, i)
      const end = nextLF === -1 ? nextCR : nextCR === -1 ? nextLF : Math.min(nextLF, nextCR)
      if (end === -1) {
        this.atLineStart = false
        this.pendingHasContent = true
        i = length
        break
      }
      if (end > i) {
        // A line with content.
        this.atLineStart = false
        this.pendingHasContent = true
      } else if (this.atLineStart) {
        // An empty line: the event ends here.
        cut = end + 1
        this.pendingHasContent = false
      }
      this.atLineStart = true
      this.afterCR = chunk[end] === CR
      i = end + 1
    }
    if (cut === -1) {
      this.pending.push(chunk)
      this.pendingBytes += length
      return this.pendingBytes > this.maxEventBytes ? { _tag: "TooLarge" } : none
    }
    const whole = this.pendingBytes === 0
      ? (cut === length ? chunk : chunk.subarray(0, cut))
      : Buffer.concat([...this.pending, chunk.subarray(0, cut)], this.pendingBytes + cut)
    this.pending = []
    this.pendingBytes = 0
    if (cut < length) {
      this.pending.push(chunk.subarray(cut))
      this.pendingBytes = length - cut
      if (this.pendingBytes > this.maxEventBytes) return { _tag: "TooLarge" }
    }
    return { _tag: "Events", bytes: whole }
  }

  /** True when the stream stopped inside an event (a fragment that must not be written). */
  get cutMidEvent(): boolean {
    return this.pendingHasContent
  }
}
