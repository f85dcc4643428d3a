/**
 * Model servers restarting under steady load lose nothing: routers in
 * simulated mode are the upstreams (real processes), clients keep a steady
 * closed-loop load, and every upstream in turn is stopped and started again
 * on its port (SIGTERM, SIGKILL, SIGTERM with SHUTDOWN_DELAY_MS), or drops
 * out of a `dns+` name's addresses. Every request that had not received a
 * byte must get a 200. Short on purpose: one restart of each kind, a few
 * seconds in all (scripts/churn.ts runs the long version).
 */
import { Effect, Exit, Logger, Scope } from "effect"
import * as Http from "node:http"
import { afterEach, assert, describe, it } from "vitest"
import { defaultUpstream } from "../src/router/core/Config.ts"
import { parseTargets, type UpstreamTarget } from "../src/router/upstream/Targets.ts"
import { Upstreams } from "../src/router/upstream/Upstreams.ts"
import { freePort, killAll, sleep, until } from "./support/Processes.ts"
import { metricValue, type Running, startFront, startRouter, startUpstream, waitFor } from "./support/Routers.ts"

afterEach(killAll)

/** Closed-loop clients until `stop`; counts answers by status and error code. */
const load = (clients: number, send: (i: number) => Promise<string>) => {
  let stopped = false
  const outcomes = new Map<string, number>()
  const loops = Array.from({ length: clients }, async (_, client) => {
    for (let i = 0; !stopped; i++) {
      const outcome = await send(client + i).catch((error) => `client error: ${error}`)
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
    }
  })
  return {
    stop: async () => {
      stopped = true
      await Promise.all(loops)
      return outcomes
    }
  }
}

const agent = new Http.Agent({ keepAlive: true, maxSockets: 16 })

const postOnce = (port: number, path: string, body: unknown): Promise<string> =>
  new Promise((resolve, reject) => {
    const text = JSON.stringify(body)
    const request = Http.request({ host: "127.0.0.1", port, method: "POST", path, agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) } }, (response) => {
      let data = ""
      response.setEncoding("utf8")
      response.on("data", (chunk) => (data += chunk))
      response.on("end", () => {
        if (response.statusCode === 200) return resolve("200")
        let code = ""
        try {
          code = JSON.parse(data).error?.code ?? ""
        } catch {
          // not JSON
        }
        resolve(`${response.statusCode} ${code}`)
      })
    })
    request.on("error", reject)
    request.end(text)
  })

const failures = (outcomes: Map<string, number>) => [...outcomes].filter(([outcome]) => outcome !== "200")

describe("churn: model servers restarting under load", () => {
  it("loses nothing through a rolling SIGTERM, SIGKILL, and SIGTERM with SHUTDOWN_DELAY_MS", { timeout: 60_000 }, async () => {
    const env = { SIM_LATENCY_MS: "20", SIM_TTFT_MS: "10", SIM_ITL_MS: "5" }
    const ports = await Promise.all([freePort(), freePort(), freePort()])
    const envs = [env, env, { ...env, SHUTDOWN_DELAY_MS: "300" }]
    const upstreams: Array<Running> = await Promise.all(ports.map((port, i) => startUpstream(envs[i], port)))
    // The front as an operator runs it: the defaults. A killed server's requests may have been processed:
    // each is resent once, outside the retry budget (which, at its default of 3, lost the 4th of 4 at a SIGKILL).
    const front = await startFront(upstreams, { UPSTREAM_HEALTH_INTERVAL_MS: String(defaultUpstream.healthIntervalMs) })
    const clients = load(8, (i) =>
      i % 2 === 0
        ? postOnce(front.port, "/infer", { prompt: "hello there" })
        : postOnce(front.port, "/v1/completions", { model: "m", prompt: "hello there", max_tokens: 3 }))
    await sleep(300)
    // Rolling: one down at a time but for the last, by which time the first is back (and must be taken back).
    upstreams[0].child.kill("SIGTERM")
    await upstreams[0].exited
    const restarted = startUpstream(envs[0], ports[0])
    upstreams[1].child.kill("SIGKILL")
    await upstreams[1].exited
    upstreams[0] = await restarted
    await until(async () => (await metricValue(front.port, `router_upstream_available{upstream="127.0.0.1:${ports[0]}"}`)) === 1, "the restarted upstream back in rotation", 15_000)
    upstreams[2].child.kill("SIGTERM")
    await upstreams[2].exited
    await sleep(200)
    const outcomes = await clients.stop()
    const total = [...outcomes.values()].reduce((a, b) => a + b, 0)
    assert.deepStrictEqual(failures(outcomes), [], `of ${total} requests`)
    assert.isAbove(total, 20)
    await waitFor(front.port, 200)
  })

  it("loses nothing when a dns+ name loses an address whose server stops", { timeout: 60_000 }, async () => {
    const port = await freePort()
    // Two servers on one port, on two loopback addresses: the two pods behind a headless Service's name.
    const kept = await startUpstream({ SIM_LATENCY_MS: "10" }, port)
    const leaving = await startRouter({ SIM_LATENCY_MS: "10", HOST: "127.0.0.2" }, port, false)
    let addresses = ["127.0.0.1", "127.0.0.2"]
    const scope = Effect.runSync(Scope.make())
    try {
      const upstreams = await Effect.runPromise(
        Upstreams.make(
          {
            ...defaultUpstream,
            healthIntervalMs: 100,
            dnsRefreshMs: 100,
            targets: (parseTargets(`dns+http://model-pods.test:${port}`) as { targets: ReadonlyArray<UpstreamTarget> }).targets
          },
          16,
          async () => addresses
        ).pipe(Scope.provide(scope), Effect.provide(Logger.layer([])))
      )
      // Both addresses healthy before the load starts.
      for (let i = 0; i < 600 && upstreams.view().filter((u) => u.available).length < 2; i++) await sleep(25)
      assert.strictEqual(upstreams.view().filter((u) => u.available).length, 2)
      const clients = load(8, () =>
        Effect.runPromiseExit(upstreams.fetch({ path: "/v1/completions", body: JSON.stringify({ model: "m", prompt: "x", max_tokens: 2 }), headers: { "content-type": "application/json" } }))
          .then((exit) => Exit.isSuccess(exit) ? String(exit.value.status) : `${exit.cause}`))
      await sleep(300)
      // The pod stops first; the name stops listing it a little later (the DNS refresh).
      leaving.child.kill("SIGTERM")
      await leaving.exited
      await sleep(150)
      addresses = ["127.0.0.1"]
      await sleep(300)
      const outcomes = await clients.stop()
      assert.deepStrictEqual(failures(outcomes), [])
      assert.deepStrictEqual(upstreams.view().map((u) => u.id), [`127.0.0.1:${port}`])
      assert.isDefined(kept)
    } finally {
      await Effect.runPromise(Scope.close(scope, Exit.void))
    }
  })

  it("re-checks a failed upstream within a second, whatever the health interval: ready soon after its first upstream", { timeout: 60_000 }, async () => {
    const port = await freePort()
    // A long interval: only the quick re-check of a failed upstream can make it ready in time.
    const front = await startFront([`http://127.0.0.1:${port}`], { UPSTREAM_HEALTH_INTERVAL_MS: "60000" }, false)
    // Up and not ready: its first check has failed.
    await waitFor(front.port, 503)
    await startUpstream({}, port)
    const upstreamReadyAt = Date.now()
    await waitFor(front.port, 200, 30_000)
    // Re-checked after 100 ms, doubling to 1 s: about a second at most (generous for a busy machine), not the interval.
    assert.isBelow(Date.now() - upstreamReadyAt, 8000)
  })
})
