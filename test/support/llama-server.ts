/**
 * A small OpenAI-compatible model server around a real inference engine
 * (node-llama-cpp, i.e. llama.cpp on the CPU, one thread) for end-to-end
 * tests of MODEL_BACKEND=upstream. Run as its own process:
 *
 *   node test/support/llama-server.ts <model.gguf> <port>
 *
 * It serves what the router forwards: `GET /health`, `POST /v1/completions`
 * and `POST /v1/chat/completions`, JSON or SSE framed as vLLM frames them.
 * One generation at a time (one context sequence); greedy decoding, so the
 * same prompt gives the same tokens. A client that goes away aborts its
 * generation. Not a product: only what the tests need.
 */
import { getLlama, LlamaCompletion, LlamaLogLevel, type Token, TokenBias } from "node-llama-cpp"
import { randomUUID } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"

const [modelPath, portText] = process.argv.slice(2)
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error })
const model = await llama.loadModel({ modelPath })
const context = await model.createContext({ contextSize: 512, threads: 1 })
const sequence = context.getSequence()
const completion = new LlamaCompletion({ contextSequence: sequence })
// Random weights would pick single-byte tokens too, and their bytes are seldom valid UTF-8 alone:
// the vocabulary's words only (ids 3-258 are the byte tokens; see scripts/make-tiny-gguf.ts). The
// control tokens (0-2) too, so a generation always runs to max_tokens: where it would end with
// random weights may differ between CPUs' arithmetic, and the tests must not depend on it.
const wordsOnly = new TokenBias(model.tokenizer)
for (let id = 0; id < 259; id++) wordsOnly.set(id as Token, "never")

let generations = 0
let queue: Promise<unknown> = Promise.resolve()
/** One generation at a time, in arrival order. */
const serially = <A>(work: () => Promise<A>): Promise<A> => {
  const next = queue.then(work, work)
  queue = next.catch(() => undefined)
  return next
}

const readJson = (request: IncomingMessage): Promise<any> =>
  new Promise((resolve, reject) => {
    let text = ""
    request.setEncoding("utf8")
    request.on("data", (chunk) => (text += chunk))
    request.on("end", () => {
      try {
        resolve(JSON.parse(text))
      } catch (error) {
        reject(error)
      }
    })
  })

const send = (response: ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

const generate = async (request: IncomingMessage, response: ServerResponse, chat: boolean) => {
  const body = await readJson(request)
  const prompt: string = chat
    ? body.messages.map((message: { content: string }) => message.content).join("\n")
    : body.prompt
  const maxTokens: number = body.max_completion_tokens ?? body.max_tokens ?? 16
  const id = `${chat ? "chatcmpl" : "cmpl"}-${randomUUID()}`
  const created = Math.floor(Date.now() / 1000)
  const object = chat ? "chat.completion.chunk" : "text_completion"
  const aborted = new AbortController()
  response.on("close", () => {
    if (!response.writableFinished) aborted.abort()
  })
  const frame = (data: unknown) => response.write(`data: ${JSON.stringify(data)}\n\n`)
  const choice = (text: string | undefined, finish: string | null, first = false) =>
    chat
      ? { index: 0, delta: first ? { role: "assistant", content: text ?? "" } : text === undefined ? {} : { content: text }, logprobs: null, finish_reason: finish }
      : { index: 0, text: text ?? "", logprobs: null, finish_reason: finish }
  if (body.stream) {
    response.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" })
    response.flushHeaders()
  }
  await serially(async () => {
    if (aborted.signal.aborted) return
    generations++
    await sequence.clearHistory()
    let first = true
    let tokens = 0
    const promptTokens = model.tokenize(prompt).length
    const { metadata, response: text } = await completion.generateCompletionWithMeta(prompt, {
      maxTokens,
      temperature: 0,
      tokenBias: wordsOnly,
      signal: aborted.signal,
      stopOnAbortSignal: true,
      onToken: (generated) => {
        tokens += generated.length
      },
      onTextChunk: (chunk) => {
        if (!body.stream) return
        frame({ id, object, created, model: body.model, choices: [choice(chunk, null, first && chat)] })
        first = false
      }
    })
    const finish = metadata.stopReason === "maxTokens" ? "length" : "stop"
    const usage = { prompt_tokens: promptTokens, completion_tokens: tokens, total_tokens: promptTokens + tokens }
    if (aborted.signal.aborted) return
    if (body.stream) {
      frame({ id, object, created, model: body.model, choices: [choice(undefined, finish)] })
      if (body.stream_options?.include_usage) frame({ id, object, created, model: body.model, choices: [], usage })
      response.end("data: [DONE]\n\n")
      return
    }
    send(response, 200, {
      id,
      object: chat ? "chat.completion" : "text_completion",
      created,
      model: body.model,
      choices: [chat
        ? { index: 0, message: { role: "assistant", content: text }, logprobs: null, finish_reason: finish }
        : { index: 0, text, logprobs: null, finish_reason: finish }],
      usage
    })
  })
}

const server = createServer((request, response) => {
  if (request.method === "GET" && request.url === "/health") return send(response, 200, {})
  if (request.method === "GET" && request.url === "/stats") return send(response, 200, { generations })
  if (request.method === "POST" && (request.url === "/v1/completions" || request.url === "/v1/chat/completions")) {
    return void generate(request, response, request.url === "/v1/chat/completions").catch((error) => {
      if (!response.headersSent) send(response, 400, { error: { message: String(error), type: "invalid_request_error", param: null, code: null } })
      else response.destroy()
    })
  }
  send(response, 404, { error: { message: "not found", type: "invalid_request_error", param: null, code: null } })
})
server.listen(Number(portText), "127.0.0.1", () => console.log(`llama server on ${portText}`))
