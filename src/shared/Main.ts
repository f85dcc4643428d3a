/**
 * What both programs' `main` share: how a failure is reported and how the
 * process exits. Run nothing here; each `main` runs its program.
 */
import { Cause, Effect, Exit, type Runtime } from "effect"

/**
 * A signal is a requested stop: once the program has wound down, exit 0 (not
 * 130), so Kubernetes and supervisors see a clean shutdown.
 */
export const exitOnSignal: Runtime.Teardown = (exit, onExit) =>
  Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : onExit(Exit.isSuccess(exit) ? 0 : 1)

/** The first line of what went wrong: an error's message, or a defect's. */
export const describeCause = (cause: Cause.Cause<unknown>): string => {
  for (const reason of cause.reasons) {
    const value = Cause.isFailReason(reason) ? reason.error : Cause.isDieReason(reason) ? reason.defect : undefined
    if (value === undefined) continue
    const text = value instanceof Error ? (value.message || value.name) : String(value)
    const line = text.split("\n").find((part) => part.trim() !== "")?.trim()
    if (line === undefined) continue
    const code = value instanceof Error && "code" in value && typeof value.code === "string" ? value.code : undefined
    return code === undefined || line.includes(code) ? line : `${line} (${code})`
  }
  return Cause.pretty(cause).split("\n")[0] ?? "unknown failure"
}

/**
 * Every way the program can fail (an error, a defect) prints one line on
 * stderr, `<program>: <cause>`. Effect's own error report is turned off in
 * `runMain` so that line is the only one; nothing is swallowed.
 */
export const reportFailure = (program: string) => <A, E, R>(self: Effect.Effect<A, E, R>) =>
  Effect.tapCause(self, (cause) =>
    Cause.hasInterruptsOnly(cause) ? Effect.void : Effect.sync(() => {
      process.stderr.write(`${program}: ${describeCause(cause)}\n`)
    }))
