/**
 * Bearer-token authentication for `/infer`. Declared here so OpenAPI documents
 * it and typed clients can attach a token; implemented in `router/core/Authorization.ts`.
 */
import { HttpApiMiddleware, HttpApiSecurity } from "effect/http-api"
import { UnauthorizedResponse } from "./Errors.ts"

export class Authorization extends HttpApiMiddleware.Service<Authorization>()("inference-router/Authorization", {
  security: { bearer: HttpApiSecurity.bearer },
  error: UnauthorizedResponse
}) {}
