import { assert, describe, it } from "@effect/vitest"
import { Effect, Fiber, Redacted } from "effect"
import { TestClock } from "effect/testing"
import * as Net from "node:net"
import type { RouterSettings } from "../src/router/core/Config.ts"
import { Lifecycle } from "../src/router/core/Lifecycle.ts"
import type { Model } from "../src/router/simulated/Model.ts"
import {
  gatedModel,
  type LogLine,
  postInfer,
  request,
  serverPort,
  TestRouter,
  untilAccessLines,
  untilStats
} from "./support/TestRouter.ts"

const withRouter = (settings: Partial<RouterSettings> = {}, model?: Model["Service"], logs?: Array<LogLine>) =>
  Effect.provide(TestRouter(settings, model, logs === undefined ? {} : { logs }))

const uuid = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/

/** The value of one sample line of the Prometheus text, or undefined. */
const sample = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(series + " "))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

describe("graceful drain", () => {
  it.effect("drain flips readiness at once and returns after SHUTDOWN_DELAY_MS", () =>
    Effect.gen(function*() {
      const lifecycle = Lifecycle.make(5_000)
      assert.isFalse(lifecycle.isDraining())
      const draining = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
      assert.isTrue(lifecycle.isDraining())
      yield* TestClock.adjust(4_999)
      assert.isUndefined(draining.pollUnsafe(), "still in the delay at 4999 ms")
      yield* TestClock.adjust(1)
      yield* Fiber.join(draining)
      // A second signal does not restart the delay.
      const again = yield* Effect.forkChild(lifecycle.drain, { startImmediately: true })
      assert.isDefined(again.pollUnsafe())
    }))

  it.live("/readyz answers 503 draining while /infer is still served", () =>
    Effect.gen(function*() {
      const before = yield* request({ path: "/readyz", keepAlive: true })
      assert.strictEqual(before.status, 200)
      assert.strictEqual(before.headers["connection"], "keep-alive")
      yield* (yield* Lifecycle).drain
      const ready = yield* request({ path: "/readyz" })
      assert.strictEqual(ready.status, 503)
      assert.deepStrictEqual(ready.json, { status: "draining" })
      assert.strictEqual((yield* request({ path: "/healthz" })).status, 200, "still alive")
      const late = yield* request({
        method: "POST",
        path: "/infer",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ prompt: "late" }),
        keepAlive: true
      })
      assert.strictEqual(late.status, 200, "still serving")
      assert.strictEqual(late.headers["connection"], "close", "keep-alive clients are told to reconnect elsewhere")
    }).pipe(withRouter()))
})

describe("request ids", () => {
  it.live("echoes the caller's x-request-id on success, errors and probes", () =>
    Effect.gen(function*() {
      const headers = { "x-request-id": "trace-42" }
      assert.strictEqual((yield* postInfer({ prompt: "x" }, headers)).headers["x-request-id"], "trace-42")
      assert.strictEqual((yield* postInfer("{", headers)).headers["x-request-id"], "trace-42")
      assert.strictEqual((yield* request({ path: "/nope", headers })).headers["x-request-id"], "trace-42")
      assert.strictEqual((yield* request({ path: "/healthz", headers })).headers["x-request-id"], "trace-42")
    }).pipe(withRouter()))

  it.live("generates one when missing or unusable", () =>
    Effect.gen(function*() {
      const first = yield* postInfer({ prompt: "x" })
      const second = yield* postInfer({ prompt: "x" })
      assert.match(String(first.headers["x-request-id"]), uuid)
      assert.notStrictEqual(first.headers["x-request-id"], second.headers["x-request-id"])
      const tooLong = yield* postInfer({ prompt: "x" }, { "x-request-id": "a".repeat(500) })
      assert.match(String(tooLong.headers["x-request-id"]), uuid)
    }).pipe(withRouter()))
})

describe("access log", () => {
  it.live("one line per /infer with request id, status, queue and model time, and never the prompt", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      // Not an inference request: counted, not logged. Sent first, so a line for it would be written before the others.
      yield* request({ path: "/nope" })
      yield* postInfer({ prompt: "my secret diagnosis" }, { "x-request-id": "req-1" })
      yield* postInfer({ prompt: 7 }, { "x-request-id": "req-2" })
      yield* request({ path: "/healthz" })
      yield* request({ path: "/readyz" })
      const access = yield* untilAccessLines(logs, 2)
      assert.lengthOf(access, 2, JSON.stringify(logs))
      assert.deepInclude(access[0].annotations, { requestId: "req-1", method: "POST", path: "/infer", status: 200 })
      assert.isNumber(access[0].annotations.queueMs)
      assert.isNumber(access[0].annotations.modelMs)
      assert.isNumber(access[0].annotations.durationMs)
      assert.deepInclude(access[1].annotations, { requestId: "req-2", status: 400 })
      assert.strictEqual(access[0].level, "INFO")
      assert.match(String((access[0] as any).timestamp), /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/)
      assert.notInclude(JSON.stringify(logs), "secret diagnosis")
    }).pipe(withRouter({}, undefined, logs))
  })

  it.live("a request that waited in the queue reports the wait: Server-Timing, the access log and the histogram", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const { gate, model } = yield* gatedModel
      yield* Effect.gen(function*() {
        const first = yield* Effect.forkChild(postInfer({ prompt: "first" }, { "x-request-id": "first" }))
        yield* untilStats(1, 0)
        const queued = yield* Effect.forkChild(postInfer({ prompt: "queued" }, { "x-request-id": "queued" }))
        yield* untilStats(1, 1)
        // A lower bound on the wait, not a timing assertion: the gate opens only after it.
        yield* Effect.sleep("30 millis")
        yield* gate.open
        const [atOnce, waited] = yield* Fiber.joinAll([first, queued])
        const queueMs = (response: typeof atOnce) => Number(/^queue;dur=(\d+),/.exec(String(response.headers["server-timing"]))?.[1])
        assert.strictEqual(queueMs(atOnce), 0)
        assert.isAtLeast(queueMs(waited), 30)
        const access = yield* untilAccessLines(logs, 2)
        const line = access.find((l) => l.annotations.requestId === "queued")
        assert.isAtLeast(Number(line?.annotations.queueMs), 30, JSON.stringify(access))
        const text = (yield* request({ path: "/metrics" })).text
        assert.strictEqual(sample(text, "router_queue_wait_seconds_count"), 2)
        assert.isAtLeast(sample(text, "router_queue_wait_seconds_sum")!, 0.03)
      }).pipe(Effect.provide(TestRouter({ maxConcurrency: 1, maxQueue: 1 }, model, { logs })))
    })
  })

  it.live("lines are written in batches, not one write per request", () => {
    const logs: Array<LogLine> = []
    const writes: Array<string> = []
    return Effect.gen(function*() {
      const { gate, model } = yield* gatedModel
      yield* Effect.gen(function*() {
        // All 20 answered at once when the gate opens, well within one flush interval.
        const fibers = yield* Effect.forEach(Array.from({ length: 20 }, (_, i) => i), (i) =>
          Effect.forkChild(postInfer({ prompt: `p${i}` })))
        yield* untilStats(20, 0)
        yield* gate.open
        yield* Fiber.joinAll(fibers)
        const access = yield* untilAccessLines(logs, 20)
        assert.lengthOf(access, 20)
        assert.isBelow(writes.length, 20, "one write carries several lines")
      }).pipe(Effect.provide(TestRouter({ maxConcurrency: 20 }, model, { logs, accessLogWrites: writes })))
    })
  })

  it.live("lines still pending when the router stops are written, not lost", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      yield* Effect.gen(function*() {
        yield* postInfer({ prompt: "last" }, { "x-request-id": "req-last" })
      }).pipe(Effect.provide(TestRouter({}, undefined, { logs })))
      // The router's scope has closed: no flush timer has had to fire.
      assert.deepInclude(logs.find((line) => line.message === "request")?.annotations, { requestId: "req-last" })
    })
  })

  it.live("a request id with quotes and backslashes stays valid JSON; a shed request logs its reason", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const { gate, model } = yield* gatedModel
      return yield* Effect.gen(function*() {
        const held = yield* Effect.forkChild(postInfer({ prompt: "x" }, { "x-request-id": "held" }))
        yield* untilStats(1, 0)
        const shed = yield* postInfer({ prompt: "x" }, { "x-request-id": `r"e\\q` })
        assert.strictEqual(shed.status, 429)
        yield* gate.open
        yield* Fiber.join(held)
        const access = yield* untilAccessLines(logs, 2)
        const shedLine = access.find((line) => line.annotations.requestId === `r"e\\q`)
        assert.deepInclude(shedLine?.annotations, { status: 429, reason: "queue_full" }, JSON.stringify(access))
      }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 0 }, model, logs))
    })
  })
})

describe("bearer auth", () => {
  const keys = { apiKeys: [Redacted.make("key-old"), Redacted.make("key-new")] }

  it.live("accepts any configured key", () =>
    Effect.gen(function*() {
      for (const key of ["key-old", "key-new"]) {
        const response = yield* postInfer({ prompt: "x" }, { authorization: `Bearer ${key}` })
        assert.strictEqual(response.status, 200)
      }
    }).pipe(withRouter(keys)))

  it.live("missing or wrong token: 401 with WWW-Authenticate and the JSON error", () =>
    Effect.gen(function*() {
      const attempts: Array<Record<string, string>> = [
        {},
        { authorization: "Bearer key-older" },
        { authorization: "Basic a2V5LW9sZA==" }
      ]
      for (const headers of attempts) {
        const response = yield* postInfer({ prompt: "x" }, headers)
        assert.strictEqual(response.status, 401, JSON.stringify(headers))
        assert.match(String(response.headers["www-authenticate"]), /^Bearer /)
        assert.strictEqual(response.json.error.code, "unauthorized")
      }
    }).pipe(withRouter(keys)))

  it.live("probes, metrics and docs stay open", () =>
    Effect.gen(function*() {
      for (const path of ["/healthz", "/readyz", "/metrics", "/openapi.json"]) {
        assert.strictEqual((yield* request({ path })).status, 200, path)
      }
    }).pipe(withRouter(keys)))

  it.live("keys never appear in logs", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      yield* postInfer({ prompt: "x" }, { authorization: "Bearer key-new" })
      yield* postInfer({ prompt: "x" }, { authorization: "Bearer key-wrong" })
      assert.isNotEmpty(logs)
      assert.notInclude(JSON.stringify(logs), "key-")
    }).pipe(withRouter(keys, undefined, logs))
  })
})

describe("metrics", () => {
  it.live("counts traffic by endpoint and status, not probes or scrapes", () =>
    Effect.gen(function*() {
      yield* postInfer({ prompt: "a" })
      yield* postInfer({ prompt: "b" })
      yield* postInfer("{")
      yield* request({ path: "/nope" })
      yield* request({ path: "/healthz" })
      yield* request({ path: "/readyz" })
      yield* request({ path: "/metrics" })
      const scrape = yield* request({ path: "/metrics" })
      assert.strictEqual(scrape.status, 200)
      assert.match(String(scrape.headers["content-type"]), /^text\/plain; version=0\.0\.4/)
      const text = scrape.text
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="200"}`), 2)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="400"}`), 1)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="unmatched",status="404"}`), 1)
      assert.notInclude(text, `endpoint="/healthz"`)
      assert.notInclude(text, `endpoint="/readyz"`)
      assert.notInclude(text, `endpoint="/metrics"`)
      assert.strictEqual(sample(text, "router_request_duration_seconds_count"), 4)
      assert.strictEqual(sample(text, "router_queue_wait_seconds_count"), 2)
      assert.strictEqual(sample(text, "router_model_seconds_count"), 2)
      // In seconds: two model calls of SIM_LATENCY_MS=50, and four requests' whole time around them.
      assert.approximately(sample(text, "router_model_seconds_sum")!, 0.1, 0.01)
      assert.isAtLeast(sample(text, "router_request_duration_seconds_sum")!, 0.095)
      assert.isBelow(sample(text, "router_request_duration_seconds_sum")!, 5)
      assert.isBelow(sample(text, "router_queue_wait_seconds_sum")!, 1)
      assert.strictEqual(sample(text, "router_max_concurrency"), 3)
      assert.strictEqual(sample(text, "router_max_queue"), 7)
      for (const reason of ["queue_full", "queue_timeout", "shutting_down"]) {
        assert.strictEqual(sample(text, `router_shed_total{reason="${reason}"}`), 0)
      }
    }).pipe(withRouter({ maxConcurrency: 3, maxQueue: 7, simLatencyMs: 50 })))

  it.live("the same status on two endpoints is counted in each endpoint's own series", () =>
    Effect.gen(function*() {
      const completion = (body: string) =>
        request({ method: "POST", path: "/v1/completions", headers: { "content-type": "application/json" }, body })
      yield* postInfer({ prompt: "a" })
      yield* postInfer("{")
      assert.strictEqual((yield* completion(JSON.stringify({ model: "demo-model", prompt: "x", max_tokens: 1 }))).status, 200)
      assert.strictEqual((yield* completion("{")).status, 400)
      yield* completion("{")
      yield* request({ path: "/nope" })
      const text = (yield* request({ path: "/metrics" })).text
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="200"}`), 1)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="400"}`), 1)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/v1/completions",status="200"}`), 1)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/v1/completions",status="400"}`), 2)
      assert.strictEqual(sample(text, `router_requests_total{endpoint="unmatched",status="404"}`), 1)
    }).pipe(withRouter({ modelRef: "demo-model" })))

  it.live("gauges report the requests in the model and waiting now, also under vLLM's names", () =>
    Effect.gen(function*() {
      const { gate, model } = yield* gatedModel
      yield* Effect.gen(function*() {
        const fibers = yield* Effect.forEach([1, 2, 3], (i) => Effect.forkChild(postInfer({ prompt: `p${i}` })))
        yield* untilStats(1, 2)
        const shed = yield* postInfer({ prompt: "over" })
        assert.strictEqual(shed.status, 429)
        const text = (yield* request({ path: "/metrics" })).text
        assert.strictEqual(sample(text, "router_requests_running"), 1)
        assert.strictEqual(sample(text, "router_requests_waiting"), 2)
        assert.strictEqual(sample(text, `vllm:num_requests_running{model_name="test-model"}`), 1)
        assert.strictEqual(sample(text, `vllm:num_requests_waiting{model_name="test-model"}`), 2)
        assert.strictEqual(sample(text, `router_shed_total{reason="queue_full"}`), 1)
        yield* gate.open
        yield* Fiber.joinAll(fibers)
        const after = (yield* request({ path: "/metrics" })).text
        assert.strictEqual(sample(after, "router_requests_running"), 0)
        assert.strictEqual(sample(after, "router_requests_waiting"), 0)
      }).pipe(withRouter({ maxConcurrency: 1, maxQueue: 2 }, model))
    }))
})

describe("OpenAPI and docs", () => {
  it.live("/openapi.json documents /infer with its errors and the bearer scheme", () =>
    Effect.gen(function*() {
      const response = yield* request({ path: "/openapi.json" })
      assert.strictEqual(response.status, 200)
      const spec = response.json
      assert.strictEqual(spec.openapi.slice(0, 2), "3.")
      const infer = spec.paths["/infer"].post
      for (const status of ["200", "400", "401", "413", "415", "429", "503"]) {
        assert.property(infer.responses, status)
      }
      assert.property(spec.paths, "/healthz")
      assert.property(spec.paths, "/readyz")
      assert.isDefined(spec.components.securitySchemes?.bearer)
    }).pipe(withRouter()))

  it.live("/docs renders without fetching anything from the internet", () =>
    Effect.gen(function*() {
      const response = yield* request({ path: "/docs" })
      assert.strictEqual(response.status, 200)
      assert.match(String(response.headers["content-type"]), /^text\/html/)
      assert.notMatch(response.text, /<script[^>]+src=["']https?:/)
      assert.notMatch(response.text, /<link[^>]+href=["']https?:/)
    }).pipe(withRouter()))
})

describe("slow clients", () => {
  it.live("a client that never finishes its headers is cut off", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      const closed = yield* Effect.promise(() =>
        new Promise<{ readonly data: string; readonly ms: number }>((resolve) => {
          const startedAt = Date.now()
          const socket = Net.connect(port, "127.0.0.1", () => socket.write("POST /infer HTTP/1.1\r\nHost: x\r\n"))
          let data = ""
          socket.on("data", (chunk) => (data += chunk))
          socket.on("error", () => {})
          socket.on("close", () => resolve({ data, ms: Date.now() - startedAt }))
        })
      )
      assert.match(closed.data, /^HTTP\/1\.1 408/)
      // Cut off by the headers timeout, not at once (Node checks on its cached clock, so allow slack).
      assert.isAtLeast(closed.ms, 100)
    }).pipe(withRouter({ headersTimeoutMs: 200, requestTimeoutMs: 400 })))
})
