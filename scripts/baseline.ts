/**
 * The benchmark's baseline: a bare `node:http` server with the router's
 * `/infer` contract (parse, validate, bounded concurrency with a bounded FIFO
 * queue, the same response: body, `Server-Timing` and `X-Request-Id`), and
 * nothing else: no logs, metrics, auth or drain. It reads the same settings.
 *
 * BASELINE_ENGINE=1 (not the default, and not what the overhead goal compares
 * with): the model is the router's own simulated engine (`Model.simulated`,
 * its prefix cache and batch steps, with the SIM_* settings as the router
 * parses them) instead of a `setTimeout`, so the router's overhead can be read
 * apart from the engine's (BENCHMARKS.md section 18).
 * Run: node scripts/baseline.ts
 */
import { randomUUID } from "node:crypto"
import { createServer, type IncomingMessage, type ServerResponse } from "node:http"

const env = process.env
const port = Number(env.PORT ?? 8080)
const maxConcurrency = Number(env.MAX_CONCURRENCY ?? 10)
const maxQueue = Number(env.MAX_QUEUE ?? 10 * maxConcurrency)
const simLatencyMs = Number(env.SIM_LATENCY_MS ?? 100)
const maxBodyBytes = Number(env.MAX_BODY_BYTES ?? 1024 * 1024)
const modelRef = env.MODEL_REF ?? "demo-model"
const routerPod = env.POD_NAME ?? env.HOSTNAME
const kvEndpoints = (env.KV_ENDPOINTS ?? "").split(",").map((s) => s.trim()).filter((s) => s !== "")

let running = 0
const queue: Array<() => void> = []

const sendJson = (res: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) => {
  const text = JSON.stringify(body)
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers })
  res.end(text)
}
const sendError = (res: ServerResponse, status: number, code: string, message: string, headers?: Record<string, string>) =>
  sendJson(res, status, { error: { code, message } }, headers)

const release = () => {
  const next = queue.shift()
  if (next) next()
  else running--
}

/** The caller's request id if it is short printable ASCII, else a new one (as the router does). */
const requestIdOf = (req: IncomingMessage) => {
  const given = req.headers["x-request-id"]
  return typeof given === "string" && /^[\x21-\x7e]{1,128}$/.test(given) ? given : randomUUID()
}

/** The simulated engine's `/infer`, loaded only with BASELINE_ENGINE=1 (the bare baseline loads nothing of the router). */
type EngineInfer = (prompt: string, done: (inference: { readonly processingMs: number }) => void) => { readonly processingMs: number } | (() => void)
const engineInfer: EngineInfer | undefined = env.BASELINE_ENGINE === "1"
  ? await (async () => {
    const [{ Effect }, { Model }, { loadSettings }] = await Promise.all([
      import("effect"),
      import("../src/router/simulated/Model.ts"),
      import("../src/router/core/Settings.ts")
    ])
    // The router's own parse of the environment: the same SIM_* settings as the router under test.
    const settings = await Effect.runPromise(loadSettings)
    // SIM_LOAD_FACTOR scales by the engine's own running share here, by admission's slots in the router.
    return Model.simulated(settings.simLatencyMs, settings.simulation, undefined, true, {
      modelName: settings.modelRef,
      maxRunning: settings.maxConcurrency
    }).inferUnsafe
  })()
  : undefined

const infer = (req: IncomingMessage, res: ServerResponse, prompt: string, arrivedAt: number) => {
  const startedAt = performance.now()
  const finish = (modelMs?: number) => {
    const processingMs = modelMs ?? Math.round(performance.now() - startedAt)
    release()
    sendJson(res, 200, {
      modelRef,
      prompt,
      ...(routerPod === undefined ? {} : { routerPod }),
      kvEndpoints,
      processingMs
    }, {
      "server-timing": `queue;dur=${Math.round(startedAt - arrivedAt)}, model;dur=${processingMs}`,
      "x-request-id": requestIdOf(req)
    })
  }
  if (engineInfer !== undefined) {
    const started = engineInfer(prompt, ({ processingMs }) => finish(processingMs))
    if (typeof started !== "function") finish(started.processingMs)
  } else if (simLatencyMs > 0) setTimeout(finish, simLatencyMs)
  else finish()
}

const handleInfer = (req: IncomingMessage, res: ServerResponse) => {
  const arrivedAt = performance.now()
  const chunks: Array<Buffer> = []
  let size = 0
  req.on("data", (chunk: Buffer) => {
    size += chunk.length
    if (size > maxBodyBytes) {
      sendError(res, 413, "payload_too_large", "request body too large")
      req.destroy()
    } else chunks.push(chunk)
  })
  req.on("end", () => {
    let body: any
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"))
    } catch {
      return sendError(res, 400, "invalid_json", "request body is not valid JSON")
    }
    if (typeof body !== "object" || body === null || typeof body.prompt !== "string") {
      return sendError(res, 400, "invalid_body", "request body must be a JSON object with a string \"prompt\"")
    }
    const prompt: string = body.prompt
    if (running < maxConcurrency) {
      running++
      return infer(req, res, prompt, arrivedAt)
    }
    if (queue.length >= maxQueue) {
      return sendError(res, 429, "queue_full", "queue full", { "retry-after": "1" })
    }
    queue.push(() => infer(req, res, prompt, arrivedAt))
  })
}

createServer((req, res) => {
  if (req.url === "/infer" && req.method === "POST") return handleInfer(req, res)
  if (req.url === "/healthz") return sendJson(res, 200, { status: "ok" })
  if (req.url === "/readyz") return sendJson(res, 200, { status: "ready" })
  sendError(res, 404, "not_found", "not found")
}).listen(port, env.HOST)
process.on("SIGTERM", () => process.exit(0))
