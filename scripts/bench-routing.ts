/**
 * Cache-aware routing against least request (issue 23's benchmark), on
 * simulated vLLM servers with a prefix cache, a prefill that costs time and
 * KV events (routers in simulated mode), all on this machine:
 *
 * - servers: BENCH_SERVERS (4) simulated servers, each BENCH_KV_BLOCKS (600)
 *   blocks of 16 tokens, SIM_PREFILL_US_PER_TOKEN=BENCH_PREFILL_US (100),
 *   SIM_ITL_MS=10, MAX_CONCURRENCY=32;
 * - workloads, in the shapes of kubernetes-sigs/inference-perf, streamed with
 *   usage, Poisson arrivals at each rate of BENCH_RATES (requests/s), each
 *   for BENCH_SECONDS:
 *   shared-prefix  8 groups × 16 users: a 2,000-token system prompt per group, a question per user
 *   multi-turn     32 conversations, each turn the history so far plus a question
 *   zero-reuse     every prompt new (the control: routing can't help, must not harm)
 *   hot-prefix     half the traffic one group's prompt, the rest 32 others
 * - schedulers (fronts started fresh for each cell, servers' caches reset):
 *   random (no router: the client sends each request to a server at random);
 *   least-request; cache-aware (approximate); cache-aware with KV events;
 *   three cache-aware replicas sharing through Redis, and three that don't
 *   (the client spreads requests over the replicas round robin).
 *
 * Reported per cell: TTFT p50/p90/p99 (client side), output tokens/s, cache
 * hit rate (reported cached_tokens / prompt tokens), max/mean requests in
 * flight over the servers (sampled every 100 ms from their /metrics), the
 * routers' decision time p99 (router_routing_decision_seconds), errors.
 * Results: a table on stdout and bench-results/<time>-routing.json.
 *
 *   npm run bench:routing                               the full run (about 25 minutes)
 *   BENCH_QUICK=1 npm run bench:routing                 one rate, two schedulers, shared prefix (under a minute)
 *   BENCH_WORKLOADS=shared-prefix,hot-prefix BENCH_RATES=4,8,16 BENCH_SCHEDULERS=least-request,cache-aware-events npm run bench:routing
 *   BENCH_LOAD_BOUND=2 ...                              UPSTREAM_LOAD_BOUND for the cache-aware fronts (default 1.25)
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { once } from "node:events"
import { mkdirSync, writeFileSync } from "node:fs"
import { Agent, request } from "node:http"
import { fileURLToPath } from "node:url"
import { freePort, sleep } from "../test/support/Processes.ts"
import { prng as seeded } from "../src/router/simulated/Simulation.ts"
import { get, percentile } from "./BenchSupport.ts"

const root = fileURLToPath(new URL("..", import.meta.url))
const quick = process.env.BENCH_QUICK === "1"
const list = (name: string, fallback: string) => (process.env[name] ?? fallback).split(",").map((item) => item.trim()).filter((item) => item !== "")
const serverCount = Number(process.env.BENCH_SERVERS ?? 4)
const kvBlocks = Number(process.env.BENCH_KV_BLOCKS ?? 600)
const prefillUs = Number(process.env.BENCH_PREFILL_US ?? 100)
const seconds = Number(process.env.BENCH_SECONDS ?? (quick ? 6 : 20))
const rates = list("BENCH_RATES", quick ? "8" : "2,4,8,16,32").map(Number)
const workloadNames = list("BENCH_WORKLOADS", quick ? "shared-prefix" : "shared-prefix,multi-turn,zero-reuse,hot-prefix")
const schedulerNames = list(
  "BENCH_SCHEDULERS",
  quick ? "least-request,cache-aware-events" : "random,least-request,cache-aware,cache-aware-events,replicas-redis,replicas-unshared"
)
const answerTokens = 32

// ---- processes ----

interface Proc {
  readonly child: ChildProcess
  readonly port: number
}

const startRouter = async (env: Record<string, string>): Promise<Proc> => {
  const port = await freePort()
  const child = spawn(process.execPath, ["--max-semi-space-size=4", "--single-threaded-gc", "src/router/main.ts"], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), MODEL_REF: "m", LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  for (let i = 0; i < 4_000; i++) {
    try {
      if ((await get(port, "/readyz")).status === 200) return { child, port }
    } catch {
      // not yet
    }
    await sleep(5)
  }
  throw new Error(`router ${JSON.stringify(env)} never became ready`)
}

const stop = async (proc: Proc) => {
  if (proc.child.exitCode !== null) return
  proc.child.kill("SIGTERM")
  await once(proc.child, "exit")
}

const post = (port: number, path: string) =>
  new Promise<void>((resolve) => {
    const req = request({ host: "127.0.0.1", port, method: "POST", path }, (res) => {
      res.resume()
      res.on("end", resolve)
    })
    req.on("error", () => resolve())
    req.end()
  })

const metricsText = async (port: number) => (await get(port, "/metrics")).body

const seriesSum = (text: string, name: string) =>
  text.split("\n").filter((line) => line.startsWith(`${name}{`) || line.startsWith(`${name} `)).reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

/** p99 of a Prometheus histogram from its cumulative buckets (the bucket bound it falls in). */
const histogramP99 = (texts: ReadonlyArray<string>, name: string): number | undefined => {
  const buckets = new Map<number, number>()
  for (const text of texts) {
    for (const line of text.split("\n")) {
      if (!line.startsWith(`${name}_bucket{`)) continue
      const le = /le="([^"]+)"/.exec(line)?.[1]
      if (le === undefined) continue
      const bound = le === "+Inf" ? Infinity : Number(le)
      buckets.set(bound, (buckets.get(bound) ?? 0) + Number(line.slice(line.lastIndexOf(" ") + 1)))
    }
  }
  const total = buckets.get(Infinity) ?? 0
  if (total === 0) return undefined
  for (const [bound, count] of [...buckets].sort((a, b) => a[0] - b[0])) if (count >= total * 0.99) return bound
  return undefined
}

// ---- workloads ----

type Message = { readonly role: string; readonly content: string }
interface Workload {
  /** The next request's messages; `answered` is called with the answer's text (multi-turn keeps it). */
  next(random: () => number): { readonly messages: ReadonlyArray<Message>; readonly answered?: (text: string) => void }
}

const words = (count: number, tag: string) => Array.from({ length: count }, (_, i) => `${tag}w${i}`).join(" ")

let unique = 0
const workloads: Record<string, () => Workload> = {
  "shared-prefix": () => {
    const systems = Array.from({ length: 8 }, (_, g) => words(2_000, `g${g}`))
    return {
      next: (random) => {
        const group = Math.floor(random() * 8)
        const user = Math.floor(random() * 16)
        return { messages: [{ role: "system", content: systems[group] }, { role: "user", content: `${words(40, `u${group}-${user}`)} ${unique++}` }] }
      }
    }
  },
  "multi-turn": () => {
    const conversations = Array.from({ length: 32 }, (_, c) => [{ role: "system", content: words(500, `c${c}`) }] as Array<Message>)
    return {
      next: (random) => {
        const conversation = conversations[Math.floor(random() * conversations.length)]
        const messages = [...conversation, { role: "user", content: `${words(60, `q${unique}`)} ${unique++}` }]
        return {
          messages,
          answered: (text) => {
            // The next turn carries this one; a long conversation starts over (as users do).
            if (conversation.length > 16) conversation.splice(1)
            else conversation.push(messages[messages.length - 1], { role: "assistant", content: text })
          }
        }
      }
    }
  },
  "zero-reuse": () => ({ next: () => ({ messages: [{ role: "system", content: words(2_000, `z${unique++}`) }, { role: "user", content: words(40, "q") }] }) }),
  "hot-prefix": () => {
    const hot = words(2_000, "hot")
    const others = Array.from({ length: 32 }, (_, g) => words(2_000, `o${g}`))
    return {
      next: (random) => {
        const system = random() < 0.5 ? hot : others[Math.floor(random() * others.length)]
        return { messages: [{ role: "system", content: system }, { role: "user", content: `${words(40, "u")} ${unique++}` }] }
      }
    }
  }
}

// ---- the client ----

interface Outcome {
  readonly ok: boolean
  readonly ttftMs: number
  readonly tokens: number
  readonly promptTokens: number
  readonly cachedTokens: number
  readonly text: string
}

const stream = (port: number, agent: Agent, messages: ReadonlyArray<Message>) =>
  new Promise<Outcome>((resolve) => {
    const body = JSON.stringify({ model: "m", stream: true, stream_options: { include_usage: true }, max_tokens: answerTokens, messages })
    const startedAt = performance.now()
    let ttftMs = NaN
    let tokens = 0
    let promptTokens = 0
    let cachedTokens = 0
    let text = ""
    let buffered = ""
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        return res.on("end", () => resolve({ ok: false, ttftMs, tokens, promptTokens, cachedTokens, text }))
      }
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        buffered += chunk
        let at: number
        while ((at = buffered.indexOf("\n\n")) !== -1) {
          const event = buffered.slice(0, at)
          buffered = buffered.slice(at + 2)
          if (!event.startsWith("data: {")) continue
          const data = JSON.parse(event.slice(6))
          const content = data.choices?.[0]?.delta?.content
          if (typeof content === "string" && content !== "") {
            if (Number.isNaN(ttftMs)) ttftMs = performance.now() - startedAt
            tokens++
            text += content
          }
          if (data.usage) {
            promptTokens = data.usage.prompt_tokens ?? 0
            cachedTokens = data.usage.prompt_tokens_details?.cached_tokens ?? 0
          }
        }
      })
      res.on("end", () => resolve({ ok: !Number.isNaN(ttftMs), ttftMs, tokens, promptTokens, cachedTokens, text }))
    })
    req.on("error", () => resolve({ ok: false, ttftMs, tokens, promptTokens, cachedTokens, text }))
    req.end(body)
  })


// ---- one cell: a scheduler, a workload, a rate ----

interface Servers {
  readonly procs: ReadonlyArray<Proc>
  readonly eventPorts: ReadonlyArray<number>
}

const startServers = async (): Promise<Servers> => {
  const eventPorts = await Promise.all(Array.from({ length: serverCount }, () => freePort()))
  const procs = await Promise.all(eventPorts.map((eventPort) =>
    startRouter({
      SIM_BLOCK_SIZE: "16",
      SIM_KV_BLOCKS: String(kvBlocks),
      SIM_PREFILL_US_PER_TOKEN: String(prefillUs),
      SIM_ITL_MS: "10",
      SIM_LATENCY_MS: "0",
      MAX_CONCURRENCY: "32",
      MAX_QUEUE: "10000",
      QUEUE_TIMEOUT_MS: "600000",
      SIM_KV_EVENTS_ENDPOINT: `tcp://*:${eventPort}`
    })
  ))
  return { procs, eventPorts }
}

const startFronts = async (scheduler: string, servers: Servers, redisUrl: string | undefined): Promise<Array<Proc>> => {
  const events = scheduler === "cache-aware-events"
  const upstreams = servers.procs.map((proc, i) => `http://127.0.0.1:${proc.port}${events ? `;kv-events=${servers.eventPorts[i]}` : ""}`).join(",")
  const env: Record<string, string> = {
    MODEL_BACKEND: "upstream",
    UPSTREAMS: upstreams,
    UPSTREAM_HEALTH_INTERVAL_MS: "1000",
    UPSTREAM_SCHEDULER: scheduler === "least-request" ? "least-request" : "cache-aware",
    MAX_CONCURRENCY: "1000",
    MAX_QUEUE: "10000",
    QUEUE_TIMEOUT_MS: "600000"
  }
  if (process.env.BENCH_LOAD_BOUND !== undefined) env.UPSTREAM_LOAD_BOUND = process.env.BENCH_LOAD_BOUND
  if (scheduler === "replicas-redis") env.KV_ENDPOINTS = redisUrl!
  const count = scheduler.startsWith("replicas") ? 3 : 1
  return Promise.all(Array.from({ length: count }, () => startRouter(env)))
}

interface Cell {
  readonly scheduler: string
  readonly workload: string
  readonly rate: number
  readonly requests: number
  readonly errors: number
  readonly ttftP50: number
  readonly ttftP90: number
  readonly ttftP99: number
  readonly outputTokensPerSecond: number
  readonly hitRate: number
  readonly maxOverMeanInFlight: number
  readonly decisionP99Ms: number | undefined
}

const runCell = async (scheduler: string, workloadName: string, rate: number, servers: Servers, redisUrl: string | undefined): Promise<Cell> => {
  // Every cell starts from cold caches.
  await Promise.all(servers.procs.map((proc) => post(proc.port, "/reset_prefix_cache")))
  // random: the servers themselves, one picked per request below.
  const fronts = scheduler === "random" ? [] : await startFronts(scheduler, servers, redisUrl)
  const agent = new Agent({ keepAlive: true, maxSockets: 2_000 })
  // mulberry32 (the simulator's), so every scheduler sees the same arrivals and prompts.
  const random = seeded(rate * 1000 + workloadName.length)
  // Its own sequence, so that arrivals and prompts are the same for every scheduler.
  const pick = seeded(7)
  const workload = workloads[workloadName]()
  const outcomes: Array<Promise<Outcome>> = []
  const inFlightRatios: Array<number> = []
  let sampling = true
  const sampler = (async () => {
    while (sampling) {
      const counts = await Promise.all(servers.procs.map(async (proc) => {
        const text = await metricsText(proc.port)
        return seriesSum(text, "vllm:num_requests_running") + seriesSum(text, "vllm:num_requests_waiting")
      }))
      const mean = counts.reduce((a, b) => a + b, 0) / counts.length
      if (mean >= 1) inFlightRatios.push(Math.max(...counts) / mean)
      await sleep(100)
    }
  })()
  const startedAt = performance.now()
  let at = 0
  let index = 0
  while (at < seconds * 1000) {
    at += -Math.log(1 - random()) / rate * 1000
    const wait = startedAt + at - performance.now()
    if (wait > 0) await sleep(wait)
    const { answered, messages } = workload.next(random)
    const port = fronts.length === 0 ? servers.procs[Math.floor(pick() * servers.procs.length)].port : fronts[index++ % fronts.length].port
    outcomes.push(stream(port, agent, messages).then((outcome) => {
      if (outcome.ok) answered?.(outcome.text)
      return outcome
    }))
  }
  const done = await Promise.all(outcomes)
  const elapsed = (performance.now() - startedAt) / 1000
  sampling = false
  await sampler
  const decisionTexts = await Promise.all(fronts.map((front) => metricsText(front.port)))
  agent.destroy()
  await Promise.all(fronts.map(stop))
  const ok = done.filter((outcome) => outcome.ok)
  const ttfts = ok.map((outcome) => outcome.ttftMs)
  const prompt = ok.reduce((sum, outcome) => sum + outcome.promptTokens, 0)
  const cached = ok.reduce((sum, outcome) => sum + outcome.cachedTokens, 0)
  const decision = histogramP99(decisionTexts, "router_routing_decision_seconds")
  return {
    scheduler,
    workload: workloadName,
    rate,
    requests: done.length,
    errors: done.length - ok.length,
    ttftP50: percentile(ttfts, 50),
    ttftP90: percentile(ttfts, 90),
    ttftP99: percentile(ttfts, 99),
    outputTokensPerSecond: ok.reduce((sum, outcome) => sum + outcome.tokens, 0) / elapsed,
    hitRate: prompt === 0 ? 0 : cached / prompt,
    maxOverMeanInFlight: inFlightRatios.length === 0 ? 1 : inFlightRatios.reduce((a, b) => a + b, 0) / inFlightRatios.length,
    decisionP99Ms: decision === undefined ? undefined : decision * 1000
  }
}

// ---- main ----

const main = async () => {
  let redis: ChildProcess | undefined
  let redisUrl: string | undefined
  if (schedulerNames.includes("replicas-redis")) {
    const port = await freePort()
    const binary = execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).trim()
    redis = spawn(binary, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" })
    redisUrl = `redis://127.0.0.1:${port}`
    await sleep(300)
  }
  const servers = await startServers()
  const cells: Array<Cell> = []
  try {
    for (const workload of workloadNames) {
      for (const rate of rates) {
        for (const scheduler of schedulerNames) {
          const cell = await runCell(scheduler, workload, rate, servers, redisUrl)
          cells.push(cell)
          console.log(
            [
              cell.workload.padEnd(14),
              `${cell.rate}/s`.padStart(6),
              cell.scheduler.padEnd(20),
              `ttft p50 ${cell.ttftP50.toFixed(0)} p90 ${cell.ttftP90.toFixed(0)} p99 ${cell.ttftP99.toFixed(0)} ms`.padEnd(36),
              `${cell.outputTokensPerSecond.toFixed(0)} tok/s`.padStart(11),
              `hit ${cell.hitRate.toFixed(2)}`,
              `max/mean ${cell.maxOverMeanInFlight.toFixed(2)}`,
              `decide p99 ${cell.decisionP99Ms === undefined ? "-" : `<=${cell.decisionP99Ms} ms`}`,
              `errors ${cell.errors}/${cell.requests}`
            ].join("  ")
          )
        }
      }
    }
  } finally {
    await Promise.all(servers.procs.map(stop))
    redis?.kill("SIGKILL")
  }
  mkdirSync(`${root}/bench-results`, { recursive: true })
  const file = `${root}/bench-results/${new Date().toISOString().replace(/[:.]/g, "-")}-routing.json`
  writeFileSync(file, JSON.stringify({ quick, serverCount, kvBlocks, prefillUs, seconds, rates, cells }, null, 2))
  console.log(`results: ${file}`)
}

await main()
