/**
 * What the benchmark scripts share: reading a server's CPU time, a GET, the
 * percentiles they report, a streaming client that timestamps every token's
 * `data:` event, and the router's production command.
 */
import { readFileSync } from "node:fs"
import { type Agent, request } from "node:http"

/**
 * The router's Node arguments as production runs it: what `npm run start:prod`
 * runs after its build (`exec node <args>`, the Dockerfile's CMD). With
 * BENCH_ROUTER_FLAGS, those Node flags instead of production's (to try others).
 */
export const routerArgs = (): Array<string> => {
  const packageJson = JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8"))
  const production: Array<string> = packageJson.scripts["start:prod"].split("exec node ")[1].split(" ")
  // BENCH_ROUTER_BUNDLE runs another build of the router (an older commit's, say) with the same flags.
  const bundle = process.env.BENCH_ROUTER_BUNDLE
  const args = bundle === undefined ? production : production.map((arg) => (arg.endsWith(".js") ? bundle : arg))
  const flags = process.env.BENCH_ROUTER_FLAGS
  if (flags === undefined) return args
  return [...flags.split(" ").filter((flag) => flag !== ""), ...args.filter((arg) => !arg.startsWith("--"))]
}

/** CPU seconds (user + system) from `/proc/<pid>/stat`: the process's own, or its finished children's (wrk runs). Clock ticks of 1/100 s. */
export const cpuSeconds = (pid: number | "self", whose: "own" | "children" = "own") => {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ")
  const first = whose === "own" ? 11 : 13
  return (Number(fields[first]) + Number(fields[first + 1])) / 100
}

export const get = (port: number, path: string) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request({ host: "127.0.0.1", port, path, agent: false }, (res) => {
      let body = ""
      res.on("data", (chunk) => (body += chunk))
      res.on("end", () => resolve({ status: res.statusCode!, body }))
    })
    req.on("error", reject)
    req.end()
  })

export const median = (values: ReadonlyArray<number>) => {
  const sorted = [...values].sort((a, b) => a - b)
  const mid = Math.floor(sorted.length / 2)
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2
}

export const percentile = (values: ReadonlyArray<number>, p: number) => {
  if (values.length === 0) return NaN
  const sorted = [...values].sort((a, b) => a - b)
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]
}

/**
 * One streaming `/v1/chat/completions` request: pushes the time to its first
 * token's event onto `ttft` and each gap between tokens onto `gaps` (ms);
 * resolves when the stream ends (or fails). `true` when it completed.
 */
export const timedStream = (port: number, agent: Agent, body: string, ttft: Array<number>, gaps: Array<number>) =>
  new Promise<boolean>((resolve) => {
    const startedAt = performance.now()
    let last = 0
    let buffered = ""
    const req = request({ host: "127.0.0.1", port, method: "POST", path: "/v1/chat/completions", agent, headers: { "content-type": "application/json", "content-length": Buffer.byteLength(body) } }, (res) => {
      res.setEncoding("utf8")
      res.on("data", (chunk: string) => {
        const now = performance.now()
        buffered += chunk
        let at: number
        while ((at = buffered.indexOf("\n\n")) !== -1) {
          const event = buffered.slice(0, at)
          buffered = buffered.slice(at + 2)
          if (!event.startsWith("data: {") || !event.includes("\"content\"")) continue
          if (last === 0) ttft.push(now - startedAt)
          else gaps.push(now - last)
          last = now
        }
      })
      res.on("end", () => resolve(true))
    })
    req.on("error", () => resolve(false))
    req.end(body)
  })
