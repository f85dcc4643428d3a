/**
 * Bearer-token authentication (API_KEYS) on `/infer`, `/v1/*` and the
 * simulator's routes. Declared here so OpenAPI documents it and typed clients
 * can attach a token; the router checks it with `router/core/Authorization.ts`'s
 * `makeBearerCheck` in its request pipeline, not as this middleware.
 */
import { HttpApiMiddleware, HttpApiSecurity } from "effect/http-api"
import { UnauthorizedResponse } from "./Errors.ts"

export class Authorization extends HttpApiMiddleware.Service<Authorization>()("inference-router/Authorization", {
  security: { bearer: HttpApiSecurity.bearer },
  error: UnauthorizedResponse
}) {}
