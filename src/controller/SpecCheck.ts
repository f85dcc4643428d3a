/**
 * What the CRD's schema cannot check: the spec decoded with the contract's
 * schema (a manifest applied before the CRD was updated, say), then the env
 * the router would get, run through the router's own settings parser. A
 * spec that fails either is reported (`Ready=False`, reason `InvalidSpec`,
 * the router's own one-line message) and its children are left as they are.
 */
import { ConfigProvider, Effect, Exit, Schema } from "effect"
import { InferenceServiceSpec } from "../api/InferenceService.ts"
import { loadSettings } from "../router/core/Settings.ts"
import { routerEnv } from "./Desired.ts"

export type SpecCheck =
  | { readonly _tag: "Valid"; readonly spec: InferenceServiceSpec }
  | { readonly _tag: "Invalid"; readonly message: string }

const decodeSpec = Schema.decodeUnknownExit(InferenceServiceSpec)

/** Env values the router would read (those from the downward API and Secrets are not known here). */
const plainEnv = (spec: InferenceServiceSpec): Record<string, string> => {
  const env: Record<string, string> = {}
  for (const item of routerEnv(spec)) if (typeof item.value === "string") env[item.name as string] = item.value
  return env
}

export const checkSpec = (raw: unknown): SpecCheck => {
  const decoded = decodeSpec(raw)
  if (Exit.isFailure(decoded)) {
    const error = decoded.cause.reasons.find((reason) => reason._tag === "Fail")
    const message = error?._tag === "Fail" ? String((error.error as Error).message) : "the spec could not be read"
    return { _tag: "Invalid", message: `invalid spec: ${message.replace(/\s*\n\s*/g, " ")}` }
  }
  const spec = decoded.value
  const settings = Effect.runSyncExit(
    Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: plainEnv(spec) })))
  )
  if (Exit.isFailure(settings)) {
    const error = settings.cause.reasons.find((reason) => reason._tag === "Fail")
    const message = error?._tag === "Fail" ? error.error.message : "the router would reject its settings"
    return { _tag: "Invalid", message: `the router would reject this spec: ${message}` }
  }
  return { _tag: "Valid", spec }
}
