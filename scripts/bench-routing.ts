/**
 * Cache-aware routing against least request (issue 23's benchmark), on
 * simulated vLLM servers with a prefix cache, a prefill that costs time and
 * KV events (routers in simulated mode), all on this machine.
 *
 * Runs without node_modules: `npm run bench:routing` builds the router
 * (the production build, rolldown.config.ts, into dist/bench/router/, with
 * the zeromq addon beside it in dist/bench/node_modules) and this script
 * (dist/bench/routing.js); then
 * `node dist/bench/routing.js` needs only Node 24 and, for the Redis part,
 * `redis-server` on PATH.
 *
 * - servers: BENCH_SERVERS (4) simulated servers per group, each
 *   BENCH_KV_BLOCKS (600) blocks of 16 tokens, SIM_PREFILL_US_PER_TOKEN=100,
 *   SIM_ITL_MS=10, MAX_CONCURRENCY=32; answers of up to 32 tokens (128 for
 *   the hot prefix), streamed with usage;
 * - workloads (inference-perf's shapes), Poisson arrivals ramping from nothing
 *   to the rate over BENCH_WARMUP_S (5, not measured), then BENCH_SECONDS (15)
 *   measured:
 *   shared-prefix  8 groups × 16 users: a 2,000-token system prompt per group, a question per user
 *   multi-turn     32 conversations, each turn the history so far plus a question
 *   zero-reuse     every prompt new (the control: routing can't help, must not harm)
 *   hot-prefix     half the traffic one group's prompt, the rest 32 others
 *   pressure       the shared prefix on caches of 170 blocks (its prefixes 1.5× the caches)
 *   shared-prefix-cold  the shared prefix from a cold start at full rate (no ramp)
 * - schedulers: random (no router: the client picks a server); least-request;
 *   cache-aware (approximate); cache-aware-events (with KV events);
 *   replicas-redis / replicas-unshared (three cache-aware fronts, approximate,
 *   round robin, with and without Redis; replicas-unshared-events: without
 *   Redis, with KV events); killed (cache-aware-events, one server SIGKILLed
 *   mid-run). After the groups, the decision alone is timed in process
 *   (the decision-time goal).
 *
 * The cells are split into groups, each with its own servers (and Redis),
 * run as child processes of this one: with BENCH_PLAN=full all at once, with
 * small one at a time (BENCH_PARALLEL overrides). BENCH_CORES (e.g. `0-15`)
 * pins each group to its own share of those cores with `taskset -c` (all of
 * them when one runs at a time; default: unpinned).
 *
 * Output: the markdown report (tables per workload, the goals met/missed) on
 * stdout and in bench-results/<time>-routing.md (raw cells beside it, .json).
 *
 *   node dist/bench/routing.js                              the full comparison (plan full with 8+ CPUs: about 4-5 minutes on 16 cores;
 *                                                           plan small below: about 9-12 minutes on 2 cores; both estimated, BENCH_PLAN to choose)
 *   BENCH_QUICK=1 node dist/bench/routing.js                shared prefix, one rate, least request vs cache-aware (under a minute)
 *     (BENCH_QUICK_WORKLOAD, BENCH_QUICK_RATE, BENCH_QUICK_SCHEDULERS: another single cell set)
 *   BENCH_CORES=0-15 node dist/bench/routing.js             pinned
 *   BENCH_SECONDS=10 BENCH_GROUPS=hot-prefix,replicas ...   shorter cells, some groups only
 *   BENCH_LOAD_BOUND=2 ...                                  UPSTREAM_LOAD_BOUND for the cache-aware fronts (default: the router's)
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { once } from "node:events"
import { existsSync, mkdirSync, writeFileSync } from "node:fs"
import { Agent, request } from "node:http"
import { availableParallelism } from "node:os"
import { dirname, join, resolve } from "node:path"
import { fileURLToPath } from "node:url"
import { blockKeysOf, tokenIdsOfParts } from "../src/router/routing/BlockKeys.ts"
import { promptOf } from "../src/router/routing/Routing.ts"
import { CacheAwareScheduler, defaultSchedulerSettings } from "../src/router/routing/Scheduler.ts"
import { prng as seeded } from "../src/router/simulated/Simulation.ts"
import { freePort } from "../test/support/Processes.ts"
import { get, percentile } from "./BenchSupport.ts"

const self = fileURLToPath(import.meta.url)
const here = dirname(self)
const bundled = here.endsWith(join("dist", "bench"))
/** The repository: this file is scripts/bench-routing.ts or dist/bench/routing.js. */
const root = bundled ? resolve(here, "../..") : resolve(here, "..")
/** The production build (rolldown.config.ts) made into dist/bench/router/, zeromq beside it in dist/bench/node_modules. */
const routerPath = process.env.BENCH_ROUTER ?? join(bundled ? here : join(root, "dist/bench"), "router/router.js")
const quick = process.env.BENCH_QUICK === "1"
const serverCount = Number(process.env.BENCH_SERVERS ?? 4)
const kvBlocks = Number(process.env.BENCH_KV_BLOCKS ?? 600)
const blockSize = 16
const prefillUs = Number(process.env.BENCH_PREFILL_US ?? 100)
const itlMs = 10
const answerTokens = 32
/** Longer answers for the hot prefix: more requests in flight per server at a rate the servers can serve (whole requests matter less to max/mean). */
const answerTokensOf = (workload: string) => workload === "hot-prefix" ? 128 : answerTokens
/**
 * `full`: every workload at several rates, the groups at once, for a machine
 * with many cores (about 4-5 minutes on 16). `small`: the same comparison
 * trimmed to run one group at a time on 2 cores in about 12 minutes (fewer
 * rungs, random at two rates only, one rate per other workload, 10 s cells).
 * By default `small` below 8 CPUs.
 */
const plan = process.env.BENCH_PLAN ?? (availableParallelism() >= 8 ? "full" : "small")
const small = plan === "small"
const seconds = Number(process.env.BENCH_SECONDS ?? (quick ? 6 : small ? 10 : 15))
/**
 * Before each measured window, arrivals ramp from nothing to the rate over
 * this many seconds, not measured (as a load test ramps up, and as a ladder
 * that keeps its servers between steps would): what is measured is the rate,
 * not a cold start at full rate.
 */
const warmupS = Number(process.env.BENCH_WARMUP_S ?? (quick || small ? 3 : 5))
/** A cell whose requests are not all answered this long after its last arrival stops waiting (the rest count as unfinished). */
const drainLimitS = Number(process.env.BENCH_DRAIN_S ?? (small ? 20 : 30))
/** A group past this many seconds skips its remaining cells (the 7-minute budget of a full run). */
const groupLimitS = Number(process.env.BENCH_GROUP_LIMIT_S ?? 330)
/**
 * The whole run's budget (plan small: 13 minutes, for a 15-minute slot): a
 * group starts with what is left as its limit, and one that would have
 * under 30 s is not started (listed under "Not run").
 */
const totalLimitS = Number(process.env.BENCH_TOTAL_LIMIT_S ?? (small ? 780 : 600))
const healthIntervalMs = 1000
/** A cell whose last answer ends more than this after its last arrival was saturated (an answer alone takes well under a second). */
const saturatedDrainS = 3
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

// ---- processes ----

interface Proc {
  readonly child: ChildProcess
  readonly port: number
  /** A simulated server's KV events port (SIM_KV_EVENTS_ENDPOINT). */
  readonly eventPort?: number
}

/**
 * Started on a free port; tried again on another (three times) if it never
 * becomes ready: groups starting at once can race for a port between its
 * check and the bind.
 */
const startRouter = async (env: Record<string, string>, attempt = 1): Promise<Proc> => {
  try {
    return await startRouterOnce(env)
  } catch (error) {
    if (attempt >= 3) throw error
    if (env.SIM_KV_EVENTS_ENDPOINT !== undefined) env = { ...env, SIM_KV_EVENTS_ENDPOINT: `tcp://*:${await freePort()}` }
    return startRouter(env, attempt + 1)
  }
}

const startRouterOnce = async (env: Record<string, string>): Promise<Proc> => {
  const port = await freePort()
  const child = spawn(process.execPath, ["--max-semi-space-size=4", "--single-threaded-gc", routerPath], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), MODEL_REF: "m", LOG_LEVEL: "warn", ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  for (let i = 0; i < 4_000; i++) {
    if (child.exitCode !== null) break
    try {
      if ((await get(port, "/readyz")).status === 200) {
        const events = env.SIM_KV_EVENTS_ENDPOINT === undefined ? undefined : Number(env.SIM_KV_EVENTS_ENDPOINT.split(":").pop())
        return { child, port, ...(events === undefined ? {} : { eventPort: events }) }
      }
    } catch {
      // not yet
    }
    await sleep(5)
  }
  child.kill("SIGKILL")
  throw new Error(`router ${JSON.stringify(env)} never became ready`)
}

const stop = async (proc: Proc) => {
  if (proc.child.exitCode !== null || proc.child.signalCode !== null) return
  proc.child.kill("SIGTERM")
  await Promise.race([once(proc.child, "exit"), sleep(5_000)])
  if (proc.child.exitCode === null && proc.child.signalCode === null) proc.child.kill("SIGKILL")
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

const metricsText = async (port: number) => {
  try {
    return (await get(port, "/metrics")).body
  } catch {
    return ""
  }
}

const seriesSum = (text: string, name: string, labelPart = "") =>
  text.split("\n")
    .filter((line) => (line.startsWith(`${name}{`) || line.startsWith(`${name} `)) && line.includes(labelPart))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

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

/** Blocks per server that make the shared prefix's 8 groups (about 128 blocks each) 1.5× all servers' caches. */
const pressureBlocks = Math.floor(8 * Math.ceil(2_041 / blockSize) / 1.5 / serverCount)

let unique = 0
const sharedPrefix = (groups: number, users: number) => () => {
  const systems = Array.from({ length: groups }, (_, g) => words(2_000, `g${g}`))
  return {
    next: (random: () => number) => {
      const group = Math.floor(random() * groups)
      const user = Math.floor(random() * users)
      return { messages: [{ role: "system", content: systems[group] }, { role: "user", content: `${words(40, `u${group}-${user}`)} ${unique++}` }] }
    }
  }
}
const workloads: Record<string, () => Workload> = {
  "shared-prefix": sharedPrefix(8, 16),
  // The same, measured from a cold start at full rate (no ramp).
  "shared-prefix-cold": sharedPrefix(8, 16),
  // The shared prefix on servers with smaller caches (pressureBlocks).
  "pressure": sharedPrefix(8, 16),
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
  /** Failed without an answer (refused, reset, or not 200) before any byte of a 200 answer. */
  readonly failedBeforeAnswer: boolean
  readonly ttftMs: number
  readonly tokens: number
  readonly promptTokens: number
  readonly cachedTokens: number
  readonly text: string
}

/** `seed`: the simulated answer's length and words (the same request index gets the same answer under every scheduler). */
const stream = (port: number, agent: Agent, messages: ReadonlyArray<Message>, seed: number, maxTokens = answerTokens) =>
  new Promise<Outcome>((resolve) => {
    const body = JSON.stringify({ model: "m", stream: true, stream_options: { include_usage: true }, max_tokens: maxTokens, seed, messages })
    const startedAt = performance.now()
    let answered = false
    let ttftMs = NaN
    let tokens = 0
    let promptTokens = 0
    let cachedTokens = 0
    let text = ""
    let buffered = ""
    let settled = false
    const finish = (ok: boolean) => {
      if (settled) return
      settled = true
      resolve({ ok, failedBeforeAnswer: !ok && !answered, ttftMs, tokens, promptTokens, cachedTokens, text })
    }
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      if (res.statusCode !== 200) {
        res.resume()
        return res.on("end", () => finish(false))
      }
      answered = true
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
      res.on("end", () => finish(!Number.isNaN(ttftMs) && buffered.trim() === ""))
      res.on("error", () => finish(false))
      res.on("aborted", () => finish(false))
    })
    req.on("error", () => finish(false))
    req.end(body)
  })

// ---- one cell: a scheduler, a workload, a rate ----

interface Servers {
  readonly procs: ReadonlyArray<Proc>
  readonly eventPorts: ReadonlyArray<number>
}

const startServers = async (blocks: number): Promise<Servers> => {
  const eventPorts = await Promise.all(Array.from({ length: serverCount }, () => freePort()))
  const procs = await Promise.all(eventPorts.map((eventPort) =>
    startRouter({
      SIM_BLOCK_SIZE: String(blockSize),
      SIM_KV_BLOCKS: String(blocks),
      SIM_PREFILL_US_PER_TOKEN: String(prefillUs),
      SIM_ITL_MS: String(itlMs),
      SIM_LATENCY_MS: "0",
      MAX_CONCURRENCY: "32",
      MAX_QUEUE: "10000",
      QUEUE_TIMEOUT_MS: "600000",
      SIM_KV_EVENTS_ENDPOINT: `tcp://*:${eventPort}`
    })
  ))
  // (A server started again on other ports has another events port.)
  return { procs, eventPorts: procs.map((proc) => proc.eventPort!) }
}

/** `name@bound`: that scheduler with UPSTREAM_LOAD_BOUND=bound. */
const startFronts = async (named: string, servers: Servers, redisUrl: string | undefined): Promise<Array<Proc>> => {
  const [scheduler, bound] = named.split("@")
  const events = scheduler.endsWith("-events") || scheduler === "killed"
  const upstreams = servers.procs.map((proc, i) => `http://127.0.0.1:${proc.port}${events ? `;kv-events=${servers.eventPorts[i]}` : ""}`).join(",")
  const env: Record<string, string> = {
    MODEL_BACKEND: "upstream",
    UPSTREAMS: upstreams,
    UPSTREAM_HEALTH_INTERVAL_MS: String(healthIntervalMs),
    UPSTREAM_SCHEDULER: scheduler === "least-request" ? "least-request" : "cache-aware",
    MAX_CONCURRENCY: "1000",
    MAX_QUEUE: "10000",
    QUEUE_TIMEOUT_MS: "600000"
  }
  if (process.env.BENCH_LOAD_BOUND !== undefined) env.UPSTREAM_LOAD_BOUND = process.env.BENCH_LOAD_BOUND
  if (bound !== undefined) env.UPSTREAM_LOAD_BOUND = bound
  if (scheduler === "replicas-redis") env.KV_ENDPOINTS = redisUrl!
  const count = scheduler.startsWith("replicas") ? 3 : 1
  return Promise.all(Array.from({ length: count }, () => startRouter(env)))
}

export interface Cell {
  readonly scheduler: string
  readonly workload: string
  readonly rate: number
  readonly seconds: number
  readonly requests: number
  readonly failedBeforeAnswer: number
  readonly cutOrUnfinished: number
  readonly ttftP50: number
  readonly ttftP90: number
  readonly ttftP99: number
  readonly outputTokensPerSecond: number
  /** Seconds from the last arrival until the last answer ended: more than a few, requests came faster than they were served. */
  readonly drainS: number
  readonly hitRate: number
  /** Over 100 ms samples while requests arrive (pool mean >= 1): Σ busiest ÷ Σ mean requests in flight (running + waiting) over the servers. */
  readonly maxOverMeanInFlight: number
  /** The same samples' best possible: Σ ⌈mean⌉ ÷ Σ mean, what whole requests allow. */
  readonly maxOverMeanFloor: number
  /** Per-server in flight averaged over the run: the busiest ÷ the mean. */
  readonly maxOverMeanAveraged: number
  readonly meanInFlightPerServer: number
  readonly decisionP99Ms: number | undefined
  /** The fronts' index accuracy: Σ |predicted − reported cached tokens| ÷ Σ reported (router_routing_cached_tokens_error_total). */
  readonly indexError: number | undefined
  readonly reasons: Record<string, number>
  /** killed only: ms from the SIGKILL until the front's index held nothing for that server. */
  readonly indexDroppedMs?: number
}

const runCell = async (scheduler: string, workloadName: string, rate: number, servers: Servers, redisUrl: string | undefined): Promise<Cell> => {
  // Every cell starts from cold caches.
  await Promise.all(servers.procs.map((proc) => post(proc.port, "/reset_prefix_cache")))
  // random: the servers themselves, one picked per request below.
  const fronts = scheduler === "random" ? [] : await startFronts(scheduler, servers, redisUrl)
  const agent = new Agent({ keepAlive: true, maxSockets: 4_000 })
  const random = seeded(rate * 1000 + workloadName.length)
  // Its own sequence, so that arrivals and prompts are the same for every scheduler.
  const pick = seeded(7)
  unique = 0
  const workload = workloads[workloadName]()
  const outcomes: Array<Promise<Outcome>> = []
  const ratios: Array<number> = []
  const floors: Array<number> = []
  const means: Array<number> = []
  const sums = new Array<number>(servers.procs.length).fill(0)
  let samples = 0
  let sampling = true
  // Balance is sampled while measured requests arrive: not the ramp, not the drain's last few stragglers.
  let arriving = false
  const victim = scheduler === "killed" ? servers.procs[servers.procs.length - 1] : undefined
  const sampler = (async () => {
    while (sampling) {
      const alive = servers.procs.filter((proc) => proc !== victim || proc.child.signalCode === null)
      const counts = await Promise.all(alive.map(async (proc) => {
        const text = await metricsText(proc.port)
        return seriesSum(text, "vllm:num_requests_running") + seriesSum(text, "vllm:num_requests_waiting")
      }))
      const total = counts.reduce((a, b) => a + b, 0)
      const mean = total / counts.length
      if (!arriving) {
        await sleep(100)
        continue
      }
      if (alive.length === servers.procs.length) {
        counts.forEach((count, i) => (sums[i] += count))
        samples++
      }
      if (mean >= 1) {
        // Summed, not averaged as ratios: a sample weighs by its load (the ramp's first few requests say little).
        ratios.push(Math.max(...counts))
        floors.push(Math.ceil(mean))
        means.push(mean)
      }
      await sleep(100)
    }
  })()
  let indexDroppedMs: number | undefined
  let killer: Promise<void> | undefined
  const startedAt = performance.now()
  if (victim !== undefined) {
    killer = (async () => {
      await sleep(warmupS * 1000 + seconds * 1000 / 2)
      // (killed runs the shared prefix, with its ramp.)
      victim.child.kill("SIGKILL")
      const killedAt = performance.now()
      const label = `:${victim.port}`
      while (performance.now() - killedAt < 10_000) {
        const text = await metricsText(fronts[0].port)
        const line = text.split("\n").find((l) => l.startsWith("router_routing_index_blocks{") && l.includes(label))
        if (line === undefined || Number(line.slice(line.lastIndexOf(" ") + 1)) === 0) {
          indexDroppedMs = performance.now() - killedAt
          return
        }
        await sleep(10)
      }
    })()
  }
  let at = 0
  let index = 0
  let sent = 0
  const warmups: Array<Promise<Outcome>> = []
  let measuredFrom = startedAt
  const rampS = workloadName.endsWith("-cold") ? 0 : warmupS
  while (at < (rampS + seconds) * 1000) {
    at += -Math.log(1 - random()) / rate * 1000
    // The ramp: arrivals at rate × t ÷ warmup (thinned from the full rate).
    const ramping = at < rampS * 1000
    if (ramping && random() >= at / (rampS * 1000)) continue
    const wait = startedAt + at - performance.now()
    if (wait > 0) await sleep(wait)
    if (!ramping && !arriving) {
      arriving = true
      measuredFrom = performance.now()
    }
    const { answered, messages } = workload.next(random)
    const port = fronts.length === 0 ? servers.procs[Math.floor(pick() * servers.procs.length)].port : fronts[index++ % fronts.length].port
    ;(ramping ? warmups : outcomes).push(stream(port, agent, messages, sent++, answerTokensOf(workloadName)).then((outcome) => {
      if (outcome.ok) answered?.(outcome.text)
      return outcome
    }))
  }
  const unfinished: Outcome = { ok: false, failedBeforeAnswer: false, ttftMs: NaN, tokens: 0, promptTokens: 0, cachedTokens: 0, text: "" }
  const lastArrival = performance.now()
  arriving = false
  const done = await Promise.all(outcomes.map((outcome) => Promise.race([outcome, sleep(drainLimitS * 1000).then(() => unfinished)])))
  const elapsed = (performance.now() - measuredFrom) / 1000
  await Promise.race([Promise.all(warmups), sleep(1_000)])
  sampling = false
  await sampler
  await killer
  const frontTexts = await Promise.all(fronts.map((front) => metricsText(front.port)))
  agent.destroy()
  await Promise.all(fronts.map(stop))
  const ok = done.filter((outcome) => outcome.ok)
  // TTFT over every request that got a first token (a cut stream still had one).
  const ttfts = done.filter((outcome) => !Number.isNaN(outcome.ttftMs)).map((outcome) => outcome.ttftMs)
  const prompt = ok.reduce((sum, outcome) => sum + outcome.promptTokens, 0)
  const cached = ok.reduce((sum, outcome) => sum + outcome.cachedTokens, 0)
  const decision = histogramP99(frontTexts, "router_routing_decision_seconds")
  const averages = sums.map((sum) => sum / Math.max(1, samples))
  const meanAverage = averages.reduce((a, b) => a + b, 0) / averages.length
  const allFronts = frontTexts.join("\n")
  const reportedCached = seriesSum(allFronts, "router_routing_reported_cached_tokens_total")
  const cachedError = seriesSum(allFronts, "router_routing_cached_tokens_error_total")
  const reasons: Record<string, number> = {}
  for (const reason of ["cache", "load", "spill", "only-healthy"]) {
    const count = seriesSum(frontTexts.join("\n"), "router_routing_decisions_total", `reason="${reason}"`)
    if (count > 0) reasons[reason] = count
  }
  const sum = (values: ReadonlyArray<number>) => values.reduce((a, b) => a + b, 0)
  const perMean = (values: ReadonlyArray<number>) => means.length === 0 ? 1 : sum(values) / sum(means)
  return {
    scheduler,
    workload: workloadName,
    rate,
    seconds,
    requests: done.length,
    failedBeforeAnswer: done.filter((outcome) => outcome.failedBeforeAnswer).length,
    cutOrUnfinished: done.filter((outcome) => !outcome.ok && !outcome.failedBeforeAnswer).length,
    ttftP50: percentile(ttfts, 50),
    ttftP90: percentile(ttfts, 90),
    ttftP99: percentile(ttfts, 99),
    outputTokensPerSecond: done.reduce((sum, outcome) => sum + outcome.tokens, 0) / elapsed,
    drainS: (performance.now() - lastArrival) / 1000,
    hitRate: prompt === 0 ? 0 : cached / prompt,
    maxOverMeanInFlight: perMean(ratios),
    maxOverMeanFloor: perMean(floors),
    maxOverMeanAveraged: meanAverage > 0 ? Math.max(...averages) / meanAverage : 1,
    meanInFlightPerServer: meanAverage,
    decisionP99Ms: decision === undefined ? undefined : decision * 1000,
    indexError: reportedCached > 0 ? cachedError / reportedCached : undefined,
    reasons,
    ...(indexDroppedMs !== undefined || victim !== undefined ? { indexDroppedMs: indexDroppedMs ?? Infinity } : {})
  }
}

/** Time to first token of one request alone on an idle server, nothing cached: the median of three. */
const unloadedTtft = async (servers: Servers): Promise<number> => {
  const agent = new Agent({ keepAlive: true })
  const ttfts: Array<number> = []
  for (let i = 0; i < 3; i++) {
    await post(servers.procs[0].port, "/reset_prefix_cache")
    const outcome = await stream(servers.procs[0].port, agent, [{ role: "system", content: words(2_000, `idle${i}`) }, { role: "user", content: `${words(40, "u")} ${i}` }], i)
    ttfts.push(outcome.ttftMs)
  }
  agent.destroy()
  return percentile(ttfts, 50)
}

// ---- decision time, in process ----

interface DecisionTimes {
  /** Node's flags: the router's (production's) or none. */
  readonly flags: string
  readonly promptTokens: number
  readonly decisions: number
  readonly p50Us: number
  readonly p99Us: number
  readonly p999Us: number
}

/**
 * The router's decision (what router_routing_decision_seconds times: the
 * body parsed, the prompt's tokens and block keys, the choice, the record),
 * timed alone in a process with the router's Node flags, four upstreams, an
 * index holding the workload's prefixes: the decision's own cost, without
 * the benchmark's other processes sharing its cores.
 */
const decisionTimes = (): Array<DecisionTimes> => {
  const results: Array<DecisionTimes> = []
  for (const words2000 of [2_000, 6_000]) {
    const scheduler = new CacheAwareScheduler(defaultSchedulerSettings)
    const candidates = Array.from({ length: 4 }, (_, i) => ({ id: `u${i}`, inFlight: 0 }))
    const random = seeded(words2000)
    const systems = Array.from({ length: 8 }, (_, g) => words(words2000, `g${g}`))
    const bodies = Array.from({ length: 512 }, (_, i) =>
      JSON.stringify({ model: "m", stream: true, messages: [{ role: "system", content: systems[i % 8] }, { role: "user", content: `${words(40, `u${i}`)} ${i}` }] }))
    const times: Array<number> = []
    let promptTokens = 0
    const total = quick ? 5_000 : 12_000
    for (let i = 0; i < total; i++) {
      for (const candidate of candidates) candidate.inFlight = Math.floor(random() * 8)
      const body = bodies[i % bodies.length]
      const startedAt = performance.now()
      const prompt = promptOf(body)!
      const ids = tokenIdsOfParts(prompt.parts)
      const decision = scheduler.choose(candidates, { promptTokens: ids.length, keys: (size) => blockKeysOf(prompt.model, ids, size) }, i)
      scheduler.sent(decision.candidate.id, decision, i)
      const took = performance.now() - startedAt
      scheduler.firstToken(decision.candidate.id, decision, i)
      promptTokens = ids.length
      // The first 2,000 warm the JIT.
      if (i >= 2_000) times.push(took * 1000)
    }
    results.push({ flags: process.execArgv.join(" ") || "Node's defaults", promptTokens, decisions: times.length, p50Us: percentile(times, 50), p99Us: percentile(times, 99), p999Us: percentile(times, 99.9) })
  }
  return results
}

const runDecisionTimes = (flags: ReadonlyArray<string>, core: number | undefined) =>
  new Promise<Array<DecisionTimes> | undefined>((resolve) => {
    const args = [...flags, self, "--decisions"]
    const child = core === undefined
      ? spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"] })
      : spawn("taskset", ["-c", String(core), process.execPath, ...args], { stdio: ["ignore", "pipe", "inherit"] })
    let out = ""
    child.stdout!.setEncoding("utf8").on("data", (chunk) => (out += chunk))
    child.on("error", () => resolve(undefined))
    child.on("exit", () => {
      try {
        resolve(JSON.parse(out))
      } catch {
        resolve(undefined)
      }
    })
  })

// ---- groups: each its own servers, run as a child process ----

interface Group {
  readonly name: string
  /** Relative CPU weight, for sharing BENCH_CORES. */
  readonly weight: number
  readonly kvBlocks?: number
  readonly redis?: boolean
  readonly probe?: boolean
  readonly cells: ReadonlyArray<{ readonly workload: string; readonly rate: number; readonly scheduler: string }>
}

const cross = (workload: string, rates: ReadonlyArray<number>, schedulers: ReadonlyArray<string>) =>
  rates.flatMap((rate) => schedulers.map((scheduler) => ({ workload, rate, scheduler })))

const ladder = ["random", "least-request", "cache-aware", "cache-aware-events"]
const groups: ReadonlyArray<Group> = quick
  ? [{
    name: "quick",
    weight: 1,
    probe: true,
    redis: (process.env.BENCH_QUICK_SCHEDULERS ?? "").includes("replicas-redis"),
    kvBlocks: process.env.BENCH_QUICK_WORKLOAD === "pressure" ? pressureBlocks : undefined,
    cells: cross(
      process.env.BENCH_QUICK_WORKLOAD ?? "shared-prefix",
      [Number(process.env.BENCH_QUICK_RATE ?? 16)],
      (process.env.BENCH_QUICK_SCHEDULERS ?? "least-request,cache-aware-events").split(",")
    )
  }]
  : small
  ? [
    {
      name: "shared-prefix-low",
      weight: 1,
      probe: true,
      cells: [...cross("shared-prefix", [16], ["least-request", "cache-aware", "cache-aware-events"]), ...cross("shared-prefix", [32], ladder)]
    },
    { name: "shared-prefix-high", weight: 1, cells: [...cross("shared-prefix", [40], ["least-request", "cache-aware", "cache-aware-events"]), ...cross("shared-prefix", [48], ladder)] },
    { name: "shared-prefix-top", weight: 1, cells: cross("shared-prefix", [64], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "shared-prefix-cold", weight: 1, cells: cross("shared-prefix-cold", [48], ["least-request", "cache-aware-events"]) },
    {
      name: "replicas",
      weight: 1,
      redis: true,
      cells: [...cross("shared-prefix", [16], ["cache-aware", "replicas-redis", "replicas-unshared", "replicas-unshared-events"]), { workload: "shared-prefix", rate: 16, scheduler: "killed" }]
    },
    { name: "zero-reuse", weight: 1, cells: cross("zero-reuse", [12], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "hot-prefix", weight: 1, cells: cross("hot-prefix", [24], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "multi-turn", weight: 1, cells: cross("multi-turn", [24], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "pressure", weight: 1, kvBlocks: pressureBlocks, cells: cross("pressure", [8, 16], ["cache-aware", "cache-aware-events"]) }
  ]
  : [
    { name: "shared-prefix-low", weight: 2, probe: true, cells: cross("shared-prefix", [8, 16], ladder) },
    { name: "shared-prefix-mid", weight: 2, cells: cross("shared-prefix", [24, 32], ladder) },
    { name: "shared-prefix-40", weight: 3, cells: cross("shared-prefix", [40], ladder) },
    { name: "shared-prefix-48", weight: 3, cells: cross("shared-prefix", [48], ladder) },
    { name: "shared-prefix-top", weight: 3, cells: cross("shared-prefix", [64], ladder) },
    { name: "shared-prefix-cold", weight: 2, cells: cross("shared-prefix-cold", [48], ["least-request", "cache-aware-events"]) },
    {
      name: "replicas",
      weight: 3,
      redis: true,
      cells: [...cross("shared-prefix", [16], ["cache-aware", "replicas-redis", "replicas-unshared", "replicas-unshared-events"]), { workload: "shared-prefix", rate: 16, scheduler: "killed" }]
    },
    { name: "zero-reuse", weight: 2, cells: cross("zero-reuse", [8, 16], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "hot-prefix", weight: 2, cells: cross("hot-prefix", [16, 24], ["least-request", "cache-aware", "cache-aware-events"]) },
    { name: "multi-turn", weight: 2, cells: cross("multi-turn", [8, 24], ladder) },
    { name: "pressure", weight: 1, kvBlocks: pressureBlocks, cells: cross("pressure", [8, 16], ["cache-aware", "cache-aware-events"]) }
  ]

interface GroupResult {
  readonly group: string
  readonly cells: ReadonlyArray<Cell>
  readonly skipped: ReadonlyArray<string>
  readonly unloadedTtftMs?: number
  readonly errors: ReadonlyArray<string>
}

const runGroup = async (group: Group): Promise<GroupResult> => {
  const startedAt = performance.now()
  let redis: ChildProcess | undefined
  let redisUrl: string | undefined
  const errors: Array<string> = []
  const redisBinary = group.redis ? commandPath("redis-server") : undefined
  if (redisBinary !== undefined) {
    const port = await freePort()
    redis = spawn(redisBinary, ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], { stdio: "ignore" })
    redisUrl = `redis://127.0.0.1:${port}`
    await sleep(300)
  } else if (group.redis) {
    errors.push("redis-server is not on PATH: replicas-redis not run")
  }
  const servers = await startServers(group.kvBlocks ?? kvBlocks)
  const cells: Array<Cell> = []
  const skipped: Array<string> = []
  let unloadedTtftMs: number | undefined
  try {
    if (group.probe) unloadedTtftMs = await unloadedTtft(servers)
    for (const { rate, scheduler, workload } of group.cells) {
      const name = `${workload} ${rate}/s ${scheduler}`
      if (scheduler === "replicas-redis" && redisUrl === undefined) continue
      if ((performance.now() - startedAt) / 1000 + warmupS + seconds > groupLimitS) {
        skipped.push(name)
        continue
      }
      try {
        const cell = await runCell(scheduler, workload, rate, servers, redisUrl)
        cells.push(cell)
        process.stderr.write(`[${group.name}] ${name}: ttft p50/p90/p99 ${cell.ttftP50.toFixed(0)}/${cell.ttftP90.toFixed(0)}/${cell.ttftP99.toFixed(0)} ms, hit ${cell.hitRate.toFixed(2)}, ${cell.outputTokensPerSecond.toFixed(0)} tok/s\n`)
      } catch (error) {
        errors.push(`${name}: ${String(error)}`)
      }
    }
  } finally {
    await Promise.all(servers.procs.map(stop))
    redis?.kill("SIGKILL")
  }
  return { group: group.name, cells, skipped, unloadedTtftMs, errors }
}

/** Where `command` is on PATH, or undefined. */
const commandPath = (command: string): string | undefined => {
  try {
    return execFileSync("sh", ["-c", `command -v ${command}`], { encoding: "utf8" }).trim() || undefined
  } catch {
    return undefined
  }
}

/** `0-3,8,10-11` -> [0, 1, 2, 3, 8, 10, 11]. */
const expandCores = (text: string) =>
  text.split(",").flatMap((part) => {
    const [from, to] = part.trim().split("-").map(Number)
    return to === undefined ? [from] : Array.from({ length: to - from + 1 }, (_, i) => from + i)
  }).filter((core) => Number.isInteger(core))

/** Each group its share of the cores, by weight, at least one. */
const shareCores = (cores: ReadonlyArray<number>, weights: ReadonlyArray<number>): Array<Array<number>> => {
  const total = weights.reduce((a, b) => a + b, 0)
  const counts = weights.map((weight) => Math.max(1, Math.floor(cores.length * weight / total)))
  let spare = cores.length - counts.reduce((a, b) => a + b, 0)
  // What is left goes to the heaviest first.
  const heaviest = weights.map((weight, i) => ({ weight, i })).sort((a, b) => b.weight - a.weight).map(({ i }) => i)
  for (let k = 0; spare > 0; k = (k + 1) % counts.length, spare--) counts[heaviest[k]]++
  let next = 0
  // More groups than cores: they share, round robin.
  return counts.map((count) => Array.from({ length: count }, () => cores[next++ % cores.length]))
}

const runChild = (group: Group, cores: ReadonlyArray<number> | undefined, limitS: number) =>
  new Promise<GroupResult>((resolve) => {
    const args = [self, "--group", group.name]
    const env = { ...process.env, BENCH_GROUP_LIMIT_S: String(Math.floor(limitS)) }
    const child = cores === undefined
      ? spawn(process.execPath, args, { stdio: ["ignore", "pipe", "inherit"], env })
      : spawn("taskset", ["-c", cores.join(","), process.execPath, ...args], { stdio: ["ignore", "pipe", "inherit"], env })
    let out = ""
    child.stdout!.setEncoding("utf8").on("data", (chunk) => (out += chunk))
    child.on("error", (error) => resolve({ group: group.name, cells: [], skipped: [], errors: [`could not start: ${error.message}`] }))
    child.on("exit", (code) => {
      try {
        resolve(JSON.parse(out))
      } catch {
        resolve({ group: group.name, cells: [], skipped: [], errors: [`exited ${code} without results`] })
      }
    })
  })

// ---- the report ----

const ms = (value: number | undefined) => value === undefined || !Number.isFinite(value) ? "–" : value.toFixed(0)
const ratioText = (value: number) => Number.isFinite(value) ? `${value.toFixed(2)}×` : "–"

const table = (cells: ReadonlyArray<Cell>) => {
  const lines = [
    "| rate/s | scheduler | TTFT p50 / p90 / p99 ms | output tok/s | hit rate | max/mean in flight (samples; best possible) | busiest ÷ mean, averaged | in flight per server | decision p99 | decisions | index error | drain s | failed / cut |",
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  ]
  for (const cell of cells) {
    const reasons = Object.entries(cell.reasons).map(([reason, count]) => `${reason} ${count}`).join(", ")
    lines.push(
      `| ${cell.rate} | ${cell.scheduler} | ${ms(cell.ttftP50)} / ${ms(cell.ttftP90)} / ${ms(cell.ttftP99)} | ${cell.outputTokensPerSecond.toFixed(0)} | ${cell.hitRate.toFixed(2)} | ${cell.maxOverMeanInFlight.toFixed(2)} (${cell.maxOverMeanFloor.toFixed(2)}) | ${cell.maxOverMeanAveraged.toFixed(2)} | ${cell.meanInFlightPerServer.toFixed(1)} | ${cell.decisionP99Ms === undefined ? "–" : `≤ ${cell.decisionP99Ms} ms`} | ${reasons || "–"} | ${cell.indexError === undefined ? "–" : cell.indexError.toFixed(2)} | ${cell.drainS.toFixed(1)} | ${cell.failedBeforeAnswer} / ${cell.cutOrUnfinished} of ${cell.requests} |`
    )
  }
  return lines.join("\n")
}

interface Goal {
  readonly goal: string
  readonly measured: string
  readonly met: boolean | undefined
}

const goals = (cells: ReadonlyArray<Cell>, unloaded: number | undefined, decided: ReadonlyArray<DecisionTimes> | undefined): Array<Goal> => {
  const found = (workload: string, scheduler: string, rate?: number) => cells.find((cell) => cell.workload === workload && cell.scheduler === scheduler && (rate === undefined || cell.rate === rate))
  const list: Array<Goal> = []
  const cacheAware = ["cache-aware", "cache-aware-events", ...new Set(cells.map((cell) => cell.scheduler).filter((name) => name.startsWith("cache-aware") && name.includes("@")))]

  // Shared prefix.
  const lrLadder = cells.filter((cell) => cell.workload === "shared-prefix" && cell.scheduler === "least-request").sort((a, b) => a.rate - b.rate)
  const threshold = unloaded === undefined ? undefined : 5 * unloaded
  const first = threshold === undefined ? undefined : lrLadder.find((cell) => cell.ttftP90 > threshold)
  if (first === undefined) {
    list.push({ goal: "shared prefix: TTFT p50 ≥ 3× and p90 ≥ 10× lower than least request, hit rate ≥ 0.8, at the first rate where least request's p90 > 5× the unloaded TTFT", measured: `no rate of the ladder (${lrLadder.map((cell) => cell.rate).join(", ") || "none"}/s) took least request's p90 above 5 × ${ms(unloaded)} ms`, met: undefined })
  } else {
    for (const scheduler of cacheAware) {
      const cell = found("shared-prefix", scheduler, first.rate)
      if (cell === undefined) continue
      const p50 = first.ttftP50 / cell.ttftP50
      const p90 = first.ttftP90 / cell.ttftP90
      list.push({
        goal: `shared prefix, ${scheduler}, at ${first.rate}/s (least request's p90 ${ms(first.ttftP90)} ms > 5 × unloaded ${ms(unloaded)} ms): p50 ≥ 3× lower, p90 ≥ 10× lower, hit ≥ 0.8`,
        measured: `p50 ${ratioText(p50)} lower (${ms(cell.ttftP50)} vs ${ms(first.ttftP50)} ms), p90 ${ratioText(p90)} lower (${ms(cell.ttftP90)} vs ${ms(first.ttftP90)} ms), hit ${cell.hitRate.toFixed(2)}`,
        met: p50 >= 3 && p90 >= 10 && cell.hitRate >= 0.8
      })
    }
  }
  const top = lrLadder[lrLadder.length - 1]
  if (top !== undefined) {
    const saturated = top.drainS > saturatedDrainS
    for (const scheduler of cacheAware) {
      const cell = found("shared-prefix", scheduler, top.rate)
      if (cell === undefined) continue
      const gain = cell.outputTokensPerSecond / top.outputTokensPerSecond
      list.push({
        goal: `shared prefix, ${scheduler}: output tokens/s at saturation ≥ 1.5× least request`,
        measured: `${ratioText(gain)} at ${top.rate}/s (${cell.outputTokensPerSecond.toFixed(0)} vs ${top.outputTokensPerSecond.toFixed(0)} tok/s over arrivals + drain; least request ${saturated ? `saturated: its answers ended ${top.drainS.toFixed(1)} s after the last arrival` : `NOT saturated (drained in ${top.drainS.toFixed(1)} s): the ladder did not reach saturation`}; cache-aware drained in ${cell.drainS.toFixed(1)} s)`,
        met: saturated ? gain >= 1.5 : undefined
      })
    }
  }

  // Zero reuse: no harm (one-sided: cache-aware may be better).
  for (const cell of cells.filter((c) => c.workload === "zero-reuse" && cacheAware.includes(c.scheduler))) {
    const lr = found("zero-reuse", "least-request", cell.rate)
    if (lr === undefined) continue
    const p50 = cell.ttftP50 / lr.ttftP50
    const p99 = cell.ttftP99 / lr.ttftP99
    const tput = cell.outputTokensPerSecond / lr.outputTokensPerSecond
    list.push({
      goal: `zero reuse, ${cell.scheduler} at ${cell.rate}/s: TTFT p50/p99 within 5 % of least request, throughput within 2 % (no harm)`,
      measured: `p50 ${ratioText(p50)}, p99 ${ratioText(p99)}, tok/s ${ratioText(tput)} of least request's`,
      met: p50 <= 1.05 && p99 <= 1.05 && tput >= 0.98
    })
  }

  // Hot prefix: at the highest rate (most in flight: whole requests matter least).
  const hotRates = [...new Set(cells.filter((c) => c.workload === "hot-prefix").map((c) => c.rate))].sort((a, b) => a - b)
  for (const rate of hotRates) {
    const lr = found("hot-prefix", "least-request", rate)
    for (const scheduler of cacheAware) {
      const cell = found("hot-prefix", scheduler, rate)
      if (cell === undefined || lr === undefined) continue
      const p99 = cell.ttftP99 / lr.ttftP99
      list.push({
        goal: `hot prefix, ${scheduler} at ${rate}/s: max/mean in flight ≤ 1.25, TTFT p99 ≤ 1.2× least request's`,
        measured: `max/mean ${cell.maxOverMeanInFlight.toFixed(2)} over 100 ms samples (whole requests allow ${cell.maxOverMeanFloor.toFixed(2)} at best; least request ${lr.maxOverMeanInFlight.toFixed(2)}), ${cell.maxOverMeanAveraged.toFixed(2)} averaged over the run, ${cell.meanInFlightPerServer.toFixed(1)} in flight per server; p99 ${ratioText(p99)} (${ms(cell.ttftP99)} vs ${ms(lr.ttftP99)} ms)`,
        met: cell.maxOverMeanInFlight <= 1.25 && p99 <= 1.2
      })
    }
  }

  // Replicas.
  const one = found("shared-prefix", "cache-aware", found("shared-prefix", "replicas-redis")?.rate)
  const redis = found("shared-prefix", "replicas-redis")
  const unshared = found("shared-prefix", "replicas-unshared")
  const unsharedEvents = found("shared-prefix", "replicas-unshared-events")
  if (one !== undefined && redis !== undefined) {
    const share = redis.hitRate / one.hitRate
    list.push({
      goal: `three replicas through Redis (approximate) reach ≥ 95 % of one replica's hit rate, ${redis.rate}/s`,
      measured: `${(share * 100).toFixed(0)} % (${redis.hitRate.toFixed(2)} vs ${one.hitRate.toFixed(2)}); three without sharing ${unshared === undefined ? "–" : `${unshared.hitRate.toFixed(2)} (${(unshared.hitRate / one.hitRate * 100).toFixed(0)} %), TTFT p90 ${ms(unshared.ttftP90)} vs ${ms(redis.ttftP90)} ms shared`}${unsharedEvents === undefined ? "" : `; three without Redis but with KV events ${unsharedEvents.hitRate.toFixed(2)}`}`,
      met: share >= 0.95
    })
  }
  const msText = (times: DecisionTimes) => `p99 ${(times.p99Us / 1000).toFixed(3)} ms (p50 ${(times.p50Us / 1000).toFixed(3)}, p99.9 ${(times.p999Us / 1000).toFixed(3)})`
  for (const times of (decided ?? []).filter((t) => t.flags.includes("semi-space"))) {
    const defaults = decided?.find((t) => t.promptTokens === times.promptTokens && !t.flags.includes("semi-space"))
    list.push({
      goal: `decision time p99 ≤ 1 ms (${times.promptTokens}-token prompts; timed in a process alone with the router's flags ${times.flags})`,
      measured: `${msText(times)} over ${times.decisions} decisions${defaults === undefined ? "" : `; with Node's default flags ${msText(defaults)}`}`,
      met: times.p99Us <= 1000
    })
  }
  const decisions = cells.filter((cell) => cell.decisionP99Ms !== undefined)
  if (decisions.length > 0) {
    const worst = decisions.reduce((a, b) => (a.decisionP99Ms! >= b.decisionP99Ms! ? a : b))
    const within = decisions.filter((cell) => cell.decisionP99Ms! <= 1).length
    list.push({
      goal: "decision time p99 ≤ 1 ms in the cells (the fronts sharing their cores with the servers and the client)",
      measured: `${within} of ${decisions.length} cells; worst ≤ ${worst.decisionP99Ms} ms (${worst.workload} ${worst.rate}/s ${worst.scheduler}; histogram bucket bound)`,
      met: within === decisions.length
    })
  }

  // Pressure.
  for (const rate of [...new Set(cells.filter((c) => c.workload === "pressure").map((c) => c.rate))].sort((a, b) => a - b)) {
    const approx = found("pressure", "cache-aware", rate)
    const events = found("pressure", "cache-aware-events", rate)
    if (approx === undefined || events === undefined) continue
    const points = (events.hitRate - approx.hitRate) * 100
    list.push({
      goal: `KV events under cache pressure (the shared prefix on ${pressureBlocks}-block caches: its prefixes 1.5× the caches), ${events.rate}/s: hit rate ≥ 10 points above approximate`,
      measured: `${points.toFixed(1)} points (${events.hitRate.toFixed(2)} vs ${approx.hitRate.toFixed(2)})`,
      met: points >= 10
    })
  }

  // An upstream killed mid-run.
  const killed = cells.find((cell) => cell.scheduler === "killed")
  if (killed !== undefined) {
    list.push({
      goal: `an upstream SIGKILLed mid-run: its index entries dropped within one health interval (${healthIntervalMs} ms), no client error for requests that had not received a byte`,
      measured: `dropped after ${ms(killed.indexDroppedMs)} ms; ${killed.failedBeforeAnswer} failed before an answer, ${killed.cutOrUnfinished} streams cut mid-answer (allowed), of ${killed.requests}`,
      met: (killed.indexDroppedMs ?? Infinity) <= healthIntervalMs && killed.failedBeforeAnswer === 0
    })
  }
  return list
}

const report = (results: ReadonlyArray<GroupResult>, wallS: number, cores: string | undefined, decided: ReadonlyArray<DecisionTimes> | undefined): string => {
  const cells = results.flatMap((result) => result.cells)
  const unloaded = results.find((result) => result.unloadedTtftMs !== undefined)?.unloadedTtftMs
  const lines: Array<string> = [
    `# bench:routing ${new Date().toISOString()}${quick ? " (BENCH_QUICK=1)" : ` (plan ${plan})`}`,
    "",
    `${serverCount} simulated servers per group (${kvBlocks} blocks of ${blockSize} tokens each, ${prefillUs} µs per prefilled token, ${itlMs} ms steps, answers of up to ${answerTokens} tokens, ${answerTokensOf("hot-prefix")} for the hot prefix), ${seconds} s of Poisson arrivals measured per cell after a ${warmupS} s ramp from nothing to the rate, caches reset and fronts started fresh per cell; groups ${results.map((r) => r.group).join(", ")}; ${availableParallelism()} CPUs${cores === undefined ? ", unpinned" : `, pinned to ${cores}`}; wall ${wallS.toFixed(0)} s. Unloaded TTFT (one 2,041-token prompt alone, nothing cached, median of 3): ${ms(unloaded)} ms.`,
    "",
    "## Goals (issue 23)",
    "",
    "| goal | measured | met |",
    "|---|---|---|",
    ...goals(cells, unloaded, decided).map((goal) => `| ${goal.goal} | ${goal.measured} | ${goal.met === undefined ? "not shown" : goal.met ? "met" : "**missed**"} |`)
  ]
  for (const workload of ["shared-prefix", "shared-prefix-cold", "multi-turn", "zero-reuse", "hot-prefix", "pressure"]) {
    const rows = cells.filter((cell) => cell.workload === workload && cell.scheduler !== "killed" && !cell.scheduler.startsWith("replicas"))
    if (rows.length > 0) lines.push("", `## ${workload}`, "", table(rows.sort((a, b) => a.rate - b.rate)))
  }
  const replicas = cells.filter((cell) => cell.scheduler.startsWith("replicas") || cell.scheduler === "killed")
  if (replicas.length > 0) {
    const reference = cells.filter((cell) => cell.workload === "shared-prefix" && cell.scheduler === "cache-aware" && replicas.some((r) => r.rate === cell.rate))
    lines.push("", "## replicas and a killed upstream (shared prefix; `killed`: cache-aware with KV events, one server SIGKILLed halfway)", "", table([...reference.slice(0, 1), ...replicas]))
  }
  const problems = results.flatMap((result) => [...result.errors.map((error) => `- ${result.group}: error: ${error}`), ...result.skipped.map((name) => `- ${result.group}: skipped (time limit): ${name}`)])
  if (problems.length > 0) lines.push("", "## Not run", "", ...problems)
  lines.push(
    "",
    "Columns: TTFT at the client; hit rate = reported cached_tokens ÷ prompt tokens; max/mean in flight = over 100 ms samples while requests arrive (those with a mean ≥ 1), the sum of the busiest server's (running + waiting) ÷ the sum of the mean (so a sample weighs by its load), with the best any scheduler could do with whole requests in brackets; busiest ÷ mean averaged = each server's in flight averaged over the run; decision p99 = bucket bound of router_routing_decision_seconds; index error = Σ |predicted − reported cached tokens| ÷ Σ reported over the cell (the fronts' router_routing_cached_tokens_error_total); drain = seconds from the last arrival to the last answer's end (over " + saturatedDrainS + ": saturated); output tok/s over arrivals + drain; failed = no answer (refused, reset, not 200), cut = a stream broken after its answer began, or unfinished " + drainLimitS + " s after the last arrival."
  )
  return lines.join("\n") + "\n"
}

// ---- main ----

const groupArg = process.argv.indexOf("--group")
if (process.argv.includes("--decisions")) {
  process.stdout.write(JSON.stringify(decisionTimes()))
} else if (groupArg >= 0) {
  const group = groups.find((g) => g.name === process.argv[groupArg + 1])
  if (group === undefined) throw new Error(`no group ${process.argv[groupArg + 1]}`)
  const result = await runGroup(group)
  process.stdout.write(JSON.stringify(result))
} else {
  if (Number(process.versions.node.split(".")[0]) < 24) {
    console.error(`Node ${process.versions.node}: the router needs Node 24 (put it first on PATH)`)
    process.exit(2)
  }
  if (!existsSync(routerPath)) {
    console.error(`${routerPath} is missing: run \`npm run bench:routing\` (it builds it), or set BENCH_ROUTER`)
    process.exit(2)
  }
  const wanted = process.env.BENCH_GROUPS?.split(",").map((name) => name.trim()).filter((name) => name !== "")
  const chosen = wanted === undefined ? groups : groups.filter((group) => wanted.includes(group.name))
  let coresText = process.env.BENCH_CORES
  if (coresText !== undefined && commandPath("taskset") === undefined) {
    console.error("BENCH_CORES is set but taskset is not on PATH: running unpinned")
    coresText = undefined
  }
  // Plan full: every group at once (each on its share of BENCH_CORES); small: one at a time.
  const parallel = Number(process.env.BENCH_PARALLEL ?? (small ? 1 : chosen.length))
  // One group at a time: each gets every core; at once: each its share.
  const shares = coresText === undefined
    ? undefined
    : parallel <= 1
    ? chosen.map(() => expandCores(coresText!))
    : shareCores(expandCores(coresText), chosen.map((group) => group.weight))
  const startedAt = performance.now()
  const results: Array<GroupResult> = new Array(chosen.length)
  let next = 0
  await Promise.all(Array.from({ length: Math.max(1, parallel) }, async () => {
    while (next < chosen.length) {
      const i = next++
      // The decision timing after the groups needs about 30 s.
      const left = totalLimitS - (performance.now() - startedAt) / 1000 - 30
      results[i] = left < 30
        ? { group: chosen[i].name, cells: [], skipped: chosen[i].cells.map(({ rate, scheduler, workload }) => `${workload} ${rate}/s ${scheduler}`), errors: [] }
        : await runChild(chosen[i], shares?.[i], Math.min(groupLimitS, left))
    }
  }))
  // After the groups, on a quiet machine (pinned to the first of BENCH_CORES when given): with the
  // router's Node flags (package.json's start:prod), then Node's defaults for comparison.
  const core = coresText === undefined ? undefined : expandCores(coresText)[0]
  const decided = [
    ...(await runDecisionTimes(["--max-semi-space-size=4", "--single-threaded-gc"], core)) ?? [],
    ...(await runDecisionTimes([], core)) ?? []
  ]
  const markdown = report(results, (performance.now() - startedAt) / 1000, coresText, decided)
  mkdirSync(join(root, "bench-results"), { recursive: true })
  const stamp = new Date().toISOString().replace(/[:.]/g, "-")
  const file = join(root, "bench-results", `${stamp}-routing.md`)
  writeFileSync(file, markdown)
  writeFileSync(join(root, "bench-results", `${stamp}-routing.json`), JSON.stringify({ quick, serverCount, kvBlocks, prefillUs, seconds, results }, null, 2))
  console.log(markdown)
  console.log(`results: ${file}`)
}
