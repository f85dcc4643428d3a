/**
 * Fixed router settings for tests: small limits (two slots) and no listening
 * address of their own; each test overrides what it is about.
 */
import { Layer } from "effect"
import { defaultSimulation, RouterConfig, type RouterSettings } from "../../src/router/core/Config.ts"

export const testSettings: RouterSettings = {
  modelRef: "test-model",
  modelRefDefaulted: false,
  maxConcurrency: 2,
  maxQueue: 20,
  queueTimeoutMs: 30_000,
  overloadStatus: 429,
  kvEndpoints: [],
  backend: "simulated",
  upstream: undefined,
  simLatencyMs: 100,
  simulation: defaultSimulation,
  maxBodyBytes: 1024 * 1024,
  shutdownDelayMs: 0,
  shutdownTimeoutMs: 25_000,
  headersTimeoutMs: 10_000,
  requestTimeoutMs: 30_000,
  clientStallTimeoutMs: 60_000,
  port: 8080,
  host: undefined,
  // More than one where the router allows it: the servers tests start take connections through a second listening socket too.
  listenSockets: process.platform === "linux" ? 2 : 1,
  podName: undefined,
  logLevel: "info",
  logFormat: "json",
  apiKeys: []
}

/** `RouterConfig` with the test settings, overridden by `overrides`. */
export const testConfigLayer = (overrides: Partial<RouterSettings> = {}): Layer.Layer<RouterConfig> =>
  Layer.succeed(RouterConfig, { ...testSettings, ...overrides })
