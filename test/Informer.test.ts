/**
 * The informer's list-then-watch loop under TestClock, against an in-memory
 * API: the backoff of an outage ends once the API is healthy again.
 */
import { assert, describe, it } from "@effect/vitest"
import { Clock, Effect, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { makeInformer } from "../src/controller/Informer.ts"
import { KubeApi, KubeError, resources, WatchExpired } from "../src/controller/KubeApi.ts"

describe("informer", () => {
  it.effect("after an outage, a watch that ran healthy (bookmarks only) and then got 410 lists again at once, not after the outage's backoff", () =>
    Effect.gen(function*() {
      const lists: Array<number> = []
      let failingLists = 8
      const unused = () => Effect.die("not used by the informer")
      const kube = KubeApi.of({
        server: "memory",
        list: () =>
          Effect.gen(function*() {
            lists.push(yield* Clock.currentTimeMillis)
            if (failingLists > 0) {
              failingLists--
              return yield* Effect.fail(new KubeError({ operation: "list", status: 503, detail: "down (test)" }))
            }
            return { items: [], resourceVersion: "1" }
          }),
        // A quiet minute of bookmarks, then the history is compacted: 410.
        watch: (_resource, _namespace, _version, onEvent) =>
          Effect.gen(function*() {
            for (let i = 0; i < 6; i++) {
              yield* Effect.sleep(10_000)
              onEvent("BOOKMARK", { metadata: { resourceVersion: "1" } })
            }
            return yield* Effect.fail(new WatchExpired({ detail: "too old (test)" }))
          }),
        apply: unused,
        applyStatus: unused,
        read: unused,
        remove: unused,
        createEvent: unused,
        readLease: unused,
        createLease: unused,
        replaceLease: unused
      })
      const informer = yield* Effect.forkChild(Effect.scoped(
        makeInformer({ resource: resources.deployments, namespaces: [], idleTimeoutMs: 180_000, onChange: () => {} }).pipe(
          Effect.andThen(Effect.never)
        )
      ).pipe(Effect.provideService(KubeApi, kube)))
      while (lists.length < 9) yield* TestClock.adjust(1_000)
      const healthySince = lists[8]
      while (lists.length < 10) yield* TestClock.adjust(100)
      const relisted = lists[9] - healthySince
      // The watch's minute, then the list again within a moment (not the 25-50 s the outage had reached).
      assert.isAtLeast(relisted, 60_000)
      assert.isAtMost(relisted, 61_000)
      yield* Fiber.interrupt(informer)
    }))
})
