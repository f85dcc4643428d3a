/**
 * `npm run bench:churn`: the upstream pool under a rolling restart of its
 * model servers, as issue 21 measured it. A front router with the defaults
 * (MODEL_BACKEND=upstream), three routers in simulated mode as upstreams
 * (SIM_LATENCY_MS=50), closed-loop clients; every `--up-ms` one upstream in
 * turn is signalled, stays down `--down-ms`, and is started again on its port.
 * Prints, per mode, the requests and the failures by reason (status and error
 * code). Every request here is non-streamed: a failure is a request that had
 * not received a byte, so the goal is 0.
 *
 *   node scripts/churn.ts [--modes sigterm,sigterm-delay,sigkill] [--seconds 30]
 *     [--clients 20] [--down-ms 2000] [--up-ms 6000] [--latency-ms 50] [--root DIR]
 *
 * `--root` runs the router found in another checkout (a before/after figure).
 * `UPSTREAM_*` variables in the environment are passed to the front router
 * (the defaults otherwise: a killed server's requests in flight are resent once).
 * The defaults take about 90 s (three modes of 30 s).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import * as Http from "node:http"
import { resolve } from "node:path"
import { parseArgs } from "node:util"
import { freePort, sleep } from "../test/support/Processes.ts"

const { values } = parseArgs({
  options: {
    modes: { type: "string", default: "sigterm,sigterm-delay,sigkill" },
    seconds: { type: "string", default: "30" },
    clients: { type: "string", default: "20" },
    "down-ms": { type: "string", default: "2000" },
    "up-ms": { type: "string", default: "6000" },
    "latency-ms": { type: "string", default: "50" },
    "delay-ms": { type: "string", default: "1000" },
    root: { type: "string", default: resolve(import.meta.dirname, "..") }
  }
})
const seconds = Number(values.seconds)
const clients = Number(values.clients)
const downMs = Number(values["down-ms"])
const upMs = Number(values["up-ms"])
const root = values.root


interface Router {
  readonly child: ChildProcess
  readonly exited: Promise<unknown>
}

const get = (port: number, path: string) =>
  new Promise<number>((done) => {
    const request = Http.get({ host: "127.0.0.1", port, path, agent: false }, (response) => {
      response.resume()
      done(response.statusCode ?? 0)
    })
    request.on("error", () => done(0))
  })

const startRouter = async (port: number, env: Record<string, string>): Promise<Router> => {
  const child = spawn(process.execPath, ["--max-semi-space-size=4", "--single-threaded-gc", "src/router/main.ts"], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), MODEL_REF: "m", LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  const exited = once(child, "exit")
  while ((await get(port, "/readyz")) !== 200) {
    if (child.exitCode !== null) throw new Error(`router on ${port} exited with ${child.exitCode}`)
    await sleep(25)
  }
  return { child, exited }
}

const agent = new Http.Agent({ keepAlive: true, maxSockets: clients })
const body = JSON.stringify({ model: "m", prompt: "hello there", max_tokens: 4 })

/** One request: "200", or the status and error code. */
const send = (port: number): Promise<string> =>
  new Promise((done) => {
    const request = Http.request({ host: "127.0.0.1", port, method: "POST", path: "/v1/completions", agent, headers: { "content-type": "application/json", "content-length": body.length } }, (response) => {
      let data = ""
      response.setEncoding("utf8")
      response.on("data", (chunk) => (data += chunk))
      response.on("end", () => {
        if (response.statusCode === 200) return done("200")
        let code = ""
        try {
          code = JSON.parse(data).error?.code ?? ""
        } catch {
          // not JSON
        }
        done(`${response.statusCode} ${code}`.trim())
      })
    })
    request.on("error", (error) => done(`client error ${(error as NodeJS.ErrnoException).code ?? error.message}`))
    request.end(body)
  })

const runMode = async (mode: string) => {
  const signal = mode === "sigkill" ? "SIGKILL" : "SIGTERM"
  const upstreamEnv: Record<string, string> = { SIM_LATENCY_MS: values["latency-ms"] }
  if (mode === "sigterm-delay") upstreamEnv.SHUTDOWN_DELAY_MS = values["delay-ms"]
  const ports = await Promise.all([freePort(), freePort(), freePort()])
  const upstreams = await Promise.all(ports.map((port) => startRouter(port, upstreamEnv)))
  const frontPort = await freePort()
  const front = await startRouter(frontPort, {
    MODEL_BACKEND: "upstream",
    UPSTREAMS: ports.map((port) => `http://127.0.0.1:${port}`).join(","),
    // The caller's UPSTREAM_* settings go to the front (e.g. UPSTREAM_RETRY_BUDGET_MIN=20).
    ...Object.fromEntries(Object.entries(process.env).filter(([name, value]) => name.startsWith("UPSTREAM_") && value !== undefined)) as Record<string, string>
  })
  const outcomes = new Map<string, number>()
  let stopped = false
  const loops = Array.from({ length: clients }, async () => {
    while (!stopped) {
      const outcome = await send(frontPort)
      outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1)
    }
  })
  const endAt = Date.now() + seconds * 1000
  let restarts = 0
  for (let i = 0; Date.now() + upMs <= endAt; i++) {
    await sleep(Math.min(upMs, endAt - Date.now()))
    const which = i % upstreams.length
    upstreams[which].child.kill(signal)
    await upstreams[which].exited
    await sleep(downMs)
    upstreams[which] = await startRouter(ports[which], upstreamEnv)
    restarts++
  }
  await sleep(Math.max(0, endAt - Date.now()))
  stopped = true
  await Promise.all(loops)
  for (const router of [front, ...upstreams]) router.child.kill("SIGKILL")
  const total = [...outcomes.values()].reduce((a, b) => a + b, 0)
  const failed = [...outcomes].filter(([outcome]) => outcome !== "200").sort((a, b) => b[1] - a[1])
  const failures = failed.reduce((sum, [, count]) => sum + count, 0)
  console.log(`${mode}: ${total} requests, ${restarts} restarts, ${failures} failed`)
  for (const [reason, count] of failed) console.log(`  ${count}\t${reason}`)
  return failures
}

let failures = 0
for (const mode of values.modes.split(",")) failures += await runMode(mode.trim())
agent.destroy()
process.exitCode = failures === 0 ? 0 : 1
