/**
 * Header names of the router's contract, shared by its APIs.
 */

/** Echoed on every response: the caller's id (1-128 printable ASCII) or a new UUID. */
export const requestIdHeader = "x-request-id"

/** Client's own queue-wait budget; lowers QUEUE_TIMEOUT_MS, never raises it. */
export const queueTimeoutHeader = "x-queue-timeout-ms"
