import { Effect, Schema, Metric, Layer } from "effect"
import { randomUUID } from "node:crypto"
import { InferRequest } from "../src/api/RouterApi.ts"
import { requestDuration, requestsTotal } from "../src/Metrics.ts"
const ctx = Effect.runSync(Effect.context<never>())
const decode = Schema.decodeUnknownResult(InferRequest)
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
const tagged = Metric.withAttributes(requestsTotal, { endpoint: "/infer", status: "200" })
const body = '{"prompt":"benchmark prompt"}'
for (let k = 0; k < 2; k++) {
bench("randomUUID", () => { randomUUID() })
bench("JSON.parse", () => { JSON.parse(body) })
bench("schema decode", () => { decode(JSON.parse(body)) })
bench("histogram update", () => { requestDuration.updateUnsafe(0.001, ctx) })
bench("counter update (tagged)", () => { tagged.updateUnsafe(1, ctx) })
bench("performance.now", () => { performance.now() })
bench("Date iso", () => { new Date().toISOString() })
bench("access line", () => { JSON.stringify({ message: "request", level: "INFO", timestamp: new Date().toISOString(), annotations: { requestId: "6d1b0d36-5a3c-4c1c-9f55-0b1d8f3c2a11", method: "POST", path: "/infer", status: 200, queueMs: 0, modelMs: 0, durationMs: 0.4 }, spans: {} }) })
}
