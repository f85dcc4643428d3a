import { defineConfig } from "rolldown"

// The production build: one self-contained ES module per program,
// `dist/router.js` and `dist/controller.js` (no chunk shared between them, so
// either runs alone), plus the API reference's script as a chunk the router
// loads only when /docs is first asked for. Node runs them without type
// stripping, which starts in about a quarter of the time and holds about half
// the memory. `npm run build` empties dist/ first. zeromq (the simulated
// model's KV events) is a native addon: it stays outside the bundle, is loaded
// only when KV events are configured, and the image copies it beside dist/.
const program = (name: string, entry: string) => ({
  input: { [name]: entry },
  platform: "node" as const,
  external: ["zeromq"],
  output: { dir: "dist", format: "esm" as const, minify: true, entryFileNames: "[name].js" }
})

export default defineConfig([
  program("router", "src/router/main.ts"),
  program("controller", "src/controller/main.ts")
])
