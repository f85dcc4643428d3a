/**
 * UPSTREAM_SHARED_SCOPE end to end (real routers, a real Redis): routers of one
 * MODEL_REF in front of different servers (two InferenceServices of one model)
 * keep their routing state apart in a shared Redis; routers of one scope share it.
 */
import { afterEach, assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { killAll, until } from "./support/Processes.ts"
import { redisServerPath, startRedis } from "./support/RedisServer.ts"
import { metricValue, openStream, startFront, startUpstream } from "./support/Routers.ts"
import { requestAt } from "./support/TestRouter.ts"

afterEach(() => killAll())

const system = Array.from({ length: 400 }, (_, i) => `s${i}`).join(" ")

const turn = async (port: number) => {
  const stream = await openStream(port, "/v1/chat/completions", {
    model: "llama",
    stream: true,
    max_tokens: 2,
    messages: [{ role: "system", content: system }, { role: "user", content: "q" }]
  })
  await stream.ended
  assert.strictEqual(stream.status, 200)
}

/** Blocks a router's prefix index holds, over every upstream. */
const indexBlocks = async (port: number) =>
  (await requestAt(port, { path: "/metrics" })).text.split("\n")
    .filter((line) => line.startsWith("router_routing_index_blocks{"))
    .reduce((sum, line) => sum + Number(line.slice(line.lastIndexOf(" ") + 1)), 0)

describe.skipIf(redisServerPath() === undefined)("UPSTREAM_SHARED_SCOPE", () => {
  it("routers of one model in two scopes share nothing through one Redis; routers of one scope share", { timeout: 60_000 }, async () => {
    const redis = await startRedis()
    const server = await startUpstream({ MODEL_REF: "llama" })
    const env = (scope: string) => ({
      MODEL_REF: "llama",
      UPSTREAM_SCHEDULER: "cache-aware",
      UPSTREAM_HEALTH_TIMEOUT_MS: "10000",
      KV_ENDPOINTS: redis.url,
      UPSTREAM_SHARED_SCOPE: scope
    })
    const [a, sameScope, otherScope] = await Promise.all([
      startFront([server], env("team-a/chat")),
      startFront([server], env("team-a/chat")),
      startFront([server], env("team-b/chat"))
    ])
    await until(async () => {
      const up = await Promise.all([a, sameScope, otherScope].map((r) => metricValue(r.port, "router_routing_shared_state_up")))
      return up.every((value) => value === 1)
    }, "routers connected to Redis")
    await turn(a.port)
    await until(async () => (await indexBlocks(sameScope.port)) >= 400 / 16, "the decision reached the router of the same scope")
    assert.strictEqual(await indexBlocks(otherScope.port), 0, "a router of another scope learned it")
    const keys = spawnSync("redis-cli", ["-p", String(redis.port), "--scan", "--pattern", "inference-router:*"], { encoding: "utf8" }).stdout
      .split("\n").filter((line) => line !== "")
    assert.isNotEmpty(keys)
    assert.deepStrictEqual(keys.filter((key) => !key.startsWith("inference-router:team-a/chat:")), [], "keys under the scope, not the model")
  })
})
