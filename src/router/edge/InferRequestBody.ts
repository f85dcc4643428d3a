/**
 * Reads a POST body on Node's request within MAX_BODY_BYTES (the pipeline does,
 * for every POST route), and validates `/infer`'s.
 *
 * Hand-written instead of HttpApi's payload decoding: measured on this machine
 * (wrk, 50 connections, zero model time), Effect's body reading
 * (`HttpServerRequest.text`) alone took a bare Effect route from 0.93x to 0.66x
 * the throughput of plain `node:http`. Validation still uses the contract's own
 * `InferRequest` schema, and the errors are the contract's.
 */
import { Schema } from "effect"
import type { IncomingHttpHeaders, IncomingMessage } from "node:http"
import { InvalidRequest, PayloadTooLarge, UnsupportedMediaType } from "../../api/Errors.ts"
import { InferRequest } from "../../api/RouterApi.ts"
import { oneLine } from "../../shared/SchemaMessage.ts"

const decodeInferRequest = Schema.decodeUnknownResult(InferRequest)

/** Strict UTF-8: invalid bytes are an error; a leading byte-order mark is dropped. */
const utf8 = new TextDecoder("utf-8", { fatal: true })

/** JSON, or JSON sent with curl -d's form label; no Content-Type means JSON. */
const readsAsJson = (contentType: string | undefined) => {
  if (contentType === undefined || contentType === "application/json") return true
  const end = contentType.indexOf(";")
  const mediaType = (end === -1 ? contentType : contentType.slice(0, end)).trim().toLowerCase()
  return mediaType === "application/json" || mediaType === "application/x-www-form-urlencoded" || mediaType === ""
}

const payloadTooLarge = (maxBodyBytes: number) =>
  new PayloadTooLarge({
    code: "payload_too_large",
    message: `request body exceeds MAX_BODY_BYTES (${maxBodyBytes} bytes)`
  })

/** What the headers alone rule out, before any of the body is read. */
export const checkBodyHeaders = (
  headers: IncomingHttpHeaders,
  maxBodyBytes: number
): UnsupportedMediaType | PayloadTooLarge | undefined => {
  if (!readsAsJson(headers["content-type"])) {
    return new UnsupportedMediaType({
      code: "unsupported_media_type",
      message: "send the request body as JSON with Content-Type: application/json"
    })
  }
  // A compressed body would be read as garbled text (RFC 9110 §8.4: 415 for a coding not understood).
  const coding = headers["content-encoding"]?.trim()
  if (coding !== undefined && coding !== "" && coding.toLowerCase() !== "identity") {
    return new UnsupportedMediaType({
      code: "unsupported_content_encoding",
      message: `request bodies with Content-Encoding ${JSON.stringify(coding.slice(0, 64))} are not supported: send the body uncompressed`
    })
  }
  if (Number(headers["content-length"]) > maxBodyBytes) return payloadTooLarge(maxBodyBytes)
  return undefined
}

/**
 * Calls `onDone` once with the body as text, with an error as soon as the body
 * passes `maxBodyBytes` (rather than after buffering it all) or is not UTF-8,
 * or with `undefined` when it broke off: the client hung up, and nobody is
 * left to answer (the request is counted and logged as 499).
 */
export const readBody = (
  request: IncomingMessage,
  maxBodyBytes: number,
  onDone: (body: string | PayloadTooLarge | InvalidRequest | undefined) => void
): void => {
  const chunks: Array<Buffer> = []
  let size = 0
  // Once done, later events are ignored rather than unsubscribed: cheaper on
  // every request, and after `end` or `error` none come anyway.
  let done = false
  const finish = (result: string | PayloadTooLarge | InvalidRequest | undefined) => {
    done = true
    // Let go of the chunks; `pop`, not `length = 0` (a call into V8's runtime on every request).
    while (chunks.length > 0) chunks.pop()
    onDone(result)
  }
  request.on("data", (chunk: Buffer) => {
    if (done) return
    size += chunk.length
    if (size > maxBodyBytes) {
      finish(payloadTooLarge(maxBodyBytes))
    } else {
      chunks.push(chunk)
    }
  })
  request.on("end", () => {
    if (done) return
    const bytes = chunks.length === 1 ? chunks[0] : Buffer.concat(chunks)
    // Not Buffer#toString, which silently replaces invalid bytes with U+FFFD.
    let text: string
    try {
      text = utf8.decode(bytes)
    } catch {
      return finish(
        new InvalidRequest({ code: "invalid_encoding", message: "request body is not valid UTF-8" })
      )
    }
    finish(text)
  })
  // Node's request fails only when its connection closed before the whole body came ("aborted").
  request.on("error", () => {
    if (!done) finish(undefined)
  })
}

/** The body text as the contract's `InferRequest`, or the error that names what is wrong with it. */
export const parseInferRequest = (text: string): InferRequest | InvalidRequest => {
  let json: unknown
  try {
    json = JSON.parse(text)
  } catch {
    // Only a body that is not JSON can be empty: the check costs nothing on the others.
    return text.trim() === ""
      ? new InvalidRequest({
        code: "invalid_body",
        message: "request body is empty: send a JSON object with a string \"prompt\""
      })
      : new InvalidRequest({ code: "invalid_json", message: "request body is not valid JSON" })
  }
  // The body every client sends, an object with a string "prompt", decoded as the schema decodes it
  // (unknown fields dropped) without running its decoder: about 0.3 µs of a request's CPU (profiled).
  // Anything else goes through the schema, whose error names what is wrong. A property test keeps
  // the two equal (test/InferHandler.test.ts).
  if (typeof json === "object" && json !== null) {
    const prompt = (json as { readonly prompt?: unknown }).prompt
    if (typeof prompt === "string") return { prompt }
  }
  const decoded = decodeInferRequest(json)
  if (decoded._tag === "Success") return decoded.success
  return new InvalidRequest({
    code: "invalid_body",
    message: `request body must be a JSON object with a string "prompt": ${
      oneLine(decoded.failure.message)
    }`
  })
}
