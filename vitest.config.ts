import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Two cores: the end-to-end files mostly wait on the processes they start, so three
    // workers overlap those waits while staying few enough that the processes are not starved.
    maxWorkers: 3,
    // A worker runs its files one after another in one module graph: loading effect and the
    // router's modules again for each of the ~70 files cost about a third of the suite's CPU.
    // Nothing relies on a fresh graph: no module mocks or stubbed globals, and the in-process
    // routers keep their metrics in a registry of their own (test/support/TestRouter.ts).
    isolate: false,
    testTimeout: 20_000
  }
})
