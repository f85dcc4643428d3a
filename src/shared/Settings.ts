/**
 * Reading settings from the environment, for both programs: every variable
 * through Effect's `Config` (so tests swap the `ConfigProvider`), validated
 * with `Schema`, and every failure one `InvalidSetting` whose message is the
 * line an operator sees: the variable, the value and what is expected.
 *
 * Only a missing or empty variable is "unset" (an empty value is how
 * manifests often unset one); a provider that cannot be read is an error
 * naming the variable, never silently a default.
 */
import { Config, Data, Effect, Option, Schema } from "effect"
import { decimalAtLeast, decimalBetween, DecimalInt } from "./DecimalInt.ts"

export { decimalAtLeast, decimalBetween, DecimalInt }

export class InvalidSetting extends Data.TaggedError("InvalidSetting")<{
  readonly variable: string
  readonly value: string
  readonly expected: string
}> {
  override get message() {
    return `invalid configuration: ${this.variable}=${JSON.stringify(this.value)}: expected ${this.expected}`
  }
}

/** The provider failed to read the variable (not the same as unset). */
export class UnreadableSetting extends Data.TaggedError("UnreadableSetting")<{
  readonly variable: string
  readonly reason: string
}> {
  override get message() {
    return `invalid configuration: ${this.variable} could not be read: ${this.reason}`
  }
}

export type SettingError = InvalidSetting | UnreadableSetting

/** One of `values`, blanks trimmed. */
export const oneOf = <const L extends ReadonlyArray<string>>(values: L) =>
  Schema.Trim.pipe(Schema.decodeTo(Schema.Literals(values)))

/** The variable's raw value; undefined when it is missing, empty or blank. */
export const rawSetting = (variable: string): Effect.Effect<string | undefined, UnreadableSetting> =>
  Effect.gen(function*() {
    return yield* Config.option(Config.String(variable))
  }).pipe(
    Effect.mapError((error) => new UnreadableSetting({ variable, reason: error.message })),
    Effect.map((raw) => Option.isSome(raw) && raw.value.trim() !== "" ? raw.value : undefined)
  )

/** The variable's value trimmed; undefined when unset. */
export const optionalString = (variable: string): Effect.Effect<string | undefined, UnreadableSetting> =>
  Effect.map(rawSetting(variable), (raw) => raw?.trim())

/**
 * Reads one optional variable and validates it; `fallback` when it is unset.
 * `shown` is what the error quotes of the value (e.g. with credentials masked).
 */
export const setting = <A>(
  variable: string,
  schema: Schema.Codec<A, string>,
  expected: string,
  fallback: () => A
): Effect.Effect<A, SettingError> =>
  Effect.flatMap(rawSetting(variable), (raw) =>
    raw === undefined ? Effect.succeed(fallback()) : Schema.decodeUnknownEffect(schema)(raw).pipe(
      Effect.mapError(() => new InvalidSetting({ variable, value: raw, expected }))
    ))

export type LogLevelName = "debug" | "info" | "warn" | "error"
export type LogFormat = "json" | "pretty"

export const logLevelSetting = setting(
  "LOG_LEVEL",
  oneOf(["debug", "info", "warn", "error"]),
  "one of debug, info, warn, error",
  () => "info" as const
)

export const logFormatSetting = setting(
  "LOG_FORMAT",
  oneOf(["json", "pretty"]),
  "json or pretty",
  () => "json" as const
)
