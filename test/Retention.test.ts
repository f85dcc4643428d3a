/**
 * What the router keeps of a request once it is answered: nothing, even while
 * the client keeps the connection open for its next request. Holding a keep-alive
 * connection's last request until the next one (as a per-socket map once did)
 * kept every connection's request, response and all they reference alive across
 * young-generation collections: at 256 connections most of the collector's time
 * and 2.5x the baseline's peak memory (BENCHMARKS.md section 12).
 *
 * The request objects are seen through Node's diagnostics channel and held
 * weakly; a full collection (V8's `gc`, exposed for this file) must free them.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { subscribe, unsubscribe } from "node:diagnostics_channel"
import * as Http from "node:http"
import { setFlagsFromString } from "node:v8"
import * as Net from "node:net"
import { runInNewContext } from "node:vm"
import { type LogLine, serverPort, TestRouter } from "./support/TestRouter.ts"

setFlagsFromString("--expose-gc")
const collectGarbage = runInNewContext("gc") as () => void

/** A keep-alive POST /infer whose connection stays open after the answer. */
const inferKeptAlive = (port: number, agent: Http.Agent) =>
  new Promise<number>((resolve, reject) => {
    const body = JSON.stringify({ prompt: "kept alive" })
    const req = Http.request({
      host: "127.0.0.1",
      port,
      method: "POST",
      path: "/infer",
      agent,
      headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) }
    }, (res) => {
      res.resume()
      res.on("end", () => resolve(res.statusCode!))
    })
    req.on("error", reject)
    req.end(body)
  })

const nextTurn = () => new Promise<void>((resolve) => setImmediate(resolve))

describe("what the router keeps of an answered request", () => {
  it.live("nothing, while its keep-alive connection stays open", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const agent = new Http.Agent({ keepAlive: true, maxSockets: 1 })
      const seen: Array<WeakRef<object>> = []
      const onRequest = (message: unknown) => {
        const { request, response } = message as { request: object; response: object }
        seen.push(new WeakRef(request), new WeakRef(response))
      }
      subscribe("http.server.request.start", onRequest)
      try {
        for (let i = 0; i < 3; i++) assert.strictEqual(yield* Effect.promise(() => inferKeptAlive(port, agent)), 200)
        // The connection is still open: the agent keeps it for the next request.
        assert.strictEqual(Object.values(agent.freeSockets).flat().length, 1)
        // Node emits the response's close on a later tick; weak targets are kept until the current job ends.
        yield* Effect.promise(nextTurn)
        yield* Effect.promise(nextTurn)
        collectGarbage()
        assert.strictEqual(seen.length, 6)
        assert.deepStrictEqual(seen.map((ref) => ref.deref() === undefined), [true, true, true, true, true, true])
      } finally {
        unsubscribe("http.server.request.start", onRequest)
        agent.destroy()
      }
    }).pipe(Effect.provide(TestRouter({ simLatencyMs: 0 }))))

  it.live("what the pipeline noted about a request still reaches its log line when the client pipelines the next one", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const port = yield* serverPort
      const body = JSON.stringify({ prompt: "pipelined" })
      const one = `POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\n\r\n${body}`
      // Two requests in one write: Node emits the second while the first's response is still open.
      const answers = yield* Effect.promise(() =>
        new Promise<string>((resolve, reject) => {
          const socket = Net.connect(port, "127.0.0.1", () => socket.write(one + one))
          let text = ""
          socket.setEncoding("latin1")
          socket.on("data", (chunk: string) => {
            text += chunk
            if (text.split("HTTP/1.1 200").length === 3 && text.endsWith("}")) {
              socket.end()
              resolve(text)
            }
          })
          socket.on("error", reject)
        })
      )
      assert.strictEqual(answers.split("HTTP/1.1 200").length, 3)
      // Access-log lines are written in batches (at most every 100 ms).
      for (let i = 0; i < 50 && logs.filter((line) => line.message === "request").length < 2; i++) yield* Effect.sleep(20)
      const lines = logs.filter((line) => line.message === "request")
      assert.strictEqual(lines.length, 2)
      for (const line of lines) {
        assert.strictEqual(line.annotations.status, 200)
        assert.strictEqual(line.annotations.modelMs, 0)
        assert.strictEqual(line.annotations.queueMs, 0)
      }
    }).pipe(Effect.provide(TestRouter({ simLatencyMs: 0 }, undefined, { logs })))
  })
})
