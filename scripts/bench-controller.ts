/**
 * The controller at scale, against the stand-in API server (test/support/
 * FakeKubeApi.ts) on loopback: 1,000 InferenceServices created at once; the
 * time until every one is reconciled (status written for its generation), the
 * API requests per InferenceService, the controller's peak RSS; then two
 * resyncs of the 1,000 unchanged ones, which must write nothing.
 *   npm run bench:controller            # BENCH_ISVCS=1000 by default
 * The controller runs bundled (dist/controller.js), pinned to core 0, the
 * stand-in API in this process on core 1, where taskset exists.
 */
import { spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import { FakeKubeApi } from "../test/support/FakeKubeApi.ts"
import { freePort, sleep, until } from "../test/support/Processes.ts"
import { onCore, pinned, pinSelf } from "./pinning.ts"

const count = Number(process.env.BENCH_ISVCS ?? 1000)
const resyncSeconds = 5

pinSelf(1)

const rssMiB = (pid: number) => {
  const status = readFileSync(`/proc/${pid}/status`, "utf8")
  return Number(/VmHWM:\s+(\d+)/.exec(status)?.[1] ?? 0) / 1024
}

const api = new FakeKubeApi({ bookmarkMs: 10_000 })
await api.start()
const port = await freePort()
const args = ["--disable-warning=DEP0040", "dist/controller.js"]
const controller = spawn(...onCore(0, process.execPath, args), {
  env: {
    PATH: process.env.PATH ?? "",
    KUBECONFIG: api.kubeconfig(),
    PORT: String(port),
    HOST: "127.0.0.1",
    LEADER_ELECTION: "false",
    RESYNC_SECONDS: String(resyncSeconds),
    LOG_LEVEL: "warn"
  },
  stdio: ["ignore", "ignore", "inherit"]
})
await until(async () => {
  try {
    return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200
  } catch {
    return false
  }
}, "the controller ready")

const before = api.requests.length
const startedAt = performance.now()
for (let i = 0; i < count; i++) {
  api.put("inferenceservices", {
    apiVersion: "inference-router.dev/v1alpha1",
    kind: "InferenceService",
    metadata: { name: `model-${i}`, namespace: `team-${i % 10}` },
    spec: { modelRef: `model-${i}`, router: { maxConcurrency: 1 + (i % 16) }, ...(i % 4 === 0 ? { maxReplicas: 4 } : { replicas: 2 }) }
  })
}
const reconciled = () =>
  api.list("inferenceservices").filter((o) => o.status?.observedGeneration === o.metadata.generation).length
await until(() => reconciled() === count, `${count} reconciled`, 600_000)
const seconds = (performance.now() - startedAt) / 1000
const requests = api.requests.slice(before)
const writes = requests.filter((r) => r.method !== "GET").length
const reads = requests.length - writes
const pid = controller.pid! // taskset execs the program: same pid

await sleep(1_000)
const settled = api.writes().length
await sleep(2 * resyncSeconds * 1000 + 1_000)
const resyncWrites = api.writes().length - settled

console.log(`# Controller benchmark ${new Date().toISOString()}`)
console.log()
console.log(`Node ${process.version}; ${count} InferenceServices in 10 namespaces created at once against the stand-in API on loopback; ${pinned ? "controller on core 0, API on core 1" : "not pinned"}; MAX_PARALLEL_RECONCILES default (4).`)
console.log()
console.log("| measure | value |")
console.log("|---|---:|")
console.log(`| time until all reconciled (status for their generation) | ${seconds.toFixed(2)} s (${(count / seconds).toFixed(0)}/s) |`)
console.log(`| API requests per InferenceService | ${(requests.length / count).toFixed(2)} (${(writes / count).toFixed(2)} writes, ${(reads / count).toFixed(2)} reads) |`)
console.log(`| controller peak RSS | ${rssMiB(pid).toFixed(1)} MiB |`)
console.log(`| writes during ${2} resyncs of ${count} unchanged | ${resyncWrites} |`)
controller.kill("SIGTERM")
await api.stop()
process.exit(0)
