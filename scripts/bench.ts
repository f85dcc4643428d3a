/**
 * Benchmark harness: the router against a bare `node:http` baseline with the
 * same `/infer` contract (scripts/baseline.ts), load from wrk on loopback,
 * runs alternated A B A B so the ratios hold on a noisy machine.
 *
 *   npm run bench                      # all scenarios
 *   BENCH_SECONDS=5 BENCH_ROUNDS=2 npm run bench
 *
 * Writes bench-results/<time>.md and, beside it, its charts (<time>-infer-*.svg,
 * scripts/charts.ts). Needs wrk (Debian: apt-get install wrk; Nix: nix develop). Every run is
 * bounded in time and stops by itself; traffic stays on 127.0.0.1.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { once } from "node:events"
import { mkdirSync, readFileSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { basename, dirname, join } from "node:path"
import { fileURLToPath } from "node:url"
import { freePort, sleep } from "../test/support/Processes.ts"
import { cpuSeconds, get, median, routerArgs } from "./BenchSupport.ts"
import { inferCharts, type InferScenario } from "./charts.ts"
import { onCore, pinned } from "./pinning.ts"

const root = fileURLToPath(new URL("..", import.meta.url))
const seconds = Number(process.env.BENCH_SECONDS ?? 5)
const rounds = Number(process.env.BENCH_ROUNDS ?? 5)
const only = process.env.BENCH_ONLY?.split(",")

type Target = "router" | "baseline"
/**
 * Both run as bundled JavaScript (`npm run bench` builds them), the router with
 * its production command (package.json's `start:prod`, the Dockerfile's CMD).
 */
const command: Record<Target, ReadonlyArray<string>> = {
  router: routerArgs(),
  baseline: ["dist/bench/baseline.js"]
}

/**
 * On a machine with two cores or more, each server runs on core 0 and wrk on
 * core 1 (taskset, from util-linux), so the two never compete for a core and
 * the scheduler's placement does not add noise. Without taskset, unpinned.
 */


interface Server {
  readonly child: ChildProcess
  readonly port: number
  /** Process start to the first 200 from /readyz. */
  readonly startupMs: number
}

const startServer = async (target: Target, env: Record<string, string>): Promise<Server> => {
  const port = await freePort()
  const startedAt = performance.now()
  const child = spawn(...onCore(0, process.execPath, command[target]), {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  for (let i = 0; i < 2_000; i++) {
    try {
      if ((await get(port, "/readyz")).status === 200) {
        return { child, port, startupMs: performance.now() - startedAt }
      }
    } catch {
      // not listening yet
    }
    await sleep(2)
  }
  child.kill("SIGKILL")
  throw new Error(`${target} never became ready`)
}

const stopServer = async (server: Server) => {
  server.child.kill("SIGTERM")
  await once(server.child, "exit")
}

/** Peak resident set size (VmHWM) of a live process, in MiB. */
const peakRssMiB = (pid: number) => {
  const match = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return match ? Number(match[1]) / 1024 : NaN
}


/** Current resident set size (VmRSS) of a live process, in MiB. */
const rssMiB = (pid: number) => {
  const match = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))
  return match ? Number(match[1]) / 1024 : NaN
}

const wrkScript = join(tmpdir(), "inference-router-bench.lua")
writeFileSync(
  wrkScript,
  `wrk.method = "POST"\nwrk.body = '{"prompt":"benchmark prompt"}'\nwrk.headers["Content-Type"] = "application/json"\n`
)

interface LoadResult {
  readonly rps: number
  readonly p50ms: number
  readonly p99ms: number
  readonly requests: number
  readonly non2xx: number
  readonly errors: number
  /** Server CPU use during the run, in % of one core: ~100 means the server, not wrk, is the limit. */
  readonly serverCpu: number
  /** wrk's own CPU use during the run, in % of one core: well under 100 means it kept up. */
  readonly wrkCpu: number
  /** Server CPU time per request served, in µs: what a request costs, less sensitive to noise than req/s. */
  readonly cpuUsPerRequest: number
}

const toMs = (value: string) => {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value)
  if (!match) return NaN
  const n = Number(match[1])
  return match[2] === "us" ? n / 1000 : match[2] === "s" ? n * 1000 : n
}

const runWrk = (server: Server, connections: number): LoadResult => {
  const cpuBefore = cpuSeconds(server.child.pid!)
  const wrkCpuBefore = cpuSeconds("self", "children")
  const startedAt = performance.now()
  const output = execFileSync(...onCore(1, "wrk", [
    "-t1",
    `-c${connections}`,
    `-d${seconds}s`,
    "--timeout",
    "5s",
    "--latency",
    "-s",
    wrkScript,
    `http://127.0.0.1:${server.port}/infer`
  ]), { encoding: "utf8" })
  const elapsed = (performance.now() - startedAt) / 1000
  const serverCpuSeconds = cpuSeconds(server.child.pid!) - cpuBefore
  const serverCpu = (serverCpuSeconds / elapsed) * 100
  const wrkCpu = ((cpuSeconds("self", "children") - wrkCpuBefore) / elapsed) * 100
  const number = (pattern: RegExp) => Number(pattern.exec(output)?.[1] ?? 0)
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output)
  const requests = number(/(\d+) requests in/)
  return {
    rps: number(/Requests\/sec:\s+([\d.]+)/),
    p50ms: toMs(/\s50%\s+(\S+)/.exec(output)?.[1] ?? ""),
    p99ms: toMs(/\s99%\s+(\S+)/.exec(output)?.[1] ?? ""),
    requests,
    non2xx: number(/Non-2xx or 3xx responses: (\d+)/),
    errors: errors ? errors.slice(1).reduce((sum, n) => sum + Number(n), 0) : 0,
    serverCpu,
    wrkCpu,
    cpuUsPerRequest: (serverCpuSeconds * 1e6) / requests
  }
}

const fmt = (n: number, digits = 1) => Number.isFinite(n) ? n.toFixed(digits) : "n/a"

const lines: Array<string> = []
/** The scenarios measured, for the charts written beside the table. */
const charted: Array<InferScenario> = []
const print = (line = "") => {
  lines.push(line)
  console.log(line)
}

/** Runs both targets, alternating A B A B, each on its own long-lived process. */
const alternate = async (env: Record<string, string>, connections: number) => {
  const servers = { router: await startServer("router", env), baseline: await startServer("baseline", env) }
  const results: Record<Target, Array<LoadResult>> = { router: [], baseline: [] }
  // Warm both up (JIT) before measuring.
  for (const target of ["router", "baseline"] as const) {
    execFileSync(...onCore(1, "wrk", ["-t1", `-c${connections}`, "-d2s", "-s", wrkScript, `http://127.0.0.1:${servers[target].port}/infer`]))
  }
  for (let round = 0; round < rounds; round++) {
    for (const target of (round % 2 === 0 ? ["router", "baseline"] : ["baseline", "router"]) as Array<Target>) {
      const result = runWrk(servers[target], connections)
      results[target].push(result)
      console.error(
        `  round ${round + 1} ${target}: ${fmt(result.rps, 0)} req/s, p99 ${fmt(result.p99ms, 2)} ms, ` +
          `server CPU ${fmt(result.serverCpu, 0)}% (${fmt(result.cpuUsPerRequest, 1)} µs/request), wrk CPU ${fmt(result.wrkCpu, 0)}%`
      )
    }
  }
  const rss = { router: peakRssMiB(servers.router.child.pid!), baseline: peakRssMiB(servers.baseline.child.pid!) }
  const metrics = (await get(servers.router.port, "/metrics")).body
  await stopServer(servers.router)
  await stopServer(servers.baseline)
  return { results, rss, metrics }
}

const summarize = (results: Record<Target, Array<LoadResult>>, rss: Record<Target, number>) => {
  const row = (target: Target) => {
    const r = results[target]
    return {
      rps: median(r.map((x) => x.rps)),
      p50: median(r.map((x) => x.p50ms)),
      p99: median(r.map((x) => x.p99ms)),
      cpu: median(r.map((x) => x.serverCpu)),
      cpuPerRequest: median(r.map((x) => x.cpuUsPerRequest)),
      wrkCpu: median(r.map((x) => x.wrkCpu)),
      rss: rss[target]
    }
  }
  const router = row("router")
  const baseline = row("baseline")
  // Each round runs both targets back to back: the ratio within a round is
  // what drifts least when the machine gets faster or slower.
  const throughput = median(results.router.map((r, i) => r.rps / results.baseline[i].rps))
  const format = (name: string, x: typeof router) =>
    `| ${name} | ${fmt(x.rps, 0)} | ${fmt(x.p50, 2)} | ${fmt(x.p99, 2)} | ${fmt(x.rss)} | ${fmt(x.cpu, 0)} | ${
      fmt(x.cpuPerRequest, 1)
    } | ${fmt(x.wrkCpu, 0)} |`
  print("| | req/s | p50 ms | p99 ms | peak RSS MiB | server CPU % | server CPU µs/request | wrk CPU % |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  print(format("router", router))
  print(format("baseline", baseline))
  print(
    `| **router / baseline** | **${fmt(throughput, 2)}×** | ${fmt(router.p50 / baseline.p50, 2)}× | ${
      fmt(router.p99 / baseline.p99, 2)
    }× | **${fmt(router.rss / baseline.rss, 2)}×** | | ${fmt(router.cpuPerRequest / baseline.cpuPerRequest, 2)}× | |`
  )
  print()
  print(`Throughput ratio per round: ${results.router.map((r, i) => fmt(r.rps / results.baseline[i].rps, 2)).join(", ")} (median above).`)
  return { router, baseline, throughput }
}

const sampleValue = (text: string, series: string) => {
  const line = text.split("\n").find((l) => l.startsWith(series + " "))
  return line === undefined ? 0 : Number(line.slice(series.length + 1))
}

const main = async () => {
  try {
    execFileSync("wrk", ["--version"], { stdio: "ignore" })
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") {
      console.error("wrk not found: apt-get install wrk (or nix develop)")
      process.exit(2)
    }
  }
  const stamp = new Date().toISOString()
  print(`# Benchmark ${stamp}`)
  print()
  print(
    `Node ${process.version}, ${rounds} alternating rounds of ${seconds} s per target, wrk -t1 on 127.0.0.1, medians; ${
      pinned ? "servers pinned to core 0, wrk to core 1" : "not pinned (no taskset)"
    }.`
  )
  print()

  for (const [name, env, label, connections] of [
    ["overhead", {}, "default settings: one access-log line per request", 50],
    ["overhead-quiet", { LOG_LEVEL: "warn" }, "LOG_LEVEL=warn: no access log", 50],
    // Many connections: a long pause (GC, a slow batch write) shows here first.
    ["overhead-256", {}, "default settings, 256 connections", 256],
    // The same with one listening socket, as plain Node listens: what LISTEN_SOCKETS changes (docs/operations.md).
    ["overhead-256-one-socket", { LISTEN_SOCKETS: "1" }, "default settings but LISTEN_SOCKETS=1, 256 connections", 256],
    // The baseline runs the router's simulated engine as its model, so this reads the router's overhead
    // apart from the engine's (BENCHMARKS.md section 18); the goals compare with bare node.
    ["overhead-engine", { BASELINE_ENGINE: "1" }, "default settings, against a baseline whose model is the router's simulated engine", 50]
  ] as const) {
    if (only && !only.includes(name)) continue
    print(`## 1. Router overhead (${label}): SIM_LATENCY_MS=0, MAX_CONCURRENCY=10000, ${connections} connections`)
    print()
    const { results, rss } = await alternate({ SIM_LATENCY_MS: "0", MAX_CONCURRENCY: "10000", MAX_QUEUE: "0", ...env }, connections)
    const { baseline, router, throughput } = summarize(results, rss)
    charted.push({ name: `${name}, ${connections} conn.`, router, baseline })
    print()
    print(
      name === "overhead-engine"
        ? `Not a goal (the goals compare with bare node): throughput ${fmt(throughput, 2)}×, p99 ${fmt(router.p99, 2)} / ${fmt(baseline.p99, 2)} ms, peak RSS ${fmt(router.rss / baseline.rss, 2)}×.`
        : `Goals: throughput ≥ 0.85× (${fmt(throughput, 2)}×), p99 ≤ 2× baseline + 1 ms (${fmt(router.p99, 2)} ≤ ${fmt(2 * baseline.p99 + 1, 2)}), peak RSS ≤ 1.5× (${fmt(router.rss / baseline.rss, 2)}×).`
    )
    const errors = [...results.router, ...results.baseline].reduce((sum, r) => sum + r.errors + r.non2xx, 0)
    print(`Errors and non-2xx responses across all runs: ${errors}.`)
    print()
  }

  if (!only || only.includes("admission")) {
    const slots = 8
    const latencyMs = 20
    const connections = 4 * slots
    const theoretical = slots / (latencyMs / 1000)
    print(`## 2. Admission under pressure: MAX_CONCURRENCY=${slots}, SIM_LATENCY_MS=${latencyMs}, ${connections} connections`)
    print()
    const { metrics, results, rss } = await alternate({ SIM_LATENCY_MS: String(latencyMs), MAX_CONCURRENCY: String(slots) }, connections)
    const { router, baseline } = summarize(results, rss)
    charted.push({ name: `admission, ${slots} slots × ${latencyMs} ms`, router, baseline })
    print()
    const served = sampleValue(metrics, `router_requests_total{endpoint="/infer",status="200"}`)
    const cancelled = sampleValue(metrics, `router_requests_total{endpoint="/infer",status="499"}`)
    const shed = ["queue_full", "queue_timeout", "shutting_down"].map((reason) =>
      sampleValue(metrics, `router_shed_total{reason="${reason}"}`)
    )
    const wrkOk = results.router.reduce((sum, r) => sum + r.requests - r.non2xx, 0)
    const wrkBad = results.router.reduce((sum, r) => sum + r.non2xx + r.errors, 0)
    print(`Theoretical ${theoretical} req/s (slots / latency); router ${fmt(router.rps, 0)} req/s = ${fmt((router.rps / theoretical) * 100, 1)}% of it (goal: within 5%).`)
    print(`With ${connections} connections on ${slots} slots and MAX_QUEUE=${10 * slots}, nothing should be shed: shed ${shed.join("/")} (queue_full/queue_timeout/shutting_down), wrk saw ${wrkBad} non-2xx or errors.`)
    print(`Exactly once: the router answered ${served} × 200 (warm-up included) for the ${wrkOk} 2xx wrk counted in measured runs; ${cancelled} requests were cut off by wrk stopping (status 499).`)
    print()
  }

  if (!only || only.includes("docs")) {
    // Issue: ten readers of an uncompressed, uncached 3.2 MB /docs pushed /infer's p99 from 16 to 360 ms.
    const readers = 10
    print(`## 4. /docs readers beside /infer: router only, SIM_LATENCY_MS=0, 10 /infer connections, with and without ${readers} uncached /docs readers`)
    print()
    const server = await startServer("router", { SIM_LATENCY_MS: "0", MAX_CONCURRENCY: "10000", MAX_QUEUE: "0", LOG_LEVEL: "warn" })
    const scriptPath = /<script src="([^"]+)"/.exec((await get(server.port, "/docs")).body)?.[1] ?? "/docs"
    const docsScript = join(tmpdir(), "inference-router-bench-docs.lua")
    // As a browser without a cache asks: compressed, no If-None-Match.
    writeFileSync(docsScript, `wrk.headers["Accept-Encoding"] = "gzip, deflate, br"\n`)
    const alone: Array<LoadResult> = []
    const beside: Array<LoadResult> = []
    let docsRequests = 0
    runWrk(server, 10) // warm-up
    for (let round = 0; round < rounds; round++) {
      alone.push(runWrk(server, 10))
      const docs = spawn(...onCore(1, "wrk", ["-t1", `-c${readers}`, `-d${seconds + 2}s`, "-s", docsScript, `http://127.0.0.1:${server.port}${scriptPath}`]), { stdio: ["ignore", "pipe", "ignore"] })
      let docsOutput = ""
      docs.stdout!.on("data", (chunk) => (docsOutput += chunk))
      await sleep(500)
      beside.push(runWrk(server, 10))
      await new Promise((resolve) => docs.on("exit", resolve))
      docsRequests += Number(/(\d+) requests in/.exec(docsOutput)?.[1] ?? 0)
    }
    await stopServer(server)
    const p99Alone = median(alone.map((r) => r.p99ms))
    const p99Beside = median(beside.map((r) => r.p99ms))
    print("| /infer | req/s | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|")
    print(`| alone | ${fmt(median(alone.map((r) => r.rps)), 0)} | ${fmt(median(alone.map((r) => r.p50ms)), 2)} | ${fmt(p99Alone, 2)} |`)
    print(`| beside ${readers} /docs readers | ${fmt(median(beside.map((r) => r.rps)), 0)} | ${fmt(median(beside.map((r) => r.p50ms)), 2)} | ${fmt(p99Beside, 2)} |`)
    print()
    print(`The readers fetched the compressed script ${docsRequests} times (${fmt(docsRequests / (rounds * (seconds + 2)), 0)}/s). /infer p99 moved ${fmt(p99Beside - p99Alone, 2)} ms.`)
    print()
  }

  if (!only || only.includes("startup")) {
    print("## 3. Start-up: process start to the first 200 from /readyz (median of 5)")
    print()
    const times: Record<Target, Array<number>> = { router: [], baseline: [] }
    const idleRss: Record<Target, Array<number>> = { router: [], baseline: [] }
    for (let i = 0; i < 5; i++) {
      for (const target of ["router", "baseline"] as const) {
        const server = await startServer(target, {})
        times[target].push(server.startupMs)
        // Idle memory: ready, one second settled, no load yet.
        await sleep(1_000)
        idleRss[target].push(rssMiB(server.child.pid!))
        await stopServer(server)
      }
    }
    print("| | start-up ms | idle RSS MiB |")
    print("|---|---:|---:|")
    print(`| router | ${fmt(median(times.router), 0)} | ${fmt(median(idleRss.router))} |`)
    print(`| baseline | ${fmt(median(times.baseline), 0)} | ${fmt(median(idleRss.baseline))} |`)
    print()
    print(`Goals: router ≤ 500 ms (${fmt(median(times.router), 0)} ms); idle RSS ≤ 1.2× baseline (${fmt(median(idleRss.router) / median(idleRss.baseline), 2)}×).`)
  }

  mkdirSync(join(root, "bench-results"), { recursive: true })
  const file = join(root, "bench-results", `${stamp.replace(/[:.]/g, "-")}.md`)
  writeFileSync(file, lines.join("\n") + "\n")
  console.error(`\nwritten to ${file}`)
  if (charted.length > 0) for (const svg of await inferCharts(charted, dirname(file), `${basename(file, ".md")}-`)) console.error(`chart ${svg}`)
}

await main()
