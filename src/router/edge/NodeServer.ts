/**
 * The router's Node HTTP server, as Effect's `HttpServer` service: it listens,
 * dispatches every request by the one route rule (`app/Routes.ts`), and stops
 * gracefully.
 *
 * Why not `NodeHttpServer.layer`: that server adds its own `request` listener,
 * and `/infer` and `/v1/*` must be served ahead of Effect's router (see
 * docs/architecture.md for the measurements). Node has one listener per event
 * here, the dispatcher:
 * - `/infer` and `/v1/*` go to their Node handlers (NodeRoutes, on the request
 *   pipeline);
 * - other known routes to Effect's HTTP app, through the public
 *   `NodeHttpServer.makeHandler`;
 * - unknown paths and wrong methods are answered 404/405 here (OpenAI's error
 *   shape under `/v1/`), so the route rule, the metric label and the log line
 *   agree.
 * It also answers in the contract's envelope what Node would otherwise answer
 * bare: parse errors, request timeouts and oversized headers (`clientError`),
 * an unknown `Expect` (`checkExpectation`), and a missing Host (checked here,
 * with Node's own check turned off because it writes a bare 400).
 */
import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Data, Duration, Effect, Layer, Scope } from "effect"
import { HttpServer } from "effect/http"
import { NetAddress } from "effect/net"
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import { createServer as createNetServer, type AddressInfo, type ListenOptions, type Server as NetServer, type Socket } from "node:net"
import type { Duplex } from "node:stream"
import { errorTypeOf, openAiError, openAiErrorBody } from "../../api/OpenAiApi.ts"
import { requestIdHeader } from "../../api/Headers.ts"
import { RouterConfig, type RouterSettings } from "../core/Config.ts"
import { rawErrorResponse, writeJson } from "./ContractErrors.ts"
import { NodeRoutes } from "./NodeRoutes.ts"
import { RequestObserver, requestIdFor } from "./RequestObserver.ts"
import { answerHeaders } from "../core/ResponseHeaders.ts"
import { addOutcome } from "../core/RequestOutcome.ts"
import { routePath, type RouteTable } from "../app/Routes.ts"
import { Lifecycle } from "../core/Lifecycle.ts"

/** Listening failed: the one line says why, and which setting to change. */
export class ListenError extends Data.TaggedError("ListenError")<{
  readonly code: string | undefined
  readonly host: string | undefined
  readonly port: number
  readonly detail: string
}> {
  override get message() {
    const where = `${this.host ?? "all interfaces"} port ${this.port}`
    switch (this.code) {
      case "EADDRINUSE":
        return `cannot listen on ${where}: the address is already in use (set PORT to a free port)`
      case "EACCES":
        return `cannot listen on ${where}: permission denied (ports below 1024 need privileges; set PORT)`
      case "EMFILE":
      case "ENFILE":
        return `cannot listen on ${where}: too many open files (lower LISTEN_SOCKETS, or raise the open-files limit)`
      case "EADDRNOTAVAIL":
        return `cannot listen on ${where}: HOST=${JSON.stringify(this.host)} is not an address of this machine`
      case "ENOTFOUND":
      case "EAI_AGAIN":
      case "EAI_FAIL":
        return `cannot listen on ${where}: HOST=${JSON.stringify(this.host)} does not resolve (${this.code})`
      default:
        return `cannot listen on ${where}: ${this.detail}`
    }
  }
}

/** Node's parse and timeout errors, as the status and code the client gets. */
const clientErrors: Record<string, readonly [number, string, string]> = {
  ERR_HTTP_REQUEST_TIMEOUT: [408, "request_timeout", "the request did not arrive in time (HEADERS_TIMEOUT_MS / REQUEST_TIMEOUT_MS)"],
  HPE_HEADER_OVERFLOW: [431, "headers_too_large", "the request headers are too large"],
  HPE_CHUNK_EXTENSIONS_OVERFLOW: [413, "payload_too_large", "the chunk extensions are too large"]
}
const badRequest = [400, "bad_request", "the request is not valid HTTP/1.1"] as const

/** The OpenAI-compatible API's paths: their errors are OpenAI's. */
const isOpenAiPath = (path: string) => path === "/v1" || path.startsWith("/v1/")

/** An error the server answers itself, in the request's dialect: under /v1/ OpenAI clients parse OpenAI's shape (all four fields). */
const errorBody = (request: IncomingMessage | undefined, status: number, code: string, message: string): unknown =>
  request !== undefined && isOpenAiPath(routePath(request.url ?? "/"))
    ? openAiErrorBody(openAiError(status, errorTypeOf(status), code, message))
    : { error: { code, message } }

interface ServeOptions {
  readonly config: RouterSettings
  readonly routes: RouteTable
  readonly observer: RequestObserver["Service"]
  readonly nodeRoutes: NodeRoutes["Service"]
  readonly isDraining: () => boolean
}

/** The Node server, its limits, and every listener but the Effect app's. */
const makeNodeServer = (options: ServeOptions) => {
  const { config, isDraining, nodeRoutes, observer, routes } = options
  const server = createServer({
    // Headers and the whole request must arrive within these bounds (answered 408).
    headersTimeout: config.headersTimeoutMs,
    requestTimeout: config.requestTimeoutMs,
    // How often Node checks those timeouts (its default is 30 s).
    connectionsCheckingInterval: Math.min(1_000, config.headersTimeoutMs),
    // Checked by the dispatcher, so the 400 has the router's envelope.
    requireHostHeader: false
  })
  const answer = (request: IncomingMessage, response: ServerResponse, status: number, code: string, message: string, headers: Record<string, string> = {}) => {
    const requestId = request.headers[requestIdHeader] as string
    writeJson(response, status, errorBody(request, status, code, message), { ...headers, ...answerHeaders(requestId, isDraining()) })
  }

  let effectApp: (request: IncomingMessage, response: ServerResponse) => void = (_request, response) => {
    response.writeHead(503).end()
  }

  const dispatch = (request: IncomingMessage, response: ServerResponse, awaitsContinue: boolean) => {
    const path = routePath(request.url ?? "/")
    observer.observe(request, response, path)
    // Node's parser also takes `HTTP/2.0` (and a bare `GET /path`, HTTP/0.9's form) as a request line.
    if (request.httpVersionMajor !== 1) {
      const version = `HTTP/${request.httpVersionMajor}.${request.httpVersionMinor}`
      return answer(request, response, 505, "http_version_not_supported", `${version} is not supported: send HTTP/1.1 (or HTTP/1.0)`, { connection: "close" })
    }
    if (request.headers.host === undefined && request.httpVersionMinor === 1 && request.httpVersionMajor === 1) {
      return answer(request, response, 400, "missing_host", "HTTP/1.1 requests must have a Host header", { connection: "close" })
    }
    // HEAD is GET without the body (Node drops it): the route table allows it for every GET route.
    const handler = nodeRoutes.find(request.method === "HEAD" ? "GET" : request.method, path)
    if (handler !== undefined) return handler(request, response, awaitsContinue)
    const methods = routes.get(path)
    if (methods === undefined) return answer(request, response, 404, "not_found", `no route for ${path}`)
    if (!methods.includes(request.method ?? "")) {
      const allow = methods.join(", ")
      return answer(request, response, 405, "method_not_allowed", `${request.method} is not allowed on ${path}; use ${allow}`, { allow })
    }
    // Effect's routes read no body: let the client send it, as Node would.
    if (awaitsContinue) response.writeContinue()
    effectApp(request, response)
  }

  server.on("request", (request: IncomingMessage, response: ServerResponse) => dispatch(request, response, false))
  server.on("checkContinue", (request: IncomingMessage, response: ServerResponse) => dispatch(request, response, true))
  server.on("checkExpectation", (request: IncomingMessage, response: ServerResponse) => {
    observer.observe(request, response, routePath(request.url ?? "/"))
    answer(request, response, 417, "expectation_failed", `unsupported Expect: ${JSON.stringify(request.headers.expect)}; only 100-continue is`, { connection: "close" })
  })
  // CONNECT (a tunnel request): the router is no proxy. Node would close the socket without a word.
  server.on("connect", (request: IncomingMessage, socket: Duplex) => {
    // Node has taken its own error listener off the socket it hands over: a client that resets
    // before the answer is written must not be an unheard `error` (which ends the process).
    socket.on("error", () => socket.destroy())
    observer.unparsed(405)
    const requestId = requestIdFor(request.headers[requestIdHeader])
    const message = "CONNECT is not supported: the router is not a proxy"
    // RFC 9110: a 405 lists what the target allows (a known path's methods; an authority, none).
    const allow = (routes.get(routePath(request.url ?? "")) ?? []).join(", ")
    socket.end(rawErrorResponse(405, errorBody(request, 405, "method_not_allowed", message), requestId, { allow }), () => socket.destroy())
  })
  server.on("clientError", (error: NodeJS.ErrnoException, socket: Socket) => {
    const inFlight = observer.serving(socket)
    const serving = inFlight?.request !== undefined && inFlight.response !== undefined
      ? { request: inFlight.request, response: inFlight.response }
      : undefined
    // As Node does: answer only if the socket can take it and no answer has begun. A connection
    // that ended in the middle of a request (HPE_INVALID_EOF_STATE: the client closed its side mid-body)
    // is a hang-up, not a bad request: nothing is written, and the request is counted as 499.
    const hungUp = error.code === "ECONNRESET" || error.code === "HPE_INVALID_EOF_STATE"
    if (!hungUp && socket.writable && serving?.response.headersSent !== true) {
      const [status, code, message] = clientErrors[error.code ?? ""] ?? badRequest
      if (serving === undefined) observer.unparsed(status)
      else addOutcome(serving.request, { status })
      const requestId = (serving?.request.headers[requestIdHeader] as string | undefined) ?? crypto.randomUUID()
      socket.write(rawErrorResponse(status, errorBody(serving?.request, status, code, message), requestId))
    }
    socket.destroy(error)
  })
  return {
    server,
    setEffectApp: (app: typeof effectApp) => (effectApp = app)
  }
}

/** Listens; from then on `laterError` hears the socket's errors (an unheard `error` event would end the process). */
const listenOne = (server: NetServer, options: ListenOptions, laterError?: (error: NodeJS.ErrnoException) => void) =>
  Effect.callback<void, ListenError>((resume) => {
    const onError = (error: NodeJS.ErrnoException) =>
      resume(Effect.fail(new ListenError({ code: error.code, host: options.host, port: options.port ?? 0, detail: error.message })))
    server.once("error", onError)
    server.listen(options, () => {
      server.off("error", onError)
      if (laterError !== undefined) server.on("error", laterError)
      resume(Effect.void)
    })
  })

const closeOne = (server: NetServer) =>
  Effect.callback<void>((resume) => {
    if (!server.listening) return resume(Effect.void)
    server.close(() => resume(Effect.void))
  })

/**
 * Listens on PORT with `LISTEN_SOCKETS` sockets, each handing its connections
 * to the one HTTP server (`connection`, the documented way to inject them).
 *
 * Why more than one: Node's libuv (1.52) accepts one connection per listening
 * socket per event-loop turn, and a turn serves every connection with a
 * request ready. A burst of new connections against a busy router then waits
 * in the accept queue for up to a second (BENCHMARKS.md section 16). With
 * several sockets sharing the port (SO_REUSEPORT, Linux only here) each
 * accepts one a turn.
 *
 * SO_REUSEPORT would also let a second router on the same port share it
 * silently: the port is first bound alone, so a process already there fails
 * the start as it always did (one that binds later, as the same user, can
 * still join: docs/operations.md).
 */
const listenAll = (
  server: Server,
  config: RouterSettings,
  extra: Array<NetServer>,
  acceptFailed: (error: NodeJS.ErrnoException) => void
) =>
  Effect.gen(function*() {
    const at = { port: config.port, ...(config.host === undefined ? {} : { host: config.host }) }
    // More than one only on Linux: the settings parser refuses more elsewhere.
    if (config.listenSockets === 1) return yield* listenOne(server, at, acceptFailed)
    // Alone first: a port another process holds fails here, whether or not it set SO_REUSEPORT.
    const probe = createNetServer()
    yield* listenOne(probe, at)
    // Every socket on the address and port the probe got: HOST resolved once (a name may
    // resolve to another address next time), and PORT=0 (tests) one port for all.
    const { address: host, port } = probe.address() as AddressInfo
    yield* closeOne(probe)
    const shared = { ...at, host, port, reusePort: true }
    yield* listenOne(server, shared, acceptFailed)
    for (let i = 1; i < config.listenSockets; i++) {
      // The options Node's HTTP server gives its own listening socket (node:http's Server
      // constructor: allowHalfOpen, noDelay; keepAlive and highWaterMark left at their defaults there too).
      const socket = createNetServer({ allowHalfOpen: true, noDelay: true }, (connection) => server.emit("connection", connection))
      extra.push(socket)
      yield* listenOne(socket, shared, acceptFailed)
    }
  })

/**
 * The `HttpServer` service: building it listens; releasing it stops listening
 * and waits for open connections. Serving an app registers it with the
 * dispatcher; when that scope closes, in-flight requests get
 * `SHUTDOWN_TIMEOUT_MS - SHUTDOWN_DELAY_MS` to finish before they are
 * interrupted (answered 503 by the app's envelope).
 */
export const NodeServerLayer = (routes: RouteTable): Layer.Layer<
  HttpServer.HttpServer,
  ListenError,
  RouterConfig | RequestObserver | NodeRoutes | Lifecycle
> =>
  Layer.effect(
    HttpServer.HttpServer,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      const lifecycle = yield* Lifecycle
      const { server, setEffectApp } = makeNodeServer({
        config,
        routes,
        observer: yield* RequestObserver,
        nodeRoutes: yield* NodeRoutes,
        isDraining: lifecycle.isDraining
      })
      // The other listening sockets (LISTEN_SOCKETS): each counts the connections it accepted until they close.
      const extraSockets: Array<NetServer> = []
      /**
       * Stops listening and resolves once every connection has closed; started once, awaited by
       * both finalizers below (a promise: a finalizer's timeout stops its wait, not the closing).
       */
      let closing: Promise<void> | undefined
      const close = Effect.promise(() =>
        closing ??= new Promise<void>((resolve) => {
          const httpClosed = new Promise<void>((done) => {
            if (!server.listening) return done()
            server.close(() => done())
            // Idle keep-alive connections would hold `close` open until they time out.
            server.closeIdleConnections()
          })
          void Promise.all([httpClosed, ...extraSockets.map((socket) => Effect.runPromise(closeOne(socket)))]).then(() => resolve())
        })
      )
      const drainable = config.shutdownTimeoutMs - config.shutdownDelayMs
      // The drain's last part: the answers that end it (503s, error frames) get this long to reach
      // their clients; then every connection left is closed. A client that reads nothing would
      // otherwise hold the process past SHUTDOWN_TIMEOUT_MS, its answer never finishing.
      const flushMs = Math.min(1_000, Math.floor(drainable / 5))
      yield* Effect.addFinalizer(() =>
        Effect.timeoutOrElse(Effect.andThen(
          // Connections that went idle during the grace (a stream begun before the drain, whose answer
          // could not say `Connection: close`) hold nothing: closed now, not counted as cut off below.
          Effect.sync(() => server.closeIdleConnections()),
          close
        ), {
          duration: flushMs,
          orElse: () =>
            Effect.logWarning("the drain's time is up (SHUTDOWN_TIMEOUT_MS): closing the connections still open").pipe(
              Effect.andThen(Effect.sync(() => server.closeAllConnections()))
            )
        })
      )
      // An accept error after listening (ENOBUFS, a firewall's EPERM) loses that one connection, not
      // the router: Node's server keeps listening.
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const acceptFailed = (error: NodeJS.ErrnoException) =>
        void runFork(Effect.logWarning("a connection could not be accepted").pipe(Effect.annotateLogs({ code: error.code, error: error.message })))
      yield* listenAll(server, config, extraSockets, acceptFailed)
      const bound = server.address()
      const address = typeof bound === "object" && bound !== null
        ? NetAddress.inetAddressFromIpStringUnsafe(bound.address, bound.port)
        : NetAddress.unixPathAddress(String(bound))
      const grace = Duration.millis(drainable - flushMs)
      return HttpServer.make({
        address,
        serve: (app, middleware) =>
          Effect.gen(function*() {
            const serveScope = yield* Effect.scope
            const requestScope = Scope.forkUnsafe(serveScope, "parallel")
            const handler = yield* NodeHttpServer.makeHandler(app, {
              scope: requestScope,
              ...(middleware === undefined ? {} : { middleware: middleware as any })
            })
            setEffectApp(handler)
            // Runs before the request scope closes: stop listening, and give
            // in-flight requests the grace period.
            yield* Scope.addFinalizer(serveScope, Effect.timeoutOrElse(close, { duration: grace, orElse: () => Effect.void }))
          })
      })
    })
  )
