import { Context, Effect, Layer } from "effect"
import { metricContext, requestDuration, requestsBy } from "../src/Metrics.ts"
import { makeRouterServer } from "../src/Server.ts"
import { RouterConfig } from "../src/Config.ts"
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
  const context = yield* Layer.build(makeRouterServer({ config: RouterConfig.layerWith({ port: 0, host: "127.0.0.1" }), logging: Layer.empty as any }))
  const small = metricContext(context as any)
  for (let k = 0; k < 2; k++) {
    bench("2 updates, layer context", () => { requestsBy("/infer", "200").updateUnsafe(1, context as any); requestDuration.updateUnsafe(0.001, context as any) })
    bench("2 updates, metric context", () => { requestsBy("/infer", "200").updateUnsafe(1, small); requestDuration.updateUnsafe(0.001, small) })
  }
})))
process.exit(0)
