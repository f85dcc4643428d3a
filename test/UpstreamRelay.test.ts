/**
 * The relay (upstream/Relay.ts) on its own: a fake pool hands it an
 * upstream's answer, a fake client response records what the client got.
 */
import { assert, describe, it } from "@effect/vitest"
import { retryAfterSeconds } from "../src/router/upstream/Attempt.ts"
import { UpstreamFailure } from "../src/router/upstream/Failure.ts"
import { type RelayCallbacks, relayUnsafe } from "../src/router/upstream/Relay.ts"
import type { ForwardHandler } from "../src/router/upstream/Retry.ts"
import type { Upstreams } from "../src/router/upstream/Upstreams.ts"

/** What the client got. */
const fakeResponse = () => {
  const got = { status: 0, headers: {} as Record<string, string | number>, body: "", ended: false }
  const response = {
    headersSent: false,
    destroyed: false,
    writeHead(status: number, headers: Record<string, string | number>) {
      got.status = status
      got.headers = headers
      response.headersSent = true
    },
    flushHeaders() {},
    write(chunk: Buffer | string) {
      got.body += chunk.toString()
      return true
    },
    end(chunk?: Buffer | string) {
      if (chunk !== undefined) got.body += chunk.toString()
      got.ended = true
    },
    once() {}
  }
  return { response, got }
}

/** A pool whose one forward plays `play` on the relay's handler. */
const fakePool = (play: (handler: ForwardHandler) => void) =>
  ({
    settings: undefined,
    forwardUnsafe: (_: unknown, handler: ForwardHandler) => {
      play(handler)
      return () => {}
    }
  }) as unknown as Upstreams["Service"]

const relay = (play: (handler: ForwardHandler) => void, callbacks: Partial<RelayCallbacks> = {}, stream = false) => {
  const { response, got } = fakeResponse()
  const heard = { done: [] as Array<UpstreamFailure | undefined>, logged: [] as Array<string>, failed: [] as Array<UpstreamFailure> }
  relayUnsafe(fakePool(play), { path: "/v1/completions", body: "{}", headers: {}, answerHeaders: () => ({ "x-request-id": "r" }), stream }, response, {
    onFirstByte: () => {},
    failBeforeHeaders: (failure) => {
      heard.failed.push(failure)
      response.writeHead(failure.status, {})
      response.end(failure.code)
    },
    endWithErrorFrame: (failure) => {
      heard.failed.push(failure)
      response.end(`error frame ${failure.code}`)
    },
    done: (failure) => heard.done.push(failure),
    log: (message) => heard.logged.push(message),
    onceDrained: (resume) => void (response.once as (event: string, listener: () => void) => void)("drain", resume),
    ...callbacks
  } as RelayCallbacks)
  return { got, heard }
}

const answer = (status: number, headers: Record<string, string | Array<string>>) => ({
  status,
  headers,
  upstream: "u:1",
  version: undefined,
  pause: () => {},
  resume: () => {},
  reject: () => {}
})

describe("Retry-After", () => {
  it("is capped at 60 s however large, or far, an upstream's is", () => {
    assert.strictEqual(retryAfterSeconds("99999999999999999999", 0), 60)
    assert.strictEqual(retryAfterSeconds(String(2 ** 53), 0), 60)
    assert.strictEqual(retryAfterSeconds("61", 0), 60)
    assert.strictEqual(retryAfterSeconds("7", 0), 7)
    assert.strictEqual(retryAfterSeconds("Fri, 31 Dec 9999 23:59:59 GMT", Date.parse("2026-01-01T00:00:00Z")), 60)
    assert.strictEqual(retryAfterSeconds("Thu, 01 Jan 2026 00:00:10 GMT", Date.parse("2026-01-01T00:00:00Z")), 10)
    assert.isUndefined(retryAfterSeconds("soon", 0))
  })

  it("reads only RFC 9110's forms: seconds, or an HTTP date in one of its three formats", () => {
    const now = Date.parse("1994-11-06T08:49:27Z")
    assert.strictEqual(retryAfterSeconds(" 2 ", now), 2)
    assert.strictEqual(retryAfterSeconds("Sun, 06 Nov 1994 08:49:37 GMT", now), 10)
    assert.strictEqual(retryAfterSeconds("Sunday, 06-Nov-94 08:49:37 GMT", now), 10)
    assert.strictEqual(retryAfterSeconds("Sun Nov  6 08:49:37 1994", now), 10)
    // A date passed: retry now.
    assert.strictEqual(retryAfterSeconds("Sun, 06 Nov 1994 08:49:17 GMT", now), 0)
    // What Date.parse alone reads as (past) dates: dropped, not 0.
    for (const unreadable of ["-5", "1.5", "+3", "2 s", "Tuesday 3", "1994-11-06T08:49:37Z", ""]) {
      assert.isUndefined(retryAfterSeconds(unreadable, now), unreadable)
    }
  })

  it("reaches the client capped when an upstream's answer is passed through", () => {
    const { got } = relay((handler) => {
      handler.onResponse(answer(429, { "content-type": "application/json", "retry-after": "99999999999999999999" }))
      handler.onData(Buffer.from("{}"))
      assert.isUndefined(handler.verify?.())
      handler.onEnd()
    })
    assert.strictEqual(got.status, 429)
    assert.strictEqual(got.headers["retry-after"], 60)
  })
})

describe("a callback that throws", () => {
  it("still answers the client (502) and logs it, instead of leaving it waiting", () => {
    const failure = new UpstreamFailure({ status: 429, code: "upstream_rate_limited", message: "no", retryAfterSeconds: 1 })
    const { got, heard } = relay((handler) => handler.onError(failure), {
      failBeforeHeaders: () => {
        throw new Error("Expected an integer, got 1e+20")
      }
    })
    assert.strictEqual(got.status, 502)
    assert.isTrue(got.ended)
    assert.strictEqual(JSON.parse(got.body).error.code, "upstream_relay_failed")
    assert.deepStrictEqual(heard.done, [failure])
    assert.strictEqual(heard.logged.length, 1)
    assert.include(heard.logged[0], "1e+20")
  })

  it("on a started stream: an error frame and [DONE]", () => {
    const failure = new UpstreamFailure({ status: 502, code: "upstream_broken", message: "cut", retryAfterSeconds: undefined })
    const { got, heard } = relay((handler) => {
      handler.onResponse(answer(200, { "content-type": "text/event-stream" }))
      handler.onData(Buffer.from("data: {\"a\":1}\n\n"))
      handler.onError(failure)
    }, {
      endWithErrorFrame: () => {
        throw new Error("boom")
      }
    }, true)
    assert.isTrue(got.ended)
    assert.match(got.body, /upstream_relay_failed[\s\S]*data: \[DONE\]\n\n$/)
    assert.strictEqual(heard.logged.length, 1)
  })
})

describe("answers that are not what was asked", () => {
  it("passes on a content-type sent twice as its first value, as Node's own client does", () => {
    const { got } = relay((handler) => {
      handler.onResponse(answer(200, { "content-type": ["application/json", "text/event-stream"] }))
      handler.onData(Buffer.from("{\"id\":\"x\"}"))
      assert.isUndefined(handler.verify?.())
      handler.onEnd()
    })
    assert.strictEqual(got.status, 200)
    assert.strictEqual(got.headers["content-type"], "application/json")
    assert.strictEqual(got.body, "{\"id\":\"x\"}")
  })

  it("refuses an event stream to a request that did not ask for one (upstream_bad_answer), and relays it to one that did", () => {
    const rejected: Array<string> = []
    const eventStream = { ...answer(200, { "content-type": "text/event-stream" }), reject: (code: string) => void rejected.push(code) }
    const { got } = relay((handler) => handler.onResponse(eventStream), {}, false)
    assert.deepStrictEqual(rejected, ["upstream_bad_answer"])
    assert.strictEqual(got.status, 0)
    const streamed = relay((handler) => handler.onResponse(eventStream), {}, true)
    assert.deepStrictEqual(rejected, ["upstream_bad_answer"])
    assert.strictEqual(streamed.got.status, 200)
  })

  it("counts a stream that ends between events without data: [DONE] as cut", () => {
    const ending = (events: string) => {
      let verdict: { code: string } | undefined
      relay((handler) => {
        handler.onResponse(answer(200, { "content-type": "text/event-stream" }))
        handler.onData(Buffer.from(events))
        verdict = handler.verify?.()
      }, {}, true)
      return verdict?.code
    }
    assert.strictEqual(ending("data: {\"a\":1}\n\n"), "upstream_broken")
    assert.strictEqual(ending("data: {\"a\":1}\n\ndata: [DONE]\n\n"), undefined)
    assert.strictEqual(ending("data: {\"a\":1}\r\n\r\ndata:[DONE]\r\n\r\n"), undefined)
    assert.strictEqual(ending("data: {\"a\":1}\n\ndata: [DONE]\n\ndata: {\"late\":1}\n\n"), "upstream_broken")
    // [DONE] inside another event's data is not the end.
    assert.strictEqual(ending("data: {\"text\":\"data: [DONE]\"}\n\n"), "upstream_broken")
  })
})
