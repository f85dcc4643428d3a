/**
 * A real Redis for tests: Debian's `redis-server` on an ephemeral port, no
 * persistence, stopped and restarted on the same port when a test asks (Redis
 * going away mid-run). `apt-get install -y redis-server` provides it; tests
 * skip with a clear reason when it is missing.
 */
import { execFileSync } from "node:child_process"
import { createConnection } from "node:net"
import { freePort, startProcess, type Started, until } from "./Processes.ts"

export const redisServerPath = (): string | undefined => {
  try {
    return execFileSync("sh", ["-c", "command -v redis-server"], { encoding: "utf8" }).trim() || undefined
  } catch {
    return undefined
  }
}

const answersPing = (port: number) =>
  new Promise<boolean>((resolve) => {
    const socket = createConnection({ port, host: "127.0.0.1" })
    let answer = ""
    socket.setTimeout(500, () => {
      socket.destroy()
      resolve(false)
    })
    socket.on("error", () => resolve(false))
    socket.on("connect", () => socket.write("PING\r\n"))
    socket.on("data", (chunk) => {
      answer += chunk
      if (answer.includes("\r\n")) {
        socket.destroy()
        resolve(answer.startsWith("+PONG"))
      }
    })
  })

export interface RedisServer {
  readonly port: number
  readonly url: string
  /** Stops it (SIGKILL: an outage, not a shutdown). */
  stop(): Promise<void>
  /** Starts it again on the same port, empty. */
  start(): Promise<void>
  /** SIGSTOP / SIGCONT: connected but not answering (a slow Redis). */
  pause(): void
  resume(): void
}

export const startRedis = async (): Promise<RedisServer> => {
  const binary = redisServerPath()
  if (binary === undefined) throw new Error("redis-server is not installed (apt-get install -y redis-server)")
  const port = await freePort()
  let current: Started | undefined
  const start = async () => {
    current = startProcess(["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--protected-mode", "no"], {}, binary)
    await until(() => answersPing(port), `redis-server on port ${port}`)
  }
  await start()
  return {
    port,
    url: `redis://127.0.0.1:${port}`,
    start,
    stop: async () => {
      const started = current
      if (started === undefined) return
      current = undefined
      started.child.kill("SIGKILL")
      await started.exited
    },
    pause: () => current?.child.kill("SIGSTOP"),
    resume: () => current?.child.kill("SIGCONT")
  }
}
