/**
 * The router's HTTP contract: endpoints, payloads, responses and errors. No
 * server code lives here, so typed clients and tests share it.
 */
import { Schema } from "effect"
import { HttpApi, HttpApiEndpoint, HttpApiGroup, HttpApiSchema, OpenApi } from "effect/http-api"
import { DecimalInt } from "../shared/DecimalInt.ts"
import { Authorization } from "./Authorization.ts"
import { queueTimeoutHeader, serverTimingHeader } from "./Headers.ts"
import { OpenAiGroup } from "./OpenAiApi.ts"
import {
  BadGatewayResponse,
  GatewayTimeoutResponse,
  InvalidRequestResponse,
  OverloadedResponse,
  PayloadTooLargeResponse,
  UnavailableResponse,
  UnsupportedMediaTypeResponse
} from "./Errors.ts"

export const InferRequest = Schema.Struct({
  prompt: Schema.String.annotate({ description: "The input for the model" })
}).annotate({ identifier: "InferRequest", description: "Unknown fields are ignored" })
export type InferRequest = typeof InferRequest.Type

/**
 * `curl -d '{"prompt":"hi"}'` sends JSON labelled as a form: read it as the
 * JSON it is rather than refusing it.
 */
export const InferRequestFromForm = Schema.fromJsonString(InferRequest).pipe(
  HttpApiSchema.asText({ contentType: "application/x-www-form-urlencoded" })
)

export const InferResponse = Schema.Struct({
  modelRef: Schema.String,
  prompt: Schema.String,
  routerPod: Schema.optionalKey(Schema.String),
  kvEndpoints: Schema.Array(Schema.String),
  processingMs: Schema.Int.annotate({
    description: "Whole milliseconds the model took, excluding time spent waiting for a slot"
  })
}).annotate({ identifier: "InferResponse" })
export type InferResponse = typeof InferResponse.Type


/** Routes served beside the `HttpApi` endpoints. */
export const openapiPath = "/openapi.json"
export const docsPath = "/docs"
export const metricsPath = "/metrics"


export const QueueBudgetMs = DecimalInt.check(Schema.isGreaterThanOrEqualTo(0)).annotate({ description: "Most milliseconds to wait for a slot; 0 = run now or be rejected" })

export const Health = Schema.Struct({ status: Schema.Literal("ok") })
export const Ready = Schema.Struct({ status: Schema.Literal("ready") })

/** Why the router is not ready: draining, or (MODEL_BACKEND=upstream) no model server can take requests. */
export const NotReadyStatus = Schema.Literals(["draining", "no_healthy_upstream"])
export class NotReady extends Schema.TaggedError<NotReady>()("NotReady", { status: NotReadyStatus }) {}
export const NotReadyResponse = NotReady.pipe(HttpApiSchema.encodeToWithHeaders({
  body: Schema.Struct({ status: NotReadyStatus }).pipe(HttpApiSchema.status(503)),
  headers: {}
}, {
  decode: ({ body }) => new NotReady({ status: body.status }),
  encode: (error) => ({ body: { status: error.status }, headers: {} })
}))

/** Liveness and readiness. */
export class ProbesGroup extends HttpApiGroup.make("probes", { topLevel: true })
  .add(
    HttpApiEndpoint.get("healthz", "/healthz", { success: Health }).annotate(
      OpenApi.Description,
      "Liveness: 200 while the process runs"
    ),
    HttpApiEndpoint.get("readyz", "/readyz", { success: Ready, error: NotReadyResponse }).annotate(
      OpenApi.Description,
      "Readiness: 200 when the router can serve; 503 while it drains, or while no upstream model server is healthy (MODEL_BACKEND=upstream)"
    ),
    HttpApiEndpoint.get("health", "/health", { success: Ready, error: NotReadyResponse }).annotate(
      OpenApi.Description,
      "vLLM's health path, answered as /readyz: so a router can be another router's upstream"
    )
  )
{}

/** The inference endpoint, behind admission control. */
export class InferenceGroup extends HttpApiGroup.make("inference", { topLevel: true })
  .add(
    HttpApiEndpoint.post("infer", "/infer", {
      payload: [InferRequest, InferRequestFromForm],
      headers: { [queueTimeoutHeader]: Schema.optionalKey(QueueBudgetMs) },
      success: HttpApiSchema.WithHeaders(InferResponse, {
        [serverTimingHeader]: Schema.String.annotate({ description: "queue;dur=<ms>, model;dur=<ms>" })
      }),
      error: [
        InvalidRequestResponse,
        PayloadTooLargeResponse,
        UnsupportedMediaTypeResponse,
        OverloadedResponse,
        UnavailableResponse,
        BadGatewayResponse,
        GatewayTimeoutResponse
      ]
    }).middleware(Authorization).annotate(
      OpenApi.Description,
      "Run the model on a prompt, within the admission limits. Needs a bearer token when API keys are configured."
    )
  )
{}

export class RouterApi extends HttpApi.make("inference-router")
  .add(ProbesGroup)
  .add(InferenceGroup)
  .add(OpenAiGroup)
  .annotateMerge(OpenApi.annotations({
    title: "inference-router",
    version: "0.1.0",
    description: "Data-plane entrypoint of an InferenceService"
  }))
{}
