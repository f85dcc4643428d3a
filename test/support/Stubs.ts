/**
 * Misbehaving upstreams for end-to-end tests of the upstream mode: small
 * `node:http` servers in the test's process, each answering as the test says,
 * recording what reached it; closed after each test (`closeStubs`).
 */
import * as Http from "node:http"
import type { AddressInfo, Socket } from "node:net"

const servers: Array<Http.Server> = []

/** Closes every stub and its connections (call in afterEach). */
export const closeStubs = async () => {
  for (const server of servers.splice(0)) {
    server.closeAllConnections()
    await new Promise((resolve) => server.close(resolve))
  }
}

/** Listens on a free port (127.0.0.1), closed by `closeStubs`; its URL. */
export const listenStub = async (server: Http.Server) => {
  servers.push(server)
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve))
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

export interface Stub {
  readonly url: string
  /** Requests that arrived whole (their body read), by path. */
  readonly received: Array<string>
}

/** An upstream stub: `/health` answers 200; every other request goes to `answer` once its body is read. */
export const stub = async (answer: (request: Http.IncomingMessage, response: Http.ServerResponse, socket: Socket) => void): Promise<Stub> => {
  const received: Array<string> = []
  const server = Http.createServer((request, response) => {
    if (request.url === "/health") return void response.end("ok")
    request.resume()
    request.on("end", () => {
      received.push(request.url ?? "")
      answer(request, response, request.socket)
    })
  })
  return { url: await listenStub(server), received }
}

export const json = (response: Http.ServerResponse, status: number, body: unknown) => {
  const text = JSON.stringify(body)
  response.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

export const completion = { id: "c", object: "text_completion", choices: [{ index: 0, text: "ok", finish_reason: "stop" }] }
export const body = { model: "m", prompt: "x" }
export const stream = { ...body, stream: true }
export const codeOf = (response: { json: unknown }) => (response.json as { error: { code: string } }).error.code
export const messageOf = (response: { json: unknown }) => (response.json as { error: { message: string } }).error.message
