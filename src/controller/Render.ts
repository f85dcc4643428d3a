/**
 * `render`: the objects the controller would apply for InferenceService
 * files, printed as YAML with no cluster (for GitOps and review, as `helm
 * template` does). The same pure function as the reconciler, with the
 * controller's settings from the environment (ROUTER_IMAGE). It checks
 * what the controller checks (SpecCheck: the CRD's rules, then the router's),
 * so a spec CI renders is one the API server and the router accept; a file
 * with no InferenceService in it is an error too.
 */
import { Data, Effect } from "effect"
import { readFileSync } from "node:fs"
import { parseAllDocuments, stringify } from "yaml"
import { kind } from "../api/InferenceService.ts"
import { loadControllerSettings } from "./ControllerConfig.ts"
import { desiredObjects } from "./Desired.ts"
import { checkSpec } from "./SpecCheck.ts"

export class RenderError extends Data.TaggedError("RenderError")<{ readonly detail: string }> {
  override get message() {
    return this.detail
  }
}

/** The YAML for the InferenceServices in `text` (several documents allowed). */
export const renderText = (text: string, source: string, routerImage: string): string => {
  const documents = parseAllDocuments(text)
  const out: Array<string> = []
  let found = 0
  const kinds = new Set<string>()
  for (const [index, document] of documents.entries()) {
    if (document.errors.length > 0) throw new RenderError({ detail: `${source}: document ${index + 1}: ${document.errors[0].message}` })
    const object = document.toJS()
    if (object !== null && typeof object?.kind === "string") kinds.add(object.kind)
    if (object === null || object?.kind !== kind) continue
    const name = object.metadata?.name
    if (typeof name !== "string" || name === "") throw new RenderError({ detail: `${source}: an InferenceService without metadata.name` })
    found++
    const check = checkSpec(object.spec, name)
    if (check._tag === "Invalid") throw new RenderError({ detail: `${source}: InferenceService ${name}: ${check.message}` })
    const namespace = object.metadata.namespace ?? "default"
    const uid: string | undefined = object.metadata.uid
    const desired = desiredObjects({ name, namespace, uid: uid ?? "" }, check.spec, { routerImage })
    const children = [desired.deployment, desired.service, desired.podDisruptionBudget, desired.horizontalPodAutoscaler]
    for (const child of children) {
      if (child === undefined) continue
      // Without the InferenceService's uid (known only once it exists) there is no owner reference to set.
      const printed = uid === undefined ? { ...child, metadata: { ...child.metadata, ownerReferences: undefined } } : child
      out.push(stringify(JSON.parse(JSON.stringify(printed)), { lineWidth: 0 }))
    }
  }
  if (found === 0) {
    const seen = kinds.size === 0 ? "no Kubernetes object" : `only ${[...kinds].join(", ")}`
    throw new RenderError({ detail: `${source}: no InferenceService in it (${seen}); render reads InferenceService manifests` })
  }
  return out.join("---\n")
}

export const render = (files: ReadonlyArray<string>) =>
  Effect.gen(function*() {
    if (files.length === 0) return yield* new RenderError({ detail: "usage: render FILE... (InferenceService YAML; - for standard input)" })
    const settings = yield* loadControllerSettings
    const parts: Array<string> = []
    for (const file of files) {
      const text = yield* Effect.try({
        try: () => readFileSync(file === "-" ? 0 : file, "utf8"),
        catch: (error) => new RenderError({ detail: `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? error}` })
      })
      parts.push(yield* Effect.try({ try: () => renderText(text, file, settings.routerImage), catch: (error) => error as RenderError }))
    }
    process.stdout.write(parts.filter((part) => part !== "").join("---\n"))
  })
