/**
 * The model servers behind the router (MODEL_BACKEND=upstream): who they are
 * (UPSTREAMS, `dns+` names re-resolved), whether they can take requests
 * (active `GET /health` checks and passive ejection, see Balancer.ts), and
 * one forwarded request at a time:
 *
 * - each upstream has its own bounded keep-alive pool (undici's `Pool`, the
 *   HTTP client Node ships): as many connections as requests may be in flight
 *   to it, plus one so a health check never waits behind streams. Admission
 *   bounds the total first, so waiting happens in the router's queue, not on
 *   an upstream's socket;
 * - an attempt is retried on another upstream only when nothing can have
 *   reached the model (a connect failure) or the upstream refused at once
 *   (429/503 before any body byte), within UPSTREAM_RETRIES, the retry budget
 *   and the first-byte deadline; the caller has written nothing by then;
 * - an attempt holds its upstream's in-flight count until its scope closes;
 *   closing it before the body ended (a client hang-up, a drain) aborts the
 *   upstream request, so the model stops generating.
 *
 * With MODEL_BACKEND=simulated the service is present and empty.
 */
import { Clock, Context, Data, Duration, Effect, Layer, Schedule, Scope } from "effect"
import { lookup } from "node:dns/promises"
import type { IncomingHttpHeaders } from "node:http"
import { type Dispatcher, Pool } from "undici"
import { metricContext } from "../../shared/Metrics.ts"
import { RouterConfig, type UpstreamSettings } from "../Config.ts"
import { upstreamMetrics } from "../Metrics.ts"
import { Balancer, type Endpoint, isAvailable, makeEndpoint, type NoUpstream } from "./Balancer.ts"
import { hostPort, type UpstreamTarget } from "./Targets.ts"

/** No usable answer from an upstream: the status says what the client should do (400: fix the request, 429/503: later). */
export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly status: 400 | 429 | 502 | 503 | 504
  readonly code: string
  readonly message: string
  readonly retryAfterSeconds: number | undefined
}> {}

export interface ForwardRequest {
  readonly method: "GET" | "POST"
  /** The path after the upstream's prefix, e.g. `/v1/chat/completions`. */
  readonly path: string
  readonly body: string | undefined
  /** Headers passed on (request id, the simulator's failure header). */
  readonly headers: Record<string, string>
}

/** An upstream's answer, headers received, body not yet read. */
export interface Forwarded {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: Dispatcher.ResponseData["body"]
  /** `host:port` of the upstream that answered. */
  readonly upstream: string
  readonly version: string | undefined
  /** Marks the body read to its end (or broken by the upstream); otherwise closing the scope aborts it. */
  settle(outcome: "ok" | "failed"): void
}

export interface UpstreamView {
  readonly id: string
  readonly version: string
  readonly inFlight: number
  readonly available: boolean
  readonly connections: number
}

/** Header naming the upstream that served, as llm-d-inference-sim's `x-inference-pod` names its pod. */
export const upstreamHeader = "x-inference-upstream"
export const upstreamVersionHeader = "x-inference-upstream-version"

/** Error codes of a failed connection attempt: nothing reached the upstream, so a retry is safe. */
const connectFailures = new Set(["ECONNREFUSED", "ENOTFOUND", "EAI_AGAIN", "EHOSTUNREACH", "ENETUNREACH", "UND_ERR_CONNECT_TIMEOUT"])

const errorCode = (error: unknown): string | undefined => {
  const e = error as { code?: unknown; cause?: { code?: unknown } }
  return typeof e?.code === "string" ? e.code : typeof e?.cause?.code === "string" ? e.cause.code : undefined
}

/** Retry-After in seconds (a number of seconds or an HTTP date); undefined when absent or unreadable. */
export const retryAfterSeconds = (value: string | Array<string> | undefined, nowMs: number): number | undefined => {
  const text = Array.isArray(value) ? value[0] : value
  if (text === undefined) return undefined
  if (/^\s*[0-9]+\s*$/.test(text)) return Number(text)
  const date = Date.parse(text)
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - nowMs) / 1000))
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
    code: mapped === 400 ? "upstream_rejected" : mapped === 502 ? "upstream_failed" : status === 429 ? "upstream_rate_limited" : "upstream_unavailable",
    message: `the model server ${upstream} answered ${status}${detail}`,
    retryAfterSeconds: mapped === 429 || mapped === 503 ? retryAfterSeconds(retryAfter, Date.now()) ?? 1 : undefined
  })
}

const ignore = () => {}

interface Member {
  readonly endpoint: Endpoint
  readonly pool: Pool
}

export class Upstreams extends Context.Service<Upstreams, {
  readonly enabled: boolean
  /** True while at least one upstream can take requests (synchronous: probes read it). */
  ready(): boolean
  /** Forwards one request; the answer's body stays readable until the scope closes. */
  forward(request: ForwardRequest): Effect.Effect<Forwarded, UpstreamFailure, Scope.Scope>
  view(): ReadonlyArray<UpstreamView>
}>()("inference-router/Upstreams") {
  static readonly disabled: Upstreams["Service"] = Upstreams.of({
    enabled: false,
    ready: () => true,
    forward: () => Effect.die(new Error("MODEL_BACKEND is not upstream")),
    view: () => []
  })

  static readonly make = (settings: UpstreamSettings, slots: number) =>
    Effect.gen(function*() {
      const clock = yield* Clock.Clock
      const now = () => clock.currentTimeMillisUnsafe()
      const metrics = upstreamMetrics
      const fullContext = yield* Effect.context<never>()
      const context = metricContext(fullContext)
      const runFork = Effect.runForkWith(fullContext)
      const balancer = new Balancer(settings)
      const members = new Map<string, Member>()
      const cap = settings.maxConcurrency > 0 ? Math.min(settings.maxConcurrency, slots) : slots
      let requestsInFlight = 0
      let retriesInFlight = 0

      const connect = (endpoint: Endpoint, target: UpstreamTarget): Member => ({
        endpoint,
        pool: new Pool(`${target.protocol}//${hostPort(endpoint.address, target.port)}`, {
          connections: cap + 1,
          pipelining: 1,
          connect: { timeout: settings.connectTimeoutMs },
          headersTimeout: settings.firstByteTimeoutMs,
          bodyTimeout: settings.idleTimeoutMs,
          keepAliveTimeout: 30_000
        })
      })

      /** Replaces the members of `target` with one per address; in-flight requests on removed ones finish. */
      const setAddresses = (target: UpstreamTarget, addresses: ReadonlyArray<string>) => {
        const wanted = new Set(addresses.map((address) => `${hostPort(address, target.port)}${target.prefix}`))
        const weight = target.weight / Math.max(1, addresses.length)
        for (const [id, member] of members) {
          if (member.endpoint.target === target && !wanted.has(id)) {
            members.delete(id)
            void member.pool.close()
          }
        }
        for (const address of addresses) {
          const id = `${hostPort(address, target.port)}${target.prefix}`
          const existing = members.get(id)
          if (existing !== undefined) existing.endpoint.weight = weight
          else members.set(id, connect(makeEndpoint(target, address, id, weight, settings.healthIntervalMs === 0), target))
        }
        balancer.endpoints = [...members.values()].map((member) => member.endpoint)
      }

      for (const target of settings.targets) if (!target.resolve) setAddresses(target, [target.hostname])

      const resolveNames = Effect.forEach(settings.targets.filter((target) => target.resolve), (target) =>
        Effect.tryPromise(() => lookup(target.hostname, { all: true })).pipe(
          Effect.map((found) => setAddresses(target, [...new Set(found.map((entry) => entry.address))].sort())),
          // Keep the addresses we had: a DNS hiccup must not empty the pool.
          Effect.catch((error) => Effect.logWarning(`could not resolve ${target.shown}; keeping ${[...members.values()].filter((m) => m.endpoint.target === target).length} address(es)`, String(error)))
        ), { discard: true })

      const checkOne = (member: Member) =>
        Effect.tryPromise(async (signal) => {
          const answer = await member.pool.request({
            method: "GET",
            path: `${member.endpoint.target.prefix}/health`,
            signal,
            headersTimeout: settings.healthTimeoutMs,
            bodyTimeout: settings.healthTimeoutMs
          })
          await answer.body.dump()
          return answer.statusCode >= 200 && answer.statusCode < 300
        }).pipe(
          Effect.timeout(settings.healthTimeoutMs),
          Effect.orElseSucceed(() => false),
          Effect.flatMap((healthy) => {
            const endpoint = member.endpoint
            if (endpoint.healthy === healthy) return Effect.void
            endpoint.healthy = healthy
            return healthy
              ? Effect.logInfo(`upstream ${endpoint.id} is healthy`)
              : Effect.logWarning(`upstream ${endpoint.id} failed its health check (GET ${endpoint.target.prefix}/health)`)
          })
        )

      const checkAll = Effect.suspend(() => Effect.forEach([...members.values()], checkOne, { concurrency: "unbounded", discard: true }))

      if (settings.targets.some((target) => target.resolve)) {
        yield* resolveNames
        yield* Effect.forkScoped(Effect.repeat(Effect.delay(resolveNames, Duration.millis(settings.dnsRefreshMs)), Schedule.forever))
      }
      if (settings.healthIntervalMs > 0) {
        yield* Effect.forkScoped(Effect.repeat(checkAll, Schedule.spaced(Duration.millis(settings.healthIntervalMs))))
      }
      yield* Effect.addFinalizer(() => Effect.promise(() => Promise.all([...members.values()].map((member) => member.pool.destroy()))))

      const record = (endpoint: Endpoint, status: string) =>
        metrics.requests(endpoint.id, endpoint.target.version ?? "", status).updateUnsafe(1, context)

      const noteFailure = (endpoint: Endpoint) =>
        Effect.suspend(() => {
          if (!balancer.failed(endpoint, now())) return Effect.void
          metrics.ejections(endpoint.id).updateUnsafe(1, context)
          return Effect.logWarning(`upstream ${endpoint.id} ejected for ${endpoint.ejectedUntil - now()} ms after ${settings.ejectAfter} consecutive failures`)
        })

      const unavailable = (reason: NoUpstream) =>
        new UpstreamFailure({
          status: 503,
          code: reason,
          message: reason === "no_healthy_upstream"
            ? "no model server is healthy now"
            : "every healthy model server is at UPSTREAM_MAX_CONCURRENCY",
          retryAfterSeconds: 1
        })

      const forward = (request: ForwardRequest): Effect.Effect<Forwarded, UpstreamFailure, Scope.Scope> =>
        Effect.gen(function*() {
          const startedAt = now()
          const deadline = startedAt + settings.firstByteTimeoutMs
          const tried = new Set<Endpoint>()
          requestsInFlight++
          yield* Effect.addFinalizer(() => Effect.sync(() => requestsInFlight--))
          let refused: UpstreamFailure | undefined
          for (let attempt = 0;; attempt++) {
            const picked = balancer.pick(now(), tried)
            if (typeof picked === "string") return yield* (refused ?? unavailable(picked))
            const endpoint = picked
            const member = members.get(endpoint.id)!
            const retry = attempt > 0
            if (retry) metrics.retries(endpoint.id).updateUnsafe(1, context)
            tried.add(endpoint)
            // Held until the scope closes or the attempt ends; aborting undoes a request still running.
            const controller = new AbortController()
            let held = true
            let settled = false
            endpoint.inFlight++
            const release = () => {
              if (!held) return
              held = false
              endpoint.inFlight--
            }
            yield* Effect.addFinalizer(() =>
              Effect.sync(() => {
                if (!settled) controller.abort()
                release()
              })
            )
            if (retry) retriesInFlight++
            const result = yield* Effect.callback<Dispatcher.ResponseData | { readonly error: unknown }>((resume) => {
              member.pool.request({
                method: request.method,
                path: `${endpoint.target.prefix}${request.path}`,
                headers: request.body === undefined ? request.headers : { ...request.headers, "content-type": "application/json" },
                body: request.body,
                signal: controller.signal,
                headersTimeout: Math.max(1, deadline - now())
              }).then((data) => resume(Effect.succeed(data)), (error) => resume(Effect.succeed({ error })))
              return Effect.sync(() => controller.abort())
            }).pipe(Effect.ensuring(Effect.sync(() => {
              if (retry) retriesInFlight--
            })))
            const canRetry = () =>
              attempt < settings.retries && now() < deadline &&
              retriesInFlight < Math.max(settings.retryBudgetMin, requestsInFlight * settings.retryBudgetPercent / 100)

            // Aborting a body nobody reads any more (a hang-up, a drain) must not be an unhandled error.
            if (!("error" in result)) result.body.on("error", ignore)
            if ("error" in result) {
              settled = true
              release()
              const code = errorCode(result.error)
              if (code === "UND_ERR_ABORTED" || controller.signal.aborted) return yield* Effect.interrupt
              yield* noteFailure(endpoint)
              if (code === "UND_ERR_HEADERS_TIMEOUT") {
                record(endpoint, "timeout")
                return yield* new UpstreamFailure({
                  status: 504,
                  code: "upstream_timeout",
                  message: `the model server ${endpoint.id} sent no response within ${settings.firstByteTimeoutMs} ms (UPSTREAM_FIRST_BYTE_TIMEOUT_MS)`,
                  retryAfterSeconds: undefined
                })
              }
              const connectFailed = code !== undefined && connectFailures.has(code)
              record(endpoint, connectFailed ? "connect_error" : "error")
              if (connectFailed && canRetry()) continue
              return yield* new UpstreamFailure({
                status: 502,
                code: connectFailed ? "upstream_connect_failed" : "upstream_failed",
                message: `the model server ${endpoint.id} ${connectFailed ? "could not be reached" : "failed before answering"} (${code ?? "error"})`,
                retryAfterSeconds: undefined
              })
            }

            const status = result.statusCode
            record(endpoint, String(status))
            if (status >= 500) yield* noteFailure(endpoint)
            else balancer.succeeded(endpoint, now())
            if (status === 429 || status === 503) {
              const after = retryAfterSeconds(result.headers["retry-after"], Date.now())
              if (after !== undefined) balancer.backOff(endpoint, now(), after)
              if (canRetry()) {
                refused = new UpstreamFailure({
                  status: status === 429 ? 429 : 503,
                  code: status === 429 ? "upstream_rate_limited" : "upstream_unavailable",
                  message: `the model servers refused the request (${endpoint.id} answered ${status})`,
                  retryAfterSeconds: after ?? 1
                })
                settled = true
                result.body.dump().catch(ignore)
                release()
                continue
              }
            }
            const forwarded: Forwarded = {
              status,
              headers: result.headers,
              body: result.body,
              upstream: endpoint.id,
              version: endpoint.target.version,
              settle: (outcome) => {
                if (settled) return
                settled = true
                metrics.duration(endpoint.id).updateUnsafe((now() - startedAt) / 1000, context)
                if (outcome === "failed") {
                  record(endpoint, "broken")
                  runFork(noteFailure(endpoint))
                }
              }
            }
            return forwarded
          }
        })

      return Upstreams.of({
        enabled: true,
        ready: () => balancer.availableCount(now()) > 0,
        forward,
        view: () =>
          [...members.values()].map(({ endpoint, pool }) => ({
            id: endpoint.id,
            version: endpoint.target.version ?? "",
            inFlight: endpoint.inFlight,
            available: isAvailable(endpoint, now()),
            connections: pool.stats.connected
          }))
      })
    })

  static readonly layer: Layer.Layer<Upstreams, never, RouterConfig> = Layer.effect(
    Upstreams,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      if (config.upstream === undefined) return Upstreams.disabled
      return yield* Upstreams.make(config.upstream, config.maxConcurrency)
    })
  )
}
