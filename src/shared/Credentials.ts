/**
 * Credentials inside configuration values (KV endpoints, upstream URLs):
 * masked wherever a value is shown (logs, answers, error lines). A leaf: it
 * imports nothing, so settings parsers on both sides can use it.
 */

/** The item with a URL's user information and query values masked, as written otherwise. */
export const maskCredentials = (item: string): string =>
  item
    .replace(/^([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#]*@/, "$1***@")
    .replace(/([?&][^=&#]*=)[^&#]*/g, "$1***")
