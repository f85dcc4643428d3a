/**
 * The router's own error responses, encoded with the contract's codecs
 * (`api/Errors.ts`): status, JSON body and headers come from one definition,
 * the one typed clients decode. Written either as an Effect response (routes on
 * Effect's router) or straight to Node's response (the pipeline's routes, see Pipeline.ts).
 */
import { Schema } from "effect"
import { HttpServerResponse } from "effect/http"
import type { ServerResponse } from "node:http"
import {
  type BadGateway,
  BadGatewayResponse,
  errorStatus,
  type GatewayTimeout,
  GatewayTimeoutResponse,
  type InvalidRequest,
  InvalidRequestResponse,
  type Overloaded,
  OverloadedResponse,
  type PayloadTooLarge,
  PayloadTooLargeResponse,
  type Unauthorized,
  UnauthorizedResponse,
  Unavailable,
  UnavailableResponse,
  type UnsupportedMediaType,
  UnsupportedMediaTypeResponse
} from "../../api/Errors.ts"

export type ContractError =
  | InvalidRequest
  | Unauthorized
  | PayloadTooLarge
  | UnsupportedMediaType
  | Overloaded
  | Unavailable
  | BadGateway
  | GatewayTimeout

const encoders = {
  InvalidRequest: Schema.encodeSync(InvalidRequestResponse),
  Unauthorized: Schema.encodeSync(UnauthorizedResponse),
  PayloadTooLarge: Schema.encodeSync(PayloadTooLargeResponse),
  UnsupportedMediaType: Schema.encodeSync(UnsupportedMediaTypeResponse),
  Overloaded: Schema.encodeSync(OverloadedResponse),
  Unavailable: Schema.encodeSync(UnavailableResponse),
  BadGateway: Schema.encodeSync(BadGatewayResponse),
  GatewayTimeout: Schema.encodeSync(GatewayTimeoutResponse)
} as const

interface EncodedError {
  readonly status: number
  readonly headers: Readonly<Record<string, string>>
  readonly body: unknown
}

export const encodeContractError = (error: ContractError): EncodedError => {
  const encode = encoders[error._tag] as (e: ContractError) => { body: unknown; headers: Record<string, string> }
  const { body, headers } = encode(error)
  return { status: errorStatus[error._tag], headers, body }
}

export const contractErrorResponse = (error: ContractError): HttpServerResponse.HttpServerResponse => {
  const { body, headers, status } = encodeContractError(error)
  return HttpServerResponse.jsonUnsafe(body, { status, headers })
}

/** Writes `body` as the whole JSON response. */
export const writeJson = (
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Readonly<Record<string, string>>
): void => {
  const text = JSON.stringify(body)
  response.writeHead(status, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(text) })
  response.end(text)
}

/** Writes the error as the whole response, with `extraHeaders` (request id, `Connection: close`). */
export const writeContractError = (
  response: ServerResponse,
  error: ContractError,
  extraHeaders: Readonly<Record<string, string>>
): void => {
  const { body, headers, status } = encodeContractError(error)
  writeJson(response, status, body, { ...headers, ...extraHeaders })
}

/** For a request the server stops at the end of a drain instead of dropping it. */
export const shuttingDown = new Unavailable({
  code: "shutting_down",
  message: "the router is shutting down and could not finish this request",
  retryAfterSeconds: 1
})
