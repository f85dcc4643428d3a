/**
 * The simulated model server (docs/simulator.md), measured through the router
 * over HTTP, each part against a fresh router process:
 *
 * 1. time to first token against the cached fraction of a 6,000-token prompt
 *    (one request at a time; the prefix sent once before, alone), beside
 *    what the model's formula says;
 * 2. output tokens per second against the prefix-cache hit rate, for one
 *    server with 32 clients sending 2,000-token prompts that share their
 *    first part (64 tokens out each);
 * 3. the router's CPU per generated token, against the simulator as it was
 *    before the engine (git BENCH_BASELINE_REF, default b3b9616: the request
 *    pipeline of today, the per-token timers of before; run from a temporary
 *    worktree): 200 streams of 100 tokens at 20 ms, router CPU (user +
 *    system) over the tokens it sent;
 * 4. the simulated model's own CPU per generated token, against the same
 *    baseline: 1,000 streams of up to 200 tokens at a 5 ms gap through
 *    `generateUnsafe`, a sink that takes each token at once; each measurement
 *    in a fresh Node process with production's flags, before and engine
 *    alternating, every round reported (about 5 s a round).
 * 3 and 4 are skipped with BENCH_BASELINE_REF=none.
 *
 * Routers run from source (`node src/router/main.ts` with production's Node
 * flags), LOG_LEVEL=warn. Short by default (about a minute):
 *
 *   npm run bench:sim                 BENCH_SECONDS=6 BENCH_ROUNDS=3 BENCH_PARTS=1,2,3,4
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { once } from "node:events"
import { existsSync, mkdtempSync, rmSync, symlinkSync } from "node:fs"
import { Agent, request } from "node:http"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { fileURLToPath } from "node:url"
import { freePort, sleep } from "../test/support/Processes.ts"
import { cpuSeconds, get, median, routerArgs, timedStream } from "./BenchSupport.ts"

const root = fileURLToPath(new URL("..", import.meta.url))
const seconds = Number(process.env.BENCH_SECONDS ?? 6)
const rounds = Number(process.env.BENCH_ROUNDS ?? 3)
const baselineRef = process.env.BENCH_BASELINE_REF ?? "b3b9616"
const nodeFlags = routerArgs().filter((arg) => arg.startsWith("--"))

const start = async (cwd: string, env: Record<string, string>) => {
  const port = await freePort()
  const child = spawn(process.execPath, [...nodeFlags, "src/router/main.ts"], {
    cwd,
    env: { PATH: process.env.PATH ?? "", HOST: "127.0.0.1", PORT: String(port), LOG_LEVEL: "warn", MODEL_REF: "sim", ...env },
    stdio: ["ignore", "ignore", "inherit"]
  })
  for (let i = 0; i < 2_000; i++) {
    try {
      if ((await get(port, "/readyz")).status === 200) return { child, port }
    } catch {
      // not yet
    }
    await sleep(5)
  }
  throw new Error("the router never became ready")
}

const stop = async (child: ChildProcess) => {
  child.kill("SIGTERM")
  await once(child, "exit")
}

/** `n` tokens: words unique to `salt`. */
const words = (n: number, salt: string) => Array.from({ length: n }, (_, i) => `${salt}${i}`).join(" ")

const post = (port: number, agent: Agent, path: string, body: unknown) =>
  new Promise<any>((resolve, reject) => {
    const text = JSON.stringify(body)
    const req = request({ host: "127.0.0.1", port, method: "POST", path, agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(text) } }, (res) => {
      let data = ""
      res.setEncoding("utf8")
      res.on("data", (chunk) => (data += chunk))
      res.on("end", () => resolve(data === "" ? {} : JSON.parse(data)))
    })
    req.on("error", reject)
    req.end(text)
  })

const metricValue = (text: string, name: string) => Number(new RegExp(`^${name}\\{[^}]*\\} (\\S+)$`, "m").exec(text)?.[1] ?? NaN)

const table = (header: Array<string>, rows: Array<Array<string | number>>) => {
  console.log(`| ${header.join(" | ")} |`)
  console.log(`|${header.map(() => " --- ").join("|")}|`)
  for (const row of rows) console.log(`| ${row.join(" | ")} |`)
  console.log("")
}

// 1. Time to first token against the cached fraction of a 6,000-token prompt.
const ttftByCachedFraction = async () => {
  const settings = { ttftMs: 20, itlMs: 20, usPerToken: 100, batched: 2048, block: 16 }
  const { child, port } = await start(root, {
    SIM_MODE: "random",
    SIM_TTFT_MS: String(settings.ttftMs),
    SIM_ITL_MS: String(settings.itlMs),
    SIM_PREFILL_US_PER_TOKEN: String(settings.usPerToken),
    SIM_MAX_BATCHED_TOKENS: String(settings.batched),
    SIM_MAX_MODEL_LEN: "8192",
    MAX_CONCURRENCY: "4"
  })
  const agent = new Agent({ keepAlive: true })
  const rows: Array<Array<string | number>> = []
  try {
    // Warm up (the JIT, the heap) on a prompt of the same size, cold then cached.
    const warmUp = JSON.stringify({ messages: [{ role: "user", content: words(6000, "warm") }], max_tokens: 1, stream: true })
    for (let i = 0; i < 3; i++) await timedStream(port, agent, warmUp, [], [])
    for (const fraction of [0, 0.25, 0.5, 0.75, 0.9, 1]) {
      const measured: Array<number> = []
      let cached = 0
      for (let round = 0; round < rounds; round++) {
        const salt = `r${round}f${fraction}x`
        const shared = Math.round(6000 * fraction)
        if (shared > 0) await post(port, agent, "/v1/completions", { prompt: words(shared, salt), max_tokens: 1 })
        const prompt = `${words(shared, salt)} ${words(6000 - shared, `${salt}u`)}`.trim()
        const ttft: Array<number> = []
        await timedStream(port, agent, JSON.stringify({ messages: [{ role: "user", content: prompt }], max_tokens: 1, stream: true }), ttft, [])
        measured.push(ttft[0])
        // The blocks the prefix filled, less the last token a fully cached prompt computes again.
        cached = Math.floor(Math.min(shared, 6000 - 1) / settings.block) * settings.block
      }
      const uncached = 6000 - cached
      const steps = Math.ceil(uncached / settings.batched)
      const formula = settings.ttftMs + (steps - 1) * settings.itlMs + uncached * settings.usPerToken / 1000
      rows.push([`${fraction * 100}%`, cached, formula.toFixed(1), median(measured).toFixed(1)])
    }
  } finally {
    agent.destroy()
    await stop(child)
  }
  console.log(`### Time to first token by cached share of a 6,000-token prompt (SIM_TTFT_MS=${settings.ttftMs}, SIM_ITL_MS=${settings.itlMs}, SIM_PREFILL_US_PER_TOKEN=${settings.usPerToken}, SIM_MAX_BATCHED_TOKENS=${settings.batched}; median of ${rounds})\n`)
  table(["prompt share sent before", "cached tokens", "formula (ms)", "measured TTFT (ms)"], rows)
}

// 2. Output tokens per second against the hit rate, one server, 32 clients.
const throughputByHitRate = async () => {
  const clients = 32
  const rows: Array<Array<string | number>> = []
  for (const share of [0, 0.5, 0.9]) {
    const { child, port } = await start(root, {
      SIM_MODE: "echo",
      SIM_TTFT_MS: "20",
      SIM_ITL_MS: "20",
      SIM_PREFILL_US_PER_TOKEN: "100",
      SIM_MAX_MODEL_LEN: "4096",
      MAX_CONCURRENCY: String(clients),
      MAX_QUEUE: "1000"
    })
    const agent = new Agent({ keepAlive: true, maxSockets: clients })
    let tokens = 0
    let sent = 0
    const shared = words(Math.round(2000 * share), "shared")
    const deadline = performance.now() + seconds * 1000
    const client = async (id: number) => {
      while (performance.now() < deadline) {
        const prompt = `${shared} ${words(2000 - Math.round(2000 * share), `c${id}n${sent++}u`)}`.trim()
        const answer = await post(port, agent, "/v1/completions", { prompt, max_tokens: 64 })
        tokens += answer.usage?.completion_tokens ?? 0
      }
    }
    const startedAt = performance.now()
    await Promise.all(Array.from({ length: clients }, (_, id) => client(id)))
    const elapsed = (performance.now() - startedAt) / 1000
    const metrics = (await get(port, "/metrics")).body
    const hitRate = metricValue(metrics, "vllm:prefix_cache_hits_total") / metricValue(metrics, "vllm:prefix_cache_queries_total")
    rows.push([`${share * 100}%`, `${(hitRate * 100).toFixed(1)}%`, (tokens / elapsed).toFixed(0), (sent / elapsed).toFixed(1)])
    agent.destroy()
    await stop(child)
  }
  console.log(`### Output tokens per second by prefix-cache hit rate (one server, ${clients} clients, 2,000-token prompts, 64 tokens out, SIM_ITL_MS=20, SIM_PREFILL_US_PER_TOKEN=100, ${seconds} s each)\n`)
  table(["prompt share shared", "hit rate (vllm:prefix_cache_*)", "output tokens/s", "requests/s"], rows)
}

/** Runs `body` with the baseline's source checked out in a temporary worktree. */
const withBaseline = async (body: (worktree: string) => Promise<void>) => {
  const worktree = mkdtempSync(join(tmpdir(), "bench-sim-baseline-"))
  execFileSync("git", ["worktree", "add", "--detach", worktree, baselineRef], { cwd: root, stdio: "ignore" })
  if (!existsSync(join(worktree, "node_modules"))) symlinkSync(join(root, "node_modules"), join(worktree, "node_modules"))
  try {
    await body(worktree)
  } finally {
    execFileSync("git", ["worktree", "remove", "--force", worktree], { cwd: root, stdio: "ignore" })
    rmSync(worktree, { recursive: true, force: true })
  }
}

// 3. The router's CPU per generated token, now and before the engine.
const cpuPerToken = async (worktree: string) => {
  const streams = 200
  const tokensEach = 100
  const measure = async (cwd: string) => {
    const { child, port } = await start(cwd, {
      SIM_MODE: "echo",
      SIM_TTFT_MS: "50",
      SIM_ITL_MS: "20",
      SIM_MAX_TOKENS: String(tokensEach),
      MAX_CONCURRENCY: String(streams + 10)
    })
    const agent = new Agent({ keepAlive: true, maxSockets: streams })
    const body = JSON.stringify({ messages: [{ role: "user", content: words(tokensEach, "t") }], max_tokens: tokensEach, stream: true })
    // One wave to warm up, then the measured ones.
    await Promise.all(Array.from({ length: streams }, () => timedStream(port, agent, body, [], [])))
    const before = cpuSeconds(child.pid!)
    const waves = Math.max(1, Math.round(seconds / 2.5))
    const gaps: Array<number> = []
    for (let wave = 0; wave < waves; wave++) {
      await Promise.all(Array.from({ length: streams }, () => timedStream(port, agent, body, [], gaps)))
    }
    const cpu = cpuSeconds(child.pid!) - before
    agent.destroy()
    await stop(child)
    return { usPerToken: cpu * 1e6 / (waves * streams * tokensEach), gap: median(gaps) }
  }
  const rows: Array<Array<string | number>> = []
  for (let round = 0; round < rounds; round++) {
    const before = await measure(worktree)
    const now = await measure(root)
    rows.push([round + 1, before.usPerToken.toFixed(1), now.usPerToken.toFixed(1), before.gap.toFixed(1), now.gap.toFixed(1)])
  }
  console.log(`### Router CPU per generated token (${streams} streams x ${tokensEach} tokens at SIM_ITL_MS=20, over HTTP; before = ${baselineRef}, per-token timers)\n`)
  table(["round", `before (µs/token)`, "engine (µs/token)", "median gap before (ms)", "median gap engine (ms)"], rows)
}

/**
 * The model alone (part 4, in the child process BENCH_SIM_MODEL names): `generateUnsafe` for 1,000
 * streams of up to 200 tokens at a 5 ms gap, a sink that takes each token at once; after one
 * warm-up wave, the CPU (user + system) of this process over the tokens of two. Prints µs/token.
 */
const modelAlone = async (modelFile: string) => {
  const { Model } = await import(modelFile)
  const { defaultSimulation } = await import(modelFile.replace("simulated/Model.ts", "core/Config.ts"))
  const model = Model.simulated(0, { ...defaultSimulation, mode: "random", ttftMs: 5, itlMs: 5, maxTokens: 200 }, () => 0, true, { maxRunning: 2000 })
  const run = () =>
    Promise.all(Array.from({ length: 1000 }, (_, i) =>
      new Promise<number>((resolve) => {
        model.generateUnsafe({ echoText: `prompt ${i}`, promptTokens: 2, maxTokens: 200, stop: [], seed: i }, {
          token: (_text: string, _index: number, next: () => void) => next(),
          end: (generated: { completionTokens: number }) => resolve(generated.completionTokens)
        })
      })))
  await run()
  const before = process.cpuUsage()
  const tokens = (await run()).reduce((sum, n) => sum + n, 0) + (await run()).reduce((sum, n) => sum + n, 0)
  const used = process.cpuUsage(before)
  console.log(String((used.user + used.system) / tokens))
}

// 4. The model's own CPU per generated token, now and before the engine, each in a fresh process.
const modelCpuPerToken = async (worktree: string) => {
  const measure = (cwd: string) =>
    Number(execFileSync(process.execPath, [...nodeFlags, fileURLToPath(import.meta.url)], {
      env: { ...process.env, BENCH_SIM_MODEL: join(cwd, "src/router/simulated/Model.ts") },
      encoding: "utf8"
    }).trim())
  const rows: Array<Array<string | number>> = []
  for (let round = 0; round < rounds; round++) {
    // Alternating which goes first, so a drift in the machine's load favours neither.
    const [first, second] = round % 2 === 0 ? [worktree, root] : [root, worktree]
    const a = measure(first)
    const b = measure(second)
    const [before, now] = first === worktree ? [a, b] : [b, a]
    rows.push([round + 1, before.toFixed(2), now.toFixed(2), (now / before).toFixed(2)])
  }
  console.log(`### The simulated model alone, in process (1,000 streams x up to 200 tokens at a 5 ms gap, a sink that takes each token at once; before = ${baselineRef}; a fresh process each)\n`)
  table(["round", "before (µs/token)", "engine (µs/token)", "engine / before"], rows)
}

if (process.env.BENCH_SIM_MODEL !== undefined) {
  await modelAlone(process.env.BENCH_SIM_MODEL)
} else {
  // BENCH_PARTS=4 runs only the model's CPU comparison, etc.
  const parts = (process.env.BENCH_PARTS ?? "1,2,3,4").split(",")
  if (parts.includes("1")) await ttftByCachedFraction()
  if (parts.includes("2")) await throughputByHitRate()
  const cpuParts = [cpuPerToken, modelCpuPerToken].filter((_, i) => parts.includes(String(i + 3)))
  if (cpuParts.length > 0 && baselineRef !== "none") {
    await withBaseline(async (worktree) => {
      for (const part of cpuParts) await part(worktree)
    })
  }
}
