/**
 * What the OpenAI-compatible API refuses, as OpenAI and vLLM do, and how:
 * every error has OpenAI's four fields (message, type, param, code), 404 and
 * 405 under /v1/ included. And the request-id rule docs/api.md states.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { maxStopSequences } from "../src/api/OpenAiApi.ts"
import { exchange, parseRaw, request, TestRouter } from "./support/TestRouter.ts"

const withRouter = Effect.provide(TestRouter({ modelRef: "test-model" }))

const post = (path: string, body: string, headers: Record<string, string> = {}) =>
  request({ method: "POST", path, headers: { "content-type": "application/json", ...headers }, body })

const chat = (body: unknown) => post("/v1/chat/completions", JSON.stringify(body))

/** An OpenAI error: all four fields, the type, the param named. */
const assertOpenAiError = (
  response: { status: number; json: any },
  status: number,
  expected: { readonly type?: string; readonly param: string | null; readonly code?: string | null }
) => {
  assert.strictEqual(response.status, status, JSON.stringify(response.json))
  const error = response.json?.error
  assert.deepStrictEqual(Object.keys(error ?? {}).sort(), ["code", "message", "param", "type"])
  assert.isAbove(String(error.message).length, 10)
  assert.strictEqual(error.type, expected.type ?? "invalid_request_error")
  assert.strictEqual(error.param, expected.param)
  if (expected.code !== undefined) assert.strictEqual(error.code, expected.code)
}

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

describe("OpenAI-compatible API: what is refused", () => {
  it.live("404 and 405 under /v1/ carry OpenAI's four fields", () =>
    Effect.gen(function*() {
      const notFound = yield* request({ path: "/v1/engines" })
      assertOpenAiError(notFound, 404, { param: null, code: "not_found" })
      assert.include(notFound.json.error.message, "/v1/engines")
      const wrongMethod = yield* request({ method: "POST", path: "/v1/models", body: "{}" })
      assertOpenAiError(wrongMethod, 405, { param: null, code: "method_not_allowed" })
      assert.strictEqual(wrongMethod.headers["allow"], "GET, HEAD")
      const getChat = yield* request({ path: "/v1/chat/completions" })
      assertOpenAiError(getChat, 405, { param: null, code: "method_not_allowed" })
      // Outside /v1/ the router's own envelope stays.
      const other = yield* request({ path: "/nope" })
      assert.deepStrictEqual(Object.keys(other.json.error).sort(), ["code", "message"])
    }).pipe(withRouter))

  it.live("a role that does not exist", () =>
    Effect.gen(function*() {
      const response = yield* chat({ messages: [{ role: "bogus", content: "hi" }] })
      assertOpenAiError(response, 400, { param: "messages" })
      assert.include(response.json.error.message, "role")
    }).pipe(withRouter))

  it.live("a user or system message without content; an assistant's may have none", () =>
    Effect.gen(function*() {
      assertOpenAiError(yield* chat({ messages: [{ role: "user" }] }), 400, { param: "messages" })
      assertOpenAiError(yield* chat({ messages: [{ role: "system", content: null }, { role: "user", content: "x" }] }), 400, {
        param: "messages"
      })
      const fine = yield* chat({ messages: [{ role: "user", content: "x" }, { role: "assistant" }, { role: "user", content: "y" }] })
      assert.strictEqual(fine.status, 200)
    }).pipe(withRouter))

  it.live("temperature 1e400 (Infinity once parsed), or below 0", () =>
    Effect.gen(function*() {
      const infinite = yield* post("/v1/chat/completions", `{"messages":[{"role":"user","content":"x"}],"temperature":1e400}`)
      assertOpenAiError(infinite, 400, { param: "temperature" })
      assertOpenAiError(yield* post("/v1/completions", `{"prompt":"x","temperature":-0.5}`), 400, { param: "temperature" })
      assert.strictEqual((yield* post("/v1/completions", `{"prompt":"x","temperature":0.7,"max_tokens":1}`)).status, 200)
    }).pipe(withRouter))

  it.live(`at most ${maxStopSequences} stop sequences`, () =>
    Effect.gen(function*() {
      const stop = (n: number) => Array.from({ length: n }, (_, i) => `stop${i}`)
      const ok = yield* chat({ messages: [{ role: "user", content: "x" }], stop: stop(maxStopSequences), max_tokens: 1 })
      assert.strictEqual(ok.status, 200)
      assertOpenAiError(yield* chat({ messages: [{ role: "user", content: "x" }], stop: stop(maxStopSequences + 1) }), 400, {
        param: "stop"
      })
      assertOpenAiError(yield* post("/v1/completions", JSON.stringify({ prompt: "x", stop: stop(60_000) })), 400, { param: "stop" })
    }).pipe(withRouter))
})

describe("OpenAI-compatible API: the pipeline's own refusals in OpenAI's shape", () => {
  it.live("a bad queue budget names the header; a body too large or not JSON; a missing token", () =>
    Effect.gen(function*() {
      const budget = yield* post("/v1/completions", `{"prompt":"x"}`, { "x-queue-timeout-ms": "soon" })
      assertOpenAiError(budget, 400, { param: "x-queue-timeout-ms", code: "invalid_header" })
      const notJson = yield* request({ method: "POST", path: "/v1/completions", headers: { "content-type": "text/plain" }, body: "x" })
      assertOpenAiError(notJson, 415, { param: null, code: "unsupported_media_type" })
      const large = yield* post("/v1/completions", JSON.stringify({ prompt: "x".repeat(2_000) }))
      assertOpenAiError(large, 413, { param: null, code: "payload_too_large" })
      const broken = yield* post("/v1/chat/completions", "{")
      assertOpenAiError(broken, 400, { param: null, code: "invalid_json" })
    }).pipe(Effect.provide(TestRouter({ modelRef: "test-model", maxBodyBytes: 1_000 }))))

  it.live("a body cut by REQUEST_TIMEOUT_MS: 408 in OpenAI's shape (written to the socket by the server)", () =>
    Effect.gen(function*() {
      const raw = yield* exchange(
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":",
        5_000
      )
      assertOpenAiError(parseRaw(raw), 408, { param: null, code: "request_timeout" })
    }).pipe(Effect.provide(TestRouter({ modelRef: "test-model", headersTimeoutMs: 200, requestTimeoutMs: 300 }))))

  it.live("a missing bearer token: 401 authentication_error with WWW-Authenticate, on every /v1 route", () =>
    Effect.gen(function*() {
      for (const response of [yield* post("/v1/completions", `{"prompt":"x"}`), yield* request({ path: "/v1/models" })]) {
        assertOpenAiError(response, 401, { type: "authentication_error", param: null, code: "invalid_api_key" })
        assert.strictEqual(response.headers["www-authenticate"], `Bearer realm="inference-router"`)
      }
    }).pipe(Effect.provide(TestRouter({ modelRef: "test-model", apiKeys: [Redacted.make("key")] }))))

  it.live("an Authorization header that is no bearer token is named so, without repeating it", () =>
    Effect.gen(function*() {
      for (const authorization of ["Basic dXNlcjpzM2NyZXQ=", "Bearer key extra"]) {
        const response = yield* post("/v1/completions", `{"prompt":"x"}`, { authorization })
        assertOpenAiError(response, 401, { type: "authentication_error", param: null, code: "invalid_api_key" })
        assert.include(response.json.error.message, "not a bearer token")
        assert.notInclude(response.text, "dXNlcjpzM2NyZXQ=")
      }
      assert.include((yield* post("/v1/completions", `{"prompt":"x"}`)).json.error.message, "missing bearer token")
    }).pipe(Effect.provide(TestRouter({ modelRef: "test-model", apiKeys: [Redacted.make("key")] }))))

  it.live("a body that is JSON but no object is named as such", () =>
    Effect.gen(function*() {
      for (const [body, got] of [["null", "null"], ["[]", "an array"], [`"x"`, "a string"], ["5", "a number"]]) {
        const response = yield* post("/v1/completions", body)
        assertOpenAiError(response, 400, { param: null })
        assert.include(response.json.error.message, `expected a JSON object, got ${got}`)
      }
    }).pipe(withRouter))
})

describe("x-request-id: the rule docs/api.md states", () => {
  it.live("kept when 1-128 visible ASCII characters; otherwise (a space, a control character, too long) a new UUID", () =>
    Effect.gen(function*() {
      const echoed = (id: string) => Effect.map(request({ path: "/healthz", headers: { "x-request-id": id } }), (r) => String(r.headers["x-request-id"]))
      assert.strictEqual(yield* echoed("trace-42"), "trace-42")
      assert.strictEqual(yield* echoed("~!#$%&'*+.^_`|:;<=>?@[]{}()/\\\""), "~!#$%&'*+.^_`|:;<=>?@[]{}()/\\\"")
      assert.strictEqual(yield* echoed("a".repeat(128)), "a".repeat(128))
      assert.match(yield* echoed("a".repeat(129)), uuid)
      assert.match(yield* echoed("has space"), uuid)
      assert.match(yield* echoed("tab\there"), uuid)
    }).pipe(withRouter))
})
