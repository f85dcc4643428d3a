/**
 * LISTEN_SOCKETS: several listening sockets share the router's port
 * (SO_REUSEPORT), each handing its connections to the one HTTP server. The
 * kernel spreads connections over the sockets by a hash of their addresses,
 * so these tests open many connections: each socket then gets some (the
 * chance that 32 connections all land on one of 4 sockets is 4^-31).
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { killAll } from "./support/Processes.ts"
import { metricValue, post, type Running, startRouter } from "./support/Routers.ts"

afterEach(killAll)

/** Sockets listening on `port` in this network namespace (IPv4: the tests listen on 127.0.0.1). */
const listeningSockets = (port: number) =>
  readFileSync("/proc/net/tcp", "utf8").split("\n").slice(1).filter((line) => {
    const fields = line.trim().split(/\s+/)
    return fields.length > 3 && fields[3] === "0A" && fields[1].endsWith(`:${port.toString(16).toUpperCase().padStart(4, "0")}`)
  }).length

/** `count` requests at once, each on a connection of its own. */
const inferAtOnce = (router: Running, count: number) =>
  Promise.all(Array.from({ length: count }, (_, i) => post(router.port, "/infer", { prompt: `connection ${i}` })))

describe.runIf(process.platform === "linux")("LISTEN_SOCKETS", () => {
  it("that many sockets listen; a second router on the port fails as with one socket; every connection, whichever socket took it, is served by the one server", async () => {
    const router = await startRouter({ LISTEN_SOCKETS: "4", SIM_LATENCY_MS: "0", MAX_CONCURRENCY: "64" })
    assert.strictEqual(listeningSockets(router.port), 4)
    const second = await startRouter({ LISTEN_SOCKETS: "4", SIM_LATENCY_MS: "0" }, router.port, false)
    const exit = await Promise.race([second.exited, new Promise((resolve) => setTimeout(() => resolve("still running after 10 s"), 10_000))])
    assert.strictEqual(exit, 1, "the second router shares the port")
    assert.include(second.output().stderr, "already in use")
    assert.strictEqual(listeningSockets(router.port), 4)
    const answers = await inferAtOnce(router, 32)
    assert.deepStrictEqual(new Set(answers.map((answer) => answer.status)), new Set([200]))
    assert.strictEqual(new Set(answers.map((answer) => answer.headers["x-request-id"])).size, 32, "each answer has its own request id")
    // One server: its metrics count every connection's requests.
    assert.strictEqual(await metricValue(router.port, `router_requests_total{endpoint="/infer",status="200"}`), 32)
  })

  it("LISTEN_SOCKETS=1: one socket, as plain Node", async () => {
    const router = await startRouter({ LISTEN_SOCKETS: "1", SIM_LATENCY_MS: "0" })
    assert.strictEqual(listeningSockets(router.port), 1)
    assert.strictEqual((await post(router.port, "/infer", { prompt: "one" })).status, 200)
  })

  it("SIGTERM: requests in flight on every socket's connections finish, then all sockets close and the process exits 0", async () => {
    const router = await startRouter({ LISTEN_SOCKETS: "4", SIM_LATENCY_MS: "2000", MAX_CONCURRENCY: "64" })
    const answers = inferAtOnce(router, 32)
    const deadline = Date.now() + 15_000
    while ((await metricValue(router.port, "router_requests_running")) !== 32 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
    assert.strictEqual(await metricValue(router.port, "router_requests_running"), 32)
    router.child.kill("SIGTERM")
    const answered = await answers
    assert.deepStrictEqual(new Set(answered.map((answer) => answer.status)), new Set([200]))
    assert.strictEqual(await router.exited, 0)
    assert.strictEqual(listeningSockets(router.port), 0)
  })
})
