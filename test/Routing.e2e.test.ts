/**
 * Cache-aware routing end to end, real processes: simulated model servers
 * with the KV cache on, publishing KV events over ZeroMQ; routers with
 * UPSTREAM_SCHEDULER=cache-aware in front; three replicas sharing through a
 * real Redis, stopped and restarted mid-run.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { freePort, killAll, until } from "./support/Processes.ts"
import { redisServerPath, startRedis } from "./support/RedisServer.ts"
import { metricValue, openStream, post, type Running, startFront, startUpstream } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

afterEach(() => killAll())

/** A simulated vLLM: 16-token blocks, a cache of 4,096 blocks, a prefill that costs (0.5 ms a token: a 400-token prompt 200 ms, so its cache outweighs a request or two in flight), KV events on a fixed port. */
const startServer = async () => {
  const eventsPort = await freePort()
  const server = await startUpstream({
    SIM_BLOCK_SIZE: "16",
    SIM_KV_BLOCKS: "4096",
    SIM_PREFILL_US_PER_TOKEN: "500",
    SIM_KV_EVENTS_ENDPOINT: `tcp://*:${eventsPort}`,
    MAX_CONCURRENCY: "64"
  })
  return { server, eventsPort }
}

const item = ({ eventsPort, server }: { server: Running; eventsPort: number }) => `http://127.0.0.1:${server.port};kv-events=${eventsPort}`

const system = (group: number) => Array.from({ length: 400 }, (_, i) => `g${group}s${i}`).join(" ")

/** One chat turn, streamed; what came back in the headers. */
const turn = async (port: number, history: string, question: string) => {
  const stream = await openStream(port, "/v1/chat/completions", {
    model: "m",
    stream: true,
    stream_options: { include_usage: true },
    max_tokens: 4,
    messages: [{ role: "system", content: history }, { role: "user", content: question }]
  })
  await stream.ended
  assert.strictEqual(stream.status, 200)
  return { upstream: String(stream.headers["x-inference-upstream"]), route: String(stream.headers["x-inference-route"]) }
}

/** Blocks a replica's prefix index holds, over every upstream. */
const indexBlocks = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n")
    .filter((line) => line.startsWith("router_routing_index_blocks{"))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

const routingLines = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n").filter((line) => line.startsWith("router_routing") || line.startsWith("router_upstream_available")).join("\n")

describe("cache-aware routing end to end", () => {
  it("a shared prefix goes where it is cached; decisions are explained and counted", async () => {
    const servers = await Promise.all([startServer(), startServer()])
    const front = await startFront(servers.map((s) => s.server), {
      UPSTREAMS: servers.map(item).join(","),
      UPSTREAM_SCHEDULER: "cache-aware",
      UPSTREAM_METRICS_INTERVAL_MS: "50",
      UPSTREAM_ROUTE_HEADER_CACHED_TOKENS: "true",
      // A server failing a check is forgotten (its index entries dropped): a slow machine must not fail one.
      UPSTREAM_HEALTH_TIMEOUT_MS: "10000"
    })
    const first = await turn(front.port, system(1), "q0")
    assert.match(first.route, /^cache-aware; reason=(load|only-healthy); cached-tokens=0;/)
    for (let i = 1; i <= 3; i++) {
      const next = await turn(front.port, system(1), `q${i}`)
      assert.strictEqual(next.upstream, first.upstream, next.route)
      assert.match(next.route, /reason=cache; cached-tokens=[1-9][0-9]*;/)
    }
    // The simulated servers' KV events name the router's keys: received, and the index exact for the holder.
    await until(async () => (await metricValue(front.port, `router_routing_kv_events_matching{upstream="${first.upstream}"}`)) === 1, "the holder's events matching")
    assert.isAbove(await metricValue(front.port, `router_routing_kv_event_batches_total{upstream="${first.upstream}"}`) ?? 0, 0)
    // Another group's prefix is not cached anywhere: load decides.
    assert.match((await turn(front.port, system(2), "q0")).route, /reason=load;/)
    assert.isAtLeast(await metricValue(front.port, `router_routing_decisions_total{reason="cache"}`) ?? 0, 3)
    // `/infer` is routed the same way, and its answer explains the decision as the relay's do.
    const infer = await post(front.port, "/infer", { prompt: system(1) })
    assert.strictEqual(infer.status, 200)
    assert.strictEqual(infer.headers["x-inference-upstream"], first.upstream)
    assert.match(String(infer.headers["x-inference-route"]), /^cache-aware; reason=cache; cached-tokens=[1-9][0-9]*;/)

    // The server holding the prefix dies: its index entries go within a health interval (100 ms
    // here), and the prefix's next request is answered elsewhere.
    const holder = servers.find(({ server }) => first.upstream === `127.0.0.1:${server.port}`)!
    holder.server.child.kill("SIGKILL")
    await until(async () => (await metricValue(front.port, `router_routing_index_blocks{upstream="${first.upstream}"}`)) === 0, "the dead server's entries dropped")
    const after = await turn(front.port, system(1), "q9")
    assert.notStrictEqual(after.upstream, first.upstream)
  })

  it.skipIf(redisServerPath() === undefined)("three replicas share through Redis; Redis stopped and restarted mid-run fails no request", { timeout: 60_000 }, async () => {
    const redis = await startRedis()
    const servers = await Promise.all([startServer(), startServer()])
    // No KV events here: with them every replica follows the servers' own events and agrees without
    // Redis; without them, what one replica sent where reaches the others through Redis alone.
    const env = {
      UPSTREAMS: servers.map(({ server }) => `http://127.0.0.1:${server.port}`).join(","),
      UPSTREAM_SCHEDULER: "cache-aware",
      // Sharing under test, not the bound: the others' in-flight counts linger up to 300 ms after a
      // request ends, and at one request in flight over three servers the bound would spill.
      UPSTREAM_LOAD_BOUND: "10",
      UPSTREAM_HEALTH_TIMEOUT_MS: "10000",
      KV_ENDPOINTS: redis.url
    }
    const replicas = await Promise.all([startFront([], env), startFront([], env), startFront([], env)])
    await until(async () => {
      const up = await Promise.all(replicas.map((r) => metricValue(r.port, `router_routing_shared_state_up`)))
      return up.every((value) => value === 1)
    }, "replicas connected to Redis")

    // Turn 1 through replica 0, the next turns through the others: the same server, from the shared
    // index (each replica's first request of this prefix: nothing of its own to go by).
    const first = await turn(replicas[0].port, system(3), "q0")
    for (const replica of replicas.slice(1)) {
      await until(async () => (await indexBlocks(replica.port)) >= 400 / 16, "the decision reached the other replicas")
      const next = await turn(replica.port, system(3), "q1")
      assert.strictEqual(next.upstream, first.upstream, next.route)
      assert.match(next.route, /reason=cache\b/)
    }

    await redis.stop()
    await until(async () => (await metricValue(replicas[0].port, `router_routing_shared_state_up`)) === 0, "replica 0 sees Redis down")
    // Every request still answers; each replica decides on its own copy.
    for (let i = 0; i < 6; i++) await turn(replicas[i % 3].port, system(4 + i), "q")
    // Replica 0 sent two of them: each a decision and a confirmation not written (loads are not counted).
    const dropped = await metricValue(replicas[0].port, "router_routing_shared_writes_dropped_total")
    assert.isTrue(dropped !== undefined && dropped >= 2 && dropped <= 10, `dropped ${dropped}`)
    const third = await turn(replicas[1].port, system(3), "q2")
    assert.strictEqual(third.upstream, first.upstream, `the local copy still knows the prefix: ${third.route}\n${await routingLines(replicas[1].port)}\n${replicas[1].output().stdout.slice(-3000)}${replicas[1].output().stderr.slice(-3000)}`)

    await redis.start()
    await until(async () => {
      const up = await Promise.all(replicas.map((r) => metricValue(r.port, `router_routing_shared_state_up`)))
      return up.every((value) => value === 1)
    }, "replicas rejoined", 20_000)
    const before = await indexBlocks(replicas[2].port)
    const fresh = await turn(replicas[0].port, system(20), "q0")
    await until(async () => (await indexBlocks(replicas[2].port)) >= before + 400 / 16, "sharing again after the restart")
    const after = await turn(replicas[2].port, system(20), "q1")
    assert.strictEqual(after.upstream, fresh.upstream, after.route)
    const lines = replicas[0].output().stdout + replicas[0].output().stderr
    assert.strictEqual(lines.split("\n").filter((line) => line.includes("unavailable")).length, 1, lines)
  })
})
