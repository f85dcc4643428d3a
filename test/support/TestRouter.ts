/**
 * The router's HTTP application on a real socket (ephemeral port), with fixed
 * settings and an optional stand-in model, plus a raw HTTP helper that gives
 * tests full control over method, headers and body framing.
 */
import { connect, type Socket } from "node:net"
import { Effect, Latch, Layer, Logger, Metric } from "effect"
import { HttpServer } from "effect/http"
import { NetAddress } from "effect/net"
import * as Http from "node:http"
import * as Net from "node:net"
import { Admission } from "../../src/router/core/Admission.ts"
import type { RouterSettings } from "../../src/router/core/Config.ts"
import { Model } from "../../src/router/simulated/Model.ts"
import { AccessLogOutput } from "../../src/router/edge/AccessLog.ts"
import { makeRouterServer } from "../../src/router/edge/RouterServer.ts"
import { testConfigLayer } from "./TestSettings.ts"

/** Log lines as the JSON logger writes them, parsed. */
export interface LogLine {
  readonly message: unknown
  readonly level: string
  readonly annotations: Record<string, unknown>
}

/** A logger that keeps what it would print, to assert on. */
export const capturingLogger = (lines: Array<LogLine>) =>
  Logger.layer([Logger.map(Logger.formatJson, (line) => void lines.push(JSON.parse(line)))])

/**
 * The production composition on 127.0.0.1 and an ephemeral port, with fixed
 * settings, an optional stand-in model, its own metric registry (so counts are
 * exact) and logs silenced or captured.
 */
export const TestRouter = (
  settings: Partial<RouterSettings> = {},
  model?: Model["Service"],
  options: {
    readonly logs?: Array<LogLine>
    /** Each write of access-log lines, as written. */
    readonly accessLogWrites?: Array<string>
  } = {}
) =>
  makeRouterServer({
    config: testConfigLayer({ simLatencyMs: 0, port: 0, host: "127.0.0.1", ...settings }),
    model: model === undefined ? undefined : Layer.succeed(Model, model),
    logging: options.logs === undefined ? Logger.layer([]) : capturingLogger(options.logs)
  }).pipe(
    Layer.provideMerge(Layer.sync(Metric.MetricRegistry, () => new Map())),
    // Access-log lines (written by the request observer, not the logger) join the captured ones.
    Layer.provide(Layer.succeed(AccessLogOutput, (chunk: Uint8Array) => {
      const text = Buffer.from(chunk).toString("latin1")
      options.accessLogWrites?.push(text)
      if (options.logs === undefined) return
      for (const line of text.split("\n")) if (line !== "") options.logs.push(JSON.parse(line))
    }))
  )

export interface RawResponse {
  readonly status: number
  readonly headers: Http.IncomingHttpHeaders
  readonly text: string
  readonly json: any
  /** The body's bytes as sent (still compressed, if they were). */
  readonly bytes: Buffer
}

export interface RawRequest {
  readonly method?: string
  readonly path: string
  readonly headers?: Record<string, string>
  readonly body?: string | Buffer
  /** Send the body with chunked framing (no Content-Length). */
  readonly chunked?: boolean
  /** Ask to keep the connection open (default: one connection per request). */
  readonly keepAlive?: boolean
}

const keepAliveAgent = new Http.Agent({ keepAlive: true })

export const requestAt = (port: number, options: RawRequest): Promise<RawResponse> =>
  new Promise((resolve, reject) => {
    const req = Http.request({
      host: "127.0.0.1",
      port,
      method: options.method ?? "GET",
      path: options.path,
      headers: options.headers,
      agent: options.keepAlive ? keepAliveAgent : false
    }, (res) => {
      const chunks: Array<Buffer> = []
      res.on("data", (chunk) => chunks.push(chunk))
      res.on("end", () => {
        const bytes = Buffer.concat(chunks)
        const text = bytes.toString("utf8")
        let json: unknown
        try {
          json = JSON.parse(text)
        } catch {
          json = undefined
        }
        resolve({ status: res.statusCode!, headers: res.headers, text, json, bytes })
      })
      res.on("error", reject)
    })
    req.on("error", reject)
    if (options.body !== undefined) {
      if (options.chunked) {
        req.setHeader("transfer-encoding", "chunked")
      } else {
        req.setHeader("content-length", Buffer.byteLength(options.body))
      }
      req.end(options.body)
    } else {
      req.end()
    }
  })

export const serverPort = Effect.gen(function*() {
  const server = yield* HttpServer.HttpServer
  const address = server.address as NetAddress.InetAddress
  return address.port
})

export const request = (options: RawRequest) =>
  Effect.flatMap(serverPort, (port) => Effect.promise(() => requestAt(port, options)))

export const postInfer = (body: unknown, headers: Record<string, string> = {}) =>
  request({
    method: "POST",
    path: "/infer",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body)
  })

/** A model that holds every call until the gate opens: deterministic "slots busy". */
export const gatedModel = Effect.gen(function*() {
  const gate = yield* Latch.make()
  const simulated = Model.simulated(0)
  const model = Model.of({
    infer: () => gate.await.pipe(Effect.as({ processingMs: 0 })),
    generate: (request, onToken) => gate.await.pipe(Effect.andThen(simulated.generate(request, onToken)))
  })
  return { gate, model }
})

/** Waits (bounded) until `count` access-log lines have been written: they are written in batches. */
export const untilAccessLines = (logs: ReadonlyArray<LogLine>, count: number) =>
  Effect.gen(function*() {
    const lines = () => logs.filter((line) => line.message === "request")
    for (let i = 0; i < 400 && lines().length < count; i++) yield* Effect.sleep(5)
    return lines()
  })

/** Waits (bounded) until admission reports the given counts. */
export const untilStats = (running: number, waiting: number) =>
  Effect.gen(function*() {
    const admission = yield* Admission
    for (let i = 0; i < 2_000; i++) {
      const stats = admission.statsUnsafe()
      if (stats.running === running && stats.waiting === waiting) return
      yield* Effect.sleep(5)
    }
    const stats = admission.statsUnsafe()
    return yield* Effect.die(
      new Error(`admission never reached running=${running} waiting=${waiting}: ${JSON.stringify(stats)}`)
    )
  })

/**
 * Sends `text` as it is on a fresh connection and returns everything the
 * server wrote until it closed the connection (or `waitMs` passed).
 */
export const exchangeAt = (port: number, text: string | Buffer, waitMs = 2_000): Promise<string> =>
  new Promise((resolve) => {
    const socket = Net.connect(port, "127.0.0.1", () => socket.write(text))
    let data = ""
    const done = () => {
      clearTimeout(timer)
      socket.destroy()
      resolve(data)
    }
    const timer = setTimeout(done, waitMs)
    socket.on("data", (chunk) => (data += chunk))
    socket.on("error", () => {})
    socket.on("close", done)
  })

export const exchange = (text: string | Buffer, waitMs?: number) =>
  Effect.flatMap(serverPort, (port) => Effect.promise(() => exchangeAt(port, text, waitMs)))

/** A raw HTTP/1.1 response: status, lower-cased headers, body. */
export const parseRaw = (raw: string) => {
  const [head, ...rest] = raw.split("\r\n\r\n")
  const [statusLine, ...headerLines] = head.split("\r\n")
  const headers: Record<string, string> = {}
  for (const line of headerLines) {
    const colon = line.indexOf(":")
    headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim()
  }
  const body = rest.join("\r\n\r\n")
  let json: any
  try {
    json = JSON.parse(body)
  } catch {
    json = undefined
  }
  return { status: Number(statusLine.split(" ")[1]), headers, body, json }
}

/**
 * A streamed completion far larger than a socket's buffers (hundreds of thousands of tokens) from a
 * client that reads none of it: the router's writes come to wait on its full socket.
 */
export const openUnreadStream = (port: number, model: string, requestId?: string): Socket => {
  const body = JSON.stringify({ model, prompt: "x", max_tokens: 300_000, stream: true })
  const socket = connect(port, "127.0.0.1")
  const id = requestId === undefined ? "" : `x-request-id: ${requestId}\r\n`
  socket.write(`POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n${id}Content-Length: ${body.length}\r\n\r\n${body}`)
  socket.pause()
  return socket
}
