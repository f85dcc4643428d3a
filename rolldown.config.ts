import { defineConfig } from "rolldown"

// The production build: one self-contained ES module per program,
// `dist/router.js` and `dist/controller.js` (no chunk shared between them, so
// either runs alone), plus chunks the router loads only when asked for: the
// API reference's script (on the first /docs), and the upstream pool's client
// libraries (undici, the Redis client; MODEL_BACKEND=upstream). Node runs them
// without type stripping, which starts in about a quarter of the time and
// holds about half the memory. `npm run build` empties dist/ first. zeromq
// (the simulated model's KV events) is a native addon: it stays outside the
// bundle, is loaded only when KV events are configured, and the image copies
// it beside dist/.
//
// Two settings for idle memory (BENCHMARKS.md section 12): `strictExecutionOrder`
// wraps each module's top-level code in a function, so V8 parses the bundle's
// top level in small pieces instead of one module scope holding every
// declaration (whose parser memory, ~9 MB at its peak, stayed in the process's
// malloc heap after it was freed); `charset: "ascii"` escapes the few
// non-ASCII characters, so V8 keeps the source as one byte per character, not two.
const program = (name: string, entry: string) => ({
  input: { [name]: entry },
  platform: "node" as const,
  external: ["zeromq"],
  output: {
    dir: "dist",
    format: "esm" as const,
    minify: true,
    entryFileNames: "[name].js",
    strictExecutionOrder: true,
    charset: "ascii" as const
  }
})

export default defineConfig([
  program("router", "src/router/main.ts"),
  program("controller", "src/controller/main.ts")
])
