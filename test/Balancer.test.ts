/**
 * Choosing an upstream and taking one out of rotation (Balancer.ts): pure
 * state with explicit times and a seeded random source, so every bound here
 * is exact or a fixed-seed count.
 */
import { assert, describe, it } from "@effect/vitest"
import { Schema } from "effect"
import { Balancer, type BalancerSettings, type Endpoint, isEjected, makeEndpoint } from "../src/router/upstream/Balancer.ts"
import { parseTarget, parseTargets, type UpstreamTarget } from "../src/router/upstream/Targets.ts"

/** mulberry32: a seeded source, so the statistical tests are the same every run. */
const seeded = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

const settings: BalancerSettings = { maxConcurrency: 0, ejectAfter: 3, ejectBaseMs: 1000, maxEjectedPercent: 50, panicThresholdPercent: 50 }

const target = (weight = 1): UpstreamTarget => parseTarget(`http://10.0.0.1:8000;weight=${weight}`) as UpstreamTarget

const pool = (weights: ReadonlyArray<number>, options: Partial<BalancerSettings> = {}, seed = 1) => {
  const balancer = new Balancer({ ...settings, ...options }, seeded(seed))
  balancer.endpoints = weights.map((weight, i) => makeEndpoint(target(weight), `10.0.0.${i}`, `u${i}`, weight, true))
  return balancer
}

const pickEndpoint = (balancer: Balancer, now = 0, exclude?: ReadonlySet<Endpoint>): Endpoint => {
  const picked = balancer.pick(now, exclude)
  if (typeof picked === "string") throw new Error(picked)
  return picked
}

describe("UPSTREAMS items", () => {
  it("reads plain URLs as they are, with weight, version and dns+", () => {
    const plain = parseTarget("http://10.0.0.5:8000") as UpstreamTarget
    assert.deepStrictEqual([plain.hostname, plain.port, plain.prefix, plain.weight, plain.version, plain.resolve], ["10.0.0.5", 8000, "", 1, undefined, false])
    const base = parseTarget("https://vllm.example/v1;weight=90;version=v1") as UpstreamTarget
    assert.deepStrictEqual([base.protocol, base.port, base.prefix, base.weight, base.version], ["https:", 443, "", 90, "v1"])
    const prefixed = parseTarget("http://gw:80/models/a/") as UpstreamTarget
    assert.strictEqual(prefixed.prefix, "/models/a")
    const dns = parseTarget("dns+http://model-pods.ns.svc:8000;version=v2") as UpstreamTarget
    assert.deepStrictEqual([dns.resolve, dns.hostname, dns.version], [true, "model-pods.ns.svc", "v2"])
    const v6 = parseTarget("http://[::1]:9000") as UpstreamTarget
    assert.strictEqual(v6.hostname, "::1")
  })

  it("names what is wrong with a bad item", () => {
    const reasons = [
      "10.0.0.5:8000",
      "ftp://x",
      "http://user:pw@x:1",
      "http://x:1?a=b",
      "http://x:1;weight=0",
      "http://x:1;weight=abc",
      "http://x:1;color=red",
      "http://x:1;version=",
      "dns+http://10.0.0.1:80"
    ].map((item) => parseTarget(item))
    for (const reason of reasons) assert.strictEqual(typeof reason, "string")
    assert.include(parseTarget("http://x:1;weight=0") as string, "weight must be an integer from 1 to 1000")
    const bad = parseTargets("http://a:1, http://user:secret@b:2")
    // The whole value is shown, masked from its first scheme to its last @ (a password could hold the comma that split it).
    assert.deepStrictEqual(bad, { bad: "http://***@b:2", reason: "the URL must not carry credentials" })
  })
})

describe("choosing an upstream", () => {
  it("honours weights when idle (90/10 within a fixed-seed bound)", () => {
    const balancer = pool([90, 10])
    let first = 0
    for (let i = 0; i < 10_000; i++) if (pickEndpoint(balancer).id === "u0") first++
    // Binomial(10000, 0.9): standard deviation 30.
    assert.isTrue(Math.abs(first - 9000) < 150, `u0 chosen ${first} times`)
  })

  it.prop("prefers the upstream with fewer requests in flight per weight", [Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20 })), Schema.Int.check(Schema.isBetween({ minimum: 0, maximum: 20 }))], ([a, b]) => {
    const balancer = pool([1, 1])
    balancer.endpoints[0].inFlight = a
    balancer.endpoints[1].inFlight = b
    const chosen = pickEndpoint(balancer)
    if (a < b) assert.strictEqual(chosen.id, "u0")
    if (b < a) assert.strictEqual(chosen.id, "u1")
  })

  it("keeps in-flight counts near the weights under load", () => {
    const balancer = pool([3, 1, 1, 1], {}, 7)
    // 60 requests that never finish: each choice sees the earlier ones in flight.
    for (let i = 0; i < 60; i++) pickEndpoint(balancer).inFlight++
    const counts = balancer.endpoints.map((endpoint) => endpoint.inFlight)
    assert.isTrue(counts[0] >= 24 && counts[0] <= 36, `counts ${counts}`)
    for (const count of counts.slice(1)) assert.isTrue(count >= 6 && count <= 14, `counts ${counts}`)
  })

  it("respects the per-upstream cap, then reports saturation", () => {
    const balancer = pool([1, 1], { maxConcurrency: 2 })
    for (let i = 0; i < 4; i++) pickEndpoint(balancer).inFlight++
    assert.deepStrictEqual(balancer.endpoints.map((endpoint) => endpoint.inFlight), [2, 2])
    assert.strictEqual(balancer.pick(0), "upstreams_saturated")
  })

  it("skips unhealthy and already-tried upstreams; none left is no_healthy_upstream", () => {
    const balancer = pool([1, 1, 1])
    balancer.endpoints[0].healthy = false
    const tried = new Set([balancer.endpoints[1]])
    assert.strictEqual(pickEndpoint(balancer, 0, tried).id, "u2")
    tried.add(balancer.endpoints[2])
    assert.strictEqual(balancer.pick(0, tried), "no_healthy_upstream")
  })

  it("chooses an upstream that sent Retry-After only when no other can take the request", () => {
    const balancer = pool([1, 1])
    balancer.backOff(balancer.endpoints[0], 0, 2)
    for (let i = 0; i < 50; i++) assert.strictEqual(pickEndpoint(balancer, 1000).id, "u1")
    balancer.endpoints[1].healthy = false
    assert.strictEqual(pickEndpoint(balancer, 1000).id, "u0")
    balancer.endpoints[1].healthy = true
    const after = new Set<string>()
    for (let i = 0; i < 50; i++) after.add(pickEndpoint(balancer, 2000).id)
    assert.deepStrictEqual([...after].sort(), ["u0", "u1"])
  })
})

describe("passive ejection", () => {
  it("ejects after consecutive failures, for a growing time, and the upstream returns by itself", () => {
    const balancer = pool([1, 1, 1, 1])
    const [bad] = balancer.endpoints
    assert.isFalse(balancer.failed(bad, 0))
    balancer.succeeded(bad, 0) // a success resets the count
    assert.isFalse(balancer.failed(bad, 0))
    assert.isFalse(balancer.failed(bad, 0))
    assert.isTrue(balancer.failed(bad, 0))
    assert.strictEqual(bad.ejectedUntil, 1000)
    for (let i = 0; i < 50; i++) assert.notStrictEqual(pickEndpoint(balancer, 999).id, "u0")
    assert.strictEqual(balancer.availableCount(999), 3)
    assert.strictEqual(balancer.availableCount(1000), 4)
    // Fails again at once: the second ejection lasts twice as long.
    for (let i = 0; i < 3; i++) balancer.failed(bad, 1000)
    assert.strictEqual(bad.ejectedUntil, 3000)
    // Back and well for ejectBaseMs: the count is forgotten.
    balancer.succeeded(bad, 4000)
    assert.strictEqual(bad.ejections, 0)
  })

  it("never ejects more than the allowed share, but one of two", () => {
    const balancer = pool([1, 1, 1, 1])
    const fail = (endpoint: Endpoint) => {
      let ejected = false
      for (let i = 0; i < 3; i++) ejected = balancer.failed(endpoint, 0) || ejected
      return ejected
    }
    assert.deepStrictEqual(balancer.endpoints.map(fail), [true, true, false, false])
    const two = pool([1, 1], { maxEjectedPercent: 10 })
    assert.deepStrictEqual(two.endpoints.map((endpoint) => {
      let ejected = false
      for (let i = 0; i < 3; i++) ejected = two.failed(endpoint, 0) || ejected
      return ejected
    }), [true, false])
    const alone = pool([1])
    for (let i = 0; i < 10; i++) assert.isFalse(alone.failed(alone.endpoints[0], 0))
  })

  /** Fails `endpoint` until it is ejected (at most ejectAfter times); true when it was. */
  const ejectAt = (balancer: Balancer, endpoint: Endpoint, now: number) => {
    for (let i = 0; i < balancer.settings.ejectAfter; i++) if (balancer.failed(endpoint, now)) return true
    return false
  }

  it("remembers an ejection until the upstream has stayed back a quiet period: the next one is longer", () => {
    const balancer = pool([1, 1, 1, 1])
    const [bad] = balancer.endpoints
    assert.isTrue(ejectAt(balancer, bad, 0))
    assert.strictEqual(bad.ejectedUntil, 1000)
    // Back, and one request succeeds at once: not yet a quiet period.
    balancer.succeeded(bad, 1000)
    balancer.succeeded(bad, 1500)
    assert.isTrue(ejectAt(balancer, bad, 1600))
    assert.strictEqual(bad.ejectedUntil, 1600 + 2000)
    // A quiet period (ejectBaseMs) after it came back: forgotten, the next ejection is the first again.
    balancer.succeeded(bad, 3600 + 1000)
    assert.isTrue(ejectAt(balancer, bad, 5000))
    assert.strictEqual(bad.ejectedUntil, 5000 + 1000)
  })

  it("stops growing the ejection time at ten times the base", () => {
    const balancer = pool([1, 1, 1, 1])
    const [bad] = balancer.endpoints
    let now = 0
    const lengths: Array<number> = []
    for (let i = 0; i < 14; i++) {
      assert.isTrue(ejectAt(balancer, bad, now))
      lengths.push(bad.ejectedUntil - now)
      now = bad.ejectedUntil
      balancer.succeeded(bad, now)
    }
    assert.deepStrictEqual(lengths, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10, 10, 10, 10].map((n) => n * 1000))
  })

  it("ends an ejection when an active check passes after a failed one, not on a check that never failed", () => {
    const balancer = pool([1, 1, 1, 1])
    const [down, flaky] = balancer.endpoints
    assert.isTrue(ejectAt(balancer, down, 0))
    // Seen down by the checker, then back: in rotation at once (Envoy's successful_active_health_check_uneject_host).
    balancer.checked(down, false, 100)
    balancer.checked(down, true, 200)
    assert.isFalse(isEjected(down, 200))
    assert.strictEqual(balancer.availableCount(200), 4)
    // Failing its answers while /health passes: the ejection runs its time.
    assert.isTrue(ejectAt(balancer, flaky, 300))
    balancer.checked(flaky, true, 400)
    assert.isTrue(isEjected(flaky, 400))
  })

  it("takes an upstream that refused a connection out at once, until a check passes or its backoff ends", () => {
    const balancer = pool([1, 1])
    const [gone, other] = balancer.endpoints
    balancer.unreachable(gone, 0)
    for (let i = 0; i < 20; i++) assert.strictEqual(pickEndpoint(balancer, 10), other)
    assert.strictEqual(balancer.pick(10, new Set([other])), "no_healthy_upstream")
    balancer.checked(gone, true, 50)
    assert.strictEqual(pickEndpoint(balancer, 50, new Set([other])), gone)
    // Without active checks: back after a backoff that doubles while it keeps refusing.
    balancer.unreachable(gone, 100)
    assert.strictEqual(gone.unreachableUntil, 1100)
    balancer.unreachable(gone, 1100)
    assert.strictEqual(gone.unreachableUntil, 3100)
  })

  it("panics below the threshold: ejected upstreams are candidates again, unreachable ones are not", () => {
    const balancer = pool([1, 1, 1], { maxEjectedPercent: 100 })
    const [a, b, c] = balancer.endpoints
    for (const endpoint of [a, b, c]) assert.isTrue(ejectAt(balancer, endpoint, 0))
    assert.isTrue(balancer.inPanic(10))
    // Ready: the ejected upstreams still take requests in panic.
    assert.isTrue(balancer.canServe(10))
    const chosen = new Set<string>()
    for (let i = 0; i < 50; i++) chosen.add(pickEndpoint(balancer, 10).id)
    assert.deepStrictEqual([...chosen].sort(), ["u0", "u1", "u2"])
    balancer.unreachable(c, 10)
    for (let i = 0; i < 50; i++) assert.notStrictEqual(pickEndpoint(balancer, 20).id, "u2")
    const never = pool([1, 1, 1], { maxEjectedPercent: 100, panicThresholdPercent: 0 })
    for (const endpoint of never.endpoints) ejectAt(never, endpoint, 0)
    assert.strictEqual(never.pick(10), "no_healthy_upstream")
    assert.isFalse(never.canServe(10))
    for (const endpoint of balancer.endpoints) balancer.unreachable(endpoint, 20)
    assert.isFalse(balancer.canServe(20))
  })

  it("panics only below the threshold: at exactly half of four available (threshold 50), ejected ones stay out", () => {
    const balancer = pool([1, 1, 1, 1], { maxEjectedPercent: 100 })
    const [a, b] = balancer.endpoints
    for (const endpoint of [a, b]) assert.isTrue(ejectAt(balancer, endpoint, 0))
    assert.isFalse(balancer.inPanic(10))
    for (let i = 0; i < 50; i++) assert.include(["u2", "u3"], pickEndpoint(balancer, 10).id)
    assert.isTrue(ejectAt(balancer, balancer.endpoints[2], 10))
    assert.isTrue(balancer.inPanic(20))
  })
})
