import { Effect, Layer, Context } from "effect"
import { Admission } from "../src/Admission.ts"
import { Model } from "../src/Model.ts"
const admission = Effect.runSync(Admission.make({ slots: 10000, maxQueue: 0, queueTimeoutMs: 1000 }))
const model = Model.simulated(0)
const ctx = Effect.runSync(Effect.context<never>())
const run = Effect.runForkWith(ctx)
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name, ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
for (let k = 0; k < 2; k++) {
bench("runFork(succeed)", () => { run(Effect.succeed(1)).pollUnsafe() })
bench("runFork(admit(model))", () => { run(admission.admit(({ waitedMs }) => Effect.map(model.infer("x"), ({ processingMs }) => ({ waitedMs, processingMs })), { maxWaitMs: undefined })).pollUnsafe() })
bench("runFork(withPermit)", () => { run(admission.admit(() => Effect.void)).pollUnsafe() })
}
