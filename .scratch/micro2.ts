import { Effect, Semaphore, Exit } from "effect"
const ctx = Effect.runSync(Effect.context<never>())
const run = Effect.runForkWith(ctx)
const sem = Semaphore.makeUnsafe(10000)
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
for (let k = 0; k < 2; k++) {
bench("succeed", () => { run(Effect.succeed(1)).pollUnsafe() })
bench("suspend", () => { run(Effect.suspend(() => Effect.succeed(1))).pollUnsafe() })
bench("clockWith", () => { run(Effect.clockWith((c) => Effect.succeed(c.currentTimeMillisUnsafe()))).pollUnsafe() })
bench("withPermit", () => { run(sem.withPermit(Effect.succeed(1))).pollUnsafe() })
bench("onExit", () => { run(Effect.succeed(1).pipe(Effect.onExit(() => Effect.void))).pollUnsafe() })
bench("map", () => { run(Effect.map(Effect.succeed(1), (x) => x + 1)).pollUnsafe() })
bench("raw sync", () => { run(Effect.sync(() => 1)).pollUnsafe() })
}
