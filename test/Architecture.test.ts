/**
 * The router's layering, checked on the source text:
 * - no import cycles anywhere in src/;
 * - Node's HTTP server (a value import of `node:http`) only in src/router/edge/;
 * - `*Unsafe` calls that run or steer work outside a fiber only where the
 *   table below allows them, each row with its reason (docs/architecture.md
 *   lists the same places: a test below keeps the two equal);
 * - `Admission.enterUnsafe` called from one place, the pipeline.
 */
import { assert, describe, it } from "@effect/vitest"
import { readdirSync, readFileSync } from "node:fs"
import { dirname, join, relative, resolve } from "node:path"

const root = resolve(import.meta.dirname, "..")
const srcDir = join(root, "src")

const sourceFiles = (dir: string): Array<string> =>
  readdirSync(dir, { withFileTypes: true }).flatMap((entry) =>
    entry.isDirectory() ? sourceFiles(join(dir, entry.name)) : entry.name.endsWith(".ts") ? [join(dir, entry.name)] : []
  )

const files = sourceFiles(srcDir)
const text = new Map(files.map((file) => [file, readFileSync(file, "utf8")]))
const rel = (file: string) => relative(root, file)

/** The source without comments (strings are kept; a `//` inside one cuts the line, which can only hide a match). */
const code = (source: string) => source.replace(/\/\*[\s\S]*?\*\//g, "").replace(/(^|[^:"'`])\/\/.*$/gm, "$1")

/** Relative imports and re-exports, type-only ones included (a cycle of types is still a cycle of modules). */
const importsOf = (file: string): Array<string> =>
  [...code(text.get(file)!).matchAll(/(?:import|export)\s[^"';]*?from\s+"(\.[^"]+)"|import\s+"(\.[^"]+)"/g)]
    .map((match) => resolve(dirname(file), match[1] ?? match[2]))

/** Strongly connected components of more than one module (or a module importing itself). */
const cycles = (graph: Map<string, Array<string>>): Array<Array<string>> => {
  let index = 0
  const indices = new Map<string, number>()
  const low = new Map<string, number>()
  const stack: Array<string> = []
  const onStack = new Set<string>()
  const found: Array<Array<string>> = []
  const visit = (node: string) => {
    indices.set(node, index)
    low.set(node, index++)
    stack.push(node)
    onStack.add(node)
    for (const next of graph.get(node) ?? []) {
      if (!indices.has(next)) {
        visit(next)
        low.set(node, Math.min(low.get(node)!, low.get(next)!))
      } else if (onStack.has(next)) low.set(node, Math.min(low.get(node)!, indices.get(next)!))
    }
    if (low.get(node) === indices.get(node)) {
      const component: Array<string> = []
      let member: string
      do {
        member = stack.pop()!
        onStack.delete(member)
        component.push(member)
      } while (member !== node)
      if (component.length > 1 || graph.get(node)?.includes(node)) found.push(component.map(rel).sort())
    }
  }
  for (const node of graph.keys()) if (!indices.has(node)) visit(node)
  return found
}

/** Effect's synchronous `*Unsafe` APIs that neither run nor steer work outside a fiber: allowed anywhere. */
const synchronousApis = new Set([
  "updateUnsafe", // a metric update
  "removeUnsafe", // a metric's removal
  "registerUnsafe", // a gauge read at scrape time from a callback (the controller's in-progress work)
  "currentTimeMillisUnsafe", // a clock read
  "currentTimeNanosUnsafe",
  "jsonUnsafe", // a response constructor (throws only on unserialisable input)
  "getUnsafe", // a context lookup
  "formatUnsafe", // the Prometheus text of a registry
  "inetAddressFromIpStringUnsafe",
  "fromInputUnsafe",
  "offerUnsafe", // the controller's work queue (a bounded queue's synchronous offer)
  "statsUnsafe", // Admission's counts, read synchronously by probes and metrics
  // Node's, not Effect's: uninitialized buffers.
  "allocUnsafe",
  "allocUnsafeSlow"
])

/**
 * Where work runs or is steered outside a fiber, besides the edge (which may):
 * each row is a place docs/architecture.md's bypass table names.
 */
const allowedOutsideEdge: ReadonlyArray<{ readonly folder: string; readonly names: ReadonlyArray<string>; readonly why: string }> = [
  {
    folder: "src/router/core/Admission.ts",
    names: ["enterUnsafe", "pollUnsafe", "interruptUnsafe"],
    why: "defines enterUnsafe: a free slot counted (borrowed) without a fiber; the first admit after takes the borrowed permits by a fiber that completes at once, polled"
  },
  {
    folder: "src/router/simulated/",
    names: ["generateUnsafe", "inferUnsafe"],
    why: "the simulated backend's own fiber-free generation and /infer (the engine's step timers)"
  },
  {
    folder: "src/router/upstream/",
    names: ["forwardUnsafe", "relayUnsafe"],
    why: "the upstream backend's forwarding on undici's dispatch API"
  },
  {
    folder: "src/controller/",
    names: ["pollUnsafe"],
    why: "the controller, another program: its leader election polls its own fiber"
  }
]

describe("Architecture", () => {
  it("has no import cycles in src/", () => {
    const graph = new Map(files.map((file) => [file, importsOf(file)]))
    assert.deepStrictEqual(cycles(graph), [])
  })

  it("finds a planted cycle (the check itself works)", () => {
    const a = join(srcDir, "a.ts")
    const b = join(srcDir, "b.ts")
    assert.deepStrictEqual(cycles(new Map([[a, [b]], [b, [a]]])), [["src/a.ts", "src/b.ts"]])
  })

  it("imports follow the layers: nothing imports the edge but the edge; the app no upstream pool; core imports no backend (but the pure settings parsers), no app; the contract and shared/ import neither program", () => {
    /** Folders (or files) a module under `from` may not import, with the exceptions allowed. */
    const rules: ReadonlyArray<{ readonly from: string; readonly not: ReadonlyArray<string>; readonly except?: ReadonlyArray<string> }> = [
      { from: "src/router/app/", not: ["src/router/edge/", "src/router/upstream/", "src/router/routing/"] },
      { from: "src/router/simulated/", not: ["src/router/edge/", "src/router/app/"] },
      { from: "src/router/upstream/", not: ["src/router/edge/", "src/router/app/"] },
      { from: "src/router/routing/", not: ["src/router/edge/", "src/router/app/"] },
      {
        from: "src/router/core/",
        not: ["src/router/edge/", "src/router/app/", "src/router/simulated/", "src/router/upstream/", "src/router/routing/"],
        except: ["src/router/upstream/Targets.ts", "src/router/routing/RoutingSettings.ts"]
      },
      { from: "src/api/", not: ["src/router/", "src/controller/"] },
      { from: "src/shared/", not: ["src/router/", "src/controller/", "src/api/"] }
    ]
    const broken: Array<string> = []
    for (const file of files) {
      const path = rel(file)
      for (const rule of rules.filter((rule) => path.startsWith(rule.from))) {
        for (const target of importsOf(file).map(rel)) {
          if (rule.not.some((folder) => target.startsWith(folder)) && !(rule.except ?? []).includes(target)) broken.push(`${path} -> ${target}`)
        }
      }
    }
    assert.deepStrictEqual(broken, [])
  })

  it("imports Node's HTTP module (as a value) only in src/router/edge/", () => {
    const outside = files
      .filter((file) => !rel(file).startsWith("src/router/edge/") && !rel(file).startsWith("src/controller/"))
      .filter((file) => /^import\s+(?!type\b)(?:\{[^}]*\}|[\w*\s,]+)\s+from\s+"node:http"/m.test(code(text.get(file)!)))
      .map(rel)
    assert.deepStrictEqual(outside, [])
  })

  it("calls *Unsafe APIs that bypass fibers only at the edge and in the places the table allows", () => {
    const misplaced: Array<string> = []
    for (const file of files) {
      const path = rel(file)
      if (path.startsWith("src/router/edge/")) continue
      for (const [name] of code(text.get(file)!).matchAll(/\b[A-Za-z]+Unsafe\b/g)) {
        if (synchronousApis.has(name)) continue
        const allowed = allowedOutsideEdge.some((row) => path.startsWith(row.folder) && row.names.includes(name))
        if (!allowed) misplaced.push(`${path}: ${name}`)
      }
    }
    assert.deepStrictEqual([...new Set(misplaced)], [])
  })

  it("takes a slot without a fiber (Admission.enterUnsafe) in one place: the pipeline", () => {
    const callers = files
      .filter((file) => rel(file) !== "src/router/core/Admission.ts")
      .filter((file) => /\.enterUnsafe\(/.test(code(text.get(file)!)))
      .map(rel)
    assert.deepStrictEqual(callers, ["src/router/edge/Pipeline.ts"])
  })

  it("the controller reaches into the router only for the settings parser (and the pure parsers it uses)", () => {
    const graph = new Map(files.map((file) => [file, importsOf(file)]))
    const reached = new Set<string>()
    const stack = files.filter((file) => rel(file).startsWith("src/controller/"))
    while (stack.length > 0) {
      for (const next of graph.get(stack.pop()!) ?? []) {
        if (reached.has(next)) continue
        reached.add(next)
        stack.push(next)
      }
    }
    assert.deepStrictEqual([...reached].map(rel).filter((path) => path.startsWith("src/router/")).sort(), [
      "src/router/core/Settings.ts",
      "src/router/routing/RoutingSettings.ts",
      "src/router/upstream/Targets.ts"
    ])
  })

  it("the router's start-up modules import the upstream pool's client libraries and the cache-aware routing only lazily (idle memory)", () => {
    // Value imports (not `import type`) reached statically from the entry point: what every router loads at start.
    const valueImports = (file: string): Array<string> =>
      [...code(text.get(file)!).matchAll(/(?:import(?!\s+type\s)|export)\s[^"';]*?from\s+"([^"]+)"|import\s+"([^"]+)"/g)]
        .map((match) => match[1] ?? match[2])
    const loaded = new Set<string>()
    const packages = new Set<string>()
    const stack = [join(srcDir, "router/main.ts")]
    while (stack.length > 0) {
      const file = stack.pop()!
      if (loaded.has(file)) continue
      loaded.add(file)
      for (const specifier of valueImports(file)) {
        if (specifier.startsWith(".")) stack.push(resolve(dirname(file), specifier))
        else packages.add(specifier)
      }
    }
    // undici and the Redis client are ~18 MiB of idle memory (BENCHMARKS.md section 12): loaded with import() in upstream mode.
    // "@effect/platform-node" itself is its barrel, which loads NodeRedis and so the Redis client: import its modules by path.
    assert.deepStrictEqual([...packages].filter((name) => ["undici", "redis", "@msgpack/msgpack", "zeromq", "@effect/platform-node"].includes(name)), [])
    assert.isFalse(loaded.has(join(srcDir, "router/routing/Routing.ts")))
  })

  it("docs/architecture.md's bypass table names every place the rules above allow", () => {
    const doc = readFileSync(join(root, "docs/architecture.md"), "utf8")
    const missing = [...allowedOutsideEdge.filter((row) => !row.folder.startsWith("src/controller/")).flatMap((row) => row.names), "generateUnsafe", "enterUnsafe"]
      .filter((name) => !doc.includes(`\`${name}\``))
    assert.deepStrictEqual(missing, [])
  })
})
