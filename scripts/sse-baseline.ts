/**
 * The streaming benchmark's baseline: a bare `node:http` server answering
 * POST /v1/chat/completions with the router's SSE frames on the same schedule
 * (first token after SIM_TTFT_MS, the rest every SIM_ITL_MS), no admission,
 * no Effect. PORT, SIM_TTFT_MS, SIM_ITL_MS from the environment.
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"

const port = Number(process.env.PORT ?? 8090)
const ttftMs = Number(process.env.SIM_TTFT_MS ?? 50)
const itlMs = Number(process.env.SIM_ITL_MS ?? 10)
const words = ["the", "model", "router", "token", "stream"]

createServer((request, response) => {
  if (request.url === "/readyz") return response.end("{\"status\":\"ready\"}")
  const chunks: Array<Buffer> = []
  request.on("data", (chunk) => chunks.push(chunk))
  request.on("end", () => {
    const body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
    const max: number = body.max_tokens ?? 16
    const id = `chatcmpl-${randomUUID()}`
    const created = Math.floor(Date.now() / 1000)
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
}).listen(port, "127.0.0.1")
