/**
 * MODEL_BACKEND=upstream against a bare `node:http` forwarding proxy
 * (scripts/proxy-baseline.ts), both in front of the same model server stub
 * (scripts/sse-baseline.ts, also the streaming benchmark's baseline), in the same run, alternating rounds:
 *
 * 1. throughput at zero model time (wrk, 50 connections, POST /v1/completions);
 * 2. latency added at light load (wrk, 1 connection): p50/p99, and the stub
 *    alone for reference;
 * 3. time to first token and inter-token gaps added for streams (100 streams,
 *    TTFT 50 ms, ITL 10 ms, 50 tokens, started over 250 ms);
 * 4. connections: how many TCP connections each opened to the stub.
 *
 * The proxy under test runs on core 0; the stub, wrk and the stream client on
 * core 1. The router runs its production bundle with LOG_LEVEL=warn (no
 * access log) and, in a second row, the default (one access-log line per
 * request).
 *
 *   npm run bench:upstream                 BENCH_SECONDS=5 BENCH_ROUNDS=4
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { once } from "node:events"
import { mkdirSync, writeFileSync } from "node:fs"
import { Agent } from "node:http"
import { cpuSeconds, get, median, percentile, routerArgs, timedStream } from "./BenchSupport.ts"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { freePort, sleep } from "../test/support/Processes.ts"
import { onCore, pinned, pinSelf } from "./pinning.ts"

const root = fileURLToPath(new URL("..", import.meta.url))
const seconds = Number(process.env.BENCH_SECONDS ?? 5)
const rounds = Number(process.env.BENCH_ROUNDS ?? 4)
const router = routerArgs()

const startOn = async (core: number, args: Array<string>, env: Record<string, string>, readyPath = "/readyz") => {
  const port = await freePort()
  const child = spawn(...onCore(core, process.execPath, args), {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  for (let i = 0; i < 2_000; i++) {
    try {
      if ((await get(port, readyPath)).status === 200) return { child, port }
    } catch {
      // not yet
    }
    await sleep(5)
  }
  throw new Error(`${args.join(" ")} never became ready`)
}

const stop = async (child: ChildProcess) => {
  child.kill("SIGTERM")
  await once(child, "exit")
}

const wrkScript = join(tmpdir(), "inference-router-bench-upstream.lua")
writeFileSync(
  wrkScript,
  `wrk.method = "POST"\nwrk.body = '{"model":"m","prompt":"benchmark prompt","max_tokens":16}'\nwrk.headers["Content-Type"] = "application/json"\n`
)

const toMs = (value: string) => {
  const match = /^([\d.]+)(us|ms|s)$/.exec(value)
  if (!match) return NaN
  const n = Number(match[1])
  return match[2] === "us" ? n / 1000 : match[2] === "s" ? n * 1000 : n
}

interface Load {
  /** Server CPU per request, in µs (heavy runs only). */
  cpuUs?: number
  readonly rps: number
  readonly p50: number
  readonly p99: number
  readonly bad: number
}

const wrk = (port: number, connections: number, duration = seconds): Load => {
  const output = execFileSync(...onCore(1, "wrk", ["-t1", `-c${connections}`, `-d${duration}s`, "--timeout", "5s", "--latency", "-s", wrkScript, `http://127.0.0.1:${port}/v1/completions`]), { encoding: "utf8" })
  const errors = /Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)/.exec(output)
  return {
    rps: Number(/Requests\/sec:\s+([\d.]+)/.exec(output)?.[1] ?? 0),
    p50: toMs(/\s50%\s+(\S+)/.exec(output)?.[1] ?? ""),
    p99: toMs(/\s99%\s+(\S+)/.exec(output)?.[1] ?? ""),
    bad: Number(/Non-2xx or 3xx responses: (\d+)/.exec(output)?.[1] ?? 0) + (errors ? errors.slice(1).reduce((s, n) => s + Number(n), 0) : 0)
  }
}

const fmt = (n: number, digits = 2) => Number.isFinite(n) ? n.toFixed(digits) : "n/a"

/** Streams through `port`, from core 1 (this process is pinned there by the caller's command). */
const streams = async (port: number, count: number, tokens: number) => {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  const ttft: Array<number> = []
  const gaps: Array<number> = []
  const body = JSON.stringify({ model: "m", messages: [{ role: "user", content: "go" }], max_tokens: tokens, stream: true })
  const one = () => timedStream(port, agent, body, ttft, gaps)
  await Promise.all(Array.from({ length: 20 }, one)) // warm-up
  ttft.length = 0
  gaps.length = 0
  await Promise.all(Array.from({ length: count }, (_, i) => sleep((250 * i) / count).then(one)))
  return { ttft, gaps }
}

const lines: Array<string> = []
const print = (line = "") => {
  lines.push(line)
  console.log(line)
}

const main = async () => {
  pinSelf(1)
  const stamp = new Date().toISOString()
  print(`# Upstream benchmark ${stamp}`)
  print()
  print(`Node ${process.version}; ${rounds} alternating rounds of ${seconds} s; ${pinned ? "proxies on core 0, stub, wrk and stream client on core 1" : "not pinned (no taskset)"}.`)
  print()
  const stub = await startOn(1, ["dist/bench/sse-baseline.js"], { SIM_TTFT_MS: "50", SIM_ITL_MS: "10" }, "/health")
  const connectionsNow = async () => JSON.parse((await get(stub.port, "/stats")).body).connections as number
  const upstreamEnv = { MODEL_BACKEND: "upstream", UPSTREAMS: `http://127.0.0.1:${stub.port}`, MODEL_REF: "m", MAX_CONCURRENCY: "10000", MAX_QUEUE: "0" }
  const targets = {
    proxy: await startOn(0, ["dist/bench/proxy-baseline.js"], { UPSTREAM: `http://127.0.0.1:${stub.port}` }),
    router: await startOn(0, router, { ...upstreamEnv, LOG_LEVEL: "warn" }),
    "router (access log)": await startOn(0, router, { ...upstreamEnv })
  }
  type Name = keyof typeof targets
  const names = Object.keys(targets) as Array<Name>
  const opened: Record<Name, number> = { proxy: 0, router: 0, "router (access log)": 0 }
  const requests: Record<Name, number> = { proxy: 0, router: 0, "router (access log)": 0 }
  const measure = async (name: Name, connections: number) => {
    const before = await connectionsNow()
    const cpuBefore = cpuSeconds(targets[name].child.pid!)
    const result = wrk(targets[name].port, connections)
    result.cpuUs = ((cpuSeconds(targets[name].child.pid!) - cpuBefore) * 1e6) / (result.rps * seconds)
    opened[name] += (await connectionsNow()) - before
    requests[name] += result.rps * seconds
    return result
  }
  for (const name of names) wrk(targets[name].port, 50, 2) // warm-up

  const heavy: Record<Name, Array<Load>> = { proxy: [], router: [], "router (access log)": [] }
  const light: Record<Name, Array<Load>> = { proxy: [], router: [], "router (access log)": [] }
  const direct: Array<Load> = []
  for (let round = 0; round < rounds; round++) {
    const order = round % 2 === 0 ? names : [...names].reverse()
    for (const name of order) heavy[name].push(await measure(name, 50))
    for (const name of order) light[name].push(await measure(name, 1))
    direct.push(wrk(stub.port, 1))
    console.error(`  round ${round + 1}: ${names.map((n) => `${n} ${fmt(heavy[n].at(-1)!.rps, 0)} req/s`).join(", ")}`)
  }

  print("## 1. Throughput at zero model time (50 connections) and latency at light load (1 connection)")
  print()
  print("| | req/s (50 conn.) | ratio to proxy | CPU µs/request | p50 / p99 ms (50 conn.) | p50 / p99 ms (1 conn.) | added p50 / p99 ms (1 conn.) | errors |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  const proxyP50 = median(light.proxy.map((r) => r.p50))
  const proxyP99 = median(light.proxy.map((r) => r.p99))
  for (const name of names) {
    const ratio = median(heavy[name].map((r, i) => r.rps / heavy.proxy[i].rps))
    const p50 = median(light[name].map((r) => r.p50))
    const p99 = median(light[name].map((r) => r.p99))
    const bad = [...heavy[name], ...light[name]].reduce((s, r) => s + r.bad, 0)
    print(`| ${name} | ${fmt(median(heavy[name].map((r) => r.rps)), 0)} | ${fmt(ratio)}× | ${fmt(median(heavy[name].map((r) => r.cpuUs!)), 0)} | ${fmt(median(heavy[name].map((r) => r.p50)))} / ${fmt(median(heavy[name].map((r) => r.p99)))} | ${fmt(p50, 3)} / ${fmt(p99, 3)} | ${name === "proxy" ? "" : `${fmt(p50 - proxyP50, 3)} / ${fmt(p99 - proxyP99, 3)}`} | ${bad} |`)
  }
  print(`| the stub alone | | | | | ${fmt(median(direct.map((r) => r.p50)), 3)} / ${fmt(median(direct.map((r) => r.p99)), 3)} | | |`)
  print()
  print("Ratio per round (router / proxy): " + heavy.router.map((r, i) => fmt(r.rps / heavy.proxy[i].rps)).join(", ") + ".")
  print()
  print("## 2. Connections opened to the stub")
  print()
  print("| | requests (approx.) | connections opened |")
  print("|---|---:|---:|")
  for (const name of names) print(`| ${name} | ${fmt(requests[name], 0)} | ${opened[name]} |`)
  print()

  print("## 3. Streams: 100 at once (started over 250 ms), TTFT 50 ms, ITL 10 ms, 50 tokens")
  print()
  print("| | TTFT p50 / p99 ms | inter-token p50 / p99 ms |")
  print("|---|---:|---:|")
  const streamed: Record<string, { ttft: Array<number>; gaps: Array<number> }> = {}
  for (const name of ["proxy", "router"] as const) {
    streamed[name] = await streams(targets[name].port, 100, 50)
    const s = streamed[name]
    print(`| ${name} | ${fmt(percentile(s.ttft, 50))} / ${fmt(percentile(s.ttft, 99))} | ${fmt(percentile(s.gaps, 50))} / ${fmt(percentile(s.gaps, 99))} |`)
  }
  const added = (p: number, key: "ttft" | "gaps") => percentile(streamed.router[key], p) - percentile(streamed.proxy[key], p)
  print(`| **added by the router** | ${fmt(added(50, "ttft"))} / ${fmt(added(99, "ttft"))} | ${fmt(added(50, "gaps"))} / ${fmt(added(99, "gaps"))} |`)
  print()
  for (const target of [...Object.values(targets), stub]) await stop(target.child)
  mkdirSync(join(root, "bench-results"), { recursive: true })
  const file = join(root, "bench-results", `upstream-${stamp.replace(/[:.]/g, "-")}.md`)
  writeFileSync(file, lines.join("\n") + "\n")
  console.error(`written to ${file}`)
}

await main()
