/**
 * The router's own errors (`api/Errors.ts`), encoded with the contract's
 * codecs: status, JSON body and headers come from one definition, the one
 * typed clients decode. Pure: the Node writers are in edge/ContractErrors.ts,
 * the Effect response in app/ErrorEnvelope.ts.
 */
import { Schema } from "effect"
import {
  type BadGateway,
  BadGatewayResponse,
  type ErrorBody,
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

/** For a request the server stops at the end of a drain instead of dropping it. */
export const shuttingDown = new Unavailable({
  code: "shutting_down",
  message: "the router is shutting down and could not finish this request",
  retryAfterSeconds: 1
})

/** The body of a 5xx: what went wrong is logged, not sent. */
export const internalErrorBody: ErrorBody = {
  error: { code: "internal_error", message: "the router failed to handle this request" }
}
