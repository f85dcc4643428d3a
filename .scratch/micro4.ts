const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
const ts = new Date().toISOString()
const outcome = { queueMs: 0, modelMs: 0 }
const rid = "6d1b0d36-5a3c-4c1c-9f55-0b1d8f3c2a11"
for (let k = 0; k < 2; k++) {
bench("full", () => { JSON.stringify({ message: "request", level: "INFO", timestamp: ts, annotations: { requestId: rid, method: "POST", path: "/infer", status: 200, ...outcome, durationMs: Math.round(0.43 * 10) / 10 }, spans: {} }) })
bench("template+annotations", () => { const a = { requestId: rid, method: "POST", path: "/infer", status: 200, ...outcome, durationMs: Math.round(0.43 * 10) / 10 }; `{"message":"request","level":"INFO","timestamp":"${ts}","annotations":${JSON.stringify(a)},"spans":{}}` })
bench("hand", () => { `{"message":"request","level":"INFO","timestamp":"${ts}","annotations":{"requestId":${JSON.stringify(rid)},"method":"POST","path":"/infer","status":200,"queueMs":${outcome.queueMs},"modelMs":${outcome.modelMs},"durationMs":${Math.round(0.43 * 10) / 10}},"spans":{}}` })
}
