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
 * A whole comma-separated value, masked by URL rather than by item: a password may hold a `,`, which
 * splits one URL into items that are each a piece of it (`redis://:pa` and `ss@host`). Each URL runs
 * from its scheme to the next one, its user information to its last `@`; text before the first URL
 * with an `@` in it is masked to that `@`. For error lines naming an invalid item of a value that
 * may carry credentials.
 */
export const maskValue = (value: string): string => {
  const starts = [...value.matchAll(/(?:^|,)\s*([A-Za-z][A-Za-z0-9+.-]*:\/\/)/g)].map((match) => match.index + match[0].length - match[1].length)
  const bounds = [0, ...starts.filter((start) => start > 0), value.length]
  let shown = ""
  for (let i = 0; i + 1 < bounds.length; i++) {
    const part = value.slice(bounds[i], bounds[i + 1])
    const at = part.lastIndexOf("@")
    shown += schemePrefix.test(part) || at === -1 ? maskCredentials(part) : /[?#]/.test(part.slice(0, at)) ? "***" : `***${maskQueryValues(part.slice(at))}`
  }
  return shown
}
