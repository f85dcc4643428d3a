/**
 * The bearer-token check for `/infer`, `/v1/*` and the simulator's routes
 * (declared in `api/Authorization.ts`).
 * With no API keys configured every request passes; otherwise the token must
 * match one of the keys.
 */
import { Redacted } from "effect"
import { createHash, timingSafeEqual } from "node:crypto"
import { Unauthorized } from "../../api/Errors.ts"

// Comparing fixed-length digests in constant time reveals neither the key nor its length.
const digest = (value: string) => createHash("sha256").update(value).digest()

const bearer = /^Bearer[ \t]+(\S+)[ \t]*$/i

/** Returns the rejection for an `Authorization` header value, or undefined when it may pass. */
export const makeBearerCheck = (apiKeys: ReadonlyArray<Redacted.Redacted<string>>) => {
  if (apiKeys.length === 0) return (_authorization: string | undefined): Unauthorized | undefined => undefined
  const keys = apiKeys.map((key) => digest(Redacted.value(key)))
  return (authorization: string | undefined): Unauthorized | undefined => {
    const token = authorization === undefined ? undefined : bearer.exec(authorization)?.[1]
    if (token === undefined) {
      // The header's value is not repeated: it may hold a secret meant for somebody else.
      return new Unauthorized({
        code: "unauthorized",
        message: authorization === undefined || authorization.trim() === ""
          ? "missing bearer token: send Authorization: Bearer <key>"
          : "the Authorization header is not a bearer token: send Authorization: Bearer <key> (one key, no blanks in it)"
      })
    }
    const presented = digest(token)
    // Check every key, so timing does not tell which one matched.
    let matched = false
    for (const key of keys) matched = timingSafeEqual(key, presented) || matched
    return matched ? undefined : new Unauthorized({ code: "unauthorized", message: "invalid bearer token" })
  }
}
