/**
 * `GET /docs`: the interactive API reference (Scalar), from Effect's
 * `HttpApiScalar`, served so that readers cost `/infer` almost nothing.
 *
 * Effect's layer inlines a 3 MB script into the page and loads it when the
 * layer is built. Here it is built on the first request instead (so start-up
 * and memory don't pay for a page nobody asks for), and its output is split
 * into a small page and the script as an immutable asset whose path carries
 * the Effect version that fixes its content. Both are compressed once (gzip
 * and brotli, on zlib's thread pool, not the event loop) and carry an ETag;
 * a reader with a cached copy gets 304 and no body.
 */
import { Effect, Version } from "effect"
import { HttpRouter, HttpServerRequest, HttpServerResponse } from "effect/http"
import { HttpApiScalar } from "effect/http-api"
import { createHash } from "node:crypto"
import { promisify } from "node:util"
import { brotliCompress, constants as zlib, gzip } from "node:zlib"
import { docsPath, RouterApi } from "../../api/RouterApi.ts"

/** The script's path: its content is fixed by the Effect version that ships it. */
export const docsScriptPath = `${docsPath}/scalar-${Version.getCurrentVersion()}.js` as const

interface Asset {
  readonly contentType: string
  readonly cacheControl: string
  readonly etag: string
  readonly identity: Uint8Array
  readonly gzip: Uint8Array
  readonly br: Uint8Array
}

const gzipAsync = promisify(gzip)
const brotliAsync = promisify(brotliCompress)

const makeAsset = (text: string, contentType: string, cacheControl: string) =>
  Effect.promise(async (): Promise<Asset> => {
    const identity = Buffer.from(text)
    const [gz, br] = await Promise.all([
      gzipAsync(identity, { level: 9 }),
      brotliAsync(identity, { params: { [zlib.BROTLI_PARAM_QUALITY]: 9, [zlib.BROTLI_PARAM_SIZE_HINT]: identity.length } })
    ])
    const etag = `"${createHash("sha256").update(identity).digest("base64url").slice(0, 22)}"`
    return { contentType, cacheControl, etag, identity, gzip: gz, br }
  })

const scriptOpen = "<script>"
const scriptClose = "</script>"

/**
 * Splits Effect's page into the page without the script, and the script. If
 * the page's shape ever changes, the page is served whole (still compressed).
 */
export const splitPage = (html: string): { readonly page: string; readonly script: string | undefined } => {
  const container = html.indexOf(`<div id="api-reference-container"></div>`)
  const start = html.indexOf(scriptOpen, container)
  const end = html.indexOf(scriptClose, start)
  if (container === -1 || start === -1 || end === -1) return { page: html, script: undefined }
  return {
    page: `${html.slice(0, start)}<script src="${docsScriptPath}"></script>${html.slice(end + scriptClose.length)}`,
    script: html.slice(start + scriptOpen.length, end)
  }
}

/** Effect's Scalar page, rendered once through its own layer. */
const renderPage = Effect.scoped(Effect.gen(function*() {
  const app = yield* HttpRouter.toHttpEffect(
    // Bundled script, and no web fonts: the page makes no request beyond the router.
    HttpApiScalar.layer(RouterApi, { path: docsPath, scalar: { withDefaultFonts: false } })
  )
  const response = yield* app.pipe(
    Effect.provideService(
      HttpServerRequest.HttpServerRequest,
      HttpServerRequest.fromWeb(new Request(`http://localhost${docsPath}`))
    )
  )
  if (response.body._tag !== "Uint8Array") return yield* Effect.die(new Error("the API reference page has no body"))
  return new TextDecoder().decode(response.body.body)
}))

const assets = Effect.gen(function*() {
  const { page, script } = splitPage(yield* renderPage)
  return {
    page: yield* makeAsset(page, "text/html; charset=utf-8", "no-cache"),
    script: script === undefined
      ? undefined
      : yield* makeAsset(script, "text/javascript; charset=utf-8", "public, max-age=31536000, immutable")
  }
})

/** The best encoding the client accepts (q-values beyond 0 are not ranked). */
const encodingFor = (accept: string | undefined): "br" | "gzip" | undefined => {
  if (accept === undefined) return undefined
  const offered = accept.toLowerCase().split(",").map((part) => part.trim())
  const accepts = (name: string) => offered.some((part) => part === name || (part.startsWith(name + ";") && !/;\s*q=0(\.0*)?$/.test(part)))
  return accepts("br") ? "br" : accepts("gzip") ? "gzip" : undefined
}

const serve = (asset: Asset) =>
  Effect.map(HttpServerRequest.HttpServerRequest, (request) => {
    const headers = { etag: asset.etag, "cache-control": asset.cacheControl, vary: "accept-encoding" }
    if (request.headers["if-none-match"]?.split(",").some((tag: string) => tag.trim() === asset.etag)) {
      return HttpServerResponse.empty({ status: 304, headers })
    }
    const encoding = encodingFor(request.headers["accept-encoding"])
    const body = encoding === undefined ? asset.identity : asset[encoding]
    return HttpServerResponse.uint8Array(body, {
      contentType: asset.contentType,
      headers: encoding === undefined ? headers : { ...headers, "content-encoding": encoding }
    })
  })

export const DocsRoute = HttpRouter.use(Effect.fnUntraced(function*(router) {
  // Rendered and compressed on the first request, once, then shared.
  const cached = yield* Effect.cached(assets)
  yield* router.add("GET", docsPath, Effect.flatMap(cached, ({ page }) => serve(page)))
  yield* router.add(
    "GET",
    docsScriptPath,
    Effect.flatMap(cached, ({ script }) =>
      script === undefined
        ? Effect.succeed(HttpServerResponse.jsonUnsafe({ error: { code: "not_found", message: `no route for ${docsScriptPath}` } }, { status: 404 }))
        : serve(script))
  )
}))

/** The routes this module serves, for the route table. */
export const docsRoutes = [
  { method: "GET", path: docsPath },
  { method: "GET", path: docsScriptPath }
] as const
