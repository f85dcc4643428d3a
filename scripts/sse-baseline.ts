/**
 * A bare `node:http` model server speaking the OpenAI API as vLLM frames it,
 * with no admission and no Effect, for two benchmarks:
 * - bench:streams: the baseline the router's own streams are compared with:
 *   the router's SSE frames on the same schedule (first token after
 *   SIM_TTFT_MS, then one every SIM_ITL_MS, one `setTimeout` each);
 * - bench:upstream: the model server both the router (MODEL_BACKEND=upstream)
 *   and a bare proxy forward to: JSON answers at once, `GET /health` for the
 *   router's checks, and `GET /stats`, the TCP connections it accepted (are
 *   they reused?).
 * PORT, SIM_TTFT_MS, SIM_ITL_MS from the environment.
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"

const port = Number(process.env.PORT ?? 8090)
const ttftMs = Number(process.env.SIM_TTFT_MS ?? 50)
const itlMs = Number(process.env.SIM_ITL_MS ?? 10)
const words = ["the", "model", "router", "token", "stream"]
let connections = 0

const server = createServer((request, response) => {
  if (request.url === "/readyz" || request.url === "/health") return response.end("{\"status\":\"ready\"}")
  if (request.url === "/stats") return response.end(JSON.stringify({ connections }))
  const chunks: Array<Buffer> = []
  request.on("data", (chunk) => chunks.push(chunk))
  request.on("end", () => {
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
    const max: number = body.max_tokens ?? 16
    const id = `chatcmpl-${randomUUID()}`
    const created = Math.floor(Date.now() / 1000)
    if (!body.stream) {
      const text = JSON.stringify({
        id,
        object: "text_completion",
        created,
        model: body.model,
        choices: [{ index: 0, text: " the model router", logprobs: null, finish_reason: "length" }],
        usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 }
      })
      response.writeHead(200, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
      return response.end(text)
    }
    const frame = (delta: object, finish: string | null) =>
      `data: ${JSON.stringify({ id, object: "chat.completion.chunk", created, model: body.model, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }] })}\n\n`
    response.writeHead(200, { "content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache" })
    response.flushHeaders()
    let i = 0
    let timer: ReturnType<typeof setTimeout>
    const next = () => {
      response.write(frame(i === 0 ? { role: "assistant", content: words[0] } : { content: ` ${words[i % words.length]}` }, null))
      i++
      if (i < max) timer = setTimeout(next, itlMs)
      else response.end(frame({}, "length") + "data: [DONE]\n\n")
    }
    timer = setTimeout(next, ttftMs)
    response.on("close", () => clearTimeout(timer))
  })
})
server.on("connection", () => connections++)
server.keepAliveTimeout = 60_000
server.listen(port, "127.0.0.1")
