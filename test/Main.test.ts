/**
 * How both programs report a failure: one line, whatever failed.
 */
import { assert, describe, it } from "@effect/vitest"
import { Data, Effect, Exit } from "effect"
import { describeCause, reportFailure } from "../src/shared/Main.ts"

class Boom extends Data.TaggedError("Boom")<{ readonly detail: string }> {
  override get message() {
    return `boom: ${this.detail}`
  }
}

const captureStderr = <A, E>(effect: Effect.Effect<A, E>) =>
  Effect.gen(function*() {
    const written: Array<string> = []
    const write = process.stderr.write
    process.stderr.write = ((chunk: string) => (written.push(String(chunk)), true)) as typeof process.stderr.write
    const exit = yield* Effect.exit(effect).pipe(Effect.ensuring(Effect.sync(() => (process.stderr.write = write))))
    return { exit, written }
  })

describe("failure reporting", () => {
  it.effect("an error prints its message on one line", () =>
    Effect.gen(function*() {
      const { exit, written } = yield* captureStderr(reportFailure("prog")(Effect.fail(new Boom({ detail: "x" }))))
      assert.isTrue(Exit.isFailure(exit))
      assert.deepStrictEqual(written, ["prog: boom: x\n"])
    }))

  it.effect("a defect is not swallowed: it prints its message (and code) on one line", () =>
    Effect.gen(function*() {
      const error = Object.assign(new Error("Cannot find module './chunk.js'\nRequire stack: ..."), { code: "ERR_MODULE_NOT_FOUND" })
      const { written } = yield* captureStderr(reportFailure("prog")(Effect.die(error)))
      assert.deepStrictEqual(written, ["prog: Cannot find module './chunk.js' (ERR_MODULE_NOT_FOUND)\n"])
    }))

  it.effect("an interruption (a signal) prints nothing", () =>
    Effect.gen(function*() {
      const { written } = yield* captureStderr(reportFailure("prog")(Effect.interrupt))
      assert.deepStrictEqual(written, [])
    }))

  it("an error without a message is named by its tag", () => {
    class Empty extends Data.TaggedError("Empty")<{}> {}
    const text = describeCause(Exit.isFailure(Exit.fail(new Empty())) ? (Exit.fail(new Empty()) as any).cause : undefined)
    assert.include(text, "Empty")
  })
})
