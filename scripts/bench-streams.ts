/**
 * Streaming benchmark: the router's /v1/chat/completions (bundled, production
 * flags) against a bare node:http SSE server emitting the same frames on the
 * same schedule (scripts/sse-baseline.ts), in the same run, taking turns
 * level by level (the order alternating). TTFT 50 ms, 200 tokens per stream.
 *
 * Each level is N concurrent streams with an inter-token gap: "250" is 250
 * streams at 10 ms, "1000@50" 1,000 at 50 ms. At 10 ms, 1,000 streams are
 * 100,000 tokens a second, more than one core sends for the bare server too
 * (its gaps stretch), so the default run's 1,000 streams are at 50 ms (as an
 * engine's gaps grow with its batch).
 *
 * Steady arrivals (the default): N clients, their first streams started over
 * one stream's lifetime, each starting a new stream as its last ends, so N
 * are open at every moment and new ones arrive at the rate of steady service;
 * the streams started after the first two lifetimes (one to open them all, one
 * for the heap to settle at N open streams) are measured, at least 1,000.
 * BENCH_ARRIVALS=burst instead starts the N streams within 250 ms, once (a
 * surge of new streams: it measures how fast each accepts them).
 *
 * Both servers start once per gap and are warmed up alike (2,000 short
 * streams, then one untimed round of up to 250), so what is measured is each
 * one's steady state, not V8 compiling the router's larger request path;
 * BENCH_COLD=1 measures a fresh process per level after 50 warm-up streams.
 *
 * The router's simulated engine runs its streams in steps, as vLLM does
 * (docs/simulator.md): a stream arriving during a step joins the batch at the
 * next one, so its TTFT includes up to one gap of alignment that the
 * baseline's one-timer-per-stream schedule does not have. With steady
 * arrivals it is most of a gap: a client opens its next stream just after
 * the step that ended the last one (the whole batch's step), so the request
 * lands early in a step and waits nearly all of it; and a step is a burst
 * (every stream's frame at once), which grows both servers' tails on a busy
 * machine (docs/simulator.md has figures). BENCH_BASELINE=stepped
 * runs the baseline on one timer per step with the engine's rule (its
 * SIM_STEPS=1), so the TTFT the router adds is the router's own; the default
 * (timers) keeps the figures comparable with earlier runs and prints a note.
 *
 * The load generator (this process) timestamps every `data:` frame: time to
 * first token and inter-token gaps, p50/p99; the router's added latency is
 * its figure minus the baseline's. Server CPU per delivered token; RSS with N
 * streams open. Servers on core 0, this process on core 1 (taskset). This
 * process runs with a 1 MB young generation (package.json): its collections
 * are then a millisecond or two each instead of up to 20 ms and more, which
 * landed in both servers' tails.
 *   npm run bench:streams     # BENCH_STREAMS=50,100,250,500,1000@50 (the default), ~10 minutes
 * The table goes to stdout, its charts to bench-results/<time>-streams-*.svg (scripts/charts.ts).
 */
import { type ChildProcess, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { Agent, request } from "node:http"
import { monitorEventLoopDelay } from "node:perf_hooks"
import { fileURLToPath } from "node:url"
import { cpuSeconds, percentile, routerArgs, timedStream } from "./BenchSupport.ts"
import { type StreamLevel, streamCharts } from "./charts.ts"
import { freePort, sleep, until } from "../test/support/Processes.ts"
import { onCore, pinned, pinSelf } from "./pinning.ts"

const ttftMs = 50
const tokens = 200
const cold = process.env.BENCH_COLD === "1"
const arrivals = process.env.BENCH_ARRIVALS === "burst" ? "burst" : "steady"
/** The baseline's schedule: a timer per stream (the default) or one per step as the engine's (see the top). */
const steppedBaseline = process.env.BENCH_BASELINE === "stepped"
interface Level {
  readonly streams: number
  readonly itlMs: number
}
const levels: Array<Level> = (process.env.BENCH_STREAMS ?? "50,100,250,500,1000@50").split(",").map((item) => {
  const [streams, itlMs = "10"] = item.split("@")
  return { streams: Number(streams), itlMs: Number(itlMs) }
})

pinSelf(1)

type Target = "router" | "baseline"
const commands: Record<Target, Array<string>> = {
  router: routerArgs(),
  baseline: ["dist/bench/sse-baseline.js"]
}

const start = async (target: Target, port: number, itlMs: number): Promise<ChildProcess> => {
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
    LOG_LEVEL: "warn",
    // The router's listening sockets (docs/operations.md), to compare: LISTEN_SOCKETS=1 npm run bench:streams.
    ...(target === "router" && process.env.LISTEN_SOCKETS !== undefined ? { LISTEN_SOCKETS: process.env.LISTEN_SOCKETS } : {}),
    ...(target === "baseline" && steppedBaseline ? { SIM_STEPS: "1" } : {})
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
  /** Server CPU per token delivered in the round (measured or not), in µs. */
  readonly cpuUsPerToken: number
  readonly ttft: Array<number>
  readonly gaps: Array<number>
  /** Streams completed and measured (started after the lead-in). */
  readonly measured: number
  readonly rss: number
  /** The load generator's own event-loop delay, p99 and max (ms): how late it may have read a frame. */
  readonly clientLag: { readonly p99: number; readonly max: number }
}

/** A streaming chat request whose prompt is `tokens` tokens (echoed by the router, so a stream carries `maxTokens`). */
const chatBody = (maxTokens: number) =>
  JSON.stringify({ model: "bench", messages: [{ role: "user", content: "go ".repeat(tokens).trim() }], max_tokens: maxTokens, stream: true })
const body = chatBody(tokens)
const shortBody = chatBody(2)

const lifetimeOf = (itlMs: number) => ttftMs + tokens * itlMs

/** `streams` concurrent streams of `body` (steady or burst arrivals: see the top). */
const round = async (port: number, { streams, itlMs }: Level, onOpen?: () => void) => {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  const lifetimeMs = lifetimeOf(itlMs)
  const ttft: Array<number> = []
  const gaps: Array<number> = []
  let measured = 0
  let delivered = 0
  const t0 = performance.now()
  const burst = arrivals === "burst"
  const spread = burst ? 250 : lifetimeMs
  const measuredFrom = burst ? t0 : t0 + 2 * lifetimeMs
  // At least 1,000 measured streams, so that a p99 is not one stream's figure.
  const lastStart = burst ? t0 : measuredFrom + Math.ceil(1000 / streams) * lifetimeMs
  const client = async (i: number) => {
    await sleep((spread * i) / streams)
    do {
      const startedAt = performance.now()
      const own = { ttft: [] as Array<number>, gaps: [] as Array<number> }
      const completed = await timedStream(port, agent, body, own.ttft, own.gaps)
      if (completed) delivered++
      if (completed && startedAt >= measuredFrom) {
        measured++
        ttft.push(...own.ttft)
        gaps.push(...own.gaps)
      }
    } while (performance.now() < lastStart)
  }
  const all = Array.from({ length: streams }, (_, i) => client(i))
  if (onOpen) {
    await sleep(burst ? 250 + lifetimeMs / 2 : 2.5 * lifetimeMs)
    onOpen()
  }
  await Promise.all(all)
  return { ttft, gaps, measured, tokensDelivered: delivered * tokens }
}

/** Untimed: the same request path and token path as measured, until V8 has compiled them. */
const warmUp = async (port: number, itlMs: number) => {
  const agent = new Agent({ keepAlive: false, maxSockets: Infinity })
  if (cold) {
    await Promise.all(Array.from({ length: 50 }, () => timedStream(port, agent, body, [], [])))
    return
  }
  for (let batch = 0; batch < 40; batch++) {
    await Promise.all(Array.from({ length: 50 }, () => timedStream(port, agent, shortBody, [], [])))
  }
  await round(port, { streams: 250, itlMs })
}

const measure = async (port: number, pid: number, level: Level): Promise<Result> => {
  const cpuBefore = cpuSeconds(pid)
  let rss = 0
  const lag = monitorEventLoopDelay({ resolution: 1 })
  lag.enable()
  const { ttft, gaps, measured, tokensDelivered } = await round(port, level, () => (rss = rssMiB(pid)))
  lag.disable()
  const cpuUsPerToken = ((cpuSeconds(pid) - cpuBefore) * 1e6) / tokensDelivered
  return { cpuUsPerToken, ttft, gaps, measured, rss, clientLag: { p99: lag.percentile(99) / 1e6, max: lag.max / 1e6 } }
}

const servers = new Map<Target, { child: ChildProcess; port: number; itlMs: number }>()
const stop = async (target: Target) => {
  const running = servers.get(target)
  if (running === undefined) return
  servers.delete(target)
  running.child.kill("SIGTERM")
  await new Promise((resolve) => running.child.once("exit", resolve))
}
/** The target's warm server for this gap (a new one when the gap changes, or for every level when cold). */
const server = async (target: Target, itlMs: number) => {
  const running = servers.get(target)
  if (running !== undefined && running.itlMs === itlMs && !cold) return running
  await stop(target)
  const port = await freePort()
  const child = await start(target, port, itlMs)
  await warmUp(port, itlMs)
  servers.set(target, { child, port, itlMs })
  return servers.get(target)!
}

const fmt = (n: number) => n.toFixed(2)
const stamp = new Date().toISOString()
/** Each level's figures, for the charts written to bench-results/ beside the table. */
const charted: Array<StreamLevel> = []
console.log(`# Streaming benchmark ${stamp}`)
console.log()
console.log(`Node ${process.version}; TTFT ${ttftMs} ms, ${tokens} tokens per stream; ${pinned ? "servers on core 0, load generator on core 1" : "not pinned"}; ${cold ? "cold: a fresh process per level, 50 warm-up streams" : "warm: one process each per gap, 2,000 short streams and a round of 250 first"}; ${arrivals === "burst" ? "burst: the streams started within 250 ms" : "steady: N streams open at every moment, at least 1,000 measured after the first two lifetimes"}; baseline ${steppedBaseline ? "stepped: one timer per step, a new stream joining at the next step as on the engine" : "timers: one per stream"}.`)
console.log()
console.log("| streams | gap ms | target | measured | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | RSS MiB | CPU µs/token | client lag p99 / max |")
console.log("|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|")
/** Per gap and target: the most streams whose inter-token p99 stayed within 1 ms, and within 2 ms, of the gap. */
const held = new Map<string, { within1: number; within2: number }>()
for (const [index, level] of levels.entries()) {
  const results: Partial<Record<Target, Result>> = {}
  const order: Array<Target> = index % 2 === 0 ? ["baseline", "router"] : ["router", "baseline"]
  for (const target of order) {
    const { child, port } = await server(target, level.itlMs)
    const result = await measure(port, child.pid!, level)
    results[target] = result
    const key = `${level.itlMs} ms, ${target}`
    const most = held.get(key) ?? { within1: 0, within2: 0 }
    const p99 = percentile(result.gaps, 99)
    if (p99 <= level.itlMs + 1) most.within1 = Math.max(most.within1, level.streams)
    if (p99 <= level.itlMs + 2) most.within2 = Math.max(most.within2, level.streams)
    held.set(key, most)
  }
  const row = (target: string, result: Result) =>
    `| ${level.streams} | ${level.itlMs} | ${target} | ${result.measured} | ${fmt(percentile(result.ttft, 50))} | ${fmt(percentile(result.ttft, 99))} | ${fmt(percentile(result.gaps, 50))} | ${fmt(percentile(result.gaps, 99))} | ${result.rss.toFixed(1)} | ${result.cpuUsPerToken.toFixed(1)} | ${fmt(result.clientLag.p99)} / ${fmt(result.clientLag.max)} |`
  const r = results.router!
  const b = results.baseline!
  console.log(row("baseline", b))
  console.log(row("router", r))
  charted.push({
    streams: level.streams,
    gapMs: level.itlMs,
    ttftAdded: { p50: percentile(r.ttft, 50) - percentile(b.ttft, 50), p99: percentile(r.ttft, 99) - percentile(b.ttft, 99) },
    itlAdded: { p50: percentile(r.gaps, 50) - percentile(b.gaps, 50), p99: percentile(r.gaps, 99) - percentile(b.gaps, 99) },
    rssRatio: r.rss / b.rss,
    cpuRatio: r.cpuUsPerToken / b.cpuUsPerToken
  })
  console.log(`| ${level.streams} | ${level.itlMs} | **added by the router** | | ${fmt(percentile(r.ttft, 50) - percentile(b.ttft, 50))} | ${fmt(percentile(r.ttft, 99) - percentile(b.ttft, 99))} | ${fmt(percentile(r.gaps, 50) - percentile(b.gaps, 50))} | ${fmt(percentile(r.gaps, 99) - percentile(b.gaps, 99))} | ${(r.rss / b.rss).toFixed(2)}× | ${(r.cpuUsPerToken / b.cpuUsPerToken).toFixed(2)}× | |`)
}
console.log()
if (!steppedBaseline) {
  console.log("Note: the router's engine emits every stream's tokens at the end of a shared step (docs/simulator.md); a stream arriving during a step joins at the next, so the router's TTFT includes up to one gap of batch alignment the timer baseline lacks (with steady arrivals most of a gap: a new stream opens just after the step that ended the one it replaces), and its steps are bursts (every stream's frame at once), which grow tails on a busy machine. BENCH_BASELINE=stepped compares like with like.")
  console.log()
}
console.log("Most streams (of the levels run) with the inter-token p99 within 1 ms / 2 ms of the gap:")
for (const [key, { within1, within2 }] of held) console.log(`- ${key}: ${within1 || "none"} / ${within2 || "none"}`)
for (const target of ["baseline", "router"] as const) await stop(target)
const chartDir = fileURLToPath(new URL("../bench-results", import.meta.url))
for (const svg of await streamCharts(charted, chartDir, `${stamp.replace(/[:.]/g, "-")}-`)) console.log(`chart ${svg}`)
process.exit(0)
