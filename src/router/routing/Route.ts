/**
 * The hook between the upstream pool and a scheduler other than least
 * request: the pool asks for a Route once per forwarded request, and tells it
 * what happens to the request's attempts. Kept apart from Routing.ts so the
 * pool imports an interface, not the scheduler.
 */
import type { Endpoint } from "../upstream/Balancer.ts"

export interface Route {
  /** In place of least request's draw: `pool` (never empty) is what the balancer allows now. */
  choose(pool: ReadonlyArray<Endpoint>, now: number): Endpoint
  /** The attempt went to `endpoint` (counted in flight there from now). */
  sent(endpoint: Endpoint, now: number): void
  /** The `x-inference-route` answer header: scheduler, reason (and, with UPSTREAM_ROUTE_HEADER_CACHED_TOKENS=true, the predicted cached tokens and TTFT). */
  header(): string
  /** A chunk of the answer's body (the first: the first token, for a stream). */
  data(chunk: Buffer, now: number): void
  /** The attempt ended, whatever the outcome (answered, failed, aborted, retried elsewhere). */
  ended(endpoint: Endpoint, now: number): void
}

export interface RouteScheduler {
  /** The route of one request; undefined: least request decides (no prompt to route on). */
  route(request: { readonly path: string; readonly body: string | undefined }): Route | undefined
  /** Called once by the pool: its endpoints, for scraping, KV events and forgetting removed ones. */
  attach(endpoints: () => ReadonlyArray<Endpoint>): void
}

