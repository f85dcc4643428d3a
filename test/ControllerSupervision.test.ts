/**
 * The controller's long-running fiber (leader election, and the reconciling
 * it starts) is supervised: if it ends on a defect, liveness fails instead of
 * a process that looks alive and reconciles nothing.
 */
import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Scope } from "effect"
import { forkSupervised } from "../src/controller/Controller.ts"

const settle = Effect.gen(function*() {
  for (let i = 0; i < 10; i++) yield* Effect.yieldNow
})

describe("the controller's supervised fiber", () => {
  it.effect("a defect is reported (once, naming the fiber and the defect)", () =>
    Effect.gen(function*() {
      const reasons: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        yield* forkSupervised("leader election", Effect.die(new Error("boom")), (reason) => reasons.push(reason))
        yield* settle
      }))
      assert.strictEqual(reasons.length, 1)
      assert.include(reasons[0], "leader election ended")
      assert.include(reasons[0], "boom")
    }))

  it.effect("a failure or an end is reported too; an interruption (shutdown) is not", () =>
    Effect.gen(function*() {
      const reasons: Array<string> = []
      yield* Effect.scoped(Effect.gen(function*() {
        yield* forkSupervised("a", Effect.fail("lost"), (reason) => reasons.push(reason))
        yield* forkSupervised("b", Effect.void, (reason) => reasons.push(reason))
        yield* settle
      }))
      const scope = yield* Scope.make()
      yield* forkSupervised("c", Effect.never, (reason) => reasons.push(reason)).pipe(Scope.provide(scope))
      yield* Effect.yieldNow
      yield* Scope.close(scope, Exit.void)
      assert.deepStrictEqual(reasons.map((r) => r.split(":")[0]).sort(), ["a ended", "b ended"])
    }))
})
