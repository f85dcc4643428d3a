/**
 * The router's settings as a service: read once from the environment at
 * start-up (the contract, defaults and parser are in Settings.ts; tests build
 * fixed settings with test/support/TestSettings.ts).
 */
import { Context, Layer } from "effect"
import type { SettingError } from "../../shared/Settings.ts"
import { loadSettings, type RouterSettings } from "./Settings.ts"

export * from "./Settings.ts"

export class RouterConfig extends Context.Service<RouterConfig, RouterSettings>()("inference-router/RouterConfig") {
  /** Reads the settings from the current `ConfigProvider` (the environment by default). */
  static readonly layer: Layer.Layer<RouterConfig, SettingError> = Layer.effect(RouterConfig, loadSettings)
}
