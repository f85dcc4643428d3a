/**
 * The defects a hostile afternoon found (issue "Every answer true"), one
 * class per block, each asserted on a real socket.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { connect } from "node:net"
import { gunzipSync, brotliDecompressSync } from "node:zlib"
import { kvEndpoint, type RouterSettings } from "../src/router/core/Config.ts"
import { docsScriptPath } from "../src/router/app/DocsRoute.ts"
import {
  exchange,
  type LogLine,
  parseRaw,
  postInfer,
  request,
  serverPort,
  TestRouter,
  untilAccessLines
} from "./support/TestRouter.ts"

const withRouter = (settings: Partial<RouterSettings> = {}, logs?: Array<LogLine>) =>
  Effect.provide(TestRouter(settings, undefined, logs === undefined ? {} : { logs }))

const sample = (text: string, series: string): number | undefined => {
  const line = text.split("\n").find((l) => l.startsWith(series + " "))
  return line === undefined ? undefined : Number(line.slice(series.length + 1))
}

const metrics = Effect.map(request({ path: "/metrics" }), (response) => response.text)

/** Every answer in the contract's envelope, with a request id. */
const assertEnvelope = (response: { status: number; headers: Record<string, unknown>; json: any }, status: number, code: string) => {
  assert.strictEqual(response.status, status)
  assert.match(String(response.headers["content-type"]), /^application\/json/)
  assert.strictEqual(response.json?.error?.code, code, JSON.stringify(response.json))
  assert.isAbove(String(response.json.error.message).length, 10)
  assert.match(String(response.headers["x-request-id"]), /^\S{1,128}$/)
}

describe("secrets never leave the process", () => {
  it.live("KV_ENDPOINTS credentials are masked in /infer answers and start-up logs", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const response = yield* postInfer({ prompt: "x" })
      assert.deepStrictEqual(response.json.kvEndpoints, ["redis://***@kv-0:6379", "kv-1:1"])
      assert.notInclude(response.text, "s3cret")
      const logged = JSON.stringify(logs)
      assert.include(logged, "redis://***@kv-0:6379")
      assert.notInclude(logged, "s3cret")
    }).pipe(withRouter({ kvEndpoints: ["redis://admin:s3cret@kv-0:6379", "kv-1:1"].map(kvEndpoint) }, logs))
  })
})

describe("slow clients are booked as what they got", () => {
  it.live("a body cut by REQUEST_TIMEOUT_MS is a 408 in the envelope, counted and logged as 408, not 499", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const raw = yield* exchange(
        "POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\":",
        5_000
      )
      const answer = parseRaw(raw)
      assertEnvelope(answer, 408, "request_timeout")
      const text = yield* metrics
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="408"}`), 1)
      assert.isUndefined(sample(text, `router_requests_total{endpoint="/infer",status="499"}`))
      const lines = yield* untilAccessLines(logs, 1)
      assert.strictEqual(lines[0].annotations.status, 408)
    }).pipe(withRouter({ headersTimeoutMs: 200, requestTimeoutMs: 300 }, logs))
  })
})

describe("hang-ups are booked as hang-ups", () => {
  it.live("a client that hangs up in the middle of its body gets nothing, and is counted and logged as 499, not 400", () => {
    const logs: Array<LogLine> = []
    return Effect.gen(function*() {
      const port = yield* serverPort
      // `Expect: 100-continue`: the router says when it reads the body, so the hang-up comes while it does.
      yield* Effect.callback<void>((resume) => {
        const socket = connect(port, "127.0.0.1", () => {
          socket.write("POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50\r\nExpect: 100-continue\r\n\r\n")
        })
        socket.once("data", (chunk) => {
          assert.match(chunk.toString("latin1"), /^HTTP\/1\.1 100 Continue/)
          socket.write("{\"prom")
          socket.destroy()
          resume(Effect.void)
        })
      })
      const lines = yield* untilAccessLines(logs, 1)
      assert.strictEqual(lines[0].annotations.status, 499)
      const text = yield* metrics
      assert.strictEqual(sample(text, `router_requests_total{endpoint="/infer",status="499"}`), 1)
      assert.isUndefined(sample(text, `router_requests_total{endpoint="/infer",status="400"}`))
    }).pipe(withRouter({}, logs))
  })
})

describe("a compressed body is refused, not read as text", () => {
  it.live("Content-Encoding other than identity is a 415 naming it, on /infer and /v1/*; identity is read", () =>
    Effect.gen(function*() {
      const gzip = yield* postInfer("{\"prompt\":\"x\"}", { "content-encoding": "gzip" })
      assertEnvelope(gzip, 415, "unsupported_content_encoding")
      assert.include(gzip.json.error.message, `"gzip"`)
      const chat = yield* request({
        method: "POST",
        path: "/v1/completions",
        headers: { "content-type": "application/json", "content-encoding": "br" },
        body: JSON.stringify({ model: "test-model", prompt: "x" })
      })
      assert.strictEqual(chat.status, 415)
      assert.strictEqual(chat.json.error.code, "unsupported_content_encoding")
      assert.strictEqual((yield* postInfer({ prompt: "x" }, { "content-encoding": "identity" })).status, 200)
    }).pipe(withRouter()))
})

describe("a request line that is no HTTP/1.x is refused", () => {
  it.live("HTTP/2.0 and HTTP/0.9's bare form get a 505 in the envelope; HTTP/1.0 is served", () =>
    Effect.gen(function*() {
      const two = parseRaw(yield* exchange("POST /infer HTTP/2.0\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 14\r\n\r\n{\"prompt\":\"x\"}"))
      assertEnvelope(two, 505, "http_version_not_supported")
      assert.include(two.json.error.message, "HTTP/2.0")
      assert.strictEqual(two.headers["connection"], "close")
      assertEnvelope(parseRaw(yield* exchange("GET /healthz\r\n\r\n")), 505, "http_version_not_supported")
      assert.strictEqual(parseRaw(yield* exchange("GET /healthz HTTP/1.0\r\n\r\n")).status, 200)
    }).pipe(withRouter()))
})

describe("a tunnel request is answered", () => {
  it.live("CONNECT gets a 405 in the envelope (the router is no proxy), counted, not a silent close", () =>
    Effect.gen(function*() {
      const answer = parseRaw(yield* exchange("CONNECT /v1/completions HTTP/1.1\r\nHost: x\r\nx-request-id: tunnel-1\r\n\r\n"))
      assertEnvelope(answer, 405, "method_not_allowed")
      assert.strictEqual(answer.headers["x-request-id"], "tunnel-1")
      assert.strictEqual(answer.headers["connection"], "close")
      // RFC 9110: a 405 lists what the target allows.
      assert.strictEqual(answer.headers["allow"], "POST")
      assert.strictEqual(sample(yield* metrics, `router_requests_total{endpoint="unmatched",status="405"}`), 1)
    }).pipe(withRouter()))

  it.live("a CONNECT whose client resets before the answer is written costs the router nothing", () =>
    Effect.gen(function*() {
      const port = yield* serverPort
      for (let i = 0; i < 20; i++) {
        yield* Effect.callback<void>((resume) => {
          const socket = connect(port, "127.0.0.1", () => {
            socket.write("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            socket.resetAndDestroy()
            resume(Effect.void)
          })
        })
      }
      // The router took every reset: it still answers (an unheard socket error would have ended it).
      assert.strictEqual((yield* request({ path: "/healthz" })).status, 200)
      assert.strictEqual((yield* postInfer({ prompt: "x" })).status, 200)
    }).pipe(withRouter()))
})

describe("numbers are decimal digits", () => {
  it.live("x-queue-timeout-ms: empty, blank, hex, exponent, binary and signed values are 400", () =>
    Effect.gen(function*() {
      for (const value of ["", "  ", "0x10", "1e2", "0b11", "+7", "0o7", "1_0"]) {
        const raw = yield* exchange(
          `POST /infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nx-queue-timeout-ms: ${value}\r\nContent-Length: 14\r\nConnection: close\r\n\r\n{"prompt":"x"}`
        )
        const answer = parseRaw(raw)
        assertEnvelope(answer, 400, "invalid_header")
        assert.include(answer.json.error.message, "x-queue-timeout-ms")
      }
      // Digits with blanks around them are still a number.
      assert.strictEqual((yield* postInfer({ prompt: "x" }, { "x-queue-timeout-ms": " 50 " })).status, 200)
    }).pipe(withRouter()))
})

describe("one rule for every route", () => {
  it.live("the absolute form is routed by its path", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ prompt: "abs" })
      const raw = yield* exchange(
        `POST http://router.example/infer?x=1 HTTP/1.1\r\nHost: router.example\r\nContent-Type: application/json\r\nContent-Length: ${body.length}\r\nConnection: close\r\n\r\n${body}`
      )
      const answer = parseRaw(raw)
      assert.strictEqual(answer.status, 200, raw)
      assert.strictEqual(answer.json.prompt, "abs")
      const health = parseRaw(yield* exchange("GET http://router.example/healthz HTTP/1.1\r\nHost: router.example\r\nConnection: close\r\n\r\n"))
      assert.strictEqual(health.status, 200)
    }).pipe(withRouter()))

  it.live("HEAD is answered on every GET route, Node-level ones included, without a body", () =>
    Effect.gen(function*() {
      for (const path of ["/healthz", "/metrics", "/v1/models"]) {
        const response = yield* request({ method: "HEAD", path })
        assert.strictEqual(response.status, 200, path)
        assert.strictEqual(response.text, "", path)
      }
    }).pipe(withRouter()))

  it.live("doubled and trailing slashes are unknown on every route, and counted as unmatched", () =>
    Effect.gen(function*() {
      const paths = ["//healthz", "/metrics/", "/docs/", "//infer", "/infer/", "/readyz/"]
      for (const path of paths) {
        const response = path.includes("infer")
          ? yield* request({ method: "POST", path, headers: { "content-type": "application/json" }, body: "{}" })
          : yield* request({ path })
        assertEnvelope(response, 404, "not_found")
      }
      const text = yield* metrics
      assert.strictEqual(sample(text, `router_requests_total{endpoint="unmatched",status="404"}`), paths.length)
      assert.notInclude(text, `status="200"`)
    }).pipe(withRouter()))
})

describe("errors Node detects are answered in the envelope", () => {
  const cases: ReadonlyArray<readonly [string, string, number, string]> = [
    ["a bad request line", "GARBAGE\r\n\r\n", 400, "bad_request"],
    ["a missing Host", "GET /healthz HTTP/1.1\r\n\r\n", 400, "missing_host"],
    [
      "conflicting lengths",
      "POST /infer HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
      400,
      "bad_request"
    ],
    ["oversized headers", `GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ${"a".repeat(20_000)}\r\n\r\n`, 431, "headers_too_large"],
    ["an unknown Expect", "POST /infer HTTP/1.1\r\nHost: x\r\nExpect: 200-ok\r\nContent-Length: 2\r\n\r\n{}", 417, "expectation_failed"]
  ]
  for (const [what, text, status, code] of cases) {
    it.live(`${what}: ${status} ${code}`, () =>
      Effect.gen(function*() {
        const answer = parseRaw(yield* exchange(text))
        assertEnvelope(answer, status, code)
      }).pipe(withRouter()))
  }

  it.live("they are counted as unmatched traffic", () =>
    Effect.gen(function*() {
      yield* exchange("GARBAGE\r\n\r\n")
      const text = yield* metrics
      assert.strictEqual(sample(text, `router_requests_total{endpoint="unmatched",status="400"}`), 1)
    }).pipe(withRouter()))
})

describe("bodies are UTF-8", () => {
  it.live("invalid UTF-8 in a prompt is 400 invalid_encoding, not silently replaced", () =>
    Effect.gen(function*() {
      const body = Buffer.concat([Buffer.from(`{"prompt":"caf`), Buffer.from([0xc3, 0x28]), Buffer.from(`"}`)])
      const response = yield* request({ method: "POST", path: "/infer", headers: { "content-type": "application/json" }, body })
      assertEnvelope(response, 400, "invalid_encoding")
      assert.include(response.json.error.message, "UTF-8")
    }).pipe(withRouter()))

  it.live("a body starting with a byte-order mark is accepted", () =>
    Effect.gen(function*() {
      const body = Buffer.concat([Buffer.from([0xef, 0xbb, 0xbf]), Buffer.from(JSON.stringify({ prompt: "café" }))])
      const response = yield* request({ method: "POST", path: "/infer", headers: { "content-type": "application/json" }, body })
      assert.strictEqual(response.status, 200)
      assert.strictEqual(response.json.prompt, "café")
    }).pipe(withRouter()))
})

describe("/docs is cheap to read", () => {
  it.live("the page is small and loads the script from an immutable, compressed asset; ETags give 304", () =>
    Effect.gen(function*() {
      const page = yield* request({ path: "/docs", headers: { "accept-encoding": "identity" } })
      assert.strictEqual(page.status, 200)
      assert.isBelow(page.text.length, 64 * 1024)
      assert.include(page.text, `<script src="${docsScriptPath}"></script>`)
      assert.strictEqual(page.headers["cache-control"], "no-cache")
      const etag = String(page.headers.etag)
      assert.match(etag, /^".+"$/)
      const again = yield* request({ path: "/docs", headers: { "if-none-match": etag } })
      assert.strictEqual(again.status, 304)
      assert.strictEqual(again.text, "")

      const gzip = yield* request({ path: docsScriptPath, headers: { "accept-encoding": "gzip" } })
      const brotli = yield* request({ path: docsScriptPath, headers: { "accept-encoding": "gzip, deflate, br" } })
      assert.strictEqual(gzip.headers["content-encoding"], "gzip")
      assert.strictEqual(brotli.headers["content-encoding"], "br")
      assert.strictEqual(gzip.headers["cache-control"], "public, max-age=31536000, immutable")
      assert.include(String(gzip.headers.vary), "accept-encoding")
      const script = gunzipSync(gzip.bytes).toString("utf8")
      assert.isAbove(script.length, 1_000_000)
      assert.isBelow(gzip.bytes.length, script.length / 2)
      assert.strictEqual(brotliDecompressSync(brotli.bytes).toString("utf8"), script)
    }).pipe(withRouter()))
})


describe("the docs page split", () => {
  it("keeps Effect's page whole when its shape is not the expected one", async () => {
    const { splitPage } = await import("../src/router/app/DocsRoute.ts")
    assert.deepStrictEqual(splitPage("<html>no container</html>"), { page: "<html>no container</html>", script: undefined })
    const split = splitPage(`<div id="api-reference-container"></div><script>JS</script><script>boot()</script>`)
    assert.strictEqual(split.script, "JS")
    assert.notInclude(split.page, "JS")
    assert.include(split.page, "<script>boot()</script>")
  })
})
