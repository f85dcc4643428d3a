/**
 * Every header name the router's contract defines, in one place: the APIs,
 * the pipeline, the backends and the tests import them from here.
 */

/**
 * Echoed on every response: the caller's id when it is 1-128 visible ASCII
 * characters (0x21-0x7E: no spaces or control characters, since it is written
 * into log lines as it is), otherwise a new UUID.
 */
export const requestIdHeader = "x-request-id"

/** Client's own queue-wait budget; lowers QUEUE_TIMEOUT_MS, never raises it. */
export const queueTimeoutHeader = "x-queue-timeout-ms"

/** Tells a client or a mesh this rejection is the router's own, and why (`queue_full`, `queue_timeout`, `shutting_down`). */
export const rejectReasonHeader = "x-router-reject-reason"

/** Forces one of the simulated model's failures, for testing clients' retry paths (sent on to upstreams). */
export const simFailureHeader = "x-sim-failure"

/** The model server that served (MODEL_BACKEND=upstream), as llm-d-inference-sim's `x-inference-pod` names its pod. */
export const upstreamHeader = "x-inference-upstream"

/** The `version` label of the upstream that served. */
export const upstreamVersionHeader = "x-inference-upstream-version"

/** Why the cache-aware scheduler picked the upstream it did (UPSTREAM_SCHEDULER=cache-aware). */
export const routeHeader = "x-inference-route"
