/**
 * Credentials inside configuration values (KV endpoints, upstream URLs):
 * masked wherever a value is shown (logs, answers, error lines). A leaf: it
 * imports nothing, so settings parsers on both sides can use it.
 */

const schemePrefix = /^[A-Za-z][A-Za-z0-9+.-]*:\/\//

/** Query values (`?password=…`), each to the next `&`: a `#` in one is part of it, not a fragment. */
const maskQueryValues = (text: string) => text.replace(/([?&][^=&]*=)[^&]*/g, "$1***")

/**
 * The item with a URL's user information and query values masked, as written otherwise. The user
 * information is everything from the scheme to the item's last `@`: a password may hold an
 * unencoded `/`, `?`, `#` or `@` (generated ones do), so no URL parser's idea of where the
 * authority ends is trusted. A path with an `@` in it is masked too: more than needed, never less.
 */
export const maskCredentials = (item: string): string => {
  const scheme = schemePrefix.exec(item)?.[0]
  const at = item.lastIndexOf("@")
  if (scheme === undefined || at < scheme.length) return maskQueryValues(item)
  // With a `?` or `#` before it, that `@` may be a query value's (`?token=ab@cd`): what follows it is
  // then part of a secret, and nothing after the scheme is shown.
  return /[?#]/.test(item.slice(scheme.length, at)) ? `${scheme}***` : `${scheme}***${maskQueryValues(item.slice(at))}`
}

/**
 * A whole comma-separated value, for error lines naming an invalid item of a value that may carry
 * credentials: a secret may hold a `,` (the value is split there, into items that are each a piece
 * of it) or a `,` and something like a scheme. So no item boundary is trusted: everything from the
 * first scheme (or the start, when an `@` comes before it) to the value's last `@` is masked, and
 * nothing after it when a `?` or `#` comes before that `@`; query values are masked everywhere.
 */
export const maskValue = (value: string): string => {
  const at = value.lastIndexOf("@")
  if (at === -1) return maskQueryValues(value)
  const scheme = /[A-Za-z][A-Za-z0-9+.-]*:\/\//.exec(value)
  const afterScheme = scheme === null ? 0 : scheme.index + scheme[0].length
  const from = afterScheme <= at && value.indexOf("@") >= afterScheme ? afterScheme : 0
  const hidden = value.slice(from, at)
  return `${maskQueryValues(value.slice(0, from))}***${/[?#]/.test(hidden) ? "" : maskQueryValues(value.slice(at))}`
}
