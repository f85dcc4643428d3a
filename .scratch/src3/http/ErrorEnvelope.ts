/**
 * Global middleware that gives every error the HTTP framework produces itself
 * (unknown path, wrong method, a defect) the router's JSON body
 * `{"error":{"code","message"}}`, answers 503 `shutting_down` for a request the
 * server stops at the end of a drain instead of dropping it, and echoes the
 * request id (set by the RequestObserver) on every response.
 */
import { NodeHttpServerRequest } from "@effect/platform-node"
import { Cause, Effect } from "effect"
import { HttpServerError, type HttpServerRequest, HttpServerResponse } from "effect/http"
import type { IncomingMessage } from "node:http"
import type { ErrorBody } from "../api/Errors.ts"
import { contractErrorResponse, shuttingDown } from "./ContractErrors.ts"
import { noteOutcome } from "./RequestOutcome.ts"

/** Set on every request by the RequestObserver: the caller's id or a new one. */
export const requestIdHeader = "x-request-id"

/** The body of a 5xx: what went wrong is logged, not sent. */
export const internalErrorBody: ErrorBody = {
  error: { code: "internal_error", message: "the router failed to handle this request" }
}

/** For the framework's own errors (404, 405, 5xx), which the contract does not declare. */
const errorResponse = (
  status: number,
  code: string,
  message: string,
  headers?: Record<string, string>
): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.jsonUnsafe({ error: { code, message } } satisfies ErrorBody, {
    status,
    ...(headers === undefined ? {} : { headers })
  })

/** Methods served at each path, for 405 answers with an `Allow` header. */
export type AllowedMethods = ReadonlyMap<string, ReadonlyArray<string>>

/** Methods per path, from the routes the router serves. */
export const allowedMethods = (
  endpoints: Iterable<{ readonly path: string; readonly method: string }>
): AllowedMethods => {
  const map = new Map<string, Array<string>>()
  for (const { method, path } of endpoints) {
    const methods = map.get(path) ?? []
    if (!methods.includes(method)) methods.push(method)
    if (method === "GET" && !methods.includes("HEAD")) methods.push("HEAD")
    map.set(path, methods)
  }
  return map
}

/** The path of a request URL, without query or fragment. */
export const pathOf = (url: string) => {
  const end = url.search(/[?#]/)
  return end === -1 ? url : url.slice(0, end)
}

const isClientAbort = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((reason) => Cause.isInterruptReason(reason) && reason.annotations.has(HttpServerError.ClientAbort.key))

const shuttingDownResponse = contractErrorResponse(shuttingDown)

const render = (
  request: HttpServerRequest.HttpServerRequest,
  cause: Cause.Cause<unknown>,
  allowed: AllowedMethods
): Effect.Effect<HttpServerResponse.HttpServerResponse> => {
  for (const reason of cause.reasons) {
    const error = Cause.isFailReason(reason) ? reason.error : Cause.isDieReason(reason) ? reason.defect : undefined
    if (HttpServerError.isHttpServerError(error) && error.reason._tag === "RouteNotFound") {
      const path = pathOf(request.url)
      const methods = allowed.get(path)
      return Effect.succeed(
        methods === undefined
          ? errorResponse(404, "not_found", `no route for ${path}`)
          : errorResponse(405, "method_not_allowed", `${request.method} is not allowed on ${path}; use ${methods.join(", ")}`, {
            allow: methods.join(", ")
          })
      )
    }
  }
  return Effect.flatMap(HttpServerError.causeResponse(cause), ([response]) =>
    response.status < 500
      ? Effect.succeed(errorResponse(response.status, `http_${response.status}`, `request failed with status ${response.status}`))
      : Effect.as(
        Effect.logError("request failed", cause).pipe(Effect.annotateLogs({ requestId: request.headers[requestIdHeader] })),
        HttpServerResponse.jsonUnsafe(internalErrorBody, { status: response.status })
      ))
}

export const withErrorEnvelope = (options: {
  readonly allowed: AllowedMethods
  /** While draining, responses say `Connection: close`, so keep-alive clients reconnect elsewhere. */
  readonly isDraining: () => boolean
}) =>
<E, R>(
  request: HttpServerRequest.HttpServerRequest,
  httpEffect: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R> => {
  // Set by the RequestObserver on every request the Node server receives.
  const idHeader = { [requestIdHeader]: request.headers[requestIdHeader] ?? "" }
  return Effect.catchCause(httpEffect, (cause) => {
    if (!Cause.hasInterruptsOnly(cause)) return render(request, cause, options.allowed)
    // A client that hung up gets no answer: let the interruption through.
    if (isClientAbort(cause)) return Effect.failCause(cause)
    // Otherwise the server is stopping this request at the end of the drain.
    noteOutcome(NodeHttpServerRequest.toIncomingMessage(request) as IncomingMessage, { reason: shuttingDown.code })
    return Effect.succeed(shuttingDownResponse)
  }).pipe(
    Effect.map((response) =>
      HttpServerResponse.setHeaders(response, options.isDraining() ? { ...idHeader, connection: "close" } : idHeader)
    )
  )
}
