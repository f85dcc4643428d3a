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
import { Clock, Context, Data, Duration, Effect, Layer, Schedule } from "effect"
import { lookup } from "node:dns/promises"
import type { IncomingHttpHeaders } from "node:http"
import { type Dispatcher, Pool } from "undici"
import { metricContext } from "../../shared/Metrics.ts"
import { RouterConfig, type UpstreamSettings } from "../core/Config.ts"
import { upstreamMetrics } from "../core/Metrics.ts"
import { Balancer, type Endpoint, isAvailable, makeEndpoint, type NoUpstream } from "./Balancer.ts"
import { hostPort, type UpstreamTarget } from "./Targets.ts"

/** No usable answer from an upstream: the status says what the client should do (400: fix the request, 429/503: later). */
export class UpstreamFailure extends Data.TaggedError("UpstreamFailure")<{
  readonly status: 400 | 429 | 502 | 503 | 504
  readonly code: string
  readonly message: string
  readonly retryAfterSeconds: number | undefined
}> {}

/** A POST to an upstream (completions: the only requests the router forwards). */
export interface ForwardRequest {
  /** The path after the upstream's prefix, e.g. `/v1/chat/completions`. */
  readonly path: string
  readonly body: string | undefined
  /** Headers sent as they are (content type, request id, the simulator's failure header). */
  readonly headers: Record<string, string>
}

/** An upstream's answer as its headers arrive; the body follows through the handler. */
export interface UpstreamResponse {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  /** `host:port` of the upstream that answered. */
  readonly upstream: string
  readonly version: string | undefined
  /** Backpressure: stop and restart the upstream's body (its socket). */
  pause(): void
  resume(): void
}

/**
 * Receives one forwarded request's outcome: either `onError` alone (no
 * usable answer), or `onResponse`, then `onData` for each body chunk, then
 * `onEnd` or `onError` (the body broke off or went silent).
 */
export interface ForwardHandler {
  onResponse(response: UpstreamResponse): void
  onData(chunk: Buffer): void
  onEnd(): void
  onError(failure: UpstreamFailure): void
}

/** A whole answer, body read (for `/infer`). */
export interface UpstreamAnswer {
  readonly status: number
  readonly headers: IncomingHttpHeaders
  readonly body: string
  readonly upstream: string
}

export interface UpstreamView {
  readonly id: string
  readonly version: string
  readonly weight: number
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

/** One error for every abort: building an Error (its stack) per request measured as a tenth of the forwarding CPU. */
const abortError = new Error("aborted by the router")

export type Resolve = (hostname: string) => Promise<ReadonlyArray<string>>

/** Every address of a name, as the system resolver gives them (a headless Service's pod IPs). */
const resolveAll: Resolve = async (hostname) => (await lookup(hostname, { all: true })).map((entry) => entry.address)

interface Member {
  readonly endpoint: Endpoint
  readonly pool: Pool
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
  /** The whole answer, body read; interrupting it aborts the upstream request. */
  fetch(request: ForwardRequest): Effect.Effect<UpstreamAnswer, UpstreamFailure>
  view(): ReadonlyArray<UpstreamView>
}>()("inference-router/Upstreams") {
  static readonly disabled: Upstreams["Service"] = Upstreams.of({
    enabled: false,
    ready: () => true,
    forwardUnsafe: () => {
      throw new Error("MODEL_BACKEND is not upstream")
    },
    fetch: () => Effect.die(new Error("MODEL_BACKEND is not upstream")),
    view: () => []
  })

  /** `resolve` finds a `dns+` name's addresses (Node's resolver; tests pass their own). */
  static readonly make = (settings: UpstreamSettings, slots: number, resolve: Resolve = resolveAll) =>
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
        Effect.tryPromise(() => resolve(target.hostname)).pipe(
          Effect.map((found) => setAddresses(target, [...new Set(found)].sort())),
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

      // Each endpoint's labelled counters, found once per status rather than by joining labels per request.
      const counters = new Map<Endpoint, Map<string, ReturnType<typeof metrics.requests>>>()
      const record = (endpoint: Endpoint, status: string) => {
        let byStatus = counters.get(endpoint)
        if (byStatus === undefined) counters.set(endpoint, byStatus = new Map())
        let counter = byStatus.get(status)
        if (counter === undefined) byStatus.set(status, counter = metrics.requests(endpoint.id, endpoint.target.version ?? "", status))
        counter.updateUnsafe(1, context)
      }

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

      const canRetry = (attempt: number, deadline: number) =>
        attempt < settings.retries && now() < deadline &&
        retriesInFlight < Math.max(settings.retryBudgetMin, requestsInFlight * settings.retryBudgetPercent / 100)

      /**
       * Hand-written on undici's dispatch handler API rather than an Effect per
       * request over `pool.request`: measured (scripts/bench-upstream.ts,
       * BENCHMARKS.md section 7), the Effect version with undici's stream-based
       * `request` reached 0.44x a bare node:http proxy's throughput; a client
       * alone costs about 62 us per request with `request` or node:http and
       * 35-45 us with `dispatch`. Admission stays Effect's (see OpenAiHandler).
       */
      const forwardUnsafe = (request: ForwardRequest, handler: ForwardHandler): () => void => {
        const deadline = now() + settings.firstByteTimeoutMs
        const startedAt = now()
        let tried: Set<Endpoint> | undefined
        let refused: UpstreamFailure | undefined
        let attempt = 0
        let finished = false
        /** Aborts the attempt in flight (set while one is). */
        let abortCurrent: (() => void) | undefined
        requestsInFlight++
        const finish = () => {
          if (finished) return false
          finished = true
          requestsInFlight--
          return true
        }
        const fail = (failure: UpstreamFailure) => {
          if (finish()) handler.onError(failure)
        }

        const start = (): void => {
          const picked = balancer.pick(now(), tried)
          if (typeof picked === "string") return fail(refused ?? unavailable(picked))
          const endpoint = picked
          const member = members.get(endpoint.id)!
          const retry = attempt > 0
          if (retry) {
            metrics.retries(endpoint.id).updateUnsafe(1, context)
            retriesInFlight++
          }
          endpoint.inFlight++
          let held = true
          const release = () => {
            if (!held) return
            held = false
            endpoint.inFlight--
          }
          let retrying = retry
          const retryDone = () => {
            if (!retrying) return
            retrying = false
            retriesInFlight--
          }
          /** Set once this attempt no longer speaks for the request (retried, or aborted by the caller). */
          let detached = false
          let answered = false
          let controller: Dispatcher.DispatchController | undefined
          abortCurrent = () => {
            detached = true
            release()
            retryDone()
            if (controller !== undefined) controller.abort(abortError)
          }
          const retryElsewhere = () => {
            detached = true
            release()
            ;(tried ??= new Set()).add(endpoint)
            attempt++
            start()
          }
          member.pool.dispatch({
            method: "POST",
            path: `${endpoint.target.prefix}${request.path}`,
            headers: request.headers,
            body: request.body,
            headersTimeout: Math.max(1, deadline - now()),
            bodyTimeout: settings.idleTimeoutMs
          }, {
            onRequestStart: (dispatchController) => {
              controller = dispatchController
              if (detached) dispatchController.abort(abortError)
            },
            onResponseStart: (dispatchController, status, headers) => {
              controller = dispatchController
              retryDone()
              if (detached) return
              record(endpoint, String(status))
              if (status >= 500) runFork(noteFailure(endpoint))
              else balancer.succeeded(endpoint, now())
              if (status === 429 || status === 503) {
                const after = retryAfterSeconds(headers["retry-after"], Date.now())
                if (after !== undefined) balancer.backOff(endpoint, now(), after)
                if (canRetry(attempt, deadline)) {
                  refused = new UpstreamFailure({
                    status: status === 429 ? 429 : 503,
                    code: status === 429 ? "upstream_rate_limited" : "upstream_unavailable",
                    message: `the model servers refused the request (${endpoint.id} answered ${status})`,
                    retryAfterSeconds: after ?? 1
                  })
                  // The refusal's body is read and dropped, keeping the connection; the next attempt starts now.
                  return retryElsewhere()
                }
              }
              answered = true
              handler.onResponse({
                status,
                headers,
                upstream: endpoint.id,
                version: endpoint.target.version,
                pause: () => dispatchController.pause(),
                resume: () => dispatchController.resume()
              })
            },
            onResponseData: (_, chunk) => {
              if (!detached) handler.onData(chunk)
            },
            onResponseEnd: () => {
              release()
              if (detached) return
              metrics.duration(endpoint.id).updateUnsafe((now() - startedAt) / 1000, context)
              if (finish()) handler.onEnd()
            },
            onResponseError: (_, error) => {
              release()
              retryDone()
              if (detached) return
              const code = errorCode(error)
              if (answered) {
                // The body broke off or went silent: never retried, a byte may have reached the client.
                const timedOut = code === "UND_ERR_BODY_TIMEOUT"
                record(endpoint, timedOut ? "idle_timeout" : "broken")
                runFork(noteFailure(endpoint))
                return fail(
                  new UpstreamFailure({
                    status: timedOut ? 504 : 502,
                    code: timedOut ? "upstream_timeout" : "upstream_broken",
                    message: timedOut
                      ? `the model server ${endpoint.id} sent nothing for ${settings.idleTimeoutMs} ms (UPSTREAM_IDLE_TIMEOUT_MS)`
                      : `the model server ${endpoint.id} broke off its answer (${code ?? error.message})`,
                    retryAfterSeconds: undefined
                  })
                )
              }
              runFork(noteFailure(endpoint))
              if (code === "UND_ERR_HEADERS_TIMEOUT") {
                record(endpoint, "timeout")
                return fail(
                  new UpstreamFailure({
                    status: 504,
                    code: "upstream_timeout",
                    message: `the model server ${endpoint.id} sent no response within ${settings.firstByteTimeoutMs} ms (UPSTREAM_FIRST_BYTE_TIMEOUT_MS)`,
                    retryAfterSeconds: undefined
                  })
                )
              }
              const connectFailed = code !== undefined && connectFailures.has(code)
              record(endpoint, connectFailed ? "connect_error" : "error")
              // Nothing reached the model: safe to try another upstream.
              if (connectFailed && canRetry(attempt, deadline)) return retryElsewhere()
              // Out of attempts after others refused with Retry-After: that is the answer a client can act on.
              if (connectFailed && refused !== undefined) return fail(refused)
              fail(
                new UpstreamFailure({
                  status: 502,
                  code: connectFailed ? "upstream_connect_failed" : "upstream_failed",
                  message: `the model server ${endpoint.id} ${connectFailed ? "could not be reached" : "failed before answering"} (${code ?? error.message})`,
                  retryAfterSeconds: undefined
                })
              )
            }
          })
        }

        start()
        return () => {
          if (!finish()) return
          abortCurrent?.()
        }
      }

      const fetch = (request: ForwardRequest): Effect.Effect<UpstreamAnswer, UpstreamFailure> =>
        Effect.callback<UpstreamAnswer, UpstreamFailure>((resume) => {
          let answer: UpstreamResponse | undefined
          const chunks: Array<Buffer> = []
          const abort = forwardUnsafe(request, {
            onResponse: (response) => (answer = response),
            onData: (chunk) => chunks.push(chunk),
            onEnd: () =>
              resume(Effect.succeed({
                status: answer!.status,
                headers: answer!.headers,
                body: Buffer.concat(chunks).toString("utf8"),
                upstream: answer!.upstream
              })),
            onError: (failure) => resume(Effect.fail(failure))
          })
          return Effect.sync(abort)
        })

      return Upstreams.of({
        enabled: true,
        ready: () => balancer.availableCount(now()) > 0,
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
