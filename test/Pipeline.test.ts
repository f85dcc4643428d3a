/**
 * The request pipeline's admission step, with a recording admission and a
 * stand-in response (no sockets): the slot is released once, with the work's
 * real exit (a hang-up is an interruption, so it does not feed the
 * Retry-After estimate), whichever form the work takes; a hang-up and the end
 * of a drain stop work that runs without a fiber.
 */
import { assert, describe, it } from "@effect/vitest"
import { Cause, Context, Effect, Exit, Layer, Scope } from "effect"
import { EventEmitter } from "node:events"
import type { IncomingMessage, ServerResponse } from "node:http"
import { Admission } from "../src/router/core/Admission.ts"
import { callbacks, type Work } from "../src/router/core/Backend.ts"
import { Lifecycle } from "../src/router/core/Lifecycle.ts"
import { Pipeline } from "../src/router/edge/Pipeline.ts"
import { outcomeOf } from "../src/router/core/RequestOutcome.ts"
import { openAiDialect } from "../src/router/edge/OpenAiHandler.ts"
import { testConfigLayer } from "./support/TestSettings.ts"

/** An admission whose one slot is always free, recording every release. */
const recordingAdmission = (released: Array<Exit.Exit<unknown, unknown>>) =>
  Layer.effect(
    Admission,
    Effect.map(Admission.make({ slots: 1, maxQueue: 0, queueTimeoutMs: 1_000 }), (real) =>
      Admission.of({
        ...real,
        enterUnsafe: () => {
          const leave = real.enterUnsafe()
          return leave === undefined ? undefined : (exit) => {
            released.push(exit)
            leave(exit)
          }
        }
      }))
  )

/** Enough of Node's response for the pipeline: its `close` event. */
const fakeResponse = () => {
  const emitter = new EventEmitter() as EventEmitter & { destroyed: boolean; headersSent: boolean; writableEnded: boolean }
  emitter.destroyed = false
  emitter.headersSent = false
  emitter.writableEnded = false
  return emitter
}
const fakeRequest = { headers: { "x-request-id": "test" } } as unknown as IncomingMessage

const setup = Effect.gen(function*() {
  const released: Array<Exit.Exit<unknown, unknown>> = []
  const scope = yield* Scope.make()
  const context = yield* Layer.buildWithScope(
    Pipeline.layer.pipe(
      Layer.provide(recordingAdmission(released)),
      Layer.provide(Layer.succeed(Lifecycle, Lifecycle.make(0))),
      Layer.provide(testConfigLayer())
    ),
    scope
  )
  const route = Context.get(context, Pipeline).route(openAiDialect)
  return { released, scope, route }
})

/** Work on plain callbacks: `finish` completes it; `stopped` says whether it was stopped. */
const manualWork = () => {
  const state = { stopped: false, finish: (_value: string) => {} }
  const work: Work<string> = callbacks<string>((done) => {
    state.finish = (value) => done(Exit.succeed(value))
    return () => (state.stopped = true)
  })
  return { state, work }
}

describe("the pipeline's admission step", () => {
  it.effect("callbacks that complete: the slot is released with their success", () =>
    Effect.gen(function*() {
      const { released, route } = yield* setup
      const { state, work } = manualWork()
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, fakeResponse() as unknown as ServerResponse, undefined, () => work, (exit) => answers.push(exit))
      state.finish("done")
      assert.deepStrictEqual(answers, [Exit.succeed("done")])
      assert.strictEqual(released.length, 1)
      assert.isTrue(Exit.isSuccess(released[0]))
    }))

  it.effect("a hang-up stops callbacks and releases the slot with an interruption, once", () =>
    Effect.gen(function*() {
      const { released, route } = yield* setup
      const { state, work } = manualWork()
      const response = fakeResponse()
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, response as unknown as ServerResponse, undefined, () => work, (exit) => answers.push(exit))
      response.emit("close")
      state.finish("too late")
      assert.isTrue(state.stopped)
      assert.strictEqual(answers.length, 1)
      assert.strictEqual(released.length, 1)
      const exit = released[0]
      assert.isTrue(Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause), "released with an interruption, not a success")
    }))

  it.effect("a hang-up interrupts a fiber's work; the slot is released with the interruption", () =>
    Effect.gen(function*() {
      const { released, route } = yield* setup
      const response = fakeResponse()
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, response as unknown as ServerResponse, undefined, () => Effect.never as Effect.Effect<string>, (exit) => answers.push(exit))
      response.emit("close")
      yield* Effect.yieldNow
      assert.strictEqual(answers.length, 1)
      assert.isTrue(Exit.isFailure(released[0]) && Cause.hasInterruptsOnly((released[0] as Exit.Failure<unknown, unknown>).cause))
    }))

  it.effect("an answer ready at once (an Exit) is answered and released without a fiber", () =>
    Effect.gen(function*() {
      const { released, route } = yield* setup
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, fakeResponse() as unknown as ServerResponse, undefined, () => Exit.succeed("now"), (exit) => answers.push(exit))
      assert.deepStrictEqual(answers, [Exit.succeed("now")])
      assert.strictEqual(released.length, 1)
    }))

  it.effect("work that throws when it starts is a defect: answered once, and the slot released", () =>
    Effect.gen(function*() {
      const { released, route } = yield* setup
      const thrown = new Error("bug")
      for (const work of [
        () => { throw thrown },
        () => callbacks<string>(() => { throw thrown })
      ] as Array<() => Work<string>>) {
        const answers: Array<Exit.Exit<string, unknown>> = []
        route.run(fakeRequest, fakeResponse() as unknown as ServerResponse, undefined, work, (exit) => answers.push(exit))
        assert.strictEqual(answers.length, 1)
        assert.isTrue(Exit.isFailure(answers[0]) && Cause.hasDies((answers[0] as Exit.Failure<string, unknown>).cause))
      }
      assert.strictEqual(released.length, 2, "both slots released (the admission has one slot: the second run needed the first's back)")
    }))

  it.effect("the end of a drain (the pipeline's scope closing) stops callbacks still running", () =>
    Effect.gen(function*() {
      const { released, route, scope } = yield* setup
      const { state, work } = manualWork()
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, fakeResponse() as unknown as ServerResponse, undefined, () => work, (exit) => answers.push(exit))
      yield* Scope.close(scope, Exit.void)
      assert.isTrue(state.stopped)
      assert.strictEqual(answers.length, 1)
      assert.isTrue(Exit.isFailure(answers[0]) && Cause.hasInterruptsOnly((answers[0] as Exit.Failure<string, unknown>).cause))
      assert.strictEqual(released.length, 1)
    }))

  it.effect("after the drain's end, a request read on a connection still open is answered as shutting down, its work never started", () =>
    Effect.gen(function*() {
      const { released, route, scope } = yield* setup
      yield* Scope.close(scope, Exit.void)
      let started = false
      const answers: Array<Exit.Exit<string, unknown>> = []
      route.run(fakeRequest, fakeResponse() as unknown as ServerResponse, undefined, () => {
        started = true
        return Exit.succeed("from a backend being released")
      }, (exit) => answers.push(exit))
      assert.isFalse(started)
      assert.strictEqual(answers.length, 1)
      assert.isTrue(Exit.isFailure(answers[0]) && Cause.hasInterruptsOnly((answers[0] as Exit.Failure<string, unknown>).cause))
      assert.strictEqual(released.length, 0, "no slot taken")
      // Before any of it: a GET or a POST route answers 503 shutting_down at once.
      const written: Array<{ status: number; body: string }> = []
      const response = Object.assign(fakeResponse(), {
        writeHead: (status: number) => written.push({ status, body: "" }),
        end: (body: string) => (written[written.length - 1].body = body)
      })
      route.get(() => assert.fail("not handled after the drain's end"))(fakeRequest, response as unknown as ServerResponse, false)
      assert.strictEqual(written[0].status, 503)
      assert.strictEqual(JSON.parse(written[0].body).error.code, "shutting_down")
      // Counted as shed, as the answers at the drain's end are (the observer reads the outcome).
      assert.strictEqual(outcomeOf(fakeRequest)?.reason, "shutting_down")
    }))
})
