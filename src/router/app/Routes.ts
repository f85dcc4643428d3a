/**
 * The router's one rule for routes: a request is routed by the exact path of
 * its target (query and fragment dropped; the absolute form `http://host/p`,
 * which RFC 9112 §3.2.2 says servers must accept, is routed as `/p`), and the
 * same path labels its metrics and its access-log line. No slash merging, no
 * trailing-slash leniency: `//healthz` and `/infer/` are unknown, everywhere.
 */

/** A route the router serves. */
export interface RouteSpec {
  readonly method: string
  readonly path: string
}

/** Methods per path; GET routes answer HEAD too. */
export type RouteTable = ReadonlyMap<string, ReadonlyArray<string>>

export const routeTable = (routes: Iterable<RouteSpec>): RouteTable => {
  const table = new Map<string, Array<string>>()
  for (const { method, path } of routes) {
    const methods = table.get(path) ?? []
    if (!methods.includes(method)) methods.push(method)
    if (method === "GET" && !methods.includes("HEAD")) methods.push("HEAD")
    table.set(path, methods)
  }
  return table
}

const absoluteForm = /^[A-Za-z][A-Za-z0-9+.-]*:\/\/[^/?#]*/

/** The path a request target is routed by. */
export const routePath = (target: string): string => {
  let path = target
  // Origin form ("/…") is the common case: one character compare.
  if (path.charCodeAt(0) !== 47) {
    const authority = absoluteForm.exec(path)
    // Asterisk form ("*") and garbage are routed as they are: they match nothing.
    if (authority === null) return path
    path = path.slice(authority[0].length)
    if (path === "" || path.charCodeAt(0) !== 47) path = "/" + path
  }
  const query = path.indexOf("?")
  const end = query === -1 ? path.indexOf("#") : query
  return end === -1 ? path : path.slice(0, end)
}

/** Metrics label for a path the router does not serve. */
export const unmatchedEndpoint = "unmatched"
