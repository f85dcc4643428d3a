/**
 * Builds and pushes the image (router and controller in one), then points
 * deploy/controller's `images:` entry at it: the one place the image is set,
 * for the controller and for the routers it deploys (they run the
 * controller's own image). One command:
 *
 *   node deploy/controller/release.ts registry.example.com/inference-router:1.2.0
 *   kubectl apply -k deploy/controller
 *
 * BUILDER=podman (or buildah, nerdctl) to use another builder than docker;
 * `--no-push` builds only; `--dry-run` prints the commands and the new
 * kustomization without running or writing anything.
 */
import { execFileSync } from "node:child_process"
import { readFileSync, writeFileSync } from "node:fs"
import { fileURLToPath } from "node:url"
import { parseDocument } from "yaml"

const root = fileURLToPath(new URL("../..", import.meta.url))
const kustomization = fileURLToPath(new URL("kustomization.yaml", import.meta.url))

/** `name[:tag]` or `name@digest` split as kustomize's images: entry wants it. */
export const imageEntry = (image: string): { name: string; newName: string; newTag?: string; digest?: string } => {
  const at = image.indexOf("@")
  if (at > 0) return { name: "inference-router", newName: image.slice(0, at), digest: image.slice(at + 1) }
  const colon = image.lastIndexOf(":")
  const tagged = colon > image.lastIndexOf("/")
  return tagged
    ? { name: "inference-router", newName: image.slice(0, colon), newTag: image.slice(colon + 1) }
    : { name: "inference-router", newName: image }
}

/** The kustomization with its inference-router images: entry pointing at `image`. */
export const withImage = (text: string, image: string): string => {
  const document = parseDocument(text)
  const images = (document.toJS().images ?? []).filter((entry: { name: string }) => entry.name !== "inference-router")
  document.set("images", [...images, imageEntry(image)])
  return document.toString()
}

const main = () => {
  const args = process.argv.slice(2)
  const image = args.find((arg) => !arg.startsWith("--"))
  if (image === undefined || !/^[a-z0-9][^\s]*$/.test(image)) {
    process.stderr.write("usage: node deploy/controller/release.ts REGISTRY/NAME:TAG [--no-push] [--dry-run]\n")
    process.exit(1)
  }
  const dryRun = args.includes("--dry-run")
  const builder = process.env.BUILDER ?? "docker"
  const commands: Array<Array<string>> = [[builder, "build", "-t", image, "."]]
  if (!args.includes("--no-push")) commands.push([builder, "push", image])
  for (const command of commands) {
    process.stderr.write(`$ ${command.join(" ")}\n`)
    if (!dryRun) execFileSync(command[0], command.slice(1), { cwd: root, stdio: "inherit" })
  }
  const next = withImage(readFileSync(kustomization, "utf8"), image)
  if (dryRun) process.stdout.write(next)
  else {
    writeFileSync(kustomization, next)
    process.stderr.write(`deploy/controller/kustomization.yaml: images: inference-router -> ${image}\nnext: kubectl apply -k deploy/controller\n`)
  }
}

if (process.argv[1] !== undefined && fileURLToPath(import.meta.url) === process.argv[1]) main()
