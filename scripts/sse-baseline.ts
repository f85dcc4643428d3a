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
 *
 * SIM_STEPS=1 (bench:streams with BENCH_BASELINE=stepped): the streams' tokens
 * come from one timer per step, as the router's simulated engine emits them
 * (docs/simulator.md, "Steps"): a stream waits SIM_TTFT_MS - SIM_ITL_MS, joins
 * the batch at the next step boundary, and has its first token when the step
 * after that boundary ends, then one at each boundary; steps are due one
 * SIM_ITL_MS after the last was due. So a stream arriving during a step waits
 * for the next one, as on the engine: the like-for-like baseline for TTFT.
 */
import { randomUUID } from "node:crypto"
import { createServer } from "node:http"

const port = Number(process.env.PORT ?? 8090)
const ttftMs = Number(process.env.SIM_TTFT_MS ?? 50)
const itlMs = Number(process.env.SIM_ITL_MS ?? 10)
const words = ["the", "model", "router", "token", "stream"]
let connections = 0

/** A stream in the stepped mode: emits its next token, false once it has ended. */
type Emit = () => boolean
const stepped = process.env.SIM_STEPS === "1"
/** Streams in the batch before the step in flight: one token each at its end, in the order they joined. */
let batch: Array<Emit> = []
/** Streams that joined at the step in flight: their first tokens go out first, as the engine hands out a completed prefill's. */
let fresh: Array<Emit> = []
/** Streams waiting for a step boundary at or after `startAt` to join. */
const joining: Array<{ readonly startAt: number; readonly emit: Emit }> = []
/** When the step in flight is due; undefined while idle. */
let stepDueAt: number | undefined
const endStep = () => {
  const now = stepDueAt!
  const joined = fresh.filter((emit) => emit())
  batch = batch.filter((emit) => emit()).concat(joined)
  fresh = []
  for (let i = 0; i < joining.length;) {
    if (joining[i].startAt <= now) fresh.push(joining.splice(i, 1)[0].emit)
    else i++
  }
  armStep()
}
/** The next step after the one due at `stepDueAt` (late: at once, as the engine's timer); else idle until a stream's start. */
const armStep = () => {
  if (batch.length === 0 && fresh.length === 0 && joining.length === 0) return void (stepDueAt = undefined)
  const next = batch.length > 0 || fresh.length > 0
    ? Math.max(stepDueAt! + itlMs, performance.now())
    : Math.max(Math.min(...joining.map((entry) => entry.startAt)), performance.now())
  stepDueAt = next
  setTimeout(endStep, Math.max(0, next - performance.now()))
}
const joinSteps = (emit: Emit) => {
  const startAt = performance.now() + Math.max(0, ttftMs - itlMs)
  if (stepDueAt === undefined && startAt <= performance.now()) {
    // An idle engine starts a step at once.
    fresh.push(emit)
    stepDueAt = performance.now()
    armStep()
  } else {
    joining.push({ startAt, emit })
    if (stepDueAt === undefined) armStep()
  }
}

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
    if (stepped) {
      let closed = false
      response.on("close", () => (closed = true))
      return joinSteps(() => {
        if (closed) return false
        response.write(frame(i === 0 ? { role: "assistant", content: words[0] } : { content: ` ${words[i % words.length]}` }, null))
        i++
        if (i < max) return true
        response.end(frame({}, "length") + "data: [DONE]\n\n")
        return false
      })
    }
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
