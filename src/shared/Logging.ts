/**
 * Logging for both programs: JSON lines on stdout (LOG_FORMAT=pretty for
 * humans), filtered at LOG_LEVEL.
 */
import { Layer, Logger, References } from "effect"
import type { LogFormat, LogLevelName } from "./Settings.ts"

const effectLogLevel: Record<LogLevelName, "Debug" | "Info" | "Warn" | "Error"> = {
  debug: "Debug",
  info: "Info",
  warn: "Warn",
  error: "Error"
}

export const loggingLayer = (settings: { readonly logLevel: LogLevelName; readonly logFormat: LogFormat }) =>
  Layer.mergeAll(
    Logger.layer([settings.logFormat === "pretty" ? Logger.consolePretty() : Logger.consoleJson]),
    Layer.succeed(References.MinimumLogLevel, effectLogLevel[settings.logLevel])
  )
