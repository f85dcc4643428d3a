/**
 * The router's own error responses, encoded with the contract's codecs
 * (`api/Errors.ts`): status, JSON body and headers come from one definition,
 * the one typed clients decode.
 */
import { Schema } from "effect"
import { HttpServerResponse } from "effect/http"
import {
  type InvalidRequest,
  InvalidRequestResponse,
  type Overloaded,
  OverloadedResponse,
  type PayloadTooLarge,
  PayloadTooLargeResponse,
  type Unauthorized,
  UnauthorizedResponse,
  type Unavailable,
  UnavailableResponse,
  type UnsupportedMediaType,
  UnsupportedMediaTypeResponse
} from "../api/Errors.ts"

export type ContractError =
  | InvalidRequest
  | Unauthorized
  | PayloadTooLarge
  | UnsupportedMediaType
  | Overloaded
  | Unavailable

const codecs = {
  InvalidRequest: { status: 400, encode: Schema.encodeSync(InvalidRequestResponse) },
  Unauthorized: { status: 401, encode: Schema.encodeSync(UnauthorizedResponse) },
  PayloadTooLarge: { status: 413, encode: Schema.encodeSync(PayloadTooLargeResponse) },
  UnsupportedMediaType: { status: 415, encode: Schema.encodeSync(UnsupportedMediaTypeResponse) },
  Overloaded: { status: 429, encode: Schema.encodeSync(OverloadedResponse) },
  Unavailable: { status: 503, encode: Schema.encodeSync(UnavailableResponse) }
} as const

export const contractErrorResponse = (error: ContractError): HttpServerResponse.HttpServerResponse => {
  const codec = codecs[error._tag]
  const { body, headers } = (codec.encode as (e: ContractError) => { body: unknown; headers: Record<string, string> })(
    error
  )
  return HttpServerResponse.jsonUnsafe(body, { status: codec.status, headers })
}
