import { writeSync, openSync } from "node:fs"
const fd = openSync("/dev/null", "w")
const N = 300000
const bench = (name: string, f: () => void) => {
  for (let i = 0; i < 50000; i++) f()
  const t = performance.now()
  for (let i = 0; i < N; i++) f()
  console.log(name.padEnd(30), ((performance.now() - t) * 1e6 / N).toFixed(0), "ns")
}
const ts = new Date().toISOString()
const line = (i: number) => `{"message":"request","level":"INFO","timestamp":"${ts}","annotations":{"requestId":${JSON.stringify("6d1b0d36-5a3c-4c1c-9f55-0b1d8f3c2a1" + (i % 10))},"method":"POST","path":"/infer","status":200,"queueMs":0,"modelMs":0,"durationMs":${(i % 7) / 10}},"spans":{}}`
let pending: Array<string> = []
let i = 0
bench("join+write string", () => { pending.push(line(i++)); if (pending.length === 30) { const t = pending.join("\n") + "\n"; pending = []; writeSync(fd, t) } })
let buf = Buffer.allocUnsafe(65536), used = 0
bench("utf8Write into buffer", () => { used += buf.utf8Write(line(i++) + "\n", used); if (i % 30 === 0) { writeSync(fd, buf, 0, used); used = 0 } })
bench("join+Buffer.from+write", () => { pending.push(line(i++)); if (pending.length === 30) { const t = Buffer.from(pending.join("\n") + "\n"); pending = []; writeSync(fd, t) } })
bench("line only", () => { line(i++) })
