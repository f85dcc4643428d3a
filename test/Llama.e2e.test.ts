/**
 * A real inference engine in the loop: node-llama-cpp (llama.cpp's CPU
 * build, one thread) runs the tiny random-weight model that
 * scripts/make-tiny-gguf.ts writes, behind a small OpenAI-compatible server
 * (support/llama-server.ts); the router forwards to it (MODEL_BACKEND=upstream)
 * and the official `openai` SDK talks to the router.
 */
import OpenAI from "openai"
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { getLlama, LlamaLogLevel, readGgufFileInfo } from "node-llama-cpp"
import { afterAll, afterEach, assert, beforeAll, describe, it } from "vitest"
import { makeTinyGguf } from "../scripts/make-tiny-gguf.ts"
import { freePort, killAll, startProcess } from "./support/Processes.ts"
import { metricValue, startFront, waitFor } from "./support/Routers.ts"

const dir = mkdtempSync(join(tmpdir(), "tiny-llama-"))
const modelPath = join(dir, "tiny-random-llama.gguf")
/** The known-good file this generator was checked against; not the project's, so not always at hand. */
const reference = join(import.meta.dirname, "../../shared/reference/tiny-random-llama.gguf")

beforeAll(() => writeFileSync(modelPath, makeTinyGguf()))
afterAll(() => rmSync(dir, { recursive: true, force: true }))
afterEach(killAll)

const startLlama = async () => {
  const port = await freePort()
  const server = startProcess(["test/support/llama-server.ts", modelPath, String(port)], {})
  const deadline = Date.now() + 30_000
  while (!server.output().stdout.includes("llama server on")) {
    if (Date.now() > deadline) throw new Error(`the llama server did not start: ${server.output().stderr}`)
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  return { ...server, port }
}

describe("a real model server behind the router", () => {
  it("the generator writes the same bytes every run, and llama.cpp loads and tokenizes them", async () => {
    assert.isTrue(makeTinyGguf().equals(makeTinyGguf()))
    const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error })
    const model = await llama.loadModel({ modelPath })
    assert.deepStrictEqual(model.detokenize(model.tokenize("the model router is ready")), "the model router is ready")
    assert.strictEqual(model.tokenize("the model router is ready").length, 5)
    await model.dispose()
  })

  it.skipIf(!existsSync(reference))("has the known-good file's architecture and tensor shapes (vocabulary aside)", async () => {
    const [ours, theirs] = await Promise.all([modelPath, reference].map((path) => readGgufFileInfo(path, { readTensorInfo: true })))
    assert.deepStrictEqual(ours.metadata.llama, theirs.metadata.llama)
    assert.strictEqual(ours.metadata.general.architecture, theirs.metadata.general.architecture)
    assert.strictEqual(ours.metadata.tokenizer.ggml.model, theirs.metadata.tokenizer.ggml.model)
    const shape = (info: typeof ours) => info.tensorInfo!.map((t) => `${t.name} ${t.dimensions.map((d, i) => i === 1 && /token_embd|output\.weight/.test(t.name) ? "vocab" : d)}`)
    assert.deepStrictEqual(shape(ours), shape(theirs))
  })

  it("the openai SDK streams real generated tokens through the router", async () => {
    const llamaServer = await startLlama()
    const front = await startFront([`http://127.0.0.1:${llamaServer.port}`], { MODEL_REF: "tiny-llama" })
    await waitFor(front.port)
    const client = new OpenAI({ baseURL: `http://127.0.0.1:${front.port}/v1`, apiKey: "unused", maxRetries: 0 })

    const stream = await client.chat.completions.create({
      model: "tiny-llama",
      messages: [{ role: "user", content: "the model router is ready" }],
      max_tokens: 12,
      stream: true,
      stream_options: { include_usage: true }
    })
    const pieces: Array<string> = []
    let finish: string | null = null
    let usage: OpenAI.CompletionUsage | undefined
    for await (const chunk of stream) {
      const choice = chunk.choices[0]
      if (choice?.delta.content) pieces.push(choice.delta.content)
      if (choice?.finish_reason) finish = choice.finish_reason
      if (chunk.usage) usage = chunk.usage
    }
    assert.isAbove(pieces.length, 1, "tokens arrive one by one")
    assert.strictEqual(usage?.completion_tokens, 12)
    assert.strictEqual(finish, "length")

    // Greedy decoding: the same prompt, not streamed, gives the same text.
    const whole = await client.chat.completions.create({
      model: "tiny-llama",
      messages: [{ role: "user", content: "the model router is ready" }],
      max_tokens: 12
    })
    assert.strictEqual(whole.choices[0].message.content, pieces.join(""))
    assert.strictEqual(
      await metricValue(front.port, `router_upstream_requests_total{upstream="127.0.0.1:${llamaServer.port}",version="",status="200"}`),
      2
    )

    // /infer in upstream mode: a completion of the prompt, answered in /infer's shape.
    const infer = await fetch(`http://127.0.0.1:${front.port}/infer`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ prompt: "hello" }) })
    assert.strictEqual(infer.status, 200)
    assert.strictEqual(infer.headers.get("x-inference-upstream"), `127.0.0.1:${llamaServer.port}`)
    const answer = await infer.json() as { modelRef: string; processingMs: number }
    assert.strictEqual(answer.modelRef, "tiny-llama")
  })
})
