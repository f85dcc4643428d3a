/**
 * docs/settings.md is generated from the settings contract: its table is
 * `settingsTableMarkdown()`, and every variable the parser reads has a row.
 */
import { assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"
import { resolve } from "node:path"
import { settingNames, settingsTableMarkdown } from "../src/router/core/Settings.ts"

const root = resolve(import.meta.dirname, "..")
const regenerate = `regenerate it: node_modules/.bin/node -e 'import("./src/router/core/Settings.ts").then((m) => console.log(m.settingsTableMarkdown()))'`

describe("docs/settings.md", () => {
  it("contains the table generated from settingDocs, as it is", () => {
    const doc = readFileSync(resolve(root, "docs/settings.md"), "utf8")
    assert.isTrue(doc.includes(settingsTableMarkdown()), `docs/settings.md's table differs from settingDocs; ${regenerate}`)
  })

  it("documents every variable the parser reads, and no other", () => {
    const read = new Set<string>()
    for (const file of ["src/router/core/Settings.ts", "src/shared/Settings.ts"]) {
      const source = readFileSync(resolve(root, file), "utf8")
      for (const match of source.matchAll(/(?:setting|ms|positiveMs|optionalString|rawSetting|parseKvEndpoints)\(\s*"([A-Z][A-Z0-9_]+)"/g)) {
        read.add(match[1])
      }
    }
    assert.deepStrictEqual([...read].filter((name) => !settingNames.includes(name)), [], "read but not documented")
    assert.deepStrictEqual(settingNames.filter((name) => !read.has(name)), [], "documented but never read")
  })
})
