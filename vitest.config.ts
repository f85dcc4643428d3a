import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Two cores: the end-to-end files mostly wait on the processes they start, so three
    // workers overlap those waits (the suite in ~100 s instead of ~120 s on 2 cores) while
    // staying few enough that the processes are not starved.
    maxWorkers: 3,
    testTimeout: 20_000
  }
})
