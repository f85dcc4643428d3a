/**
 * Hang-ups over real sockets: clients that disconnect while queued or while
 * their request runs take nothing with them; the router's capacity is intact.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import * as Http from "node:http"
import { Admission } from "../src/router/core/Admission.ts"
import { gatedModel, postInfer, serverPort, TestRouter, untilStats } from "./support/TestRouter.ts"

/** Starts a POST /infer and returns a way to hang up on it. */
const startInfer = (port: number, prompt: string) => {
  const req = Http.request({
    host: "127.0.0.1",
    port,
    method: "POST",
    path: "/infer",
    headers: { "content-type": "application/json" },
    agent: false
  })
  req.on("error", () => {}) // hanging up is the point
  const response = new Promise<number>((resolve) => req.on("response", (res) => {
    res.resume()
    resolve(res.statusCode!)
  }))
  req.end(JSON.stringify({ prompt }))
  return { hangUp: () => req.destroy(), response }
}

describe("client hang-ups", () => {
  it.live("queued and running requests whose clients hang up release their places and slots", () =>
    Effect.gen(function*() {
      const { gate, model } = yield* gatedModel
      yield* Effect.gen(function*() {
        const port = yield* serverPort
        const admission = yield* Admission
        const slots = admission.limits.slots

        const holders = Array.from({ length: slots }, (_, i) => startInfer(port, `holder-${i}`))
        yield* untilStats(slots, 0)
        const quitters = Array.from({ length: 40 }, (_, i) => startInfer(port, `quitter-${i}`))
        yield* untilStats(slots, 40)
        for (const quitter of quitters) quitter.hangUp()
        yield* untilStats(slots, 0)

        // A running request whose client hangs up frees its slot for the next in line.
        const next = startInfer(port, "next")
        yield* untilStats(slots, 1)
        holders[0].hangUp()
        yield* untilStats(slots, 0)

        yield* gate.open
        const statuses = yield* Effect.promise(() => Promise.all([next.response, ...holders.slice(1).map((h) => h.response)]))
        assert.deepStrictEqual(statuses, Array(slots).fill(200))

        // Full capacity and the full queue are usable again.
        const after = yield* Effect.forEach(
          Array.from({ length: slots + admission.limits.maxQueue }, (_, i) => postInfer({ prompt: `after-${i}` })),
          (effect) => effect,
          { concurrency: "unbounded" }
        )
        assert.isTrue(after.every((r) => r.status === 200), JSON.stringify(after.map((r) => r.status)))
        assert.include(admission.statsUnsafe(), { running: 0, waiting: 0 })
      }).pipe(Effect.provide(TestRouter({ maxConcurrency: 3, maxQueue: 40 }, model)))
    }))
})
