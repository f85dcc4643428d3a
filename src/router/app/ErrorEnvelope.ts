/**
 * Global middleware for the routes on Effect's router (the HttpApp): gives every error the
 * HTTP framework produces itself (a defect, a failed body read) the router's JSON body
 * `{"error":{"code","message"}}`, answers 503 `shutting_down` for a request the
 * server stops at the end of a drain instead of dropping it, and echoes the
 * request id (set by the RequestObserver) on every response.
 */
import * as NodeHttpServerRequest from "@effect/platform-node/NodeHttpServerRequest"
import { Cause, Effect } from "effect"
import { HttpServerError, type HttpServerRequest, HttpServerResponse } from "effect/http"
import type { IncomingMessage } from "node:http"
import type { ErrorBody } from "../../api/Errors.ts"
import { requestIdHeader } from "../../api/Headers.ts"
import { type ContractError, encodeContractError, internalErrorBody, shuttingDown } from "../core/ContractErrors.ts"
import { noteOutcome } from "../core/RequestOutcome.ts"
import { answerHeaders } from "../core/ResponseHeaders.ts"

/** For the errors the contract does not declare (404, 405, 5xx, and those the Node server detects). */
const errorResponse = (
  status: number,
  code: string,
  message: string
): HttpServerResponse.HttpServerResponse =>
  HttpServerResponse.jsonUnsafe({ error: { code, message } } satisfies ErrorBody, { status })

const isClientAbort = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((reason) => Cause.isInterruptReason(reason) && reason.annotations.has(HttpServerError.ClientAbort.key))

/** An error of the contract's as an Effect response. */
export const contractErrorResponse = (error: ContractError): HttpServerResponse.HttpServerResponse => {
  const { body, headers, status } = encodeContractError(error)
  return HttpServerResponse.jsonUnsafe(body, { status, headers })
}

const shuttingDownResponse = contractErrorResponse(shuttingDown)

const render = (
  request: HttpServerRequest.HttpServerRequest,
  cause: Cause.Cause<unknown>
): Effect.Effect<HttpServerResponse.HttpServerResponse> =>
  Effect.flatMap(HttpServerError.causeResponse(cause), ([response]) =>
    response.status < 500
      ? Effect.succeed(errorResponse(response.status, `http_${response.status}`, `request failed with status ${response.status}`))
      : Effect.as(
        Effect.logError("request failed", cause).pipe(Effect.annotateLogs({ requestId: request.headers[requestIdHeader] })),
        HttpServerResponse.jsonUnsafe(internalErrorBody, { status: response.status })
      ))

export const withErrorEnvelope = (options: {
  /** While draining, responses say `Connection: close`, so keep-alive clients reconnect elsewhere. */
  readonly isDraining: () => boolean
}) =>
<E, R>(
  request: HttpServerRequest.HttpServerRequest,
  httpEffect: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R> => {
  // Set by the RequestObserver on every request the Node server receives.
  const requestId = request.headers[requestIdHeader] ?? ""
  return Effect.catchCause(httpEffect, (cause) => {
    if (!Cause.hasInterruptsOnly(cause)) return render(request, cause)
    // A client that hung up gets no answer: let the interruption through.
    if (isClientAbort(cause)) return Effect.failCause(cause)
    // Otherwise the server is stopping this request at the end of the drain.
    noteOutcome(NodeHttpServerRequest.toIncomingMessage(request) as IncomingMessage, { reason: shuttingDown.code })
    return Effect.succeed(shuttingDownResponse)
  }).pipe(
    Effect.map((response) =>
      HttpServerResponse.setHeaders(response, answerHeaders(requestId, options.isDraining()))
    )
  )
}
