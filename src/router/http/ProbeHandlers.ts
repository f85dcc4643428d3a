/**
 * The probes, served through HttpApiBuilder from their part of the contract.
 */
import { Effect } from "effect"
import { HttpApi, HttpApiBuilder } from "effect/http-api"
import { NotReady, ProbesGroup } from "../../api/RouterApi.ts"
import { Lifecycle } from "../Lifecycle.ts"

/** The part of `RouterApi` HttpApiBuilder serves; `/infer` has a handler of its own (see InferHandler). */
export const ProbesApi = HttpApi.make("inference-router").add(ProbesGroup)

export const ProbeHandlers = HttpApiBuilder.group(
  ProbesApi,
  "probes",
  Effect.fn(function*(handlers) {
    const lifecycle = yield* Lifecycle
    return handlers.handleAll({
      healthz: () => Effect.succeed({ status: "ok" as const }),
      readyz: () =>
        lifecycle.isDraining() ? Effect.fail(new NotReady()) : Effect.succeed({ status: "ready" as const })
    })
  })
)
