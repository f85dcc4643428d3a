/**
 * The upstream benchmark's baseline: a bare `node:http` forwarding proxy to
 * one upstream, with a keep-alive agent (as many sockets as requests in
 * flight), request and response piped through unchanged. No admission, no
 * validation, no retries, no metrics: the floor a proxy in Node costs.
 * PORT and UPSTREAM (http://host:port) from the environment.
 */
import { Agent, createServer, request } from "node:http"

const port = Number(process.env.PORT ?? 8092)
const upstream = new URL(process.env.UPSTREAM ?? "http://127.0.0.1:8091")
const agent = new Agent({ keepAlive: true, maxSockets: Infinity, keepAliveMsecs: 60_000 })

createServer((incoming, outgoing) => {
  if (incoming.url === "/readyz") return outgoing.end("{\"status\":\"ready\"}")
  const forwarded = request({
    host: upstream.hostname,
    port: upstream.port,
    method: incoming.method,
    path: incoming.url,
    headers: { "content-type": incoming.headers["content-type"] ?? "application/json", "content-length": incoming.headers["content-length"] ?? "0" },
    agent
  }, (answer) => {
    outgoing.writeHead(answer.statusCode!, answer.headers)
    answer.pipe(outgoing)
  })
  forwarded.on("error", () => {
    if (!outgoing.headersSent) outgoing.writeHead(502)
    outgoing.end()
  })
  outgoing.on("close", () => {
    if (!outgoing.writableFinished) forwarded.destroy()
  })
  incoming.pipe(forwarded)
}).listen(port, "127.0.0.1")
