/**
 * When an early answer (401, 413, 415, ...) closes the connection: only when a
 * body of unknown or large size is left unread. A request with neither
 * Content-Length nor Transfer-Encoding has no body (RFC 9112 §6.3): a 401 to
 * `GET /v1/models` keeps the connection alive like one to `POST /infer`.
 */
import type { IncomingMessage } from "node:http"
import { describe, expect, it } from "vitest"
import { closesEarly } from "../src/router/core/ResponseHeaders.ts"

const request = (headers: Record<string, string>, complete = false) => ({ headers, complete }) as unknown as IncomingMessage

describe("closesEarly", () => {
  it("keeps the connection when no body is left to drain, or a small one", () => {
    expect(closesEarly(request({}))).toBe(false)
    expect(closesEarly(request({ "content-length": "0" }))).toBe(false)
    expect(closesEarly(request({ "content-length": "1024" }))).toBe(false)
    expect(closesEarly(request({ "content-length": "10000000" }, true))).toBe(false)
  })

  it("closes it when the rest is large or of unknown size", () => {
    expect(closesEarly(request({ "content-length": "10000000" }))).toBe(true)
    expect(closesEarly(request({ "transfer-encoding": "chunked" }))).toBe(true)
    expect(closesEarly(request({ "content-length": "abc" }))).toBe(true)
  })
})
