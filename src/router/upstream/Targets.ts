/**
 * `UPSTREAMS`: the model servers the router forwards to, as an operator
 * writes them. Comma-separated items, each a base URL with optional
 * `;key=value` parameters:
 *
 *   http://10.0.0.5:8000                         a server, as it is
 *   http://vllm-a:8000/v1;weight=90;version=v1   a weighted, labelled one (a canary is two)
 *   dns+http://model-pods.ns.svc:8000            every address the name resolves to,
 *                                                re-resolved periodically (a headless Service)
 *   http://vllm-a:8000;kv-events=5557            publishes KV events (ZeroMQ) on port 5557 of the
 *                                                same address (or kv-events=tcp://host:port), for
 *                                                UPSTREAM_SCHEDULER=cache-aware (docs/routing.md)
 *
 * A base URL's path is a prefix for every request (`/v1/...`, `/health`); a
 * trailing `/v1` is the OpenAI-style base URL clients are given and means the
 * server's root. Pure: parsing only, no I/O.
 */
import { maskCredentials, maskValue } from "../../shared/Credentials.ts"

export interface UpstreamTarget {
  /** As written (credentials masked): what errors and the start-up log show. */
  readonly shown: string
  /** `http:` or `https:` */
  readonly protocol: string
  /** Host name or address, without brackets. */
  readonly hostname: string
  readonly port: number
  /** Prefix of every request path ("" for the root), without a trailing slash. */
  readonly prefix: string
  /** Relative share of traffic (1..1000); a DNS item's share is split among its addresses. */
  readonly weight: number
  /** A label for metrics and the response header, e.g. a model version. */
  readonly version: string | undefined
  /** True for `dns+` items: the name is re-resolved and each address is an upstream. */
  readonly resolve: boolean
  /** `kv-events=`: a port on each address, or a `tcp://host:port` endpoint, publishing vLLM's KV events. */
  readonly kvEvents: number | string | undefined
}

export const upstreamsExpected =
  "comma-separated base URLs (http:// or https://, or dns+http:// to use every address of a name), each optionally followed by ;weight=1-1000, ;version=<label> and ;kv-events=<port or tcp://host:port>"

/** One item, or the reason it is not one. */
export const parseTarget = (item: string): UpstreamTarget | string => {
  const [base, ...params] = item.split(";").map((part) => part.trim())
  const resolve = base.startsWith("dns+")
  const urlText = resolve ? base.slice(4) : base
  if (!/^https?:\/\//.test(urlText)) return "the URL must start with http://, https:// or dns+http://"
  let url: URL
  try {
    url = new URL(urlText)
  } catch {
    return "not a URL"
  }
  if (url.hostname === "") return "the URL has no host"
  if (url.username !== "" || url.password !== "") return "the URL must not carry credentials"
  if (url.search !== "" || url.hash !== "") return "the URL must not have a query or fragment"
  let weight = 1
  let version: string | undefined
  let kvEvents: number | string | undefined
  for (const param of params) {
    const match = /^([a-z-]+)=(.*)$/.exec(param)
    if (match === null) return `"${param}" is not key=value`
    const [, key, value] = match
    if (key === "weight") {
      if (!/^[0-9]{1,4}$/.test(value) || Number(value) < 1 || Number(value) > 1000) return "weight must be an integer from 1 to 1000"
      weight = Number(value)
    } else if (key === "version") {
      if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(value)) return "version must be 1-63 letters, digits, '.', '_' or '-'"
      version = value
    } else if (key === "kv-events") {
      if (/^[0-9]{1,5}$/.test(value) && Number(value) >= 1 && Number(value) <= 65535) kvEvents = Number(value)
      else if (/^tcp:\/\/[^\s/:]+:[0-9]{1,5}$/.test(value) || /^tcp:\/\/\[[0-9A-Fa-f:.]+\]:[0-9]{1,5}$/.test(value)) kvEvents = value
      else return "kv-events must be a port (1-65535) or tcp://host:port"
      if (resolve && typeof kvEvents === "string") return "a dns+ item's kv-events is a port (each address publishes its own)"
    } else {
      return `unknown parameter "${key}" (expected weight, version or kv-events)`
    }
  }
  const hostname = url.hostname.replace(/^\[(.*)\]$/, "$1")
  if (resolve && /^[0-9.]+$|:/.test(hostname)) return "dns+ needs a host name, not an address"
  const prefix = url.pathname.replace(/\/+$/, "").replace(/\/v1$/, "")
  return {
    shown: maskCredentials(item),
    protocol: url.protocol,
    hostname,
    port: url.port === "" ? (url.protocol === "https:" ? 443 : 80) : Number(url.port),
    prefix,
    weight,
    version,
    resolve,
    kvEvents
  }
}

/** Every item of `UPSTREAMS`, or the first bad item with its reason. */
export const parseTargets = (
  raw: string
): { readonly targets: ReadonlyArray<UpstreamTarget> } | { readonly bad: string; readonly reason: string } => {
  const items = raw.split(",").map((item) => item.trim()).filter((item) => item !== "")
  const targets: Array<UpstreamTarget> = []
  for (const item of items) {
    const target = parseTarget(item)
    // The item alone when nothing in the value can be a secret; else the whole value, masked: a
    // secret with a `,` in it is split into items, any of them a piece of it.
    if (typeof target === "string") return { bad: /[@?#]/.test(raw) ? maskValue(raw) : item, reason: target }
    targets.push(target)
  }
  return { targets }
}

/** `host:port` as it appears in URLs, metrics and the response header. */
export const hostPort = (hostname: string, port: number) => `${hostname.includes(":") ? `[${hostname}]` : hostname}:${port}`
