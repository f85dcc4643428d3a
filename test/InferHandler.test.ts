/**
 * What is particular to `/infer` being served from Node's request event: the
 * hand-serialized success body, clients that wait for "100 Continue", and a
 * failing model.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted, Schema } from "effect"
import * as Http from "node:http"
import { InferRequest, InferResponse } from "../src/api/RouterApi.ts"
import { kvEndpoint, maskCredentials } from "../src/router/core/Config.ts"
import { InvalidRequest } from "../src/api/Errors.ts"
import { inferResponseEncoder } from "../src/router/edge/InferHandler.ts"
import { parseInferRequest } from "../src/router/edge/InferRequestBody.ts"
import { Model } from "../src/router/simulated/Model.ts"
import { type LogLine, serverPort, TestRouter } from "./support/TestRouter.ts"

const Settings = Schema.Struct({
  modelRef: Schema.String,
  podName: Schema.UndefinedOr(Schema.String),
  kvEndpoints: Schema.Array(Schema.String)
})

const decodeResponse = Schema.decodeUnknownSync(InferResponse)

/** POST /infer the way curl sends large bodies: headers first, body only after "100 Continue". */
const postAfterContinue = (port: number, body: string, headers: Record<string, string> = {}) =>
  new Promise<{ status: number; continued: boolean; headers: Http.IncomingHttpHeaders; json: any }>(
    (resolve, reject) => {
      let continued = false
      const req = Http.request({
        host: "127.0.0.1",
        port,
        method: "POST",
        path: "/infer",
        agent: false,
        headers: {
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
          expect: "100-continue",
          ...headers
        }
      }, (res) => {
        const chunks: Array<Buffer> = []
        res.on("data", (chunk) => chunks.push(chunk))
        res.on("end", () =>
          resolve({
            status: res.statusCode!,
            continued,
            headers: res.headers,
            json: JSON.parse(Buffer.concat(chunks).toString("utf8"))
          }))
      })
      req.on("continue", () => {
        continued = true
        req.end(body)
      })
      req.on("error", reject)
      req.flushHeaders()
    }
  )

/** JSON values a client might send as the body: objects with or without a "prompt" of any type, and the rest. */
const BodyJson = Schema.Union([
  Schema.Struct({ prompt: Schema.Unknown }),
  Schema.Struct({ prompt: Schema.String, other: Schema.Unknown }),
  Schema.Record(Schema.String, Schema.Unknown),
  Schema.Array(Schema.Unknown),
  Schema.String,
  Schema.Number,
  Schema.Null
])

describe("POST /infer on Node's request event", () => {
  it.prop(
    "the body's decoding (a fast path for a string prompt) is the contract's InferRequest schema's",
    [BodyJson],
    ([json]) => {
      const text = JSON.stringify(json)
      if (text === undefined) return
      const parsed = parseInferRequest(text)
      const decoded = Schema.decodeUnknownResult(InferRequest)(JSON.parse(text))
      if (decoded._tag === "Success") assert.deepStrictEqual(parsed, decoded.success)
      else assert.instanceOf(parsed, InvalidRequest)
    }
  )

  it.prop(
    "the hand-serialized body is the contract's InferResponse, and its byte length is counted right, for any settings and prompt",
    [Settings, Schema.String, Schema.Int.check(Schema.isGreaterThanOrEqualTo(0))],
    ([settings, prompt, processingMs]) => {
      const { body: text, byteLength } = inferResponseEncoder({ ...settings, kvEndpoints: settings.kvEndpoints.map(kvEndpoint) })(
        prompt,
        processingMs
      )
      const expected = {
        modelRef: settings.modelRef,
        prompt,
        ...(settings.podName === undefined ? {} : { routerPod: settings.podName }),
        kvEndpoints: settings.kvEndpoints.map(maskCredentials),
        processingMs
      }
      assert.strictEqual(text, JSON.stringify(expected))
      // Content-Length is counted from the parts: it must be the body's UTF-8 length (lone surrogates included).
      assert.strictEqual(byteLength, Buffer.byteLength(text))
      assert.deepStrictEqual(decodeResponse(JSON.parse(text)), expected)
    }
  )

  it.live("a client that waits for 100 Continue gets it, then its answer with a request id", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const response = yield* Effect.promise(() => postAfterContinue(port, JSON.stringify({ prompt: "big" })))
      assert.isTrue(response.continued)
      assert.strictEqual(response.status, 200)
      assert.strictEqual(response.json.prompt, "big")
      assert.isString(response.headers["x-request-id"])
    }).pipe(Effect.provide(TestRouter())))

  it.live("a request refused on its headers is answered without 100 Continue, before any body is sent", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const unauthorized = yield* Effect.promise(() => postAfterContinue(port, JSON.stringify({ prompt: "x" })))
      assert.strictEqual(unauthorized.status, 401)
      assert.isFalse(unauthorized.continued)
      const tooLarge = yield* Effect.promise(() =>
        postAfterContinue(port, JSON.stringify({ prompt: "x".repeat(2_000) }), { authorization: "Bearer key" })
      )
      assert.strictEqual(tooLarge.status, 413)
      assert.isFalse(tooLarge.continued)
      const accepted = yield* Effect.promise(() =>
        postAfterContinue(port, JSON.stringify({ prompt: "x" }), { authorization: "Bearer key" })
      )
      assert.strictEqual(accepted.status, 200)
      assert.isTrue(accepted.continued)
    }).pipe(Effect.provide(TestRouter({ apiKeys: [Redacted.make("key")], maxBodyBytes: 1_000 }))))

  it.live("a failing model is a 500 with the JSON error and the request id, and is logged", () => {
    const logs: Array<LogLine> = []
    const failing = Model.withInfer(() => Effect.die(new Error("model crashed")))
    return Effect.gen(function*() {
      const port = yield* serverPort
      const response = yield* Effect.promise(() =>
        fetch(`http://127.0.0.1:${port}/infer`, {
          method: "POST",
          headers: { "content-type": "application/json", "x-request-id": "req-crash" },
          body: JSON.stringify({ prompt: "x" })
        })
      )
      assert.strictEqual(response.status, 500)
      assert.strictEqual(response.headers.get("x-request-id"), "req-crash")
      const body: any = yield* Effect.promise(() => response.json())
      assert.strictEqual(body.error.code, "internal_error")
      assert.notInclude(JSON.stringify(body), "model crashed")
      // The error log is written by a fiber of its own; give it a turn.
      yield* Effect.yieldNow
      const logged = logs.find((line) => line.message === "request failed")
      assert.strictEqual(logged?.annotations.requestId, "req-crash", JSON.stringify(logs))
      assert.strictEqual(logged?.level, "ERROR")
    }).pipe(Effect.provide(TestRouter({}, failing, { logs })))
  })
})

