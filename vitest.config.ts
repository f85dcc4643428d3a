import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Two cores: keep workers few so end-to-end tests are not starved.
    maxWorkers: 2,
    testTimeout: 20_000
  }
})
