/**
 * The OpenAI-compatible API driven by real clients written by other people:
 * the official `openai` SDK and the Vercel AI SDK's OpenAI-compatible
 * provider; plus the SSE framing byte for byte, overload as the SDK's
 * rate-limit error, breaking out of a stream, and a client that stops reading.
 */
import { createOpenAICompatible } from "@ai-sdk/openai-compatible"
import { assert, describe, it } from "@effect/vitest"
import { generateText, streamText } from "ai"
import { Effect } from "effect"
import * as Net from "node:net"
import OpenAI from "openai"
import { defaultSimulation, type RouterSettings } from "../src/router/core/Config.ts"
import { Model } from "../src/router/simulated/Model.ts"
import { exchangeAt, type LogLine, request, serverPort, TestRouter, untilAccessLines, untilStats } from "./support/TestRouter.ts"

const withRouter = (settings: Partial<RouterSettings> = {}, model?: Model["Service"]) =>
  Effect.provide(TestRouter({ modelRef: "test-model", ...settings }, model))

const sim = (overrides: Partial<RouterSettings["simulation"]>): Partial<RouterSettings> => ({
  simulation: { ...defaultSimulation, ...overrides }
})

const openai = Effect.map(serverPort, (port) =>
  new OpenAI({ baseURL: `http://127.0.0.1:${port}/v1`, apiKey: "unused", maxRetries: 0 }))

describe("OpenAI-compatible API with the official openai SDK", () => {
  it.live("completions: text, usage and finish reason", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const completion = yield* Effect.promise(() =>
        client.completions.create({ model: "test-model", prompt: "one two three four five six", max_tokens: 4 })
      )
      assert.strictEqual(completion.object, "text_completion")
      assert.strictEqual(completion.model, "test-model")
      assert.strictEqual(completion.choices[0].text, "one two three four")
      assert.strictEqual(completion.choices[0].finish_reason, "length")
      assert.deepStrictEqual(completion.usage, { prompt_tokens: 6, completion_tokens: 4, total_tokens: 10, prompt_tokens_details: { cached_tokens: 0 } })
    }).pipe(withRouter(sim({ mode: "echo" }))))

  it.live("chat: echo of the last user message; a stop sequence ends it with finish_reason stop", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const chat = yield* Effect.promise(() =>
        client.chat.completions.create({
          model: "test-model",
          messages: [{ role: "system", content: "be brief" }, { role: "user", content: "alpha beta gamma delta" }],
          stop: [" gamma"]
        })
      )
      assert.strictEqual(chat.object, "chat.completion")
      assert.strictEqual(chat.choices[0].message.role, "assistant")
      assert.strictEqual(chat.choices[0].message.content, "alpha beta")
      assert.strictEqual(chat.choices[0].finish_reason, "stop")
      assert.strictEqual(chat.usage?.prompt_tokens, 6)
      assert.strictEqual(chat.usage?.completion_tokens, 2)
    }).pipe(withRouter(sim({ mode: "echo" }))))

  it.live("random mode is seeded: the same request gives the same text, streamed or not", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const request = { model: "test-model", messages: [{ role: "user" as const, content: "tell me" }], max_tokens: 12, seed: 7 }
      const first = yield* Effect.promise(() => client.chat.completions.create(request))
      const second = yield* Effect.promise(() => client.chat.completions.create(request))
      assert.strictEqual(first.choices[0].message.content, second.choices[0].message.content)
      const stream = yield* Effect.promise(() => client.chat.completions.create({ ...request, stream: true, stream_options: { include_usage: true } }))
      let text = ""
      let role: string | undefined
      let finish: string | null | undefined
      let usage: unknown
      yield* Effect.promise(async () => {
        for await (const chunk of stream) {
          if (chunk.usage) usage = chunk.usage
          const choice = chunk.choices[0]
          if (choice === undefined) continue
          role ??= choice.delta.role
          text += choice.delta.content ?? ""
          if (choice.finish_reason) finish = choice.finish_reason
        }
      })
      assert.strictEqual(role, "assistant")
      assert.strictEqual(text, first.choices[0].message.content)
      assert.strictEqual(finish, first.choices[0].finish_reason)
      assert.deepStrictEqual(usage, first.usage)
    }).pipe(withRouter(sim({ mode: "random" }))))

  it.live("breaking out of a stream mid-way frees the slot at once", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const stream = yield* Effect.promise(() =>
        client.chat.completions.create({ model: "test-model", messages: [{ role: "user", content: "x" }], max_tokens: 500, stream: true })
      )
      yield* untilStats(1, 0)
      let chunks = 0
      yield* Effect.promise(async () => {
        for await (const _ of stream) if (++chunks === 3) break
      })
      assert.strictEqual(chunks, 3)
      yield* untilStats(0, 0)
    }).pipe(withRouter({ maxConcurrency: 1, ...sim({ mode: "random", ttftMs: 5, itlMs: 20, maxTokens: 500 }) })))

  it.live("overload surfaces as the SDK's rate-limit error with the router's Retry-After and reason", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const running = client.chat.completions.create({ model: "test-model", messages: [{ role: "user", content: "x" }], max_tokens: 100, stream: true })
      yield* untilStats(1, 0)
      const error = yield* Effect.promise(() =>
        client.completions.create({ model: "test-model", prompt: "y" }).then(() => undefined, (e) => e)
      )
      assert.instanceOf(error, OpenAI.RateLimitError)
      assert.strictEqual(error.status, 429)
      assert.isAtLeast(Number(error.headers.get("retry-after")), 1)
      assert.strictEqual(error.headers.get("x-router-reject-reason"), "queue_full")
      assert.strictEqual((error.error as { type?: string } | undefined)?.type ?? (error as any).type, "rate_limit_error")
      const stream = yield* Effect.promise(() => running)
      stream.controller.abort()
    }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 0, ...sim({ ttftMs: 5, itlMs: 50, maxTokens: 100 }) })))

  it.live("queue budgets and overload answers work for streams as for /infer: a shed stream is a plain 429/503, not SSE", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const client = yield* openai
      const running = client.chat.completions.create({ model: "test-model", messages: [{ role: "user", content: "x" }], max_tokens: 100, stream: true })
      yield* untilStats(1, 0)
      const body = JSON.stringify({ model: "test-model", messages: [{ role: "user", content: "y" }], stream: true })
      const shed = (budget: string) =>
        Effect.promise(() =>
          exchangeAt(port, `POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-queue-timeout-ms: ${budget}\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
        )
      const timedOut = yield* shed("0")
      assert.match(timedOut, /^HTTP\/1\.1 503 /)
      assert.match(timedOut, /\r\ncontent-type: application\/json\r\n/i)
      assert.match(timedOut, /\r\nx-router-reject-reason: queue_timeout\r\n/i)
      assert.match(timedOut, /\r\nretry-after: \d+\r\n/i)
      assert.include(timedOut, `"type":"service_unavailable"`)
      const invalid = yield* shed("0x10")
      assert.match(invalid, /^HTTP\/1\.1 400 /)
      assert.include(invalid, `"param":"x-queue-timeout-ms"`)
      const stream = yield* Effect.promise(() => running)
      stream.controller.abort()
    }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 5, overloadStatus: 503, ...sim({ ttftMs: 5, itlMs: 50, maxTokens: 100 }) })))

  it.live("a model this router does not serve is a 404, not a substitution; /v1/models lists the served one", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const error = yield* Effect.promise(() => client.completions.create({ model: "gpt-4", prompt: "x" }).then(() => undefined, (e) => e))
      assert.instanceOf(error, OpenAI.NotFoundError)
      assert.include(error.message, "gpt-4")
      const models = yield* Effect.promise(() => client.models.list())
      assert.deepStrictEqual(models.data.map((m) => m.id), ["test-model"])
    }).pipe(withRouter()))

  it.live("a forced failure (x-sim-failure) reaches the client as the SDK's typed error", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const failed = (type: string) =>
        Effect.promise(() =>
          client.completions.create({ model: "test-model", prompt: "x" }, { headers: { "x-sim-failure": type } }).then(() => undefined, (e) => e)
        )
      assert.instanceOf(yield* failed("rate_limit"), OpenAI.RateLimitError)
      assert.instanceOf(yield* failed("server_error"), OpenAI.InternalServerError)
      assert.instanceOf(yield* failed("invalid_api_key"), OpenAI.AuthenticationError)
      const context = yield* failed("context_length")
      assert.instanceOf(context, OpenAI.BadRequestError)
      assert.strictEqual(context.code, "context_length_exceeded")
      // As the real check names it on a completion.
      assert.strictEqual(context.param, "prompt")
    }).pipe(withRouter()))

  it.live("a prompt over the context length is a 400 naming the limit", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const error = yield* Effect.promise(() =>
        client.completions.create({ model: "test-model", prompt: "a b c d e f g h", max_tokens: 5 }).then(() => undefined, (e) => e)
      )
      assert.instanceOf(error, OpenAI.BadRequestError)
      assert.include(error.message, "maximum context length is 10 tokens")
    }).pipe(withRouter(sim({ maxModelLen: 10, maxTokens: 5 }))))

  it.live("without max_tokens the reply takes at most what the prompt leaves of the context, as vLLM's; a prompt that leaves nothing is a 400", () =>
    Effect.gen(function*() {
      const client = yield* openai
      const fits = yield* Effect.promise(() => client.completions.create({ model: "test-model", prompt: "a b c d e f g h" }))
      assert.isAtMost(fits.usage!.prompt_tokens + fits.usage!.completion_tokens, 10)
      assert.isAtLeast(fits.usage!.completion_tokens, 1)
      const full = yield* Effect.promise(() =>
        client.completions.create({ model: "test-model", prompt: "a b c d e f g h i j" }).then(() => undefined, (e) => e)
      )
      assert.instanceOf(full, OpenAI.BadRequestError)
      assert.include(full.message, "the prompt alone has 10 tokens")
    }).pipe(withRouter(sim({ maxModelLen: 10, maxTokens: 64 }))))
})

describe("OpenAI-compatible API with the Vercel AI SDK", () => {
  const provider = Effect.map(serverPort, (port) =>
    createOpenAICompatible({ name: "router", baseURL: `http://127.0.0.1:${port}/v1`, includeUsage: true }))

  it.live("generateText and streamText", () =>
    Effect.gen(function*() {
      const router = yield* provider
      const generated = yield* Effect.promise(() => generateText({ model: router.chatModel("test-model"), prompt: "red green blue", maxRetries: 0 }))
      assert.strictEqual(generated.text, "red green blue")
      assert.strictEqual(generated.finishReason, "stop")
      const streamed = streamText({ model: router.chatModel("test-model"), prompt: "one two three", maxRetries: 0 })
      const parts: Array<string> = []
      yield* Effect.promise(async () => {
        for await (const part of streamed.textStream) parts.push(part)
      })
      assert.strictEqual(parts.join(""), "one two three")
      assert.isAbove(parts.length, 1, "streamed in pieces")
      const usage = yield* Effect.promise(() => streamed.usage)
      assert.strictEqual(usage.outputTokens, 3)
    }).pipe(withRouter(sim({ mode: "echo", itlMs: 1 }))))
})

describe("server-sent events, byte for byte", () => {
  it.live("completions stream: data lines, a finish chunk, a usage chunk, [DONE]", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const body = JSON.stringify({ model: "test-model", prompt: "a b", max_tokens: 5, stream: true, stream_options: { include_usage: true } })
      const raw = yield* Effect.promise(() =>
        exchangeAt(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
      )
      const [head, ...rest] = raw.split("\r\n\r\n")
      assert.match(head, /^HTTP\/1\.1 200 /)
      assert.match(head, /\r\ncontent-type: text\/event-stream; charset=utf-8\r\n/i)
      assert.match(head, /\r\ncache-control: no-cache\r\n/i)
      // Chunked transfer encoding: join the chunks' payloads.
      const payload = rest.join("\r\n\r\n").replace(/(?:^|\r\n)[0-9a-f]+\r\n/g, "").replace(/\r\n$/, "")
      const events = payload.split("\n\n").filter((e) => e !== "")
      for (const event of events) assert.match(event, /^data: /)
      assert.strictEqual(events[events.length - 1], "data: [DONE]")
      const chunks = events.slice(0, -1).map((e) => JSON.parse(e.slice(6)))
      assert.deepStrictEqual(chunks.slice(0, 2).map((c) => c.choices[0].text), ["a", " b"])
      assert.deepStrictEqual(chunks[2].choices[0], { index: 0, text: "", logprobs: null, finish_reason: "stop" })
      assert.deepStrictEqual(chunks[3].choices, [])
      assert.deepStrictEqual(chunks[3].usage, { prompt_tokens: 2, completion_tokens: 2, total_tokens: 4, prompt_tokens_details: { cached_tokens: 0 } })
      assert.isTrue(chunks.every((c) => c.object === "text_completion" && c.id === chunks[0].id && c.model === "test-model"))
    }).pipe(withRouter(sim({ mode: "echo" }))))
})

describe("metrics an endpoint picker reads, and the access log", () => {
  it.live("vLLM's metrics with model_name after a streamed and a plain request; one access line each", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const client = yield* openai
      yield* Effect.promise(() => client.completions.create({ model: "test-model", prompt: "a b c", max_tokens: 2 }))
      const stream = yield* Effect.promise(() => client.chat.completions.create({ model: "test-model", messages: [{ role: "user", content: "x y z w" }], stream: true }))
      yield* Effect.promise(async () => {
        for await (const _ of stream) {
          // drain
        }
      })
      const text = (yield* request({ path: "/metrics" })).text
      const value = (series: string) => Number(text.split("\n").find((l) => l.startsWith(series + " "))?.slice(series.length + 1))
      const m = `model_name="test-model"`
      assert.strictEqual(value(`vllm:prompt_tokens_total{${m}}`), 7)
      assert.strictEqual(value(`vllm:generation_tokens_total{${m}}`), 6)
      // completions: 2 of 3 tokens (length); chat: all 4 (stop).
      assert.strictEqual(value(`vllm:request_success_total{finished_reason="length",${m}}`), 1)
      assert.strictEqual(value(`vllm:request_success_total{finished_reason="stop",${m}}`), 1)
      for (const histogram of ["time_to_first_token_seconds", "e2e_request_latency_seconds", "request_queue_time_seconds"]) {
        assert.strictEqual(value(`vllm:${histogram}_count{${m}}`), 2, histogram)
      }
      assert.strictEqual(value(`vllm:inter_token_latency_seconds_count{${m}}`), 4, "one gap per token after the first")
      assert.strictEqual(value(`vllm:kv_cache_usage_perc{${m}}`), 0)
      assert.strictEqual(value(`vllm:num_requests_running{${m}}`), 0)
      const lines = yield* untilAccessLines(logs, 2)
      assert.deepStrictEqual(lines.map((l) => [l.annotations.path, l.annotations.status]), [["/v1/completions", 200], ["/v1/chat/completions", 200]])
      assert.notInclude(JSON.stringify(lines), "x y z w", "no prompt text in logs")
    }).pipe(Effect.provide(TestRouter({ modelRef: "test-model", ...sim({ mode: "echo" }) }, undefined, { logs })))
  })
})

describe("failures", () => {
  it.live("a model that fails after the stream started ends it with one error frame, then [DONE]", () => {
    const base = Model.simulated(0, { ...defaultSimulation, mode: "echo" })
    const failing = Model.of({
      infer: base.infer,
      generate: (request, onToken) =>
        base.generate(request, (token, i) => i === 2 ? Effect.die(new Error("model crashed")) : onToken(token, i))
    })
    return Effect.gen(function*() {
      const port = yield* serverPort
      const body = JSON.stringify({ model: "test-model", prompt: "a b c d e", stream: true })
      const raw = yield* Effect.promise(() =>
        exchangeAt(port, `POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`)
      )
      assert.match(raw, /^HTTP\/1\.1 200 /)
      const events = raw.split("\r\n\r\n").slice(1).join("").replace(/(?:^|\r\n)[0-9a-f]+\r\n/g, "").split("\n\n").filter((e) => e.startsWith("data: "))
      assert.strictEqual(events.at(-1), "data: [DONE]")
      assert.strictEqual(JSON.parse(events.at(-2)!.slice(6)).error.type, "server_error")
      assert.lengthOf(events, 4, "two tokens, the error frame, [DONE]")
    }).pipe(withRouter({}, failing))
  })

  it.live("SIM_FAILURE_RATE=100 fails every request with one of SIM_FAILURE_TYPES", () =>
    Effect.gen(function*() {
      const client = yield* openai
      for (let i = 0; i < 5; i++) {
        const error = yield* Effect.promise(() => client.completions.create({ model: "test-model", prompt: "x" }).then(() => undefined, (e) => e))
        assert.instanceOf(error, OpenAI.RateLimitError)
        assert.strictEqual(error.code, "rate_limit_exceeded")
      }
    }).pipe(withRouter(sim({ failureRate: 100, failureTypes: ["rate_limit"] }))))
})

describe("backpressure", () => {
  it.live("a client that stops reading pauses the generation instead of making the router buffer", () => {
    let emitted = 0
    const base = Model.simulated(0, { ...defaultSimulation, mode: "echo", maxTokens: 100_000, maxModelLen: 300_000 })
    const counting = Model.of({
      infer: base.infer,
      generate: (request, onToken) => base.generate(request, (token, i) => Effect.suspend(() => (emitted++, onToken(token, i))))
    })
    return Effect.gen(function*() {
      const port = yield* serverPort
      const prompt = "w ".repeat(100_000)
      const body = JSON.stringify({ model: "test-model", prompt, max_tokens: 100_000, stream: true })
      const socket = Net.connect(port, "127.0.0.1")
      yield* Effect.promise(() => new Promise((resolve) => socket.once("connect", resolve)))
      socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`)
      socket.pause()
      // Not reading: the generation stalls once the socket's buffers are full (unpaused,
      // the whole 15 MB stream takes about a second). The kernel grows loopback buffers for
      // a while, so a little progress is possible; finishing is not.
      yield* Effect.sleep(1_500)
      assert.isAbove(emitted, 0, "it started")
      assert.isBelow(emitted, 100_000, "paused, not finished: the router did not buffer the rest")
      // Reading again lets it finish.
      let received = ""
      socket.on("data", (chunk) => (received += chunk.toString("latin1").slice(-64)))
      socket.resume()
      yield* Effect.promise(() => new Promise<void>((resolve) => {
        const check = setInterval(() => {
          if (received.includes("data: [DONE]")) {
            clearInterval(check)
            resolve()
          }
        }, 20)
      }))
      assert.strictEqual(emitted, 100_000)
      socket.destroy()
    }).pipe(withRouter({
      maxBodyBytes: 4 * 1024 * 1024,
      // 0: a client that stops reading is never cut off, however long it pauses (here 1.5 s).
      clientStallTimeoutMs: 0,
      ...sim({ mode: "echo", maxTokens: 100_000, maxModelLen: 300_000 })
    }, counting))
  }, 60_000)
})
