/**
 * The bearer-token check for `/infer`. With no API keys configured it lets
 * every request through; otherwise the token must match one of the keys.
 */
import { Effect, Layer, Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { Authorization } from "../api/Authorization.ts"
import { Unauthorized } from "../api/Errors.ts"
import { RouterConfig } from "../Config.ts"

// Comparing fixed-length digests in constant time reveals neither the key nor its length.
const digest = (value: string) => createHash("sha256").update(value).digest()

export const AuthorizationLayer = Layer.effect(
  Authorization,
  RouterConfig.useSync((config) => {
    const keys = config.apiKeys.map((key) => digest(Redacted.value(key)))
    return Authorization.of({
      bearer: (httpEffect, { credential }) => {
        if (keys.length === 0) return httpEffect
        const token = Redacted.value(credential)
        if (token === "") {
          return Effect.fail(new Unauthorized({ code: "unauthorized", message: "missing bearer token: send Authorization: Bearer <key>" }))
        }
        const presented = digest(token)
        // Check every key, so timing does not tell which one matched.
        let matched = false
        for (const key of keys) matched = timingSafeEqual(key, presented) || matched
        return matched ? httpEffect : Effect.fail(new Unauthorized({ code: "unauthorized", message: "invalid bearer token" }))
      }
    })
  })
)
