/**
 * Forwarding in its two parts, against a fake dispatcher (no sockets): how
 * one attempt's end is classified (Attempt.ts), and the retry loop that
 * decides from it (Retry.ts). The fake plays undici's dispatch handler calls
 * in the order undici makes them; the clock and timers are the test's own.
 */
import { assert, describe, it } from "@effect/vitest"
import type { Dispatcher } from "undici"
import { defaultUpstream } from "../src/router/core/Config.ts"
import { type AttemptHandler, classifyError, healthOf, maxDrainBytes, maxDrainMs, metricStatus, type Outcome, retryOf, sendAttempt } from "../src/router/upstream/Attempt.ts"
import { Balancer, type Endpoint, makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { type UpstreamFailure } from "../src/router/upstream/Failure.ts"
import { type ForwardHandler, type UpstreamResponse, withRetries } from "../src/router/upstream/Retry.ts"
import { parseTarget, type UpstreamTarget } from "../src/router/upstream/Targets.ts"

/** What one fake upstream does with a request it is sent. */
type Behaviour = (call: Call) => void

interface Call {
  readonly options: Dispatcher.DispatchOptions
  readonly handler: Dispatcher.DispatchHandler
  readonly controller: FakeController
  /** The request was written whole: the upstream counts it, undici tells the handler. */
  sent(): void
}

interface FakeController extends Dispatcher.DispatchController {
  abortedWith: Error | undefined
}

/** As undici's: aborting reports the error to the handler at once, unless the request already ended. */
const fakeController = (handler?: Dispatcher.DispatchHandler): FakeController => {
  const c = {
    aborted: false,
    paused: false,
    reason: null as Error | null,
    abortedWith: undefined as Error | undefined,
    abort(reason: Error) {
      if (c.aborted) return
      c.aborted = true
      c.abortedWith = reason
      handler?.onResponseError?.(c as unknown as FakeController, reason)
    },
    pause() {
      c.paused = true
    },
    resume() {
      c.paused = false
    }
  }
  return c as unknown as FakeController
}

/** A socket error as undici reports it; `unflushedBytes`: what of the request was still queued on the socket (the connector adds it). */
const socketError = (code: string, bytesRead: number | undefined, unflushedBytes?: number) =>
  Object.assign(new Error(code), { code, ...(bytesRead === undefined ? {} : { socket: { bytesRead } }), ...(unflushedBytes === undefined ? {} : { unflushedBytes }) })

const behaviours = {
  /** Connection refused: the request never left. */
  refused: (): Behaviour => ({ handler, controller }) => handler.onResponseError!(controller, socketError("ECONNREFUSED", undefined)),
  /** Answers `status` with `body`. */
  answer: (status: number, body = "{}", headers: Record<string, string> = { "content-type": "application/json" }): Behaviour => (call) => {
    call.handler.onRequestStart!(call.controller, {})
    call.sent()
    call.handler.onResponseStarted!()
    call.handler.onResponseStart!(call.controller, status, headers, "")
    if (call.controller.aborted) return
    call.handler.onResponseData!(call.controller, Buffer.from(body))
    call.handler.onResponseEnd!(call.controller, {})
  },
  /**
   * undici wrote the request, then the socket broke before any answer byte; `bytesRead`: what the socket
   * had read before (0: fresh); `unflushedBytes`: what of the request was still queued on the socket.
   */
  resetAfterWrite: (bytesRead: number, code = "UND_ERR_SOCKET", unflushedBytes = 0): Behaviour => (call) => {
    call.handler.onRequestStart!(call.controller, {})
    call.sent()
    call.handler.onResponseError!(call.controller, socketError(code, bytesRead, unflushedBytes))
  },
  /** The socket broke while the request was being written. */
  resetBeforeWrite: (): Behaviour => (call) => {
    call.handler.onRequestStart!(call.controller, {})
    call.handler.onResponseError!(call.controller, socketError("EPIPE", 0))
  }
}

const target = (name: string): UpstreamTarget => parseTarget(`http://${name}:8000`) as UpstreamTarget

/** A pool of fake upstreams, each with a queue of behaviours (the last repeats). */
const harness = (
  scripts: Record<string, Array<Behaviour>>,
  settings: Partial<typeof defaultUpstream> = {}
) => {
  let time = 0
  const timers: Array<{ at: number; fire: () => void; cancelled: boolean }> = []
  const received = new Map<string, number>()
  const dispatched: Array<{ upstream: string; headersTimeout: number | null | undefined; at: number }> = []
  const outcomes: Array<[string, Outcome]> = []
  const full = { ...defaultUpstream, healthIntervalMs: 0, ...settings }
  const balancer = new Balancer(full, () => 0)
  const endpoints = Object.keys(scripts).map((name) => makeEndpoint(target(name), name, name, 1, true))
  balancer.endpoints = endpoints
  const pending = new Map(Object.entries(scripts).map(([name, list]) => [name, [...list]]))
  const controllers: Array<FakeController> = []
  const dispatch = (endpoint: Endpoint, options: Dispatcher.DispatchOptions, handler: Dispatcher.DispatchHandler) => {
    dispatched.push({ upstream: endpoint.id, headersTimeout: options.headersTimeout, at: time })
    const queue = pending.get(endpoint.id)!
    const behaviour = queue.length > 1 ? queue.shift()! : queue[0]
    const controller = fakeController(handler)
    controllers.push(controller)
    behaviour({
      options,
      handler,
      controller,
      sent: () => {
        received.set(endpoint.id, (received.get(endpoint.id) ?? 0) + 1)
        handler.onRequestSent?.()
      }
    })
  }
  const forwarder = withRetries({
    pick: (tried) => balancer.pick(time, tried),
    start: (endpoint, request, handler) => sendAttempt(dispatch, endpoint, request, full, () => time, handler),
    observe: (endpoint, outcome) => {
      outcomes.push([endpoint.id, outcome])
      if (healthOf(outcome) === "unreachable") balancer.unreachable(endpoint, time)
    },
    retrying: () => {},
    now: () => time,
    setTimer: (ms, fire) => {
      const timer = { at: time + ms, fire, cancelled: false }
      timers.push(timer)
      return () => (timer.cancelled = true)
    }
  }, full)

  /** Forwards one request and collects what the caller hears. */
  const forward = (verify?: ForwardHandler["verify"]) => {
    const heard: { response?: UpstreamResponse; body: string; ended: boolean; failure?: UpstreamFailure } = { body: "", ended: false }
    const handler: ForwardHandler = {
      onResponse: (response) => (heard.response = response),
      onData: (chunk) => (heard.body += chunk.toString()),
      onEnd: () => (heard.ended = true),
      onError: (failure) => (heard.failure = failure),
      ...(verify === undefined ? {} : { verify })
    }
    const abort = forwarder.forwardUnsafe({ path: "/v1/completions", body: "{}", headers: {} }, handler)
    return { heard, abort }
  }
  const advance = (ms: number) => {
    time += ms
    for (const timer of timers) {
      if (!timer.cancelled && timer.at <= time) {
        timer.cancelled = true
        timer.fire()
      }
    }
  }
  return { forward, advance, received, dispatched, outcomes, endpoints, balancer, forwarder, controllers, now: () => time }
}

describe("classifying how an attempt ended", () => {
  it("tells what never reached the model from what may have", () => {
    const timeouts = { firstByteMs: 1000 }
    const sentFresh = { sent: true, answerStarted: false }
    assert.strictEqual(classifyError(socketError("ECONNREFUSED", undefined), { sent: false, answerStarted: false }, timeouts)._tag, "Unreached")
    assert.strictEqual(classifyError(socketError("UND_ERR_CONNECT_TIMEOUT", undefined), { sent: false, answerStarted: false }, timeouts)._tag, "Unreached")
    assert.strictEqual(classifyError(socketError("ENOTFOUND", undefined), { sent: false, answerStarted: false }, timeouts)._tag, "Unreached")
    // Broken while the request was being written: it never arrived whole.
    assert.strictEqual(classifyError(socketError("EPIPE", 0), { sent: false, answerStarted: false }, timeouts)._tag, "Unreached")
    // Handed to the socket but not all of it flushed when it broke (a write that met a closed idle connection).
    assert.strictEqual(classifyError(socketError("EPIPE", 4096, 300), sentFresh, timeouts)._tag, "Unreached")
    assert.strictEqual(classifyError(socketError("ECONNRESET", 4096, 1), sentFresh, timeouts)._tag, "Unreached")
    // Written whole on a reused keep-alive connection, broken before any answer byte: the bytes it read
    // before prove only that it served earlier answers; the server may have read this one and died.
    assert.strictEqual(classifyError(socketError("UND_ERR_SOCKET", 4096, 0), sentFresh, timeouts)._tag, "Unanswered")
    assert.strictEqual(classifyError(socketError("ECONNRESET", 4096), sentFresh, timeouts)._tag, "Unanswered")
    // Written whole on a fresh connection: the model may have it.
    assert.strictEqual(classifyError(socketError("ECONNRESET", 0), sentFresh, timeouts)._tag, "Unanswered")
    assert.strictEqual(classifyError(socketError("UND_ERR_SOCKET", 0), sentFresh, timeouts)._tag, "Unanswered")
    // Without the socket's count the router cannot tell: it assumes the model may have it.
    assert.strictEqual(classifyError(socketError("ECONNRESET", undefined), sentFresh, timeouts)._tag, "Unanswered")
    // A byte of the answer came: the model had it, whatever the connection.
    assert.strictEqual(classifyError(socketError("UND_ERR_SOCKET", 4096), { sent: true, answerStarted: true }, timeouts)._tag, "Unanswered")
    assert.deepStrictEqual(classifyError(socketError("UND_ERR_HEADERS_TIMEOUT", 0), sentFresh, timeouts), { _tag: "FirstByteTimeout", timeoutMs: 1000 })
  })

  it("derives metrics, health and retry from the one result", () => {
    const cases: Array<[Outcome, string, string, string]> = [
      [{ _tag: "Unreached", code: "ECONNREFUSED" }, "connect_error", "unreachable", "transparent"],
      [{ _tag: "Unanswered", code: "ECONNRESET" }, "error", "failure", "budgeted"],
      [{ _tag: "FirstByteTimeout", timeoutMs: 1 }, "timeout", "failure", "never"],
      [{ _tag: "Refused", status: 429, retryAfterSeconds: 1 }, "429", "success", "budgeted"],
      [{ _tag: "Refused", status: 503, retryAfterSeconds: undefined }, "503", "failure", "budgeted"],
      [{ _tag: "Malformed", status: 999, detail: "" }, "999", "failure", "never"],
      [{ _tag: "Completed", status: 200 }, "200", "success", "never"],
      [{ _tag: "Completed", status: 500 }, "500", "failure", "never"],
      [{ _tag: "Broken", code: "ECONNRESET" }, "broken", "failure", "never"],
      [{ _tag: "Idle", timeoutMs: 1 }, "idle_timeout", "failure", "never"],
      [{ _tag: "Rejected", code: "x", message: "" }, "rejected", "failure", "never"],
      [{ _tag: "Deadline", timeoutMs: 1 }, "deadline", "none", "never"]
    ]
    for (const [outcome, metric, health, retry] of cases) {
      assert.deepStrictEqual([metricStatus(outcome), healthOf(outcome), retryOf(outcome)], [metric, health, retry], outcome._tag)
    }
  })

  it("answers a status no client can act on as the upstream's fault, and aborts it", () => {
    for (const [status, headers] of [[999, {}], [301, {}], [302, { location: "http://10.0.0.9/x" }]] as const) {
      const ended: Array<Outcome> = []
      let controller = fakeController()
      const handler: AttemptHandler = {
        onRefusal: () => false,
        onResponse: () => assert.fail("relayed a malformed answer"),
        onData: () => {},
        onEnd: (outcome) => ended.push(outcome)
      }
      sendAttempt((_, __, h) => {
        controller = fakeController(h)
        h.onRequestStart!(controller, {})
        h.onResponseStart!(controller, status, headers, "")
      }, makeEndpoint(target("a"), "a", "a", 1, true), { method: "POST", path: "/", body: "", headers: {}, headersTimeoutMs: 1 }, { firstByteTimeoutMs: 1, idleTimeoutMs: 1 }, () => 0, handler)
      assert.strictEqual(ended.length, 1)
      assert.strictEqual(ended[0]._tag, "Malformed")
      assert.isTrue(controller.aborted)
    }
  })
})

describe("a dropped refusal's body", () => {
  /** A 429 whose body the caller drops: `headers` its answer's, then `chunks` of it. */
  const refusal = (headers: Record<string, string>, chunks: Array<number>, end: boolean) => {
    const timers: Array<{ ms: number; fire: () => void; cancelled: boolean }> = []
    let controller = fakeController()
    const ended: Array<Outcome> = []
    sendAttempt((_, __, h) => {
      controller = fakeController(h)
      h.onRequestStart!(controller, {})
      h.onRequestSent!()
      h.onResponseStart!(controller, 429, headers, "")
      for (const size of chunks) if (!controller.aborted) h.onResponseData!(controller, Buffer.alloc(size, 120))
      if (end && !controller.aborted) h.onResponseEnd!(controller, {})
    }, makeEndpoint(target("a"), "a", "a", 1, true), { method: "POST", path: "/", body: "", headers: {}, headersTimeoutMs: 1 }, { firstByteTimeoutMs: 1, idleTimeoutMs: 1 }, () => 0, {
      onRefusal: () => true,
      onResponse: () => assert.fail("relayed a dropped refusal"),
      onData: () => assert.fail("relayed a dropped refusal's body"),
      onEnd: (outcome) => ended.push(outcome)
    }, (ms, fire) => {
      const timer = { ms, fire, cancelled: false }
      timers.push(timer)
      return () => (timer.cancelled = true)
    })
    assert.deepStrictEqual(ended.map((o) => o._tag), ["Refused"])
    return { controller, timers }
  }

  it("is read to keep the connection while small and quick", () => {
    const { controller, timers } = refusal({ "content-length": "100" }, [100], true)
    assert.isFalse(controller.aborted)
    assert.isTrue(timers.every((t) => t.cancelled))
  })

  it("closes the connection for a body with no length, a long one, one that outgrows its bound, or one still coming after maxDrainMs", () => {
    assert.isTrue(refusal({}, [10], false).controller.aborted)
    assert.isTrue(refusal({ "content-length": String(maxDrainBytes + 1) }, [], false).controller.aborted)
    // A length that lies: the bytes read are counted too.
    assert.isTrue(refusal({ "content-length": "10" }, [1000, 1000, 1000, 1000, 1000], false).controller.aborted)
    const dripping = refusal({ "content-length": "4000" }, [1], false)
    assert.isFalse(dripping.controller.aborted)
    assert.deepStrictEqual(dripping.timers.map((t) => t.ms), [maxDrainMs])
    dripping.timers[0].fire()
    assert.isTrue(dripping.controller.aborted)
  })
})

describe("the retry loop", () => {
  // No retry budget at all: only what never reached a model server may be sent again.
  const noBudget = { retryBudgetMin: 0, retryBudgetPercent: 0 }

  it("retries what never reached an upstream elsewhere without spending the budget", () => {
    for (const first of [behaviours.refused(), behaviours.resetBeforeWrite(), behaviours.resetAfterWrite(8192, "EPIPE", 100), behaviours.resetAfterWrite(8192, "ECONNRESET", 1)]) {
      const h = harness({ a: [first], b: [behaviours.answer(200, "{\"ok\":true}")] }, noBudget)
      const { heard } = h.forward()
      assert.strictEqual(heard.response?.status, 200)
      assert.strictEqual(heard.response?.upstream, "b")
      assert.strictEqual(heard.body, "{\"ok\":true}")
      assert.isTrue(heard.ended)
      assert.strictEqual(h.received.get("b"), 1)
      assert.strictEqual(h.outcomes[0][1]._tag, "Unreached")
      assert.strictEqual(h.forwarder.inFlight().retries, 0)
    }
  })

  it("sends a request the upstream may have processed (reset after the whole request, fresh or reused connection) again once, outside the budget, never with UPSTREAM_RETRIES=0", () => {
    for (const bytesRead of [0, 8192]) {
      const strict = harness({ a: [behaviours.resetAfterWrite(bytesRead)], b: [behaviours.answer(200)] }, { retries: 0 })
      const refused = strict.forward().heard
      assert.strictEqual(refused.failure?.status, 502)
      assert.strictEqual(refused.failure?.code, "upstream_failed")
      assert.deepStrictEqual([strict.received.get("a"), strict.received.get("b")], [1, undefined])
      assert.deepStrictEqual(strict.dispatched.map((d) => d.upstream), ["a"])
      assert.strictEqual(strict.outcomes[0][1]._tag, "Unanswered")
    }
    // With no retry budget at all (it is for 429/503): once more, elsewhere, holding no place in the budget.
    const resent = harness({ a: [behaviours.resetAfterWrite(0)], b: [(call) => {
      assert.strictEqual(resent.forwarder.inFlight().retries, 0)
      behaviours.answer(200)(call)
    }] }, noBudget)
    const answered = resent.forward().heard
    assert.strictEqual(answered.response?.upstream, "b")
    assert.deepStrictEqual([resent.received.get("a"), resent.received.get("b")], [1, 1])
  })

  it("resends a request that may have been processed at most once, whatever UPSTREAM_RETRIES allows", () => {
    const h = harness({ a: [behaviours.resetAfterWrite(0)], b: [behaviours.resetAfterWrite(8192)], c: [behaviours.answer(200)] }, { retries: 5, retryBudgetMin: 10 })
    const heard = h.forward().heard
    assert.strictEqual(heard.failure?.code, "upstream_failed")
    assert.strictEqual(h.dispatched.length, 2)
    assert.isUndefined(h.received.get("c"))
  })

  it("answers the real failure, not 503 no_healthy_upstream, when every candidate was tried", () => {
    // One upstream that may have processed the request: the budget allows a retry, and none is left to pick.
    const alone = harness({ a: [behaviours.resetAfterWrite(0)] })
    const heard = alone.forward().heard
    assert.strictEqual(heard.failure?.status, 502)
    assert.strictEqual(heard.failure?.code, "upstream_failed")
    assert.isUndefined(heard.failure?.retryAfterSeconds)
    assert.strictEqual(alone.received.get("a"), 1)
    // Both tried, each may have processed it: the last one's failure.
    const both = harness({ a: [behaviours.resetAfterWrite(8192)], b: [behaviours.resetAfterWrite(0, "ECONNRESET")] })
    const failure = both.forward().heard.failure
    assert.strictEqual(failure?.code, "upstream_failed")
    assert.match(failure?.message ?? "", /ECONNRESET/)
    // Nothing reached any server: then "none is healthy" is what is true.
    const down = harness({ a: [behaviours.refused()] })
    assert.strictEqual(down.forward().heard.failure?.code, "no_healthy_upstream")
  })

  it("retries a refusal only within the budget, and never on an upstream it tried", () => {
    const limited = () => harness({ a: [behaviours.answer(429, "{}", { "retry-after": "2" })], b: [behaviours.answer(429, "{}", { "retry-after": "3" })] })
    const both = limited()
    const refused = both.forward().heard
    // Both refused: the client gets the refusal to act on, each upstream tried once.
    assert.strictEqual(refused.failure?.status, 429)
    assert.strictEqual(refused.failure?.retryAfterSeconds, 3)
    assert.deepStrictEqual(both.dispatched.map((d) => d.upstream), ["a", "b"])
    const strict = harness({ a: [behaviours.answer(429)], b: [behaviours.answer(200)] }, noBudget)
    const passed = strict.forward().heard
    assert.strictEqual(passed.response?.status, 429)
    assert.deepStrictEqual(strict.dispatched.map((d) => d.upstream), ["a"])
  })

  it("gives a retry what is left of the first-byte deadline, not a fresh one", () => {
    const timeout = 1000
    const h = harness({
      // A slow refusal: 700 ms, then 503.
      a: [(call) => {
        h.advance(700)
        behaviours.answer(503)(call)
      }],
      // Silent until undici's headers timeout (the option it was given) fires.
      b: [(call) => {
        call.handler.onRequestStart!(call.controller, {})
        call.sent()
        h.advance(Number(call.options.headersTimeout))
        call.handler.onResponseError!(call.controller, socketError("UND_ERR_HEADERS_TIMEOUT", 0))
      }]
    }, { firstByteTimeoutMs: timeout })
    const { heard } = h.forward()
    assert.strictEqual(heard.failure?.status, 504)
    assert.deepStrictEqual(h.dispatched.map((d) => [d.upstream, d.headersTimeout]), [["a", 1000], ["b", 300]])
    // The client waited one timeout in all, not two.
    assert.strictEqual(h.now(), timeout)
  })

  it("ends a silent attempt at the request's first-byte deadline itself (undici's headers timeout ticks every half second)", () => {
    const h = harness({
      a: [(call) => {
        h.advance(700)
        behaviours.answer(503)(call)
      }],
      b: [(call) => {
        call.handler.onRequestStart!(call.controller, {})
        call.sent()
      }]
    }, { firstByteTimeoutMs: 1000 })
    const { heard } = h.forward()
    const failure = () => heard.failure
    h.advance(299)
    assert.isUndefined(failure())
    h.advance(1)
    assert.deepStrictEqual([failure()?.status, failure()?.code], [504, "upstream_timeout"])
    assert.isTrue(h.controllers[1].aborted)
  })

  it("ends a request that outlives its total deadline, and aborts the upstream", () => {
    const h = harness({
      a: [(call) => {
        call.handler.onRequestStart!(call.controller, {})
        call.sent()
        call.handler.onResponseStart!(call.controller, 200, { "content-type": "text/event-stream" }, "")
        call.handler.onResponseData!(call.controller, Buffer.from("data: 1\n\n"))
      }]
    }, { requestTimeoutMs: 5000 })
    const { heard } = h.forward()
    assert.strictEqual(heard.body, "data: 1\n\n")
    const failure = () => heard.failure
    h.advance(4999)
    assert.isUndefined(failure())
    h.advance(1)
    assert.strictEqual(failure()?.status, 504)
    assert.include(failure()?.message, "UPSTREAM_REQUEST_TIMEOUT_MS")
    assert.isTrue(h.controllers[0].aborted)
    assert.strictEqual(h.endpoints[0].inFlight, 0)
  })

  it("a rejected answer stops the upstream, counts against it, and fails with the rejection's code", () => {
    const h = harness({ a: [(call) => {
      call.handler.onRequestStart!(call.controller, {})
      call.sent()
      call.handler.onResponseStart!(call.controller, 200, {}, "")
    }] })
    const { heard } = h.forward()
    heard.response!.reject("upstream_body_too_large", "too large (UPSTREAM_MAX_BODY_BYTES)")
    assert.deepStrictEqual([heard.failure?.status, heard.failure?.code], [502, "upstream_body_too_large"])
    assert.isTrue(h.controllers[0].aborted)
    assert.deepStrictEqual(h.outcomes.map(([, outcome]) => healthOf(outcome)), ["failure"])
  })

  it("a caller's abort stops the attempt and releases its counts, telling the caller nothing", () => {
    const h = harness({ a: [(call) => {
      call.handler.onRequestStart!(call.controller, {})
      call.sent()
    }] })
    const { heard, abort } = h.forward()
    assert.strictEqual(h.endpoints[0].inFlight, 1)
    abort()
    assert.isTrue(h.controllers[0].aborted)
    assert.strictEqual(h.endpoints[0].inFlight, 0)
    assert.deepStrictEqual(h.forwarder.inFlight(), { requests: 0, retries: 0 })
    assert.isUndefined(heard.failure)
    assert.deepStrictEqual(h.outcomes, [])
  })

  it("keeps a fast failure counted in flight for as long as a success takes, so the upstream never looks idle", () => {
    const h = harness({
      slow: [(call) => {
        h.advance(100)
        behaviours.answer(200)(call)
      }],
      failing: [behaviours.answer(500)]
    })
    // Ten successes of 100 ms teach the typical time (the failing one was tried where the draw fell).
    for (let i = 0; i < 10; i++) h.forward()
    h.balancer.endpoints = h.endpoints.filter((e) => e.id === "failing")
    const before = h.endpoints[1].inFlight
    h.forward()
    assert.strictEqual(h.endpoints[1].inFlight, before + 1, "held after a 500 in no time")
    h.advance(200)
    assert.strictEqual(h.endpoints[1].inFlight, before, "released after about a success's time")
  })

  it("an answer the caller finds unusable once whole (not JSON, cut mid-event) fails as the upstream's fault", () => {
    const h = harness({ a: [behaviours.answer(200, "<html>")] })
    const { heard } = h.forward(() => ({ code: "upstream_bad_answer", message: "not JSON" }))
    assert.isFalse(heard.ended)
    assert.deepStrictEqual([heard.failure?.status, heard.failure?.code], [502, "upstream_bad_answer"])
    assert.deepStrictEqual(h.outcomes.map(([, outcome]) => [outcome._tag, healthOf(outcome)]), [["Rejected", "failure"]])
  })
})
