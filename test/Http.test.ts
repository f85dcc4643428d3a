import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Layer } from "effect"
import { FetchHttpClient, HttpClient, HttpClientRequest } from "effect/http"
import * as Net from "node:net"
import { HttpApiClient } from "effect/http-api"
import { Overloaded } from "../src/api/Errors.ts"
import { OpenAiError } from "../src/api/OpenAiApi.ts"
import { RouterApi } from "../src/api/RouterApi.ts"
import { kvEndpoint, type RouterSettings } from "../src/router/core/Config.ts"
import type { Model } from "../src/router/simulated/Model.ts"
import { gatedModel, postInfer, request, serverPort, TestRouter, untilStats } from "./support/TestRouter.ts"

const withRouter = (settings: Partial<RouterSettings> = {}, model?: Model["Service"]) =>
  Effect.provide(TestRouter(settings, model))

const assertError = (response: { status: number; headers: Record<string, unknown>; json: any }, status: number, code: string) => {
  assert.strictEqual(response.status, status)
  assert.match(String(response.headers["content-type"]), /^application\/json/)
  assert.strictEqual(response.json?.error?.code, code, JSON.stringify(response.json))
  assert.isString(response.json.error.message)
  assert.isAbove(response.json.error.message.length, 10)
}

describe("HTTP contract", () => {
  describe("probes", () => {
    it.live("GET /healthz answers 200 ok", () =>
      Effect.gen(function*() {
        const response = yield* request({ path: "/healthz" })
        assert.strictEqual(response.status, 200)
        assert.deepStrictEqual(response.json, { status: "ok" })
      }).pipe(withRouter()))

    it.live("GET /readyz answers 200 ready", () =>
      Effect.gen(function*() {
        const response = yield* request({ path: "/readyz" })
        assert.strictEqual(response.status, 200)
        assert.deepStrictEqual(response.json, { status: "ready" })
      }).pipe(withRouter()))
  })

  describe("POST /infer", () => {
    it.live("answers the model's result with the router's settings", () =>
      Effect.gen(function*() {
        const response = yield* postInfer({ prompt: "hello", ignored: [1, 2] })
        assert.strictEqual(response.status, 200)
        assert.deepStrictEqual(response.json, {
          modelRef: "llama-3-8b",
          prompt: "hello",
          routerPod: "router-abc",
          kvEndpoints: ["kv-0:6379", "redis://kv-1:6379"],
          processingMs: 0
        })
        assert.match(String(response.headers["server-timing"]), /^queue;dur=\d+, model;dur=\d+$/)
      }).pipe(withRouter({
        modelRef: "llama-3-8b",
        podName: "router-abc",
        kvEndpoints: ["kv-0:6379", "redis://kv-1:6379"].map(kvEndpoint)
      })))

    it.live("omits routerPod when no pod name is known", () =>
      Effect.gen(function*() {
        const response = yield* postInfer({ prompt: "x" })
        assert.strictEqual(response.status, 200)
        assert.notProperty(response.json, "routerPod")
      }).pipe(withRouter({ podName: undefined })))

    it.live("reads a JSON body sent as a form (what curl -d sends)", () =>
      Effect.gen(function*() {
        const response = yield* request({
          method: "POST",
          path: "/infer",
          headers: { "content-type": "application/x-www-form-urlencoded" },
          body: "{\"prompt\":\"from curl\"}"
        })
        assert.strictEqual(response.status, 200)
        assert.strictEqual(response.json.prompt, "from curl")
      }).pipe(withRouter()))

    it.live("defaults a missing Content-Type to JSON", () =>
      Effect.gen(function*() {
        const response = yield* request({ method: "POST", path: "/infer", body: "{\"prompt\":\"bare\"}" })
        assert.strictEqual(response.status, 200)
        assert.strictEqual(response.json.prompt, "bare")
      }).pipe(withRouter()))
  })

  describe("client mistakes get a 4xx naming the problem", () => {
    it.live("invalid JSON: 400 invalid_json", () =>
      Effect.gen(function*() {
        assertError(yield* postInfer("{\"prompt\":"), 400, "invalid_json")
      }).pipe(withRouter()))

    it.live("prompt not a string: 400 invalid_body naming prompt", () =>
      Effect.gen(function*() {
        const response = yield* postInfer({ prompt: 42 })
        assertError(response, 400, "invalid_body")
        assert.include(response.json.error.message, "prompt")
      }).pipe(withRouter()))

    it.live("prompt missing: 400 invalid_body", () =>
      Effect.gen(function*() {
        const response = yield* postInfer({ text: "hi" })
        assertError(response, 400, "invalid_body")
        assert.include(response.json.error.message, "prompt")
      }).pipe(withRouter()))

    it.live("body not an object: 400 invalid_body", () =>
      Effect.gen(function*() {
        assertError(yield* postInfer("[\"hi\"]"), 400, "invalid_body")
        assertError(yield* postInfer("\"hi\""), 400, "invalid_body")
        assertError(yield* postInfer("null"), 400, "invalid_body")
      }).pipe(withRouter()))

    it.live("empty body: 400 naming the missing body", () =>
      Effect.gen(function*() {
        const response = yield* postInfer("")
        assertError(response, 400, "invalid_body")
        assert.include(response.json.error.message, "empty")
      }).pipe(withRouter()))

    it.live("unsupported content type: 415 telling the client to send JSON", () =>
      Effect.gen(function*() {
        const response = yield* request({
          method: "POST",
          path: "/infer",
          headers: { "content-type": "text/plain" },
          body: "hello"
        })
        assertError(response, 415, "unsupported_media_type")
        assert.include(response.json.error.message, "application/json")
      }).pipe(withRouter()))

    it.live("body over MAX_BODY_BYTES by Content-Length: 413", () =>
      Effect.gen(function*() {
        const response = yield* postInfer({ prompt: "x".repeat(2_000) })
        assertError(response, 413, "payload_too_large")
        assert.include(response.json.error.message, "MAX_BODY_BYTES")
      }).pipe(withRouter({ maxBodyBytes: 1_000 })))

    it.live("body over MAX_BODY_BYTES without Content-Length: 413 while reading", () =>
      Effect.gen(function*() {
        const response = yield* request({
          method: "POST",
          path: "/infer",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "x".repeat(5_000) }),
          chunked: true
        })
        assertError(response, 413, "payload_too_large")
        // the router still serves afterwards
        assert.strictEqual((yield* postInfer({ prompt: "ok" })).status, 200)
      }).pipe(withRouter({ maxBodyBytes: 1_000 })))

    it.live("a body that keeps coming past MAX_BODY_BYTES: 413 and the connection closed, not read to the end", () =>
      Effect.gen(function*() {
        const port = yield* serverPort
        const answer = yield* Effect.promise(() =>
          new Promise<string>((resolve, reject) => {
            const socket = Net.connect(port, "127.0.0.1")
            let received = ""
            socket.on("data", (data) => (received += data.toString("latin1")))
            // The server ends the connection although the body never ends.
            socket.on("close", () => resolve(received))
            socket.on("error", (error) => (received === "" ? reject(error) : resolve(received)))
            socket.write(
              "POST /infer HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            )
            const chunk = "x".repeat(4_096)
            const feed = setInterval(() => {
              if (socket.destroyed) return clearInterval(feed)
              socket.write(`${chunk.length.toString(16)}\r\n${chunk}\r\n`)
            }, 5)
            socket.on("close", () => clearInterval(feed))
          })
        )
        assert.match(answer, /^HTTP\/1\.1 413 /)
        assert.match(answer, /\r\nconnection: close\r\n/i)
      }).pipe(withRouter({ maxBodyBytes: 1_000 })))

    it.live("unknown path: 404", () =>
      Effect.gen(function*() {
        const response = yield* request({ path: "/v2/engines?x=1" })
        assertError(response, 404, "not_found")
        assert.include(response.json.error.message, "/v2/engines")
      }).pipe(withRouter()))

    it.live("a query string does not change the route: POST /infer?x=1 is /infer", () =>
      Effect.gen(function*() {
        const response = yield* request({
          method: "POST",
          path: "/infer?trace=1",
          headers: { "content-type": "application/json" },
          body: JSON.stringify({ prompt: "q" })
        })
        assert.strictEqual(response.status, 200)
        assert.strictEqual(response.json.prompt, "q")
      }).pipe(withRouter()))

    it.live("known path, wrong method: 405 with Allow", () =>
      Effect.gen(function*() {
        const getInfer = yield* request({ path: "/infer" })
        assertError(getInfer, 405, "method_not_allowed")
        assert.strictEqual(getInfer.headers["allow"], "POST")
        const postHealth = yield* request({ method: "POST", path: "/healthz", body: "{}" })
        assertError(postHealth, 405, "method_not_allowed")
        assert.strictEqual(postHealth.headers["allow"], "GET, HEAD")
      }).pipe(withRouter()))

    it.live("invalid queue budget header: 400 naming the header", () =>
      Effect.gen(function*() {
        for (const value of ["soon", "-5", "1.5"]) {
          const response = yield* postInfer({ prompt: "x" }, { "x-queue-timeout-ms": value })
          assertError(response, 400, "invalid_header")
          assert.include(response.json.error.message, "x-queue-timeout-ms")
        }
      }).pipe(withRouter()))
  })

  describe("overload", () => {
    const overloadedScenario = (settings: Partial<RouterSettings>, status: number) =>
      Effect.gen(function*() {
        const { gate, model } = yield* gatedModel
        yield* Effect.gen(function*() {
          const first = yield* Effect.forkChild(postInfer({ prompt: "first" }))
          yield* untilStats(1, 0)
          const shed = yield* postInfer({ prompt: "second" })
          assertError(shed, status, "queue_full")
          assert.strictEqual(shed.headers["x-router-reject-reason"], "queue_full")
          assert.isAtLeast(Number(shed.headers["retry-after"]), 1)
          assert.isTrue(Number.isInteger(Number(shed.headers["retry-after"])))
          yield* gate.open
          assert.strictEqual((yield* Fiber.join(first)).status, 200)
        }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 0, ...settings }, model))
      })

    it.live("all slots busy and no queue: 429 with Retry-After and the reason", () =>
      overloadedScenario({}, 429))

    it.live("OVERLOAD_STATUS=503 sheds with 503 and the same body and headers", () =>
      overloadedScenario({ overloadStatus: 503 }, 503))

    it.live("a queue budget of 0 is shed at once with queue_timeout; a budget that runs out too", () =>
      Effect.gen(function*() {
        const { gate, model } = yield* gatedModel
        yield* Effect.gen(function*() {
          const first = yield* Effect.forkChild(postInfer({ prompt: "first" }))
          yield* untilStats(1, 0)
          const now = yield* postInfer({ prompt: "now or never" }, { "x-queue-timeout-ms": "0" })
          assertError(now, 429, "queue_timeout")
          assert.strictEqual(now.headers["x-router-reject-reason"], "queue_timeout")
          const soon = yield* postInfer({ prompt: "briefly" }, { "x-queue-timeout-ms": "30" })
          assertError(soon, 429, "queue_timeout")
          assert.isAtLeast(Number(soon.headers["retry-after"]), 1)
          yield* gate.open
          assert.strictEqual((yield* Fiber.join(first)).status, 200)
        }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 5 }, model))
      }))

    it.live("queued requests are served once a slot frees", () =>
      Effect.gen(function*() {
        const { gate, model } = yield* gatedModel
        yield* Effect.gen(function*() {
          const fibers = yield* Effect.forEach([1, 2, 3], (i) => Effect.forkChild(postInfer({ prompt: `p${i}` })))
          yield* untilStats(1, 2)
          yield* gate.open
          const responses = yield* Fiber.joinAll(fibers)
          assert.deepStrictEqual(responses.map((r) => r.status), [200, 200, 200])
        }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 2 }, model))
      }))
  })

  describe("typed client", () => {
    const client = Effect.gen(function*() {
      const port = yield* serverPort
      return yield* HttpApiClient.make(RouterApi, {
        transformClient: HttpClient.mapRequest(HttpClientRequest.prependUrl(`http://127.0.0.1:${port}`))
      })
    }).pipe(Effect.provide(FetchHttpClient.layer))

    it.live("decodes success, response headers and declared errors", () =>
      Effect.gen(function*() {
        const { gate, model } = yield* gatedModel
        yield* Effect.gen(function*() {
          const api = yield* client
          assert.deepStrictEqual(yield* api.healthz(), { status: "ok" })
          const running = yield* Effect.forkChild(api.infer({ payload: { prompt: "typed" }, headers: {} }))
          yield* untilStats(1, 0)
          const error = yield* Effect.flip(api.infer({ payload: { prompt: "shed" }, headers: {} }))
          assert.instanceOf(error, Overloaded)
          assert.strictEqual((error as Overloaded).code, "queue_full")
          assert.isAtLeast((error as Overloaded).retryAfterSeconds, 1)
          yield* gate.open
          const result = yield* Fiber.join(running)
          assert.strictEqual(result.body.prompt, "typed")
          assert.match(result.headers["server-timing"], /^queue;dur=/)
        }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 0 }, model))
      }).pipe(Effect.provide(Layer.empty)))

    it.live("the OpenAI-compatible endpoints are in the contract: typed calls decode their answers and errors", () =>
      Effect.gen(function*() {
        const api = yield* client
        const completion = yield* api.completions({ payload: { model: "test-model", prompt: "x y", max_tokens: 1 }, headers: {} })
        assert.strictEqual(completion.object, "text_completion")
        assert.strictEqual(completion.usage?.completion_tokens, 1)
        const chat = yield* api.chatCompletions({ payload: { messages: [{ role: "user", content: "hi" }] }, headers: {} })
        assert.strictEqual(chat.choices[0].message.role, "assistant")
        assert.deepStrictEqual((yield* api.models()).data.map((m) => m.id), ["test-model"])
        const error = yield* Effect.flip(api.completions({ payload: { model: "nope", prompt: "x" }, headers: {} }))
        assert.instanceOf(error, OpenAiError)
        assert.strictEqual((error as OpenAiError).code, "model_not_found")
        assert.strictEqual((error as OpenAiError).status, 404)
      }).pipe(withRouter({ modelRef: "test-model" })))
  })
})
