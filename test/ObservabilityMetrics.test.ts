/**
 * The controller's metrics under controller-runtime's names, as the work
 * queue records them under TestClock: adds, retries, time in queue, reconcile
 * results and times; the leader gauge; InferenceService readiness series that
 * go with the InferenceService or the lease.
 */
import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Metric } from "effect"
import { exposition } from "./support/Exposition.ts"
import { TestClock } from "effect/testing"
import {
  forgetInferenceServiceReady,
  setInferenceServiceReady,
  setLeaderStatus
} from "../src/controller/Metrics.ts"
import { makeWorkQueue } from "../src/controller/WorkQueue.ts"

const settle = Effect.gen(function*() {
  for (let i = 0; i < 20; i++) yield* Effect.yieldNow
})


// Not KServe's "inferenceservice": a cluster running both tells the two controllers apart.
const queue = 'name="inferenceservice.inference-router.dev",controller="inferenceservice.inference-router.dev"'
const controller = 'controller="inferenceservice.inference-router.dev"'

/** Each test its own registry: the counts are this test's alone. */
const isolated = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.provideService(effect, Metric.MetricRegistry, new Map())

describe("controller-runtime metrics", () => {
  it.effect("the work queue counts adds, retries, time in queue and reconciles as controller-runtime does", () =>
    isolated(Effect.gen(function*() {
      let failuresLeft = 1
      const work = yield* makeWorkQueue({ parallelism: 1, backoffBase: "1 second", backoffMax: "1 second" }, (key) =>
        Effect.gen(function*() {
          yield* Effect.sleep(200)
          if (key === "a" && failuresLeft-- > 0) return yield* Effect.fail("conflict")
        }))
      let samples = yield* exposition
      // Every series controller-runtime exports, from the start: rate() and increase() see the first one.
      for (const result of ["success", "error", "requeue", "requeue_after"]) {
        assert.strictEqual(samples[`controller_runtime_reconcile_total{${controller},result="${result}"}`], 0, result)
      }
      for (const name of ["reconcile_errors", "terminal_reconcile_errors", "reconcile_panics", "reconcile_timeouts"]) {
        assert.strictEqual(samples[`controller_runtime_${name}_total{${controller}}`], 0, name)
      }
      work.add("a")
      work.add("b")
      work.add("b") // already waiting: not an add
      yield* settle
      samples = yield* exposition
      assert.strictEqual(samples[`workqueue_adds_total{${queue}}`], 2)
      assert.strictEqual(samples[`workqueue_depth{${queue}}`], 1, "b waits while a runs")
      assert.strictEqual(samples[`controller_runtime_active_workers{${controller}}`], 1)
      assert.strictEqual(samples[`controller_runtime_max_concurrent_reconciles{${controller}}`], 1)

      yield* TestClock.adjust(200) // a fails; b starts after 200 ms in the queue
      yield* settle
      yield* TestClock.adjust(200) // b succeeds
      yield* settle
      yield* TestClock.adjust(1000) // a's backoff: re-added, runs, succeeds
      yield* settle
      yield* TestClock.adjust(200)
      yield* settle
      samples = yield* exposition
      assert.strictEqual(samples[`controller_runtime_reconcile_total{${controller},result="success"}`], 2)
      assert.strictEqual(samples[`controller_runtime_reconcile_total{${controller},result="error"}`], 1)
      assert.strictEqual(samples[`controller_runtime_reconcile_errors_total{${controller}}`], 1)
      assert.strictEqual(samples[`workqueue_retries_total{${queue}}`], 1)
      assert.strictEqual(samples[`workqueue_adds_total{${queue}}`], 3)
      assert.strictEqual(samples[`controller_runtime_reconcile_time_seconds_count{${controller}}`], 3)
      assert.closeTo(samples[`controller_runtime_reconcile_time_seconds_sum{${controller}}`], 0.6, 1e-9)
      // controller-runtime's buckets: 0.2 s falls in le="0.2", not in le="0.15".
      assert.strictEqual(samples[`controller_runtime_reconcile_time_seconds_bucket{${controller},le="0.15"}`], 0)
      assert.strictEqual(samples[`controller_runtime_reconcile_time_seconds_bucket{${controller},le="0.2"}`], 3)
      // In the queue: a 0, b 0.2 s, a's retry 0 (added when its backoff ended, taken at once).
      assert.strictEqual(samples[`workqueue_queue_duration_seconds_count{${queue}}`], 3)
      assert.closeTo(samples[`workqueue_queue_duration_seconds_sum{${queue}}`], 0.2, 1e-9)
      assert.strictEqual(samples[`workqueue_work_duration_seconds_count{${queue}}`], 3)
      assert.strictEqual(samples[`workqueue_depth{${queue}}`], 0)
      assert.strictEqual(samples[`controller_runtime_active_workers{${controller}}`], 0)
    })))

  it.effect("reconciles in progress: unfinished work and the longest running, read at scrape; gone with the queue", () =>
    isolated(Effect.gen(function*() {
      const gate = yield* Deferred.make<void>()
      yield* Effect.scoped(Effect.gen(function*() {
        const work = yield* makeWorkQueue({ parallelism: 2, backoffBase: "1 second", backoffMax: "1 second" }, () => Deferred.await(gate))
        work.add("a")
        yield* settle
        yield* TestClock.adjust(3000)
        work.add("b")
        yield* settle
        yield* TestClock.adjust(1000)
        const samples = yield* exposition
        assert.strictEqual(samples[`workqueue_longest_running_processor_seconds{${queue}}`], 4)
        assert.strictEqual(samples[`workqueue_unfinished_work_seconds{${queue}}`], 4 + 1)
        assert.strictEqual(samples[`controller_runtime_active_workers{${controller}}`], 2)
      }))
      // The queue's scope closed (as when the replica stops leading), its reconciles interrupted.
      const samples = yield* exposition
      assert.notProperty(samples, `workqueue_longest_running_processor_seconds{${queue}}`)
      assert.notProperty(samples, `workqueue_unfinished_work_seconds{${queue}}`)
      assert.strictEqual(samples[`controller_runtime_active_workers{${controller}}`], 0)
      assert.strictEqual(samples[`workqueue_depth{${queue}}`], 0)
    })))

  it.effect("the leader gauge follows the lease; a replica that stops leading drops its readiness series and zeroes its queue", () =>
    isolated(Effect.gen(function*() {
      const context = yield* Effect.context<never>()
      const ready = (namespace: string, name: string, reason: string) =>
        `inference_router_inferenceservice_ready{inferenceservice_namespace="${namespace}",inferenceservice="${name}",reason="${reason}"}`
      setLeaderStatus("inference-router-controller", true, context)
      setInferenceServiceReady("default", "llama", { status: "True", reason: "Ready" }, context)
      setInferenceServiceReady("team-a", "mistral", { status: "False", reason: "RolloutInProgress" }, context)
      let samples = yield* exposition
      assert.strictEqual(samples['leader_election_master_status{name="inference-router-controller"}'], 1)
      assert.strictEqual(samples[ready("default", "llama", "Ready")], 1)
      assert.strictEqual(samples[ready("team-a", "mistral", "RolloutInProgress")], 0)

      // A new reason replaces the series: one per InferenceService.
      setInferenceServiceReady("team-a", "mistral", { status: "False", reason: "ImagePullFailed" }, context)
      samples = yield* exposition
      assert.notProperty(samples, ready("team-a", "mistral", "RolloutInProgress"))
      assert.strictEqual(samples[ready("team-a", "mistral", "ImagePullFailed")], 0)

      forgetInferenceServiceReady(context, "team-a/mistral") // deleted
      samples = yield* exposition
      assert.notProperty(samples, ready("team-a", "mistral", "ImagePullFailed"))
      assert.strictEqual(samples[ready("default", "llama", "Ready")], 1)

      setLeaderStatus("inference-router-controller", false, context)
      samples = yield* exposition
      assert.strictEqual(samples['leader_election_master_status{name="inference-router-controller"}'], 0)
      assert.notProperty(samples, ready("default", "llama", "Ready"))
      assert.strictEqual(samples[`workqueue_depth{${queue}}`], 0)
      assert.strictEqual(samples[`controller_runtime_active_workers{${controller}}`], 0)
    })))
})
