/**
 * Every header name the router's contract defines, in one place: the APIs,
 * the pipeline, the backends and the tests import them from here (no other
 * module re-exports them). Standard HTTP headers the router sets as HTTP
 * defines them (`content-type`, `retry-after`, `cache-control`) are written
 * as they are.
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

/** The pod a model server names itself by (llm-d-inference-sim's); passed on from upstream answers. */
export const inferencePodHeader = "x-inference-pod"

/** Queue and model time of an answer (`queue;dur=…, model;dur=…`, W3C Server-Timing). */
export const serverTimingHeader = "server-timing"

/** Set to `no` on event streams: proxies that buffer (nginx) pass each event on at once. */
export const accelBufferingHeader = "x-accel-buffering"

/** On every 401: the bearer scheme (RFC 6750), `Bearer realm="inference-router"`. */
export const wwwAuthenticateHeader = "www-authenticate"
export const bearerChallenge = `Bearer realm="inference-router"`
