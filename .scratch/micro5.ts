import { Effect, Exit, Semaphore } from "effect"
console.log("succeed is exit:", Exit.isExit(Effect.succeed(1)), "sync is exit:", Exit.isExit(Effect.sync(() => 1)))
const sem = Semaphore.makeUnsafe(10)
const ctx = Effect.runSync(Effect.context<never>())
const run = Effect.runForkWith(ctx)
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
const take = sem.takeIfAvailable(1), release = sem.release(1)
for (let k = 0; k < 2; k++) {
  bench("runSync take+release", () => { Effect.runSync(take); Effect.runSync(release) })
  bench("runFork take+release", () => { run(take); run(release) })
}
const runSync = Effect.runSyncWith(ctx)
for (let k = 0; k < 2; k++) bench("runSyncWith take+release", () => { runSync(take); runSync(release) })
