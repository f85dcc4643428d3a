/**
 * Real processes for end-to-end tests: started with a given environment,
 * output captured, killed after each test (or, for tests run concurrently,
 * when the test that started them ends); plus bounded polling.
 */
import { AsyncLocalStorage } from "node:async_hooks"
import { type ChildProcess, spawn } from "node:child_process"
import { once } from "node:events"
import { createServer } from "node:net"
import { join } from "node:path"
import { fileURLToPath } from "node:url"

export const root = fileURLToPath(new URL("../..", import.meta.url))

const isFree = (port: number) =>
  new Promise<boolean>((resolve) => {
    const server = createServer()
    server.once("error", () => resolve(false))
    server.listen(port, "127.0.0.1", () => server.close(() => resolve(true)))
  })

/**
 * Ports a process is told to listen on. Not ones the kernel picks for port 0: a port released
 * that way may be given to any other socket bound to port 0 before the process binds it (~1 s
 * of start-up), and a router then fails to start, or a stub answers its readiness probe. These
 * are below Linux's ephemeral range (32768 and up), each vitest worker its own block, handed out
 * in turn from a random start, each checked free.
 */
const portBlock = 2_000
const firstPort = 20_000 + ((Number(process.env.VITEST_POOL_ID ?? 1) - 1) % 6) * portBlock
let nextPort = Math.floor(Math.random() * portBlock)

export const freePort = async (): Promise<number> => {
  for (let tries = 0; tries < portBlock; tries++) {
    const port = firstPort + (nextPort++ % portBlock)
    if (await isFree(port)) return port
  }
  throw new Error(`no free port in ${firstPort}-${firstPort + portBlock - 1}`)
}

export interface Started {
  readonly child: ChildProcess
  readonly exited: Promise<number | null>
  readonly output: () => { readonly stdout: string; readonly stderr: string }
}

const running = new Set<ChildProcess>()

/** Kills every process still running (call in afterEach; in afterAll for files whose tests use `owned`). */
export const killAll = () => {
  for (const child of running) child.kill("SIGKILL")
  running.clear()
}

interface Owner {
  readonly children: Set<ChildProcess>
  readonly cleanups: Array<() => unknown>
}
const owners = new AsyncLocalStorage<Owner>()

/**
 * Runs a test's body as the owner of the processes it starts (startProcess, wherever called
 * from) and of the cleanups it registers with `atEnd`: they are killed and run when it settles.
 * For tests run concurrently, where afterEach(killAll) would kill the other tests' processes.
 */
export const owned = (body: () => Promise<void>) => async (): Promise<void> => {
  const owner: Owner = { children: new Set(), cleanups: [] }
  try {
    await owners.run(owner, body)
  } finally {
    for (const child of owner.children) child.kill("SIGKILL")
    for (const cleanup of owner.cleanups.reverse()) await cleanup()
  }
}

/** Registers `cleanup` (stopping a stand-in server, say) to run when the current `owned` test ends. */
export const atEnd = (cleanup: () => unknown) => {
  const owner = owners.getStore()
  if (owner === undefined) throw new Error("atEnd: not inside an owned() test")
  owner.cleanups.push(cleanup)
}

/**
 * Node's on-disk code cache for the processes the tests start (hundreds of routers and controllers
 * of the same source): a start costs ~0.5 s of CPU instead of ~0.8. Invisible to the processes.
 */
export const compileCache = join(root, "node_modules/.cache/node-compile-cache")

/** Starts `command args` (Node itself by default) in the repository, with only `env` (plus PATH, HOME and the compile cache). */
export const startProcess = (args: ReadonlyArray<string>, env: Record<string, string>, command: string = process.execPath): Started => {
  const child = spawn(command, [...args], {
    cwd: root,
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "", NODE_COMPILE_CACHE: compileCache, ...env },
    stdio: ["ignore", "pipe", "pipe"]
  })
  running.add(child)
  const owner = owners.getStore()
  owner?.children.add(child)
  let stdout = ""
  let stderr = ""
  child.stdout!.on("data", (chunk) => (stdout += chunk))
  child.stderr!.on("data", (chunk) => (stderr += chunk))
  const exited = once(child, "exit").then(([code]) => {
    running.delete(child)
    owner?.children.delete(child)
    return code as number | null
  })
  return { child, exited, output: () => ({ stdout, stderr }) }
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** Polls `condition` every 25 ms, up to `limitMs` (generous: slow machines must not fail it). */
export const until = async (condition: () => boolean | Promise<boolean>, what: string, limitMs = 15_000) => {
  const deadline = Date.now() + limitMs
  while (Date.now() < deadline) {
    if (await condition()) return
    await sleep(25)
  }
  throw new Error(`timed out waiting for ${what}`)
}
