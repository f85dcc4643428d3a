/**
 * The controller's Prometheus metrics.
 */
import { Clock, type Context, Effect, Metric } from "effect"
import { labelled, metricContext, secondsHistogram } from "../shared/Metrics.ts"

export const reconcilesTotal = Metric.counter("inference_router_controller_reconciles_total", {
  description: "Reconciles by result: success, invalid (spec reported, children left as they were), error (retried with backoff)",
  incremental: true
})
export const reconcilesBy = labelled(reconcilesTotal, "result")

export const reconcileDuration = secondsHistogram(
  "inference_router_controller_reconcile_duration_seconds",
  "Time one reconcile took, in seconds"
)

export const watchRestartsTotal = Metric.counter("inference_router_controller_watch_restarts_total", {
  description: "Watches started again, by resource and reason (closed by the server, expired 410, silent, error)",
  incremental: true
})
export const watchRestartsBy = labelled(watchRestartsTotal, "resource", "reason")

export const apiWritesTotal = Metric.counter("inference_router_controller_api_writes_total", {
  description: "Writes to the API (applies, status, deletes, events), by kind",
  incremental: true
})
export const apiWritesBy = labelled(apiWritesTotal, "kind")

export const queueDepth = Metric.gauge("inference_router_controller_queue_depth", {
  description: "InferenceServices waiting to be reconciled"
})
export const isLeader = Metric.gauge("inference_router_controller_leader", {
  description: "1 while this replica holds the lease (or leader election is off)"
})

/*
 * The same facts under controller-runtime's names, labels and buckets
 * (sigs.k8s.io/controller-runtime pkg/internal/controller/metrics and
 * pkg/metrics), so dashboards and alerts written for Go controllers read
 * this one unchanged. The one controller is named as controller-runtime's
 * builder lets one be named (`Named`): its kind in lower case and its API
 * group, as KServe's controller (also kind InferenceService, named
 * "inferenceservice") is not, so a cluster running both tells them apart
 * whatever namespace or job either is scraped under.
 */
export const controllerName = "inferenceservice.inference-router.dev"

/** controller-runtime's reconcile_time_seconds buckets. */
const reconcileTimeBuckets = [
  0.005, 0.01, 0.025, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0,
  1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5, 6, 7, 8, 9, 10, 15, 20, 25, 30, 40, 50, 60
]
/** client-go's workqueue buckets: ExponentialBuckets(10e-9, 10, 12), 10 ns to 1000 s. */
const workqueueBuckets = Array.from({ length: 12 }, (_, i) => Number((1e-8 * 10 ** i).toPrecision(1)))

const forController = { controller: controllerName }
const forQueue = { name: controllerName, controller: controllerName }

export const controllerRuntime = {
  reconcileTotal: labelled(
    Metric.counter("controller_runtime_reconcile_total", {
      description: "Total number of reconciliations per controller",
      incremental: true,
      attributes: forController
    }),
    "result"
  ),
  reconcileErrors: Metric.counter("controller_runtime_reconcile_errors_total", {
    description: "Total number of reconciliation errors per controller",
    incremental: true,
    attributes: forController
  }),
  // controller-runtime's, exported at 0: this controller has no terminal errors
  // (every failure is retried), no panics (a defect fails the reconcile) and no reconcile timeout.
  terminalReconcileErrors: Metric.counter("controller_runtime_terminal_reconcile_errors_total", {
    description: "Total number of terminal reconciliation errors per controller",
    incremental: true,
    attributes: forController
  }),
  reconcilePanics: Metric.counter("controller_runtime_reconcile_panics_total", {
    description: "Total number of reconciliation panics per controller",
    incremental: true,
    attributes: forController
  }),
  reconcileTimeouts: Metric.counter("controller_runtime_reconcile_timeouts_total", {
    description: "Total number of reconciliation timeouts per controller",
    incremental: true,
    attributes: forController
  }),
  reconcileTime: Metric.histogram("controller_runtime_reconcile_time_seconds", {
    description: "Length of time per reconciliation per controller",
    boundaries: reconcileTimeBuckets,
    attributes: forController
  }),
  maxConcurrentReconciles: Metric.gauge("controller_runtime_max_concurrent_reconciles", {
    description: "Maximum number of concurrent reconciles per controller",
    attributes: forController
  }),
  activeWorkers: Metric.gauge("controller_runtime_active_workers", {
    description: "Number of currently used workers per controller",
    attributes: forController
  }),
  queueDepth: Metric.gauge("workqueue_depth", {
    description: "Current depth of workqueue",
    attributes: forQueue
  }),
  queueAdds: Metric.counter("workqueue_adds_total", {
    description: "Total number of adds handled by workqueue",
    incremental: true,
    attributes: forQueue
  }),
  queueDuration: Metric.histogram("workqueue_queue_duration_seconds", {
    description: "How long in seconds an item stays in workqueue before being requested",
    boundaries: workqueueBuckets,
    attributes: forQueue
  }),
  workDuration: Metric.histogram("workqueue_work_duration_seconds", {
    description: "How long in seconds processing an item from workqueue takes",
    boundaries: workqueueBuckets,
    attributes: forQueue
  }),
  unfinishedWork: Metric.gauge("workqueue_unfinished_work_seconds", {
    description: "How many seconds of work has been done that is in progress and hasn't been observed by work_duration. Large values indicate stuck threads. One can deduce the number of stuck threads by observing the rate at which this increases.",
    attributes: forQueue
  }),
  longestRunning: Metric.gauge("workqueue_longest_running_processor_seconds", {
    description: "How many seconds has the longest running processor for workqueue been running.",
    attributes: forQueue
  }),
  queueRetries: Metric.counter("workqueue_retries_total", {
    description: "Total number of retries handled by workqueue",
    incremental: true,
    attributes: forQueue
  }),
  leaderStatus: labelled(
    Metric.gauge("leader_election_master_status", {
      description: "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease. Please make sure to group by name."
    }),
    "name"
  )
}

/**
 * The work queue's hooks, for `makeWorkQueue`: each a synchronous call at the
 * point client-go's queue records the same thing. `depth` is the number of
 * keys waiting after the change. The reconciles in progress (unfinished work,
 * the longest running) are read when /metrics is; when the queue's scope
 * closes (this replica stops leading) nothing waits or runs any more.
 */
export const workQueueMetrics = (parallelism: number) =>
  Effect.gen(function*() {
    const context = metricContext(yield* Effect.context<never>())
    const clock = yield* Clock.Clock
    const addedAt = new Map<string, number>()
    const startedAt = new Map<string, number>()
    let active = 0
    const m = controllerRuntime
    m.maxConcurrentReconciles.updateUnsafe(parallelism, context)
    m.activeWorkers.updateUnsafe(0, context)
    m.queueDepth.updateUnsafe(0, context)
    // Exported from the start (as client-go's counters are), so rate() and absent() see a series.
    // Every result controller-runtime counts; this controller's reconciles end in success or error only.
    for (const result of ["success", "error", "requeue", "requeue_after"]) m.reconcileTotal(result).updateUnsafe(0, context)
    m.reconcileErrors.updateUnsafe(0, context)
    m.terminalReconcileErrors.updateUnsafe(0, context)
    m.reconcilePanics.updateUnsafe(0, context)
    m.reconcileTimeouts.updateUnsafe(0, context)
    m.queueAdds.updateUnsafe(0, context)
    m.queueRetries.updateUnsafe(0, context)
    const running = () => [...startedAt.values()].map((since) => (clock.currentTimeMillisUnsafe() - since) / 1000)
    const registrations = [
      Metric.registerUnsafe(m.unfinishedWork, context, { get: () => ({ value: running().reduce((a, b) => a + b, 0) }), update: () => {}, modify: () => {} }),
      Metric.registerUnsafe(m.longestRunning, context, { get: () => ({ value: Math.max(0, ...running()) }), update: () => {}, modify: () => {} })
    ]
    yield* Effect.addFinalizer(() =>
      Effect.sync(() => {
        for (const registration of registrations) registration.remove()
        addedAt.clear()
        startedAt.clear()
        m.queueDepth.updateUnsafe(0, context)
        m.activeWorkers.updateUnsafe(0, context)
      })
    )
    return {
      /** A key entered the queue (not one already waiting). */
      added: (key: string, depth: number) => {
        m.queueAdds.updateUnsafe(1, context)
        m.queueDepth.updateUnsafe(depth, context)
        if (!addedAt.has(key)) addedAt.set(key, clock.currentTimeMillisUnsafe())
      },
      /** A worker took the key. */
      started: (key: string, depth: number) => {
        const now = clock.currentTimeMillisUnsafe()
        const added = addedAt.get(key)
        addedAt.delete(key)
        if (added !== undefined) m.queueDuration.updateUnsafe((now - added) / 1000, context)
        startedAt.set(key, now)
        m.queueDepth.updateUnsafe(depth, context)
        m.activeWorkers.updateUnsafe(++active, context)
      },
      /** The reconcile of `key` ended; a failed one is retried after its backoff. */
      finished: (key: string, result: "success" | "error") => {
        const started = startedAt.get(key)
        startedAt.delete(key)
        if (started !== undefined) {
          const seconds = (clock.currentTimeMillisUnsafe() - started) / 1000
          m.reconcileTime.updateUnsafe(seconds, context)
          m.workDuration.updateUnsafe(seconds, context)
        }
        m.activeWorkers.updateUnsafe(--active, context)
        m.reconcileTotal(result).updateUnsafe(1, context)
        if (result === "error") {
          m.reconcileErrors.updateUnsafe(1, context)
          m.queueRetries.updateUnsafe(1, context)
        }
      }
    }
  })

/**
 * `leader_election_master_status{name=<lease>}`: 1 while leading, else 0. A
 * replica that stops leading drops its InferenceService readiness series
 * (below) and zeroes its queue gauges: the new leader's are the ones to read.
 */
export const setLeaderStatus = (lease: string, leading: boolean, context: Context.Context<never>) => {
  controllerRuntime.leaderStatus(lease).updateUnsafe(leading ? 1 : 0, context)
  if (leading) return
  forgetInferenceServiceReady(context)
  // Its queue stopped with its work: nothing waits or runs here any more.
  controllerRuntime.queueDepth.updateUnsafe(0, context)
  controllerRuntime.activeWorkers.updateUnsafe(0, context)
}

/**
 * `inference_router_inferenceservice_ready`: 1 while an InferenceService's
 * Ready condition is True, 0 otherwise, labelled by its namespace, name and
 * the condition's reason (why it is not Ready: `RolloutInProgress`,
 * `ImagePullFailed`, ... or `ScaledToZero`, which is not a fault); the series
 * goes when the InferenceService does, or when this replica stops leading
 * (the leader's figure is the one to read).
 */
const inferenceServiceReady = Metric.gauge("inference_router_inferenceservice_ready", {
  description: "1 while the InferenceService's Ready condition is True, else 0, with the condition's reason (exported by the leading replica)"
})
const readySeries = new Map<string, { readonly reason: string; readonly metric: Metric.Metric<number, any> }>()
export const setInferenceServiceReady = (
  namespace: string,
  name: string,
  ready: { readonly status: string; readonly reason: string } | undefined,
  context: Context.Context<never>
) => {
  const key = `${namespace}/${name}`
  const reason = ready?.reason ?? "Unknown"
  let series = readySeries.get(key)
  if (series?.reason !== reason) {
    // One series per InferenceService: the old reason's goes.
    if (series !== undefined) Metric.removeUnsafe(series.metric, context)
    series = {
      reason,
      metric: Metric.withAttributes(inferenceServiceReady, { inferenceservice_namespace: namespace, inferenceservice: name, reason })
    }
    readySeries.set(key, series)
  }
  series.metric.updateUnsafe(ready?.status === "True" ? 1 : 0, context)
}
/** Drops one InferenceService's series (`namespace/name`), or every one (no key). */
export const forgetInferenceServiceReady = (context: Context.Context<never>, key?: string) => {
  for (const [known, { metric }] of readySeries) {
    if (key !== undefined && known !== key) continue
    Metric.removeUnsafe(metric, context)
    readySeries.delete(known)
  }
}
