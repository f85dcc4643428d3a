/**
 * LISTEN_SOCKETS: several listening sockets share the router's port
 * (SO_REUSEPORT), each handing its connections to the one HTTP server. The
 * kernel spreads connections over the sockets by a hash of their addresses,
 * so these tests open several connections: with 16 sockets, the chance that
 * 4 connections all land on one given socket is 16^-4, and that 32 land on one
 * of 4 sockets 4^-31.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { ListenError } from "../src/router/edge/NodeServer.ts"
import { freePort, killAll, sleep, startProcess } from "./support/Processes.ts"
import { metricValue, post, type Running, startRouter, waitFor } from "./support/Routers.ts"

afterEach(killAll)

/** Sockets listening on `port` in this network namespace, IPv4 and IPv6. */
const listeningSockets = (port: number) => {
  const hexPort = `:${port.toString(16).toUpperCase().padStart(4, "0")}`
  return ["/proc/net/tcp", "/proc/net/tcp6"].flatMap((table) => readFileSync(table, "utf8").split("\n").slice(1)).filter((line) => {
    const fields = line.trim().split(/\s+/)
    return fields.length > 3 && fields[3] === "0A" && fields[1].endsWith(hexPort)
  }).length
}

/** `count` requests at once, each on a connection of its own. */
const inferAtOnce = (router: Running, count: number) =>
  Promise.all(Array.from({ length: count }, (_, i) => post(router.port, "/infer", { prompt: `connection ${i}` })))

const untilRunning = async (router: Running, count: number) => {
  const deadline = Date.now() + 15_000
  while ((await metricValue(router.port, "router_requests_running")) !== count && Date.now() < deadline) await sleep(10)
  assert.strictEqual(await metricValue(router.port, "router_requests_running"), count)
}

describe.runIf(process.platform === "linux")("LISTEN_SOCKETS", () => {
  it("that many sockets listen; a second router on the port fails as with one socket; every connection, whichever socket took it, is served by the one server", async () => {
    const router = await startRouter({ LISTEN_SOCKETS: "4", SIM_LATENCY_MS: "0", MAX_CONCURRENCY: "64" })
    assert.strictEqual(listeningSockets(router.port), 4)
    const second = await startRouter({ LISTEN_SOCKETS: "4", SIM_LATENCY_MS: "0" }, router.port, false)
    const exit = await Promise.race([second.exited, sleep(10_000).then(() => "still running after 10 s")])
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

  it("SIGTERM (default sockets and HOST): every socket stops listening at once, and requests in flight on their connections still finish", async () => {
    // HOST unset: all interfaces, as in a pod (IPv6's `::` where the machine has IPv6).
    const router = await startRouter({ HOST: "", SIM_LATENCY_MS: "2000", MAX_CONCURRENCY: "8" })
    assert.strictEqual(listeningSockets(router.port), 16)
    let answered = false
    const answers = inferAtOnce(router, 4).finally(() => (answered = true))
    await untilRunning(router, 4)
    router.child.kill("SIGTERM")
    // Before any answer: the requests have ~2 s to run, closing the sockets takes milliseconds.
    while (listeningSockets(router.port) > 0 && !answered) await sleep(10)
    assert.isFalse(answered, "every listening socket closed only after the answers")
    const statuses = (await answers).map((answer) => answer.status)
    assert.deepStrictEqual(statuses, [200, 200, 200, 200])
    assert.strictEqual(await router.exited, 0)
  })

  it("an accept error on any socket after listening is logged, and the router keeps serving", async () => {
    const port = await freePort()
    const router = startProcess(["--import", "./test/support/AcceptErrorPreload.mjs", "src/router/main.ts"], {
      HOST: "127.0.0.1",
      PORT: String(port),
      MODEL_REF: "m",
      LISTEN_SOCKETS: "4",
      SIM_LATENCY_MS: "0"
    })
    await waitFor(port)
    const deadline = Date.now() + 15_000
    const warnings = () => router.output().stdout.split("\n").filter((line) => line.includes("a connection could not be accepted"))
    while (warnings().length < 4 && Date.now() < deadline) await sleep(10)
    assert.lengthOf(warnings(), 4, router.output().stdout)
    assert.include(warnings()[0], "ENOBUFS")
    assert.strictEqual((await post(port, "/infer", { prompt: "still here" })).status, 200)
    assert.strictEqual(listeningSockets(port), 4)
    assert.strictEqual(router.child.exitCode, null)
  })
})

describe("ListenError", () => {
  it("out of file descriptors at listen: names LISTEN_SOCKETS and the open-files limit", () => {
    for (const code of ["EMFILE", "ENFILE"]) {
      const message = new ListenError({ code, host: undefined, port: 8080, detail: `listen ${code}` }).message
      assert.include(message, "cannot listen on all interfaces port 8080")
      assert.include(message, "lower LISTEN_SOCKETS")
      assert.include(message, "open-files limit")
    }
  })
})
