import { Effect, Fiber } from "effect"
import { Admission } from "../src/Admission.ts"
import { Model } from "../src/Model.ts"
const prog = Effect.gen(function*() {
  const admission = yield* Admission.make({ slots: 8, maxQueue: 80, queueTimeoutMs: 30000 })
  const model = Model.simulated(20)
  let served = 0
  const loop = Effect.forever(Effect.suspend(() => admission.admit(() => model.infer("x"))).pipe(Effect.tap(() => Effect.sync(() => served++))))
  const fibers = yield* Effect.forEach(Array.from({ length: 32 }), () => Effect.forkChild(loop))
  yield* Effect.sleep(1000)
  const s0 = served
  const t0 = performance.now()
  yield* Effect.sleep(4000)
  console.log("admit loops:", ((served - s0) / ((performance.now() - t0) / 1000)).toFixed(1), "per s (theoretical 400)")
  yield* Fiber.interruptAll(fibers)
})
await Effect.runPromise(prog)
// plain node: 8 slots, 32 loops
{
  let running = 0; const q: Array<() => void> = []; let served = 0
  const one = () => {
    const go = () => { running++; setTimeout(() => { running--; served++; const n = q.shift(); if (n) n(); one() }, 20) }
    if (running < 8) go(); else q.push(go)
  }
  for (let i = 0; i < 32; i++) one()
  await new Promise((r) => setTimeout(r, 1000)); const s0 = served; const t0 = performance.now()
  await new Promise((r) => setTimeout(r, 4000))
  console.log("plain loops:", ((served - s0) / ((performance.now() - t0) / 1000)).toFixed(1), "per s")
  process.exit(0)
}
