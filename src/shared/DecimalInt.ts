/**
 * Whole numbers as people write them in settings and headers.
 */
import { Schema } from "effect"

/**
 * A whole number written in decimal digits only, optionally surrounded by
 * blanks: `JavaScript`'s `Number()` would also take `0x10`, `1e2`, `0b11`,
 * `+7`, and read "" as 0. At most 15 digits, so the value is exact.
 */
export const DecimalInt = Schema.Trim.pipe(
  Schema.check(Schema.isPattern(/^[0-9]{1,15}$/, { expected: "decimal digits" })),
  Schema.decodeTo(Schema.NumberFromString),
  Schema.decodeTo(Schema.Int)
)

/** `DecimalInt` at least `min`. */
export const decimalAtLeast = (min: number) => DecimalInt.check(Schema.isGreaterThanOrEqualTo(min))

/** `DecimalInt` from `min` to `max`. */
export const decimalBetween = (min: number, max: number) =>
  DecimalInt.check(Schema.isBetween({ minimum: min, maximum: max }))

