/**
 * The errors the router answers with. On the wire every one is
 * `{"error":{"code":"<snake_case>","message":"<sentence>"}}`; in code each is a
 * tagged error that handlers fail with and typed clients decode back.
 */
import { Schema } from "effect"
import { HttpApiSchema } from "effect/http-api"
import { bearerChallenge, rejectReasonHeader, wwwAuthenticateHeader } from "./Headers.ts"

export const ErrorDetail = Schema.Struct({
  code: Schema.String.annotate({ description: "Machine-readable snake_case reason" }),
  message: Schema.String.annotate({ description: "Human-readable sentence naming the problem" })
})

/** The JSON body of every error response. */
export const ErrorBody = Schema.Struct({ error: ErrorDetail }).annotate({ identifier: "ErrorBody" })
export type ErrorBody = typeof ErrorBody.Type

const errorFields = { code: Schema.String, message: Schema.String }

/** Malformed request: invalid JSON, a body without a string `prompt`, or an invalid header. */
export class InvalidRequest extends Schema.TaggedError<InvalidRequest>()("InvalidRequest", errorFields) {}

/** Body larger than MAX_BODY_BYTES. */
export class PayloadTooLarge extends Schema.TaggedError<PayloadTooLarge>()("PayloadTooLarge", errorFields) {}

/** Body in a content type the endpoint does not read. */
export class UnsupportedMediaType extends Schema.TaggedError<UnsupportedMediaType>()("UnsupportedMediaType", errorFields) {}

const rejectionFields = {
  ...errorFields,
  retryAfterSeconds: Schema.Int
}

/** Shed by admission control (429): all slots busy and no room or time left to queue. */
export class Overloaded extends Schema.TaggedError<Overloaded>()("Overloaded", rejectionFields) {}

/** Not served now (503): shedding with OVERLOAD_STATUS=503, or shutting down. */
export class Unavailable extends Schema.TaggedError<Unavailable>()("Unavailable", rejectionFields) {}

/** MODEL_BACKEND=upstream: no model server gave a usable answer (unreachable, failed, or broke off). */
export class BadGateway extends Schema.TaggedError<BadGateway>()("BadGateway", errorFields) {}

/** MODEL_BACKEND=upstream: the model server sent no response within UPSTREAM_FIRST_BYTE_TIMEOUT_MS. */
export class GatewayTimeout extends Schema.TaggedError<GatewayTimeout>()("GatewayTimeout", errorFields) {}

/** The status of each error the contract declares: the one table codecs and writers share. */
export const errorStatus = {
  InvalidRequest: 400,
  Unauthorized: 401,
  PayloadTooLarge: 413,
  UnsupportedMediaType: 415,
  Overloaded: 429,
  BadGateway: 502,
  Unavailable: 503,
  GatewayTimeout: 504
} as const


const asErrorBody = <E extends { readonly code: string; readonly message: string }>(
  self: Schema.Codec<E, any>,
  status: number,
  make: (detail: typeof ErrorDetail.Type) => E
) =>
  self.pipe(HttpApiSchema.encodeToWithHeaders({
    body: ErrorBody.pipe(HttpApiSchema.status(status)),
    headers: {}
  }, {
    decode: ({ body }) => make(body.error),
    encode: (error) => ({ body: { error: { code: error.code, message: error.message } }, headers: {} })
  }))

const asRejection = <E extends { readonly code: string; readonly message: string; readonly retryAfterSeconds: number }>(
  self: Schema.Codec<E, any>,
  status: number,
  make: (fields: { code: string; message: string; retryAfterSeconds: number }) => E
) =>
  self.pipe(HttpApiSchema.encodeToWithHeaders({
    body: ErrorBody.pipe(HttpApiSchema.status(status)),
    headers: {
      "retry-after": Schema.NumberFromString.pipe(Schema.decodeTo(Schema.Int)),
      [rejectReasonHeader]: Schema.String
    }
  }, {
    decode: ({ body, headers }) =>
      make({ code: body.error.code, message: body.error.message, retryAfterSeconds: headers["retry-after"] }),
    encode: (error) => ({
      body: { error: { code: error.code, message: error.message } },
      headers: { "retry-after": error.retryAfterSeconds, [rejectReasonHeader]: error.code }
    })
  }))

export const InvalidRequestResponse = asErrorBody(InvalidRequest, errorStatus.InvalidRequest, (detail) => new InvalidRequest(detail))
export const PayloadTooLargeResponse = asErrorBody(PayloadTooLarge, errorStatus.PayloadTooLarge, (detail) => new PayloadTooLarge(detail))
export const UnsupportedMediaTypeResponse = asErrorBody(
  UnsupportedMediaType,
  errorStatus.UnsupportedMediaType,
  (detail) => new UnsupportedMediaType(detail)
)
export const OverloadedResponse = asRejection(Overloaded, errorStatus.Overloaded, (fields) => new Overloaded(fields))
export const UnavailableResponse = asRejection(Unavailable, errorStatus.Unavailable, (fields) => new Unavailable(fields))
export const BadGatewayResponse = asErrorBody(BadGateway, errorStatus.BadGateway, (detail) => new BadGateway(detail))
export const GatewayTimeoutResponse = asErrorBody(GatewayTimeout, errorStatus.GatewayTimeout, (detail) => new GatewayTimeout(detail))

/** Missing or wrong bearer token on /infer, when API keys are configured. */
export class Unauthorized extends Schema.TaggedError<Unauthorized>()("Unauthorized", errorFields) {}

export const UnauthorizedResponse = Unauthorized.pipe(HttpApiSchema.encodeToWithHeaders({
  body: ErrorBody.pipe(HttpApiSchema.status(errorStatus.Unauthorized)),
  headers: { [wwwAuthenticateHeader]: Schema.String }
}, {
  decode: ({ body }) => new Unauthorized(body.error),
  encode: (error) => ({
    body: { error: { code: error.code, message: error.message } },
    headers: { [wwwAuthenticateHeader]: bearerChallenge }
  })
}))
