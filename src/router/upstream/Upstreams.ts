/**
 * The model servers behind the router (MODEL_BACKEND=upstream): who they are
 * (UPSTREAMS, `dns+` names re-resolved), whether they can take requests
 * (active `GET /health` checks and passive ejection, see Balancer.ts), and
 * one forwarded request at a time:
 *
 * - each upstream has its own bounded keep-alive pool (undici's `Pool`, the
 *   HTTP client Node ships): as many connections as requests may be in flight
 *   to it, and a pool of one for its health checks, which traffic never
 *   fills (a check never waits behind streams or stuck bodies). Admission
 *   bounds the total first, so waiting happens in the router's queue, not on
 *   an upstream's socket;
 * - forwarding is in two parts: Attempt.ts sends one attempt and classifies
 *   how it ended (the one result that drives the metrics, the balancer's
 *   health and the client's error, `observe` below), Retry.ts is the retry
 *   loop around attempts (what is retried, with or without the budget);
 * - a failing upstream is checked again soon (100 ms, doubling to 1 s), so a
 *   restarted one is back within about a second;
 * - closing a request before its answer ended (a client hang-up, a drain)
 *   aborts the upstream request, so the model stops generating.
 *
 * With MODEL_BACKEND=simulated the service is present and empty.
 */
import { Cause, Clock, Context, Duration, Effect, Layer, Redacted, Schedule } from "effect"
import { lookup } from "node:dns/promises"
import type { buildConnector, Pool } from "undici"
import { metricContext } from "../../shared/Metrics.ts"
import { RouterConfig, type UpstreamSettings } from "../core/Config.ts"
import type { RouteScheduler } from "../routing/Route.ts"
import { upstreamMetrics } from "../core/Metrics.ts"
import { type AnswerHeaders, type Dispatch, errorCode, healthOf, metricStatus, type Outcome, sendAttempt } from "./Attempt.ts"
import { Balancer, type Endpoint, isAvailable, makeEndpoint } from "./Balancer.ts"
import { refusalCode, UpstreamFailure } from "./Failure.ts"
import { isJson } from "./JsonCheck.ts"
import { type ForwardHandler, type ForwardRequest, type UpstreamResponse, withRetries } from "./Retry.ts"
import { hostPort, type UpstreamTarget } from "./Targets.ts"

import { retryAfterSeconds } from "./Attempt.ts"

/** A whole answer, body read (for `/infer`). */
export interface UpstreamAnswer {
  readonly status: number
  readonly headers: AnswerHeaders
  readonly body: string
  readonly upstream: string
  /** The `version` label of the upstream that answered. */
  readonly version: string | undefined
  /** The scheduler's decision, as the `x-inference-route` header says it (routing/). */
  readonly route: string | undefined
}

export interface UpstreamView {
  readonly id: string
  readonly version: string
  readonly weight: number
  readonly inFlight: number
  readonly available: boolean
  readonly connections: number
}


/** Why a health check failed, from its error: a timeout, or the connection's error code (ECONNREFUSED, ENOTFOUND, ...). */
const checkFailure = (error: unknown, timeoutMs: number): string => {
  const timedOut = `no answer within ${timeoutMs} ms (UPSTREAM_HEALTH_TIMEOUT_MS)`
  if (Cause.isTimeoutError(error)) return timedOut
  // Effect wraps the rejection (UnknownError): undici's error, with the socket's code, is its cause.
  const code = errorCode((error as { cause?: unknown }).cause) ?? errorCode(error)
  return code === "UND_ERR_HEADERS_TIMEOUT" || code === "UND_ERR_BODY_TIMEOUT" ? timedOut : code ?? "the request failed"
}

/** An upstream's non-2xx answer to an `/infer` completion, as the failure the router answers. */
export const upstreamRefusal = (status: number, upstream: string, body: string, retryAfter: string | Array<string> | undefined): UpstreamFailure => {
  let detail = ""
  try {
    const message = JSON.parse(body)?.error?.message
    if (typeof message === "string") detail = `: ${message}`
  } catch {
    // not JSON: the status alone says it
  }
  const mapped = status === 429 || status === 503 ? status : status >= 400 && status < 500 ? 400 : 502
  return new UpstreamFailure({
    status: mapped,
    code: mapped === 400 ? "upstream_rejected" : mapped === 502 ? "upstream_failed" : refusalCode(mapped),
    message: `the model server ${upstream} answered ${status}${detail}`,
    retryAfterSeconds: mapped === 429 || mapped === 503 ? retryAfterSeconds(retryAfter, Date.now()) ?? 1 : undefined
  })
}

/**
 * Why a whole non-streamed answer cannot be passed on, or undefined: a 2xx
 * completion must be JSON (a client would fail to parse anything else).
 */
export const unusableAnswer = (status: number, body: Buffer, upstream: string): { readonly code: string; readonly message: string } | undefined => {
  if (status < 200 || status >= 300 || isJson(body)) return undefined
  return { code: "upstream_bad_answer", message: `the model server ${upstream} answered ${status} with a body that is not JSON` }
}

/** The rejection of a non-streamed answer longer than UPSTREAM_MAX_BODY_BYTES. */
export const bodyTooLarge = (upstream: string, limit: number) => ({
  code: "upstream_body_too_large",
  message: `the model server ${upstream} answered with a body over ${limit} bytes (UPSTREAM_MAX_BODY_BYTES)`
})

export type Resolve = (hostname: string) => Promise<ReadonlyArray<string>>

/** Every address of a name, as the system resolver gives them (a headless Service's pod IPs). */
const resolveAll: Resolve = async (hostname) => (await lookup(hostname, { all: true })).map((entry) => entry.address)

interface Member {
  readonly endpoint: Endpoint
  readonly pool: Pool
  /** The health checks' own connection: traffic (a stream, a stuck body) can never make a check wait. */
  readonly checkPool: Pool
  /** Active checks: when the next is due, how many failed in a row, whether one is running. */
  nextCheckAt: number
  checkFailures: number
  checking: boolean
}

/** Active checks of a failing upstream start this soon after its failure, doubling up to `maxRecheckMs` (or the interval). */
const firstRecheckMs = 100
const maxRecheckMs = 1000

/**
 * undici's connector, with the bytes of a request still queued on the socket
 * when it broke added to its errors: a write that had not been handed over
 * whole never reached the model server (Attempt.ts).
 */
const makeConnector = (build: typeof buildConnector, timeoutMs: number): buildConnector.connector => {
  const connect = build({ timeout: timeoutMs })
  return (options, callback) =>
    connect(options, (error, socket) => {
      if (error === null && socket != null) {
        socket.prependListener("error", (cause: Error & { unflushedBytes?: number }) => {
          if (cause !== null && typeof cause === "object" && cause.unflushedBytes === undefined) cause.unflushedBytes = socket.writableLength
        })
      }
      // undici's callback types its two forms separately.
      ;(callback as (error: Error | null, socket: unknown) => void)(error, socket)
    })
}

export class Upstreams extends Context.Service<Upstreams, {
  readonly enabled: boolean
  /** True while at least one upstream can take requests (synchronous: probes read it). */
  ready(): boolean
  /**
   * Forwards one request, reporting to `handler` (see ForwardHandler); returns
   * the function that aborts it, after which the handler hears nothing more.
   * Callbacks, not an Effect: this runs once per request on the hot path
   * (see the comment on `forwardUnsafe` below).
   */
  forwardUnsafe(request: ForwardRequest, handler: ForwardHandler): () => void
  /** The whole answer, body read (at most UPSTREAM_MAX_BODY_BYTES); interrupting it aborts the upstream request. */
  fetch(request: ForwardRequest): Effect.Effect<UpstreamAnswer, UpstreamFailure>
  view(): ReadonlyArray<UpstreamView>
  /** The settings it runs with (the relay reads its bounds here). */
  readonly settings: UpstreamSettings | undefined
}>()("inference-router/Upstreams") {
  static readonly disabled: Upstreams["Service"] = Upstreams.of({
    enabled: false,
    ready: () => true,
    forwardUnsafe: () => {
      throw new Error("MODEL_BACKEND is not upstream")
    },
    fetch: () => Effect.die(new Error("MODEL_BACKEND is not upstream")),
    view: () => [],
    settings: undefined
  })

  /**
   * `resolve` finds a `dns+` name's addresses (Node's resolver; tests pass their own).
   * `scheduler`: a router other than least request (routing/), asked for each request's route.
   */
  static readonly make = (settings: UpstreamSettings, slots: number, resolve: Resolve = resolveAll, scheduler?: RouteScheduler) =>
    Effect.gen(function*() {
      // Loaded here, not at start-up: a router on the simulated model never
      // holds undici in memory (idle RSS, BENCHMARKS.md section 12).
      const { buildConnector, Pool } = yield* Effect.promise(() => import("undici"))
      const clock = yield* Clock.Clock
      const now = () => clock.currentTimeMillisUnsafe()
      const metrics = upstreamMetrics
      const fullContext = yield* Effect.context<never>()
      const context = metricContext(fullContext)
      const runFork = Effect.runForkWith(fullContext)
      const balancer = new Balancer(settings)
      const members = new Map<string, Member>()
      const cap = settings.maxConcurrency > 0 ? Math.min(settings.maxConcurrency, slots) : slots
      const connector = makeConnector(buildConnector, settings.connectTimeoutMs)

      const connect = (endpoint: Endpoint, target: UpstreamTarget): Member => ({
        endpoint,
        checkPool: new Pool(`${target.protocol}//${hostPort(endpoint.address, target.port)}`, {
          connections: 1,
          pipelining: 1,
          connect: { timeout: settings.healthTimeoutMs },
          keepAliveTimeout: 30_000
        }),
        // One spare: a connection still draining a dropped refusal (at most maxDrainMs) must not make a request wait.
        pool: new Pool(`${target.protocol}//${hostPort(endpoint.address, target.port)}`, {
          connections: cap + 1,
          pipelining: 1,
          connect: connector,
          headersTimeout: settings.firstByteTimeoutMs,
          bodyTimeout: settings.idleTimeoutMs,
          keepAliveTimeout: 30_000
        }),
        nextCheckAt: 0,
        checkFailures: 0,
        checking: false
      })

      /** Replaces the members of `target` with one per address; in-flight requests on removed ones finish. */
      const setAddresses = (target: UpstreamTarget, addresses: ReadonlyArray<string>) => {
        const wanted = new Set(addresses.map((address) => `${hostPort(address, target.port)}${target.prefix}`))
        const weight = target.weight / Math.max(1, addresses.length)
        for (const [id, member] of members) {
          if (member.endpoint.target === target && !wanted.has(id)) {
            members.delete(id)
            void member.pool.close()
            void member.checkPool.close()
          }
        }
        for (const address of addresses) {
          const id = `${hostPort(address, target.port)}${target.prefix}`
          const existing = members.get(id)
          if (existing !== undefined) existing.endpoint.weight = weight
          else {
            members.set(id, connect(makeEndpoint(target, address, id, weight, settings.healthIntervalMs === 0), target))
            // From 0, so the first ejection or retry is an increase an alert sees.
            metrics.ejections(id).updateUnsafe(0, context)
            metrics.retries(id).updateUnsafe(0, context)
          }
        }
        balancer.endpoints = [...members.values()].map((member) => member.endpoint)
      }

      for (const target of settings.targets) if (!target.resolve) setAddresses(target, [target.hostname])

      const resolveNames = Effect.forEach(settings.targets.filter((target) => target.resolve), (target) =>
        Effect.tryPromise(() => resolve(target.hostname)).pipe(
          Effect.map((found) => setAddresses(target, [...new Set(found)].sort())),
          // Keep the addresses we had: a DNS hiccup must not empty the pool.
          Effect.catch((error) => Effect.logWarning(`could not resolve ${target.shown}; keeping ${[...members.values()].filter((m) => m.endpoint.target === target).length} address(es)`, String(error)))
        ), { discard: true })

      const checkOne = (member: Member) =>
        Effect.tryPromise(async (signal) => {
          const answer = await member.checkPool.request({
            method: "GET",
            path: `${member.endpoint.target.prefix}/health`,
            signal,
            headersTimeout: settings.healthTimeoutMs,
            bodyTimeout: settings.healthTimeoutMs
          })
          await answer.body.dump()
          return answer.statusCode
        }).pipe(
          Effect.timeout(settings.healthTimeoutMs),
          // What failed, for the log: undefined when the check passed.
          Effect.map((status): string | undefined => status >= 200 && status < 300 ? undefined : `it answered ${status}`),
          Effect.catch((error) => Effect.succeed(checkFailure(error, settings.healthTimeoutMs))),
          Effect.flatMap((failure) => {
            const healthy = failure === undefined
            const endpoint = member.endpoint
            const at = now()
            member.checking = false
            // A failing upstream is checked again soon, then less often: it is back within about a second of recovering.
            member.checkFailures = healthy ? 0 : member.checkFailures + 1
            member.nextCheckAt = at + (healthy ? settings.healthIntervalMs : Math.min(settings.healthIntervalMs, maxRecheckMs, firstRecheckMs * 2 ** Math.min(member.checkFailures - 1, 10)))
            const changed = balancer.checked(endpoint, healthy, at)
            if (healthy) return changed ? Effect.logInfo(`upstream ${endpoint.id} is healthy`) : Effect.void
            // The first failure of a run: a healthy upstream going down, or one that has not passed a check since it joined.
            return member.checkFailures === 1
              ? Effect.logWarning(`upstream ${endpoint.id} failed its health check (GET ${endpoint.target.prefix}/health): ${failure}; it takes no requests until a check passes`)
              : Effect.void
          })
        )

      /** Starts the checks that are due; each member is checked on its own schedule. */
      const checkDue = Effect.suspend(() => {
        const at = now()
        const due = [...members.values()].filter((member) => !member.checking && member.nextCheckAt <= at)
        for (const member of due) member.checking = true
        return Effect.forEach(due, (member) => Effect.forkScoped(checkOne(member)), { discard: true })
      })

      if (settings.targets.some((target) => target.resolve)) {
        yield* resolveNames
        yield* Effect.forkScoped(Effect.repeat(Effect.delay(resolveNames, Duration.millis(settings.dnsRefreshMs)), Schedule.forever))
      }
      if (settings.healthIntervalMs > 0) {
        const tick = Math.min(settings.healthIntervalMs, firstRecheckMs)
        yield* Effect.forkScoped(Effect.repeat(checkDue, Schedule.spaced(Duration.millis(tick))))
      }
      yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all([...members.values()].flatMap((member) => [member.pool.destroy(), member.checkPool.destroy()]))))

      const record = (endpoint: Endpoint, status: string) =>
        metrics.requests(endpoint.id, endpoint.target.version ?? "", status).updateUnsafe(1, context)

      const noteFailure = (endpoint: Endpoint) =>
        Effect.suspend(() => {
          if (!balancer.failed(endpoint, now())) return Effect.void
          metrics.ejections(endpoint.id).updateUnsafe(1, context)
          return Effect.logWarning(`upstream ${endpoint.id} ejected for ${endpoint.ejectedUntil - now()} ms after ${settings.ejectAfter} consecutive failures`)
        })

      /** Every attempt's classified outcome: the metrics, the balancer's health, and a log line for what an operator must see. */
      const observe = (endpoint: Endpoint, outcome: Outcome, startedAt: number) => {
        record(endpoint, metricStatus(outcome))
        if (outcome._tag === "Completed") metrics.duration(endpoint.id).updateUnsafe((now() - startedAt) / 1000, context)
        if (outcome._tag === "Refused" && outcome.retryAfterSeconds !== undefined) balancer.backOff(endpoint, now(), outcome.retryAfterSeconds)
        switch (healthOf(outcome)) {
          case "success":
            return balancer.succeeded(endpoint, now())
          case "failure":
            runFork(noteFailure(endpoint))
            break
          case "unreachable": {
            balancer.unreachable(endpoint, now())
            // Checked again at once: back in rotation as soon as it answers.
            const member = members.get(endpoint.id)
            if (member !== undefined) member.nextCheckAt = 0
            break
          }
        }
        if (outcome._tag === "Rejected" || outcome._tag === "Malformed") {
          runFork(Effect.logWarning(`upstream ${endpoint.id}: ${outcome._tag === "Rejected" ? outcome.message : outcome.detail}`))
        }
      }

      /**
       * Hand-written on undici's dispatch handler API rather than an Effect per
       * request over `pool.request`: measured (scripts/bench-upstream.ts,
       * BENCHMARKS.md section 7), the Effect version with undici's stream-based
       * `request` reached 0.44x a bare node:http proxy's throughput; a client
       * alone costs about 62 us per request with `request` or node:http and
       * 35-45 us with `dispatch`. Admission stays Effect's (see the edge).
       */
      const dispatch: Dispatch = (target, options, dispatchHandler) => void members.get(target.id)!.pool.dispatch(options, dispatchHandler)
      const forwarder = withRetries({
        pick: (tried, route) => balancer.pick(now(), tried, route === undefined ? undefined : (pool, at) => route.choose(pool, at)),
        ...(scheduler === undefined ? {} : { route: (request: ForwardRequest) => scheduler.route(request) }),
        start: (endpoint, request, handler) => sendAttempt(dispatch, endpoint, request, settings, now, handler),
        observe,
        retrying: (endpoint) => metrics.retries(endpoint.id).updateUnsafe(1, context),
        now,
        setTimer: (ms, fire) => {
          const timer = setTimeout(fire, ms)
          timer.unref()
          return () => clearTimeout(timer)
        }
      }, settings)
      const forwardUnsafe = forwarder.forwardUnsafe
      scheduler?.attach(() => balancer.endpoints)

      const fetch = (request: ForwardRequest): Effect.Effect<UpstreamAnswer, UpstreamFailure> =>
        Effect.callback<UpstreamAnswer, UpstreamFailure>((resume) => {
          let answer: UpstreamResponse | undefined
          const chunks: Array<Buffer> = []
          let length = 0
          let body: Buffer | undefined
          const abort = forwardUnsafe(request, {
            onResponse: (response) => (answer = response),
            onData: (chunk) => {
              length += chunk.length
              if (length > settings.maxBodyBytes) {
                const { code, message } = bodyTooLarge(answer!.upstream, settings.maxBodyBytes)
                return answer!.reject(code, message)
              }
              chunks.push(chunk)
            },
            verify: () => {
              body = Buffer.concat(chunks, length)
              return unusableAnswer(answer!.status, body, answer!.upstream)
            },
            onEnd: () =>
              resume(Effect.succeed({
                status: answer!.status,
                headers: answer!.headers,
                body: body!.toString("utf8"),
                upstream: answer!.upstream,
                version: answer!.version,
                route: answer!.route
              })),
            onError: (failure) => resume(Effect.fail(failure))
          })
          return Effect.sync(abort)
        })

      return Upstreams.of({
        enabled: true,
        ready: () => balancer.canServe(now()),
        forwardUnsafe,
        fetch,
        view: () =>
          [...members.values()].map(({ endpoint, pool }) => ({
            id: endpoint.id,
            version: endpoint.target.version ?? "",
            weight: endpoint.weight,
            inFlight: endpoint.inFlight,
            available: isAvailable(endpoint, now()),
            connections: pool.stats.connected
          })),
        settings
      })
    })

  static readonly layer: Layer.Layer<Upstreams, never, RouterConfig> = Layer.effect(
    Upstreams,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      if (config.upstream === undefined) return Upstreams.disabled
      // Loaded only for the cache-aware scheduler (with it the Redis and msgpack clients).
      const scheduler = config.upstream.routing.scheduler === "cache-aware"
        ? yield* (yield* Effect.promise(() => import("../routing/Routing.ts"))).makeCacheAwareRouting({
          settings: config.upstream.routing,
          kvEndpoints: config.kvEndpoints.map((item) => ({ shown: item.shown, url: Redacted.value(item.value) })),
          pool: config.upstream.routing.sharedScope ?? config.modelRef,
          slots: config.maxConcurrency
        })
        : undefined
      return yield* Upstreams.make(config.upstream, config.maxConcurrency, undefined, scheduler)
    })
  )
}
