/**
 * Whether the controller applies a spec, checked in three steps, each
 * failure one line naming the field:
 * 1. the contract's schema (a manifest stored before the CRD was updated);
 * 2. the CRD's own rules that span fields (its CEL rules, the name, the env
 *    deny list, duplicate env names), so `render` in CI refuses what
 *    `kubectl apply` would, and an object stored under an older CRD is
 *    refused rather than rendered into children a real API server refuses;
 * 3. what no schema can check: requests over limits, and the env the router
 *    would get, run through the router's own settings parser.
 * A spec that fails is reported (`Ready=False`, reason `InvalidSpec`) and
 * its children are left as they are.
 */
import { ConfigProvider, Effect, Exit, Schema } from "effect"
import { InferenceServiceSpec, type UpstreamSpec } from "../api/InferenceService.ts"
import { loadSettings } from "../router/core/Settings.ts"
import { defaults, deniedEnvNames, envDecisions, resourceProblems, routerEnv } from "./Desired.ts"
import { oneLine } from "../shared/SchemaMessage.ts"

export type SpecCheck =
  | { readonly _tag: "Valid"; readonly spec: InferenceServiceSpec }
  | { readonly _tag: "Invalid"; readonly message: string }

const decodeSpec = Schema.decodeUnknownExit(InferenceServiceSpec)

/** Env values the router would read (those from the downward API and Secrets are not known here). */
const plainEnv = (spec: InferenceServiceSpec, name: string): Record<string, string> => {
  const env: Record<string, string> = {}
  // The namespace is not known here: any one gives UPSTREAM_SHARED_SCOPE the same shape.
  for (const item of routerEnv(spec, { namespace: "default", name })) if (typeof item.value === "string") env[item.name as string] = item.value
  return env
}

const dns1035Label = /^[a-z]([-a-z0-9]*[a-z0-9])?$/
/** The longest name whose children's names (`<name>-router`) are still DNS labels (63). */
export const maxNameLength = 56

/** The metadata.name rules of the CRD (a Service named `<name>-router` must be a DNS-1035 label). */
export const nameProblem = (name: string): string | undefined => {
  if (name.length > maxNameLength) {
    return `metadata.name: ${JSON.stringify(name)} is longer than ${maxNameLength} characters: its Service is <name>-router, a DNS label of at most 63`
  }
  if (!dns1035Label.test(name)) {
    return `metadata.name: ${JSON.stringify(name)} is not a DNS-1035 label (lower case letters, digits and '-', starting with a letter): its Service is <name>-router`
  }
  return undefined
}

/**
 * The KV events publisher an upstream names, as `host:port` (host lower-cased,
 * an IPv6 address in brackets): the tcp:// endpoint, or the url's host and the
 * kvEvents port (each address of a dns+ name). Undefined without kvEvents.
 */
export const kvEventsPublisher = (upstream: UpstreamSpec): string | undefined => {
  const kvEvents = upstream.kvEvents
  if (kvEvents === undefined) return undefined
  if (typeof kvEvents === "string") {
    const colon = kvEvents.lastIndexOf(":")
    return `${kvEvents.slice("tcp://".length, colon).toLowerCase()}:${Number(kvEvents.slice(colon + 1))}`
  }
  try {
    return `${new URL(upstream.url.replace(/^dns\+/, "")).hostname.toLowerCase()}:${kvEvents}`
  } catch {
    // A url the router's parser refuses (reported with its words once the spec's rules pass).
    return undefined
  }
}

/** The CRD's rules that span fields, with the path of the field each names (the CRD's CEL rules say the same). */
export const crossFieldProblems = (spec: InferenceServiceSpec): ReadonlyArray<string> => {
  const problems: Array<string> = []
  if (spec.replicas !== undefined && spec.maxReplicas !== undefined) {
    problems.push("spec.replicas: set replicas for a fixed count, or minReplicas/maxReplicas to autoscale, not both")
  }
  if (spec.minReplicas !== undefined && spec.maxReplicas === undefined) problems.push("spec.minReplicas: minReplicas needs maxReplicas (autoscaling)")
  if (spec.minReplicas !== undefined && spec.maxReplicas !== undefined && spec.minReplicas > spec.maxReplicas) {
    problems.push("spec.minReplicas: minReplicas must be <= maxReplicas")
  }
  if ((spec.scaleMetric !== undefined || spec.scaleTarget !== undefined) && spec.maxReplicas === undefined) {
    problems.push(`spec.${spec.scaleMetric !== undefined ? "scaleMetric" : "scaleTarget"}: scaleMetric and scaleTarget need maxReplicas (autoscaling)`)
  }
  if (spec.scaleTarget !== undefined && (spec.scaleMetric ?? defaults.scaleMetric) === "cpu" && spec.scaleMetric !== undefined && spec.scaleTarget > 100) {
    problems.push("spec.scaleTarget: scaleTarget for scaleMetric cpu is a utilization percentage, 1-100")
  }
  const delay = spec.router?.shutdownDelayMs ?? defaults.shutdownDelayMs
  const timeout = spec.router?.shutdownTimeoutMs ?? defaults.shutdownTimeoutMs
  if (delay >= timeout) {
    problems.push(`spec.router.shutdownDelayMs: ${delay} must be less than shutdownTimeoutMs (${timeout}), which bounds the whole drain`)
  }
  const headers = spec.router?.headersTimeoutMs
  const request = spec.router?.requestTimeoutMs ?? 30_000
  if (headers !== undefined && headers > request) {
    problems.push(`spec.router.headersTimeoutMs: ${headers} must be <= requestTimeoutMs (${request})`)
  }
  if ((spec.kvEndpoints ?? []).length > 0 && spec.kvEndpointsSecretRef !== undefined) {
    problems.push("spec.kvEndpointsSecretRef: set kvEndpoints or kvEndpointsSecretRef, not both")
  }
  // The scheduler's fields: only where the router reads them (the CRD's rules say the same).
  const upstreams = spec.upstreams ?? []
  const cacheAware = spec.routing?.scheduler === "cache-aware"
  if (spec.routing !== undefined && upstreams.length === 0) {
    problems.push("spec.routing: routing needs upstreams: the scheduler picks among them (without upstreams the router serves the simulated model)")
  }
  const cacheAwareOnly = (["loadBoundPercent", "metricsIntervalMs"] as const).filter((field) => spec.routing?.[field] !== undefined)
  if (cacheAwareOnly.length > 0 && !cacheAware) {
    // One problem naming each field set (the CRD's rule says it once too).
    problems.push(
      `spec.routing.${cacheAwareOnly[0]}: ${cacheAwareOnly.join(" and ")} ${cacheAwareOnly.length === 1 ? "needs" : "need"} scheduler: cache-aware (the least-request scheduler reads neither loadBoundPercent nor metricsIntervalMs)`
    )
  }
  for (const [index, upstream] of upstreams.entries()) {
    if (upstream.kvEvents === undefined) continue
    if (!cacheAware) {
      problems.push(`spec.upstreams[${index}].kvEvents: upstreams[].kvEvents needs routing.scheduler: cache-aware (only that scheduler reads KV events)`)
    }
    if (typeof upstream.kvEvents === "string" && upstream.url.startsWith("dns+")) {
      problems.push(`spec.upstreams[${index}].kvEvents: kvEvents of a dns+ url must be a port: each address of the name publishes its own events`)
    }
  }
  // One publisher per upstream: two upstreams following one publisher each get the other's events.
  const publishers = new Map<string, number>()
  for (const [index, upstream] of upstreams.entries()) {
    const publisher = kvEventsPublisher(upstream)
    if (publisher === undefined) continue
    const first = publishers.get(publisher)
    if (first === undefined) publishers.set(publisher, index)
    else {
      problems.push(
        `spec.upstreams[${index}].kvEvents: upstreams[${first}] and upstreams[${index}] name one KV events publisher (${publisher}): each would get the other's events; an upstream's kvEvents must be its own server's publisher`
      )
    }
  }
  const denied = new Set(deniedEnvNames())
  const seen = new Set<string>()
  for (const [index, item] of (spec.env ?? []).entries()) {
    if (denied.has(item.name)) {
      problems.push(`spec.env[${index}].name: ${item.name} is the router's own setting, set by the controller; use the spec's fields`)
    }
    if (seen.has(item.name)) problems.push(`spec.env[${index}].name: ${item.name} is listed twice`)
    seen.add(item.name)
  }
  return problems
}

const firstFailure = (cause: { readonly reasons: ReadonlyArray<{ readonly _tag: string }> }): unknown => {
  const reason = cause.reasons.find((r) => r._tag === "Fail") as { readonly error: unknown } | undefined
  return reason?.error
}

/** Checks an InferenceService's spec (and its name, when given) as the API server and the router would. */
export const checkSpec = (raw: unknown, name?: string): SpecCheck => {
  const problem = name === undefined ? undefined : nameProblem(name)
  if (problem !== undefined) return { _tag: "Invalid", message: `invalid spec: ${problem}` }
  const decoded = decodeSpec(raw)
  if (Exit.isFailure(decoded)) {
    const error = firstFailure(decoded.cause) as Error | undefined
    const message = error === undefined ? "the spec could not be read" : String(error.message)
    return { _tag: "Invalid", message: `invalid spec: ${oneLine(message)}` }
  }
  const spec = decoded.value
  const problems = [...crossFieldProblems(spec), ...resourceProblems(spec)]
  if (problems.length > 0) return { _tag: "Invalid", message: `invalid spec: ${problems.join("; ")}` }
  const settings = Effect.runSyncExit(
    Effect.provide(loadSettings, ConfigProvider.layer(ConfigProvider.fromEnv({ env: plainEnv(spec, name ?? "inference-service") })))
  )
  if (Exit.isFailure(settings)) {
    const error = firstFailure(settings.cause) as { readonly message: string; readonly variable?: string } | undefined
    // The field the setting comes from, so the status names what to edit.
    const decision = envDecisions.find((d) => d.variable === error?.variable)
    // A Secret's value is not known here: a rejected secret-or-plain setting came from its plain field.
    const field = decision === undefined
      ? ""
      : decision.from === "spec"
      ? `spec.${decision.field}: `
      : decision.from === "secret"
      ? `spec.${decision.plain?.field ?? decision.field}: `
      : "spec.env: "
    return { _tag: "Invalid", message: `the router would reject this spec: ${field}${error?.message ?? "its settings"}` }
  }
  return { _tag: "Valid", spec }
}
