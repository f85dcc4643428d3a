/**
 * Streaming benchmark: the router's /v1/chat/completions (bundled, production
 * flags) against a bare node:http SSE server emitting the same frames on the
 * same schedule (scripts/sse-baseline.ts), in the same run, alternating. The
 * load generator (this process) opens N concurrent streams and timestamps
 * every `data:` frame: time to first token and inter-token gaps, p50/p99; the
 * router's added latency is its figure minus the baseline's. Each run warms up
 * with 50 streams first; measured streams start spread over 250 ms. Servers on core
 * 0, this process on core 1 (taskset). RSS with N streams open.
 *   npm run bench:streams     # BENCH_STREAMS=100,250,500,1000 BENCH_TOKENS=200
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { Agent, request } from "node:http"
import { cpuSeconds, percentile, timedStream } from "./BenchSupport.ts"
import { freePort, sleep, until } from "../test/support/Processes.ts"
import { onCore, pinned, pinSelf } from "./pinning.ts"

const ttftMs = 50
const itlMs = 10
const tokens = Number(process.env.BENCH_TOKENS ?? 200)
const levels = (process.env.BENCH_STREAMS ?? "100,250,500,1000").split(",").map(Number)

pinSelf(1)

type Target = "router" | "baseline"
const commands: Record<Target, Array<string>> = {
  router: ["--max-semi-space-size=4", "dist/router.js"],
  baseline: ["dist/bench/sse-baseline.js"]
}

const start = async (target: Target, port: number): Promise<ChildProcess> => {
  const env = {
    PATH: process.env.PATH ?? "",
    PORT: String(port),
    HOST: "127.0.0.1",
    MODEL_REF: "bench",
    // Echo of a prompt of exactly `tokens` tokens: every stream carries `tokens` tokens, as the baseline's do.
    SIM_MODE: "echo",
    SIM_TTFT_MS: String(ttftMs),
    SIM_ITL_MS: String(itlMs),
    SIM_MAX_TOKENS: String(tokens),
    MAX_CONCURRENCY: "100000",
    MAX_QUEUE: "0",
    LOG_LEVEL: "warn"
  }
  const args = commands[target]
  const child = spawn(...onCore(0, process.execPath, args), { env, stdio: "ignore" })
  await until(() =>
    new Promise<boolean>((resolve) => {
      const req = request({ host: "127.0.0.1", port, path: "/readyz" }, (res) => {
        res.resume()
        resolve(res.statusCode === 200)
      })
      req.on("error", () => resolve(false))
      req.end()
    }), `${target} ready`)
  return child
}

const rssMiB = (pid: number) => Number(/VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, "utf8"))?.[1] ?? 0) / 1024


interface Result {
  /** Server CPU per token delivered in the measured streams, in µs. */
  readonly cpuUsPerToken: number
  readonly ttft: Array<number>
  readonly gaps: Array<number>
  readonly completed: number
  readonly rss: number
}

const run = async (target: Target, streams: number): Promise<Result> => {
  const port = await freePort()
  const child = await start(target, port)
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  const ttft: Array<number> = []
  const gaps: Array<number> = []
  let completed = 0
  let rss = 0
  const body = JSON.stringify({ model: "bench", messages: [{ role: "user", content: "go ".repeat(tokens).trim() }], max_tokens: tokens, stream: true })
  const one = async () => {
    if (await timedStream(port, agent, body, ttft, gaps)) completed++
  }
  // Warm-up (untimed): the JIT compiles the hot paths before anything is measured.
  await Promise.all(Array.from({ length: 50 }, one))
  ttft.length = 0
  gaps.length = 0
  completed = 0
  const cpuBefore = cpuSeconds(child.pid!)
  // Streams start spread over 250 ms, as independent clients would, not in one burst.
  const all = Array.from({ length: streams }, (_, i) => sleep((250 * i) / streams).then(one))
  // RSS with every stream open (sampled mid-way through the streams' life).
  await sleep(250 + ttftMs + (tokens * itlMs) / 2)
  rss = rssMiB(child.pid!)
  await Promise.all(all)
  const cpuUsPerToken = ((cpuSeconds(child.pid!) - cpuBefore) * 1e6) / (completed * tokens)
  child.kill("SIGTERM")
  await new Promise((resolve) => child.once("exit", resolve))
  return { cpuUsPerToken, ttft, gaps, completed, rss }
}

const fmt = (n: number) => n.toFixed(2)
console.log(`# Streaming benchmark ${new Date().toISOString()}`)
console.log()
console.log(`Node ${process.version}; TTFT ${ttftMs} ms, ITL ${itlMs} ms, ${tokens} tokens per stream; ${pinned ? "servers on core 0, load generator on core 1" : "not pinned"}; 50 warm-up streams, then the measured ones started over 250 ms.`)
console.log()
console.log("| streams | target | completed | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | RSS MiB | CPU µs/token |")
console.log("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
for (const streams of levels) {
  const results: Partial<Record<Target, Result>> = {}
  for (const target of ["baseline", "router"] as const) {
    const result = await run(target, streams)
    results[target] = result
    console.log(`| ${streams} | ${target} | ${result.completed} | ${fmt(percentile(result.ttft, 50))} | ${fmt(percentile(result.ttft, 99))} | ${fmt(percentile(result.gaps, 50))} | ${fmt(percentile(result.gaps, 99))} | ${result.rss.toFixed(1)} | ${result.cpuUsPerToken.toFixed(1)} |`)
  }
  const r = results.router!
  const b = results.baseline!
  console.log(`| ${streams} | **added by the router** | | ${fmt(percentile(r.ttft, 50) - percentile(b.ttft, 50))} | ${fmt(percentile(r.ttft, 99) - percentile(b.ttft, 99))} | ${fmt(percentile(r.gaps, 50) - percentile(b.gaps, 50))} | ${fmt(percentile(r.gaps, 99) - percentile(b.gaps, 99))} | ${(r.rss / b.rss).toFixed(2)}× | ${(r.cpuUsPerToken / b.cpuUsPerToken).toFixed(2)}× |`)
}
process.exit(0)
