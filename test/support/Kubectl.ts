/**
 * Kustomize rendering for the manifest tests: `kubectl kustomize` where kubectl
 * is installed (it is on the CI machines); elsewhere the kustomization's
 * resources as listed (these bases apply no transformations but a namespace).
 */
import { execFileSync } from "node:child_process"
import { readFileSync } from "node:fs"
import { parseAllDocuments } from "yaml"
import { root } from "./Processes.ts"

export const hasKubectl = (() => {
  try {
    execFileSync("kubectl", ["version", "--client"], { stdio: "ignore" })
    return true
  } catch {
    return false
  }
})()

/** The rendered YAML of `deploy/<dir>`. */
export const kustomize = (dir: string): string =>
  hasKubectl
    ? execFileSync("kubectl", ["kustomize", `deploy/${dir}`], { cwd: root, encoding: "utf8" })
    : (parseAllDocuments(readFileSync(`${root}/deploy/${dir}/kustomization.yaml`, "utf8"))[0].toJS().resources as Array<string>)
      .map((file) => readFileSync(`${root}/deploy/${dir}/${file}`, "utf8"))
      .join("\n---\n")
