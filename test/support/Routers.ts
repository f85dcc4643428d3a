/**
 * Real router processes for end-to-end tests of MODEL_BACKEND=upstream: routers
 * in simulated mode as the model servers, one in upstream mode in front, and
 * a streaming client that records every SSE event as it arrives.
 */
import * as Http from "node:http"
import { freePort, type Started, startProcess } from "./Processes.ts"
import { requestAt } from "./TestRouter.ts"

export interface Running extends Started {
  readonly port: number
}

/** Polls `/readyz` until it answers `status` (200 by default). */
export const waitFor = async (port: number, status = 200, limitMs = 20_000) => {
  const deadline = Date.now() + limitMs
  while (Date.now() < deadline) {
    try {
      if ((await requestAt(port, { path: "/readyz" })).status === status) return
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 25))
  }
  throw new Error(`port ${port}: /readyz never answered ${status}`)
}

/** A router process (TypeScript source, as `npm start` runs it) on a free or given port. */
export const startRouter = async (env: Record<string, string>, port?: number, ready = true): Promise<Running> => {
  const chosen = port ?? await freePort()
  const started = startProcess(["src/router/main.ts"], { HOST: "127.0.0.1", MODEL_REF: "m", LOG_LEVEL: "warn", ...env, PORT: String(chosen) })
  if (ready) {
    await waitFor(chosen).catch((error: Error) => {
      // What the process said, and whether it is still running, to tell a crash from a slow start.
      const { stdout, stderr } = started.output()
      throw new Error(`${error.message} (exit code ${started.child.exitCode}, signal ${started.child.signalCode}; stderr: ${stderr.slice(-2000)}; stdout: ${stdout.slice(-1000)})`)
    })
  }
  return { ...started, port: chosen }
}

/** A simulated model server: a router in simulated mode. */
export const startUpstream = (env: Record<string, string> = {}, port?: number) => startRouter({ SIM_LATENCY_MS: "0", ...env }, port)

/** The router under test, in front of `upstreams`. */
export const startFront = (upstreams: ReadonlyArray<Running | string>, env: Record<string, string> = {}, ready = true) =>
  startRouter({
    MODEL_BACKEND: "upstream",
    UPSTREAMS: upstreams.map((u) => typeof u === "string" ? u : `http://127.0.0.1:${u.port}`).join(","),
    UPSTREAM_HEALTH_INTERVAL_MS: "100",
    ...env
  }, undefined, ready)

/** A metric's value from `/metrics` (the first series whose name and labels start with `series`). */
export const metricValue = async (port: number, series: string): Promise<number | undefined> => {
  const text = (await requestAt(port, { path: "/metrics" })).text
  const line = text.split("\n").find((l) => l.startsWith(series))
  return line === undefined ? undefined : Number(line.slice(line.lastIndexOf(" ") + 1))
}

/** Retries to every upstream together (each upstream's series exists from 0). */
export const retriesOfAll = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n")
    .filter((line) => line.startsWith("router_upstream_retries_total{"))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

export const post = (port: number, path: string, body: unknown, headers: Record<string, string> = {}) =>
  requestAt(port, { method: "POST", path, headers: { "content-type": "application/json", ...headers }, body: JSON.stringify(body) })

export interface OpenStream {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  /** Every `data:` payload so far. */
  readonly events: Array<string>
  /** Resolves when the response ends (or the connection closes). */
  readonly ended: Promise<void>
  /** Resolves once `count` events arrived. */
  readonly received: (count: number) => Promise<void>
  readonly hangUp: () => void
}

/** POSTs a streaming request and returns once the response headers arrived. */
export const openStream = (port: number, path: string, body: unknown, headers: Record<string, string> = {}): Promise<OpenStream> =>
  new Promise((resolve, reject) => {
    const text = JSON.stringify(body)
    const request = Http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path,
      agent: false,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text), ...headers }
    }, (response) => {
      const events: Array<string> = []
      const waiters: Array<{ count: number; resolve: () => void }> = []
      let buffer = ""
      response.setEncoding("utf8")
      response.on("data", (chunk: string) => {
        buffer += chunk
        // Any of SSE's line endings (CRLF, CR, LF) read as LF; a CR at the end may be half a CRLF.
        const last = buffer.endsWith("\r") ? "\r" : ""
        buffer = buffer.slice(0, buffer.length - last.length).replace(/\r\n?/g, "\n") + last
        let end: number
        while ((end = buffer.indexOf("\n\n")) !== -1) {
          const event = buffer.slice(0, end)
          buffer = buffer.slice(end + 2)
          if (event.startsWith("data: ")) events.push(event.slice(6))
        }
        for (const waiter of waiters) if (events.length >= waiter.count) waiter.resolve()
      })
      const ended = new Promise<void>((done) => {
        response.on("end", done)
        response.on("close", done)
        response.on("error", () => done())
      })
      resolve({
        status: response.statusCode!,
        headers: response.headers,
        events,
        ended,
        received: (count) =>
          events.length >= count ? Promise.resolve() : new Promise<void>((done) => waiters.push({ count, resolve: done })),
        hangUp: () => request.destroy()
      })
    })
    request.on("error", reject)
    request.end(text)
  })

/** A streaming chat request for model "m" whose echo is `words` tokens long. */
export const chatStream = (words: number) => ({
  model: "m",
  stream: true,
  max_tokens: words,
  messages: [{ role: "user", content: Array.from({ length: words }, (_, i) => `w${i}`).join(" ") }]
})
