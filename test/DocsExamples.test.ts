/**
 * The examples in docs/api.md whose output is deterministic are run against a
 * real router with the default settings and must print exactly what the docs
 * show (only `id` and `created` vary). The examples drifted twice before this
 * test existed.
 */
import { readFileSync } from "node:fs"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { freePort, killAll, root, startProcess, until } from "./support/Processes.ts"

const apiDoc = readFileSync(`${root}/docs/api.md`, "utf8")

interface Example {
  readonly command: string
  readonly output: string
}

/** Each ```sh block holding one `curl` of localhost:8080, followed at once by its output block. */
const examples = (doc: string): ReadonlyArray<Example> =>
  [...doc.matchAll(/```sh\n(curl [^`]*?)\n```\n```(?:json)?\n([^`]*?)```/g)].map((match) => ({
    command: match[1].replace(/\\\n\s*/g, " "),
    output: match[2]
  }))

/** The request a documented `curl` makes: its path, method, headers and body. */
const requestOf = (command: string) => {
  const url = /localhost:8080(\/\S*)/.exec(command)?.[1] ?? "/"
  const body = /-d '([^']*)'/.exec(command)?.[1]
  const headers: Record<string, string> = {}
  for (const [, name, value] of command.matchAll(/-H '([^:]+): ([^']*)'/g)) headers[name] = value
  return { path: url, init: { method: body === undefined ? "GET" : "POST", headers, body } }
}

/** What varies from run to run: ids, timestamps, request ids. */
const normalize = (text: string) =>
  text
    .replace(/"id":"(chatcmpl|cmpl)-[0-9a-f-]+"/g, `"id":"$1-<id>"`)
    .replace(/"created":\d+/g, `"created":<time>`)
    .trim()

describe("docs/api.md's examples", () => {
  let port = 0
  beforeAll(async () => {
    port = await freePort()
    startProcess(["src/router/main.ts"], { PORT: String(port), HOST: "127.0.0.1", LOG_LEVEL: "warn" })
    await until(async () => {
      try {
        return (await fetch(`http://127.0.0.1:${port}/readyz`)).status === 200
      } catch {
        return false
      }
    }, "the router to be ready", 30_000)
  }, 40_000)
  afterAll(() => killAll())

  const deterministic = examples(apiDoc).filter((example) => /\/v1\//.test(example.command) && !example.command.includes(" -i "))

  it("has the chat, streaming and models examples to check", () => {
    expect(deterministic.map((example) => requestOf(example.command).path)).toEqual([
      "/v1/chat/completions",
      "/v1/completions",
      "/v1/models"
    ])
  })

  for (const example of deterministic) {
    it(`prints what the router answers: ${requestOf(example.command).path}`, async () => {
      const { init, path } = requestOf(example.command)
      const answer = await (await fetch(`http://127.0.0.1:${port}${path}`, init)).text()
      expect(normalize(answer)).toEqual(normalize(example.output))
    })
  }
})
