/**
 * Routes served from Node's request event, ahead of Effect's router: a request
 * whose method and path match one goes to its handler and never reaches the
 * router: `/infer` and `/v1/*` (see Pipeline.ts and docs/architecture.md for why).
 */
import { Context, Layer } from "effect"
import type { IncomingMessage, ServerResponse } from "node:http"

/**
 * `awaitsContinue`: the client sent `Expect: 100-continue` and waits for
 * "100 Continue" before sending the body. The handler writes it only once it
 * is going to read the body, so a request refused on its headers alone is
 * answered before the client uploads anything.
 */
export type NodeHandler = (request: IncomingMessage, response: ServerResponse, awaitsContinue: boolean) => void

export class NodeRoutes extends Context.Service<NodeRoutes, {
  /** Registers `handler` for `method` on `path` (exact path; the query string is ignored). */
  add(method: string, path: string, handler: NodeHandler): void
  find(method: string | undefined, path: string): NodeHandler | undefined
}>()("inference-router/NodeRoutes") {
  static readonly layer = Layer.sync(NodeRoutes, () => {
    // By path, then method: looked up on every request, so no key is built.
    const byPath = new Map<string, Map<string, NodeHandler>>()
    return NodeRoutes.of({
      add: (method, path, handler) => {
        const byMethod = byPath.get(path) ?? new Map<string, NodeHandler>()
        byMethod.set(method, handler)
        byPath.set(path, byMethod)
      },
      find: (method, path) => method === undefined ? undefined : byPath.get(path)?.get(method)
    })
  })
}
