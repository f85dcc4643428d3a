/**
 * Global middleware that gives every error response the router's JSON body,
 * `{"error":{"code","message"}}`, including the ones the HTTP framework makes
 * itself (unknown path, bad payload, body too large, unsupported media type)
 * whose default bodies are empty or plain text. It also enforces
 * MAX_BODY_BYTES: up front from Content-Length, and while reading otherwise.
 */
import { ByteSize, Cause, Effect } from "effect"
import { HttpIncomingMessage, HttpServerError, type HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApiError } from "effect/http-api"
import type { ErrorBody } from "../api/Errors.ts"

export const errorResponse = (
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

const pathOf = (url: string) => {
  const end = url.search(/[?#]/)
  return end === -1 ? url : url.slice(0, end)
}

const oneLine = (text: string) => text.replace(/\s*\n\s*/g, " ")

const hasEmptyBody = (request: HttpServerRequest.HttpServerRequest) =>
  request.headers["content-length"] === "0" ||
  (request.headers["content-length"] === undefined && request.headers["transfer-encoding"] === undefined)

const schemaErrorResponse = (request: HttpServerRequest.HttpServerRequest, error: HttpApiError.HttpApiSchemaError) => {
  const detail = oneLine(error.cause.message)
  switch (error.kind) {
    case "Payload":
      if (hasEmptyBody(request)) {
        return errorResponse(400, "invalid_body", "request body is empty: send a JSON object with a string \"prompt\"")
      }
      return detail.includes("valid JSON")
        ? errorResponse(400, "invalid_json", "request body is not valid JSON")
        : errorResponse(400, "invalid_body", `request body must be a JSON object with a string "prompt": ${detail}`)
    case "Headers":
      return errorResponse(400, "invalid_header", `invalid request header: ${detail}`)
    case "Query":
    case "Params":
      return errorResponse(400, "invalid_request", `invalid request ${error.kind.toLowerCase()}: ${detail}`)
    default:
      return undefined
  }
}

const render = (
  request: HttpServerRequest.HttpServerRequest,
  cause: Cause.Cause<unknown>,
  allowed: AllowedMethods,
  maxBodyBytes: number
): Effect.Effect<HttpServerResponse.HttpServerResponse> => {
  for (const reason of cause.reasons) {
    const error = Cause.isFailReason(reason) ? reason.error : Cause.isDieReason(reason) ? reason.defect : undefined
    if (HttpApiError.HttpApiSchemaError.is(error)) {
      const response = schemaErrorResponse(request, error)
      if (response !== undefined) return Effect.succeed(response)
    }
    if (HttpServerError.isHttpServerError(error)) {
      const inner = error.reason
      if (inner._tag === "RouteNotFound") {
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
      if (inner._tag === "RequestParseError" && inner.reason === "BodyTooLarge") {
        return Effect.succeed(payloadTooLarge(maxBodyBytes))
      }
    }
  }
  return Effect.flatMap(HttpServerError.causeResponse(cause), ([response]) => {
    if (response.status < 500) return Effect.succeed(envelope(response))
    return Effect.as(
      Effect.logError("request failed", cause),
      errorResponse(response.status, "internal_error", "the router failed to handle this request")
    )
  })
}

const isClientAbort = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((reason) => Cause.isInterruptReason(reason) && reason.annotations.has(HttpServerError.ClientAbort.key))

const shuttingDown = errorResponse(503, "shutting_down", "the router is shutting down and could not finish this request", {
  "retry-after": "1",
  "x-router-reject-reason": "shutting_down"
})

const payloadTooLarge = (maxBodyBytes: number) =>
  errorResponse(413, "payload_too_large", `request body exceeds MAX_BODY_BYTES (${maxBodyBytes} bytes)`)

const statusCodes: Record<number, string> = {
  400: "bad_request",
  404: "not_found",
  408: "request_timeout",
  413: "payload_too_large",
  415: "unsupported_media_type"
}

/** Wraps a framework error response that has no JSON body in the envelope. */
const envelope = (response: HttpServerResponse.HttpServerResponse): HttpServerResponse.HttpServerResponse => {
  if (response.status < 400 || response.headers["content-type"]?.startsWith("application/json")) return response
  if (response.status === 415) {
    return errorResponse(
      415,
      "unsupported_media_type",
      "send the request body as JSON with Content-Type: application/json"
    )
  }
  return errorResponse(
    response.status,
    statusCodes[response.status] ?? `http_${response.status}`,
    `request failed with status ${response.status}`
  )
}

/**
 * Wraps the whole request pipeline: every error response gets the JSON
 * envelope, MAX_BODY_BYTES is enforced, and a request the server stops at the
 * end of a drain is answered 503 `shutting_down` rather than dropped.
 */
export const withErrorEnvelope = (options: { readonly allowed: AllowedMethods; readonly maxBodyBytes: number }) => {
  const { allowed, maxBodyBytes } = options
  const maxBodySize = ByteSize.bytes(maxBodyBytes)
  return <E, R>(
    request: HttpServerRequest.HttpServerRequest,
    httpEffect: Effect.Effect<HttpServerResponse.HttpServerResponse, E, R>
  ): Effect.Effect<HttpServerResponse.HttpServerResponse, E, R> => {
    if (Number(request.headers["content-length"]) > maxBodyBytes) {
      return Effect.succeed(payloadTooLarge(maxBodyBytes))
    }
    return httpEffect.pipe(
      Effect.provideService(HttpIncomingMessage.MaxBodySize, maxBodySize),
      Effect.catchCause((cause) => {
        if (!Cause.hasInterruptsOnly(cause)) return render(request, cause, allowed, maxBodyBytes)
        // A client that hung up gets no answer: let the interruption through.
        if (isClientAbort(cause)) return Effect.failCause(cause)
        // Otherwise the server is stopping this request at the end of the drain.
        return Effect.succeed(shuttingDown)
      }),
      Effect.map(envelope)
    )
  }
}

/** Methods per path, derived from the HTTP contract plus any extra routes. */
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
