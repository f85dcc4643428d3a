/**
 * The probes, served through HttpApiBuilder from their part of the contract.
 */
import { Effect } from "effect"
import { HttpApi, HttpApiBuilder } from "effect/http-api"
import { NotReady, ProbesGroup } from "../../api/RouterApi.ts"
import { Lifecycle } from "../core/Lifecycle.ts"
import { Backend } from "../core/Backend.ts"

/** The part of `RouterApi` HttpApiBuilder serves; `/infer` and `/v1/*` are served by the request pipeline (edge/Pipeline.ts). */
export const ProbesApi = HttpApi.make("inference-router").add(ProbesGroup)

export const ProbeHandlers = HttpApiBuilder.group(
  ProbesApi,
  "probes",
  Effect.fn(function*(handlers) {
    const lifecycle = yield* Lifecycle
    const backend = yield* Backend
    const readiness = Effect.suspend(() =>
      lifecycle.isDraining()
        ? Effect.fail(new NotReady({ status: "draining" }))
        : backend.ready()
        ? Effect.succeed({ status: "ready" as const })
        : Effect.fail(new NotReady({ status: "no_healthy_upstream" }))
    )
    return handlers.handleAll({
      healthz: () => Effect.succeed({ status: "ok" as const }),
      readyz: () => readiness,
      health: () => readiness
    })
  })
)
