/**
 * The one request pipeline of the routes served from Node's request event
 * (`/infer`, `/v1/*`): from the handler's call to the answer.
 *
 * - before the body: the bearer token, the queue-budget header
 *   (`x-queue-timeout-ms`), the body's headers (type, length), then
 *   `100 Continue` and reading the body within MAX_BODY_BYTES;
 * - admission, the only caller of `Admission.enterUnsafe`: a request that
 *   finds a slot free runs its work at once, with no fiber when the work is
 *   plain callbacks or an answer ready at once (`Exit`), else in a fiber; one
 *   that must wait queues in a fiber (`Admission.admit`) with its deadline;
 * - the client's hang-up stops the work (interrupts its fiber, or calls its
 *   stop function); the end of a drain does the same for whatever still runs
 *   (answered 503 `shutting_down`, or one error frame after a started stream);
 * - the slot is released with the work's real exit, so only work that ran to
 *   its end feeds the Retry-After estimate;
 * - the answer's own headers (request id; `Connection: close` while draining,
 *   or when an early answer leaves a large body unread).
 *
 * Routes are parse → work → encode on top of it; each speaks its own error
 * dialect (`/infer`'s envelope, OpenAI's), given as a `Dialect`. Why Node's
 * request event and not Effect's HTTP router: see docs/architecture.md.
 */
import { Cause, Context, Effect, Exit, Fiber, Layer, Result, Schema } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"
import { performance } from "node:perf_hooks"
import { InvalidRequest, Overloaded, Unavailable } from "../../api/Errors.ts"
import { queueTimeoutHeader, requestIdHeader } from "../../api/Headers.ts"
import { QueueBudgetMs } from "../../api/RouterApi.ts"
import { Admission, type Grant, type Rejected } from "../core/Admission.ts"
import { isCallbacks, type Work, workEffect } from "../core/Backend.ts"
import { RouterConfig } from "../core/Config.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { makeBearerCheck } from "../core/Authorization.ts"
import { type ContractError, shuttingDown } from "../core/ContractErrors.ts"
import { checkBodyHeaders, readBody } from "./InferRequestBody.ts"
import type { NodeHandler } from "./NodeRoutes.ts"
import { noteOutcome, outcomeOf } from "../core/RequestOutcome.ts"
import { answerHeaders, closesEarly } from "../core/ResponseHeaders.ts"

const decodeBudget = Schema.decodeUnknownResult(QueueBudgetMs)

/** The grant of a slot taken at once (one object for every such request). */
const grantedAtOnce: Grant = { waitedMs: 0 }

/** An error as written: status, the dialect's own headers, the JSON body's text. */
export interface EncodedError {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: string
}

/** How a route speaks errors. */
export interface Dialect<E> {
  /** The route's form of an error the pipeline answers itself (auth, header, body, admission, drain). */
  readonly fromContract: (error: ContractError) => E
  /** A 500: what went wrong is logged, not sent. */
  readonly internal: E
  readonly encode: (error: E) => EncodedError
}

/** The pipeline as one route uses it. */
export interface Route<E> {
  /** The router's own answer headers for `request`. */
  headers(request: IncomingMessage): Record<string, string>
  /** Writes a whole JSON answer (nothing if the client hung up or an answer began). */
  sendJson(request: IncomingMessage, response: ServerResponse, status: number, body: string, extra?: Readonly<Record<string, string>>): void
  /** Answers `error` as the whole response. */
  fail(request: IncomingMessage, response: ServerResponse, error: E): void
  /** A handler that checks the token, the budget header and the body, then calls `handle` with the body's text. */
  post(handle: (request: IncomingMessage, response: ServerResponse, body: string, maxWaitMs: number | undefined) => void): NodeHandler
  /** A handler that checks the token, then calls `handle`. */
  get(handle: (request: IncomingMessage, response: ServerResponse) => void): NodeHandler
  /**
   * Runs `work` once admitted (see the module's comment) and calls `answer`
   * with how it ended: a failure is `Rejected` (shed), the work's own error,
   * an interruption (a hang-up or the end of a drain) or a defect.
   */
  run<A, X>(
    request: IncomingMessage,
    response: ServerResponse,
    maxWaitMs: number | undefined,
    work: (grant: Grant) => Work<A, X>,
    answer: (exit: Exit.Exit<A, X | Rejected>) => void
  ): void
  /**
   * Answers a run that did not succeed for a reason the pipeline knows: shed
   * (429, or 503 with OVERLOAD_STATUS=503), stopped at the end of a drain
   * (503 `shutting_down`), hung up (nothing), or a defect (logged, 500).
   * After an answer began, `started` ends it instead (an error frame).
   */
  answerFailure(
    request: IncomingMessage,
    response: ServerResponse,
    cause: Cause.Cause<Rejected>,
    options?: { readonly queueMs?: number | undefined; readonly started?: ((error: E) => void) | undefined }
  ): void
}

export class Pipeline extends Context.Service<Pipeline, {
  route<E>(dialect: Dialect<E>): Route<E>
}>()("inference-router/Pipeline") {
  /**
   * Released when the server stops, after its grace period: the requests still
   * running then are stopped and answered as shutting down.
   */
  static readonly layer: Layer.Layer<Pipeline, never, RouterConfig | Admission | Lifecycle> = Layer.effect(
    Pipeline,
    Effect.gen(function*() {
      const config = yield* RouterConfig
      const admission = yield* Admission
      const lifecycle = yield* Lifecycle
      const scope = yield* Effect.scope
      const runFork = Effect.runForkWith(yield* Effect.context<never>())
      const checkBearer = makeBearerCheck(config.apiKeys)

      /**
       * Work running without a fiber, each with the function that interrupts
       * it: at the end of a drain they end as fibers are interrupted.
       */
      const running = new Set<() => void>()
      /**
       * Past the drain's end: the backends are being released (the upstream pool closes), while
       * Node may still read a request on a connection left open. It is answered as shutting down,
       * not run against a backend that is gone (which answered "no healthy upstream").
       */
      let stopped = false
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          stopped = true
          for (const stop of [...running]) stop()
        })
      )

      const headers = (request: IncomingMessage): Record<string, string> =>
        answerHeaders(request.headers[requestIdHeader] as string, lifecycle.isDraining() || closesEarly(request))

      const sendJson = (
        request: IncomingMessage,
        response: ServerResponse,
        status: number,
        body: string,
        extra?: Readonly<Record<string, string>>
      ) => {
        // A client that hung up gets no answer; one whose answer began gets no second.
        if (response.destroyed || response.headersSent) return
        const own = headers(request)
        response.writeHead(status, {
          ...extra,
          ...own,
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body)
        })
        response.end(body)
      }

      /** Runs `work`'s start without a fiber; a hang-up or the end of a drain stops it as an interruption. */
      const runCallbacks = <A, X>(
        response: ServerResponse,
        start: (done: (exit: Exit.Exit<A, X>) => void) => () => void,
        onExit: (exit: Exit.Exit<A, X>) => void
      ) => {
        let ended = false
        let stop = () => {}
        const end = (exit: Exit.Exit<A, X>) => {
          if (ended) return
          ended = true
          running.delete(interrupt)
          response.off("close", interrupt)
          onExit(exit)
        }
        const interrupt = () => {
          stop()
          end(Exit.interrupt())
        }
        running.add(interrupt)
        response.on("close", interrupt)
        try {
          stop = start(end)
        } catch (defect) {
          // A bug in the work must not keep its slot for good: it ends as a defect (a 500).
          end(Exit.die(defect))
        }
      }

      /** Answers when the fiber ends; a hang-up interrupts it first; the server's scope ends it after the grace period. */
      const answerWhenDone = <A, X>(response: ServerResponse, fiber: Fiber.Fiber<A, X>, answer: (exit: Exit.Exit<A, X>) => void) => {
        const done = fiber.pollUnsafe()
        if (done !== undefined) return answer(done)
        Fiber.runIn(fiber, scope)
        const hangUp = () => fiber.interruptUnsafe()
        response.on("close", hangUp)
        fiber.addObserver((exit) => {
          response.off("close", hangUp)
          answer(exit)
        })
      }

      const run = <A, X>(
        request: IncomingMessage,
        response: ServerResponse,
        maxWaitMs: number | undefined,
        work: (grant: Grant) => Work<A, X>,
        answer: (exit: Exit.Exit<A, X | Rejected>) => void
      ) => {
        // Ended as the drain's end ends running work: an interruption, answered 503 shutting_down.
        if (stopped) return answer(Exit.interrupt())
        const leave = admission.enterUnsafe()
        if (leave === undefined) {
          // All slots busy, or others queued first: wait in line (or be shed), in a fiber.
          // Until it is granted a slot: one that leaves unserved (a hang-up, the drain's end) is logged with its wait.
          noteOutcome(request, { queuedAt: performance.now() })
          const admitted = admission.admit((grant) => {
            // Its wait is known from here on, whatever ends the work.
            noteOutcome(request, { queueMs: grant.waitedMs })
            return workEffect(work(grant))
          }, { maxWaitMs })
          return answerWhenDone(response, runFork(admitted), answer)
        }
        // A slot was free: the common case while the router is not saturated.
        let started: Work<A, X>
        try {
          started = work(grantedAtOnce)
        } catch (defect) {
          // As in runCallbacks: the slot goes back, the request gets a 500.
          const failed = Exit.die(defect)
          leave(failed)
          return answer(failed)
        }
        if (isCallbacks(started)) {
          return runCallbacks<A, X>(response, (done) => started.start(done), (exit) => {
            leave(exit)
            answer(exit)
          })
        }
        if (Exit.isExit(started)) {
          // Answered at once (a stub, a cached answer): no fiber needed.
          const ready = started as Exit.Exit<A, X> // isExit forgets the type parameters
          leave(ready)
          return answer(ready)
        }
        answerWhenDone(response, runFork(Effect.onExit(started, (exit) => Effect.sync(() => leave(exit)))), answer)
      }

      return Pipeline.of({
        route: <E>(dialect: Dialect<E>): Route<E> => {
          const fail = (request: IncomingMessage, response: ServerResponse, error: E) => {
            const encoded = dialect.encode(error)
            sendJson(request, response, encoded.status, encoded.body, encoded.headers)
          }
          const failContract = (request: IncomingMessage, response: ServerResponse, error: ContractError) =>
            fail(request, response, dialect.fromContract(error))
          /** After the drain's end: 503 shutting_down, counted as shed like the ones the drain's end answers. */
          const failStopped = (request: IncomingMessage, response: ServerResponse) => {
            noteOutcome(request, { reason: shuttingDown.code })
            failContract(request, response, shuttingDown)
          }

          const post = (
            handle: (request: IncomingMessage, response: ServerResponse, body: string, maxWaitMs: number | undefined) => void
          ): NodeHandler =>
          (request, response, awaitsContinue) => {
            if (stopped) return failStopped(request, response)
            const denied = checkBearer(request.headers.authorization)
            if (denied !== undefined) return failContract(request, response, denied)
            let maxWaitMs: number | undefined
            const budget = request.headers[queueTimeoutHeader]
            if (budget !== undefined) {
              const decoded = decodeBudget(budget)
              if (Result.isFailure(decoded)) {
                return failContract(
                  request,
                  response,
                  new InvalidRequest({
                    code: "invalid_header",
                    message: `invalid request header ${queueTimeoutHeader}: ${JSON.stringify(budget.slice(0, 64))}: expected milliseconds as 1 to 15 decimal digits (it can only lower QUEUE_TIMEOUT_MS)`
                  })
                )
              }
              maxWaitMs = decoded.success
            }
            const unreadable = checkBodyHeaders(request.headers, config.maxBodyBytes)
            if (unreadable !== undefined) return failContract(request, response, unreadable)
            if (awaitsContinue) response.writeContinue()
            readBody(request, config.maxBodyBytes, (body) => {
              // A client that hung up mid-body gets nothing (Node's close event counts it as 499).
              if (body === undefined) return
              if (typeof body !== "string") return failContract(request, response, body)
              handle(request, response, body, maxWaitMs)
            })
          }

          const get = (handle: (request: IncomingMessage, response: ServerResponse) => void): NodeHandler => (request, response) => {
            if (stopped) return failStopped(request, response)
            const denied = checkBearer(request.headers.authorization)
            if (denied !== undefined) return failContract(request, response, denied)
            handle(request, response)
          }

          const answerFailure: Route<E>["answerFailure"] = (request, response, cause, options) => {
            const rejected = Cause.findError(cause)
            if (Result.isSuccess(rejected)) {
              const { message, reason, retryAfterSeconds } = rejected.success
              // When it joined the queue is kept: a queue_timeout's line says how long it waited.
              noteOutcome(request, { queuedAt: outcomeOf(request)?.queuedAt, reason })
              const fields = { code: reason, message, retryAfterSeconds }
              // OVERLOAD_STATUS=503 is for meshes that retry on 5xx; the body and headers are the same.
              return failContract(request, response, config.overloadStatus === 503 ? new Unavailable(fields) : new Overloaded(fields))
            }
            // A client that hung up gets no answer.
            if (response.destroyed || response.writableEnded) return
            const stopping = Cause.hasInterruptsOnly(cause)
            if (stopping) {
              // What the pipeline noted (the wait, or when it joined the queue) is kept.
              const noted = outcomeOf(request)
              const queueMs = noted?.queueMs ?? options?.queueMs
              noteOutcome(request, queueMs === undefined ? { ...noted, reason: shuttingDown.code } : { ...noted, reason: shuttingDown.code, queueMs })
            }
            else {
              runFork(Effect.logError("request failed", cause).pipe(Effect.annotateLogs({ requestId: request.headers[requestIdHeader] })))
            }
            const error = stopping ? dialect.fromContract(shuttingDown) : dialect.internal
            if (!response.headersSent) return fail(request, response, error)
            if (options?.started !== undefined) options.started(error)
            else response.end()
          }

          return { headers, sendJson, fail, post, get, run, answerFailure }
        }
      })
    })
  )
}
