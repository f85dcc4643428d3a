/**
 * What the API server does with a CRD's schema on create, for the tests (no
 * API server can run here): structural validation (ajv over the
 * openAPIV3Schema, which is JSON Schema plus `x-kubernetes-*` extensions),
 * defaulting (ajv's `useDefaults`, as the API server defaults before it
 * validates), and the CEL rules (`x-kubernetes-validations`) evaluated with a
 * CEL library on each value they are attached to, after defaulting.
 *
 * `admit` rejects unknown fields (stricter than the API server, which prunes
 * them: `prune` does that, and the stand-in API server prunes before it
 * admits). List-map lists (`x-kubernetes-list-type: map`) refuse duplicate
 * keys, as the API server does.
 *
 * The CEL rules run after structural errors that do not block them (a
 * pattern, a bound), as the API server runs them.
 *
 * Not modelled: CEL cost limits (the CRD's comments give hand estimates),
 * `oldSelf` transition rules, the API server's exact error wording.
 */
import { Environment } from "@marcbachmann/cel-js"
import { Ajv } from "ajv"
import { readFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { parse } from "yaml"

const crdFile = fileURLToPath(new URL("../../deploy/controller/crd.yaml", import.meta.url))

export const crd = parse(readFileSync(crdFile, "utf8"))
export const openApiSchema = crd.spec.versions[0].schema.openAPIV3Schema

interface Rule {
  readonly rule: string
  readonly message: string
}

/** A copy of the schema ajv understands: `additionalProperties: false` where Kubernetes prunes. */
const forAjv = (schema: any, top = false): any => {
  if (Array.isArray(schema)) return schema.map((item) => forAjv(item))
  if (schema === null || typeof schema !== "object") return schema
  const out: any = {}
  for (const [key, value] of Object.entries(schema)) {
    if (key.startsWith("x-kubernetes-")) continue
    out[key] = key === "properties" ? Object.fromEntries(Object.entries(value as object).map(([k, v]) => [k, forAjv(v)])) : forAjv(value)
  }
  if (out.type === "object" && out.properties !== undefined && out.additionalProperties === undefined && !top) {
    out.additionalProperties = false
  }
  return out
}

const ajv = new Ajv({ useDefaults: true, strict: false, allErrors: true, validateFormats: false })
const validateStructure = ajv.compile({ ...forAjv(openApiSchema, true), properties: { ...forAjv(openApiSchema, true).properties, metadata: { type: "object" } } })

/** CEL's ints are 64-bit integers: whole JSON numbers become BigInt, as the API server reads them. */
const celValue = (value: unknown): unknown => {
  if (typeof value === "number" && Number.isInteger(value)) return BigInt(value)
  if (Array.isArray(value)) return value.map(celValue)
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, celValue(v)]))
  }
  return value
}

/** CEL with the `self` variable and the Kubernetes lists library's `sum()` (the one extension the CRD uses). */
const cel = new Environment()
  .registerVariable("self", "dyn")
  .registerFunction("list.sum(): int", (list: ReadonlyArray<bigint>) => list.reduce((total, n) => total + n, 0n))

const celErrors = (schema: any, value: unknown, path: string, errors: Array<string>) => {
  if (value === undefined || schema === undefined) return
  for (const rule of (schema["x-kubernetes-validations"] ?? []) as ReadonlyArray<Rule>) {
    let ok: unknown
    try {
      ok = cel.evaluate(rule.rule, { self: celValue(value) })
    } catch (error) {
      errors.push(`${path}: rule ${JSON.stringify(rule.rule)} failed to evaluate: ${(error as Error).message}`)
      continue
    }
    if (ok !== true) errors.push(`${path}: ${rule.message}`)
  }
  if (schema.properties !== undefined && value !== null && typeof value === "object") {
    for (const [key, sub] of Object.entries(schema.properties)) celErrors(sub, (value as any)[key], `${path}.${key}`, errors)
  }
  if (schema.items !== undefined && Array.isArray(value)) {
    value.forEach((item, i) => celErrors(schema.items, item, `${path}[${i}]`, errors))
  }
}

/** Duplicate keys in `x-kubernetes-list-type: map` lists (the API server refuses them). */
const listMapErrors = (schema: any, value: unknown, path: string, errors: Array<string>) => {
  if (value === undefined || value === null || schema === undefined) return
  if (Array.isArray(value) && schema["x-kubernetes-list-type"] === "map") {
    const keys: ReadonlyArray<string> = schema["x-kubernetes-list-map-keys"] ?? []
    const seen = new Set<string>()
    for (const item of value) {
      const key = JSON.stringify(keys.map((k) => (item as any)?.[k]))
      if (seen.has(key)) errors.push(`${path}: Duplicate value: ${keys.map((k) => `${k}=${JSON.stringify((item as any)?.[k])}`).join(",")}`)
      seen.add(key)
    }
  }
  if (schema.properties !== undefined && typeof value === "object" && !Array.isArray(value)) {
    for (const [key, sub] of Object.entries(schema.properties)) listMapErrors(sub, (value as any)[key], `${path}.${key}`, errors)
  }
  if (schema.items !== undefined && Array.isArray(value)) value.forEach((item, i) => listMapErrors(schema.items, item, `${path}[${i}]`, errors))
}

/**
 * Structural pruning, as the API server does on every write: fields the
 * schema does not declare are dropped (not refused), except under
 * `x-kubernetes-preserve-unknown-fields` or `additionalProperties`.
 */
export const prune = (value: unknown, schema: any = openApiSchema): unknown => {
  if (schema === undefined || value === null || typeof value !== "object") return value
  if (Array.isArray(value)) return schema.items === undefined ? value : value.map((item) => prune(item, schema.items))
  if (schema["x-kubernetes-preserve-unknown-fields"] === true) return value
  const out: Record<string, unknown> = {}
  for (const [key, sub] of Object.entries(value)) {
    if (schema.properties?.[key] !== undefined) out[key] = prune(sub, schema.properties[key])
    else if (typeof schema.additionalProperties === "object") out[key] = prune(sub, schema.additionalProperties)
    else if (schema.properties === undefined && schema.additionalProperties === undefined) out[key] = sub
  }
  return out
}

export interface Admitted {
  readonly ok: boolean
  readonly errors: ReadonlyArray<string>
  /** The object after defaulting. */
  readonly object: any
}

/**
 * Structural errors after which the API server does not run the CEL rules (apiextensions' hasBlockingErr:
 * a wrong type, a required field missing, a value not in an enum, over maxLength / maxItems /
 * maxProperties); after others (a pattern, a minimum) the rules still run and their messages are added.
 */
const blockingKeywords = new Set(["type", "required", "enum", "maxLength", "maxItems", "maxProperties", "additionalProperties", "anyOf"])

/** Validates (and defaults) an InferenceService as the API server would on create. */
export const admit = (input: unknown): Admitted => {
  const object = structuredClone(input) as any
  const errors: Array<string> = []
  if (!validateStructure(object)) {
    for (const error of validateStructure.errors ?? []) errors.push(`${error.instancePath || "/"}: ${error.message}`)
  }
  const blocking = (validateStructure.errors ?? []).some((error) => blockingKeywords.has(error.keyword))
  if (errors.length === 0) listMapErrors(openApiSchema, object, "", errors)
  // As the API server: the CEL rules run after a structural error unless it is one that blocks them.
  if (!blocking && !errors.some((error) => error.includes("Duplicate value"))) celErrors(openApiSchema, object, "", errors)
  else if (blocking) errors.push("some validation rules were not checked because the object was invalid; correct the existing errors to complete validation")
  return { ok: errors.length === 0, errors, object }
}
