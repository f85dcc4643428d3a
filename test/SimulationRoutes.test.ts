/**
 * The simulated server over HTTP, as vLLM serves it: cached tokens in usage
 * (streamed usage too), /tokenize and /detokenize, /reset_prefix_cache, the
 * prefix-cache and KV-cache metrics, and a prompt the whole cache can't hold.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Redacted } from "effect"
import { defaultSimulation, type RouterSettings } from "../src/router/core/Config.ts"
import { vocabularyLimits } from "../src/router/simulated/SimulationRoutes.ts"
import { Vocabulary } from "../src/router/simulated/Tokens.ts"
import { request, TestRouter } from "./support/TestRouter.ts"

const withRouter = (simulation: Partial<RouterSettings["simulation"]>, settings: Partial<RouterSettings> = {}) =>
  Effect.provide(TestRouter({ modelRef: "test-model", ...settings, simulation: { ...defaultSimulation, mode: "echo", ...simulation } }))

const post = (path: string, body: unknown) =>
  request({ method: "POST", path, headers: { "content-type": "application/json" }, body: JSON.stringify(body) })

const words = (n: number) => Array.from({ length: n }, (_, i) => `w${i}`).join(" ")

describe("the simulated server over HTTP", () => {
  it.live("usage.prompt_tokens_details.cached_tokens: 0 cold, the cached blocks' tokens again, streamed too; 0 after /reset_prefix_cache", () =>
    Effect.gen(function*() {
      const body = { model: "test-model", prompt: words(10), max_tokens: 2 }
      const cold = yield* post("/v1/completions", body)
      assert.deepStrictEqual(cold.json.usage, { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12, prompt_tokens_details: { cached_tokens: 0 } })
      const warm = yield* post("/v1/completions", body)
      // Blocks of 4: two full blocks of the 10-token prompt are cached.
      assert.deepStrictEqual(warm.json.usage.prompt_tokens_details, { cached_tokens: 8 })
      const streamed = yield* post("/v1/completions", { ...body, stream: true, stream_options: { include_usage: true } })
      const usage = streamed.text.split("\n\n").filter((line) => line.startsWith("data: {")).map((line) => JSON.parse(line.slice(6))).find((chunk) => chunk.usage)
      assert.deepStrictEqual(usage.usage.prompt_tokens_details, { cached_tokens: 8 })
      // vLLM reads no body: not JSON is no error.
      const reset = yield* request({ method: "POST", path: "/reset_prefix_cache", headers: { "content-type": "text/plain" }, body: "not json" })
      assert.strictEqual(reset.status, 200)
      const after = yield* post("/v1/completions", body)
      assert.deepStrictEqual(after.json.usage.prompt_tokens_details, { cached_tokens: 0 })

      const metrics = (yield* request({ path: "/metrics" })).text
      assert.match(metrics, /vllm:prefix_cache_queries_total\{model_name="test-model"\} 40/)
      assert.match(metrics, /vllm:prefix_cache_hits_total\{model_name="test-model"\} 16/)
      assert.match(metrics, /vllm:num_preemptions_total\{model_name="test-model"\} 0\b/)
      assert.match(metrics, /vllm:cache_config_info\{[^}]*block_size="4"[^}]*\} 1/)
      assert.match(metrics, /vllm:cache_config_info\{[^}]*num_gpu_blocks="64"[^}]*\} 1/)
      assert.match(metrics, /vllm:kv_cache_usage_perc\{model_name="test-model"\} 0\b/)
      assert.match(metrics, /vllm:num_requests_waiting\{model_name="test-model"\} 0\b/)
      assert.match(metrics, /vllm:lora_requests_info\{/)
      assert.match(metrics, /vllm:request_time_per_output_token_seconds_count\{model_name="test-model"\} 4/)
      // vLLM's buckets (vllm/v1/metrics/loggers.py), each histogram its own.
      const bounds = (name: string) => [...metrics.matchAll(new RegExp(`^${name}_bucket\\{[^}]*le="([^"]+)"`, "gm"))].map((match) => match[1])
      const ttft = ["0.001", "0.005", "0.01", "0.02", "0.04", "0.06", "0.08", "0.1", "0.25", "0.5", "0.75", "1", "2.5", "5", "7.5", "10", "20", "40", "80", "160", "640", "2560", "+Inf"]
      const perToken = ["0.01", "0.025", "0.05", "0.075", "0.1", "0.15", "0.2", "0.3", "0.4", "0.5", "0.75", "1", "2.5", "5", "7.5", "10", "20", "40", "80", "+Inf"]
      const latency = ["0.3", "0.5", "0.8", "1", "1.5", "2", "2.5", "5", "10", "15", "20", "30", "40", "50", "60", "120", "240", "480", "960", "1920", "7680", "+Inf"]
      assert.deepStrictEqual(bounds("vllm:time_to_first_token_seconds"), ttft)
      assert.deepStrictEqual(bounds("vllm:inter_token_latency_seconds"), perToken)
      assert.deepStrictEqual(bounds("vllm:request_time_per_output_token_seconds"), perToken)
      assert.deepStrictEqual(bounds("vllm:e2e_request_latency_seconds"), latency)
      assert.deepStrictEqual(bounds("vllm:request_queue_time_seconds"), latency)
    }).pipe(withRouter({ blockSize: 4, kvBlocks: 64 })))

  it.live("a reply sent back (a chat's next turn, a completion prompt + a blank + its output) is found cached through the reply's full blocks", () =>
    Effect.gen(function*() {
      const messages = [{ role: "system", content: words(6) }, { role: "user", content: words(6).replaceAll("w", "u") }]
      // 12 prompt tokens and 6 echoed: blocks 0-2 of the prompt, block 3 = the reply's first 4 tokens.
      const first = yield* post("/v1/chat/completions", { model: "test-model", messages, max_tokens: 6 })
      const reply = first.json.choices[0].message.content
      assert.strictEqual(reply, "u0 u1 u2 u3 u4 u5")
      const next = yield* post("/v1/chat/completions", {
        model: "test-model",
        messages: [...messages, { role: "assistant", content: reply }, { role: "user", content: "and then what" }],
        max_tokens: 1
      })
      assert.strictEqual(next.json.usage.prompt_tokens, 21)
      assert.deepStrictEqual(next.json.usage.prompt_tokens_details, { cached_tokens: 16 }, "through the reply's first block")

      const prompt = words(12).replaceAll("w", "c")
      const completion = yield* post("/v1/completions", { model: "test-model", prompt, max_tokens: 6 })
      const followUp = yield* post("/v1/completions", { model: "test-model", prompt: `${prompt} ${completion.json.choices[0].text} more`, max_tokens: 1 })
      assert.strictEqual(followUp.json.usage.prompt_tokens, 19)
      assert.deepStrictEqual(followUp.json.usage.prompt_tokens_details, { cached_tokens: 16 })
    }).pipe(withRouter({ blockSize: 4, kvBlocks: 64 })))

  it.live("/tokenize gives vLLM's answer (ids, count, max_model_len); /detokenize turns its ids back into the text", () =>
    Effect.gen(function*() {
      const tokenized = yield* post("/tokenize", { model: "test-model", prompt: "Hello, big  world", return_token_strs: true })
      assert.strictEqual(tokenized.status, 200)
      assert.strictEqual(tokenized.json.count, 3)
      assert.strictEqual(tokenized.json.max_model_len, 4096)
      assert.deepStrictEqual(tokenized.json.token_strs, ["Hello,", " big", "  world"])
      const chat = yield* post("/tokenize", { messages: [{ role: "system", content: "be brief" }, { role: "user", content: "Hello, big  world" }] })
      assert.strictEqual(chat.json.count, 5)
      // "\nHello," (the newline joining messages is part of the token), then the same ids.
      assert.deepStrictEqual(chat.json.tokens.slice(3), tokenized.json.tokens.slice(1))
      assert.isNull(chat.json.token_strs)
      const detokenized = yield* post("/detokenize", { tokens: tokenized.json.tokens })
      assert.deepStrictEqual(detokenized.json, { prompt: "Hello, big  world" })
      const unknown = yield* post("/detokenize", { tokens: [tokenized.json.tokens[0], 12345] })
      assert.strictEqual(unknown.status, 400)
      assert.match(unknown.json.error.message, /token id 12345 is unknown/)
      const bad = yield* post("/tokenize", { prompt: 7 })
      assert.strictEqual(bad.status, 400)
      assert.match(bad.json.error.message, /invalid request body/)
      const wrongModel = yield* post("/tokenize", { model: "other", prompt: "x" })
      assert.strictEqual(wrongModel.status, 404)
    }).pipe(withRouter({})))

  it.live("bad input to vLLM's routes is a 4xx naming what is wrong, never a 5xx", () =>
    Effect.gen(function*() {
      const tooBig = yield* post("/tokenize", { prompt: "x ".repeat(2_000) })
      assert.strictEqual(tooBig.status, 413)
      assert.match(tooBig.json.error.message, /MAX_BODY_BYTES \(1024\)/)
      const notJson = yield* request({ method: "POST", path: "/detokenize", headers: { "content-type": "application/json" }, body: "{" })
      assert.strictEqual(notJson.status, 400)
      assert.match(notJson.json.error.message, /not valid JSON/)
      const negative = yield* post("/detokenize", { tokens: [-1] })
      assert.strictEqual(negative.status, 400)
      const wrongMethod = yield* request({ path: "/reset_prefix_cache" })
      assert.strictEqual(wrongMethod.status, 405)
    }).pipe(withRouter({}, { maxBodyBytes: 1024 })))

  it.live("with API_KEYS, vLLM's routes want the bearer token too", () =>
    Effect.gen(function*() {
      const denied = yield* post("/reset_prefix_cache", {})
      assert.strictEqual(denied.status, 401)
      assert.strictEqual(denied.json.error.code, "invalid_api_key")
      // As every 401 of the router: the scheme to use, and OpenAI's four error fields.
      assert.strictEqual(denied.headers["www-authenticate"], `Bearer realm="inference-router"`)
      assert.deepStrictEqual(Object.keys(denied.json.error).sort(), ["code", "message", "param", "type"])
      const allowed = yield* request({ method: "POST", path: "/tokenize", headers: { authorization: "Bearer k1" }, body: JSON.stringify({ prompt: "a b" }) })
      assert.strictEqual(allowed.status, 200)
      assert.strictEqual(allowed.json.count, 2)
    }).pipe(withRouter({}, { apiKeys: [Redacted.make("k1")] })))

  it.live("a prompt longer than the whole KV cache is a 400; one that fits is served", () =>
    Effect.gen(function*() {
      const tooLong = yield* post("/v1/completions", { model: "test-model", prompt: words(17), max_tokens: 1 })
      assert.strictEqual(tooLong.status, 400)
      assert.strictEqual(tooLong.json.error.code, "context_length_exceeded")
      assert.match(tooLong.json.error.message, /SIM_KV_BLOCKS/)
      const fits = yield* post("/v1/completions", { model: "test-model", prompt: words(16), max_tokens: 1 })
      assert.strictEqual(fits.status, 200)
    }).pipe(withRouter({ blockSize: 4, kvBlocks: 4 })))
})

describe("/detokenize's memory of /tokenize (bounded by bytes)", () => {
  it.live("a token longer than the limit is not kept: /detokenize names what it cannot answer", () =>
    Effect.gen(function*() {
      // Non-blanks are cut every 16 characters: a token this long is mostly the blanks before it.
      const long = `${" ".repeat(vocabularyLimits.maxTokenChars)}x`
      const tokenized = yield* post("/tokenize", { prompt: `short${long}` })
      assert.strictEqual(tokenized.json.count, 2)
      const shortOne = yield* post("/detokenize", { tokens: [tokenized.json.tokens[0]] })
      assert.deepStrictEqual(shortOne.json, { prompt: "short" })
      const longOne = yield* post("/detokenize", { tokens: [tokenized.json.tokens[1]] })
      assert.strictEqual(longOne.status, 400)
      assert.include(longOne.json.error.message, `up to ${vocabularyLimits.maxTokenChars} characters`)
    }).pipe(withRouter({})))

  it("keeps at most maxChars characters and maxEntries tokens, forgetting the least recently used first", () => {
    const vocabulary = new Vocabulary(100, 5, 30)
    for (let i = 0; i < 50; i++) {
      vocabulary.remember(i, "y".repeat(i % 31))
      assert.isAtMost(vocabulary.size.chars, 100)
      assert.isAtMost(vocabulary.size.entries, 5)
    }
    vocabulary.remember(100, "a")
    vocabulary.remember(101, "b")
    vocabulary.lookUp(100)
    for (let i = 0; i < 3; i++) vocabulary.remember(200 + i, "c")
    assert.strictEqual(vocabulary.lookUp(100), "a", "recently used: kept")
    vocabulary.remember(300, "d")
    assert.isUndefined(vocabulary.lookUp(101), "least recently used: forgotten")
    vocabulary.remember(400, "z".repeat(31))
    assert.isUndefined(vocabulary.lookUp(400), "longer than maxTokenChars: not kept")
  })

  it("forgets in least-recently-used order over any mix of remembering and looking up (against a plain model)", () => {
    const vocabulary = new Vocabulary(60, 8, 10)
    const model: Array<[number, string]> = []
    let seed = 7
    const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
    for (let step = 0; step < 20_000; step++) {
      const id = Math.floor(random() * 40)
      if (random() < 0.6) {
        const text = "t".repeat(1 + Math.floor(random() * 10))
        vocabulary.remember(id, text)
        const at = model.findIndex(([known]) => known === id)
        if (at !== -1) model.splice(at, 1)
        model.push([id, text])
        while (model.reduce((sum, [, t]) => sum + t.length, 0) > 60 || model.length > 8) model.shift()
      } else {
        const at = model.findIndex(([known]) => known === id)
        const expected = at === -1 ? undefined : model[at][1]
        if (at !== -1) model.push(...model.splice(at, 1))
        assert.strictEqual(vocabulary.lookUp(id), expected, `step ${step}, id ${id}`)
      }
      assert.strictEqual(vocabulary.size.entries, model.length)
    }
  })
})
