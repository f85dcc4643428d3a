/**
 * Predicted time to first token on one upstream, learned online.
 *
 *   ttft ≈ overhead + prefillCost × (uncached prompt tokens + prefill queued ahead) + loadCost × requests in flight
 *
 * - uncached prompt tokens: the request's prompt less what the prefix index
 *   says is cached there;
 * - prefill queued ahead: the uncached tokens of requests already sent there
 *   that have not had their first token yet (the router's own count, from the
 *   moment it picked them), plus `waiting` × the upstream's mean prompt when
 *   its scraped `vllm:num_requests_waiting` says more wait than the router
 *   knows of;
 * - requests in flight: decoding sequences slow every step of the prefill.
 *
 * The three coefficients are fitted per upstream by least squares with
 * forgetting (recent answers count most: with the default 0.98 an answer's
 * weight halves in 34 answers, and a server whose prefill cost triples is
 * predicted within 5 % in about 160 answers, test/RoutingPredictor.test.ts),
 * from each answer's observed time to first token and the `cached_tokens` it
 * reports (so the fit uses the truth, not the index's guess). One more fit over every upstream's answers stands in for an
 * upstream's own until it has `minSamples` answers: a new upstream is then
 * judged like the others, not by a prior that makes it look faster (or
 * slower) than the ones that have answered. Before any answer the prior below
 * holds; the fit never lets a coefficient go negative.
 */

export interface PredictorSettings {
  /** Prior, before any answer: ms of overhead. */
  readonly overheadMs: number
  /** Prior: ms per prompt token prefilled. */
  readonly prefillMsPerToken: number
  /** Prior: ms per request in flight. */
  readonly loadMsPerRequest: number
  /** Forgetting factor of the fit, in (0, 1]: 0.98 weighs the last ~50 answers. */
  readonly forgetting: number
  /** Answers an upstream needs before its own fit is used (the pool's until then). */
  readonly minSamples: number
}

export const defaultPredictorSettings: PredictorSettings = {
  overheadMs: 20,
  prefillMsPerToken: 0.1,
  loadMsPerRequest: 1,
  forgetting: 0.98,
  minSamples: 10
}

/** What the prediction is made from. */
export interface PredictionInput {
  readonly uncachedTokens: number
  /** Uncached prompt tokens of requests sent there still before their first token. */
  readonly queuedPrefillTokens: number
  readonly inFlight: number
}

/**
 * Fit of y ≈ θ·x over three features, by least squares with forgetting,
 * kept as exponentially weighted sums (Σ λᵏ·x·xᵀ and Σ λᵏ·x·y) and solved
 * afresh after each answer, with the prior as a fixed ridge and every
 * coefficient kept ≥ 0 (the exact non-negative solution: each of the eight
 * sets of free coefficients solved, the best admissible kept).
 *
 * Not recursive least squares: its covariance update P = (P − g·pᵀ)/λ grows
 * its rounding error by 1/λ an answer, and after ~1,460 answers P lost its
 * symmetry and positive diagonal and every later answer was ignored (the fit
 * froze). Sums that decay by λ forget their rounding error as they forget old
 * answers, and the fixed ridge keeps the system positive definite whatever
 * the features do (a feature that never varies keeps its prior).
 */
class Fit {
  readonly theta: [number, number, number]
  private readonly prior: readonly [number, number, number]
  /** Ridge: the prior's weight per coefficient (its precision), never forgotten. */
  private readonly ridge: readonly [number, number, number]
  /** Σ λᵏ x xᵀ, 3×3 row-major (kept symmetric: both halves written from one product). */
  private readonly xx = new Float64Array(9)
  /** Σ λᵏ x y. */
  private readonly xy = new Float64Array(3)
  samples = 0

  constructor(prior: [number, number, number], priorVariance: ReadonlyArray<number>) {
    this.theta = [...prior]
    this.prior = prior
    this.ridge = [1 / priorVariance[0], 1 / priorVariance[1], 1 / priorVariance[2]]
  }

  update(x: readonly [number, number, number], y: number, lambda: number): void {
    if (!Number.isFinite(y) || !Number.isFinite(x[0]) || !Number.isFinite(x[1]) || !Number.isFinite(x[2])) return
    const { xx, xy } = this
    for (let i = 0; i < 3; i++) {
      xy[i] = lambda * xy[i] + x[i] * y
      for (let j = i; j < 3; j++) xx[i * 3 + j] = xx[j * 3 + i] = lambda * xx[i * 3 + j] + x[i] * x[j]
    }
    this.samples++
    this.solve()
  }

  /** θ = argmin over θ ≥ 0 of θᵀAθ − 2θᵀr, A = Σxxᵀ + ridge, r = Σxy + ridge·prior. */
  private solve(): void {
    const a = new Float64Array(9)
    const r = new Float64Array(3)
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) a[i * 3 + j] = this.xx[i * 3 + j] + (i === j ? this.ridge[i] : 0)
      r[i] = this.xy[i] + this.ridge[i] * this.prior[i]
    }
    let best: Array<number> | undefined
    let bestObjective = Infinity
    // Free sets from all three down to none; a coefficient outside the set is 0.
    for (let mask = 7; mask >= 0; mask--) {
      const free = [0, 1, 2].filter((i) => (mask >> i) & 1)
      const solved = solveSymmetric(a, r, free)
      if (solved === undefined || solved.some((v) => v < 0)) continue
      const theta = [0, 0, 0]
      free.forEach((i, k) => theta[i] = solved[k])
      let objective = 0
      for (let i = 0; i < 3; i++) {
        objective -= 2 * theta[i] * r[i]
        for (let j = 0; j < 3; j++) objective += theta[i] * a[i * 3 + j] * theta[j]
      }
      if (objective < bestObjective) {
        bestObjective = objective
        best = theta
      }
    }
    if (best !== undefined) for (let i = 0; i < 3; i++) this.theta[i] = best[i]
  }
}

/**
 * Solves A[free,free]·v = r[free] (A symmetric positive definite), scaled to a
 * unit diagonal first (the features differ by orders of magnitude: 1, tokens,
 * requests), by Gaussian elimination with partial pivoting. Undefined when
 * singular or not finite.
 */
const solveSymmetric = (a: Float64Array, r: Float64Array, free: ReadonlyArray<number>): Array<number> | undefined => {
  const n = free.length
  if (n === 0) return []
  const scale = free.map((i) => 1 / Math.sqrt(a[i * 3 + i]))
  const m = free.map((i, p) => [...free.map((j, q) => a[i * 3 + j] * scale[p] * scale[q]), r[i] * scale[p]])
  for (let col = 0; col < n; col++) {
    let pivot = col
    for (let row = col + 1; row < n; row++) if (Math.abs(m[row][col]) > Math.abs(m[pivot][col])) pivot = row
    if (!(Math.abs(m[pivot][col]) > 1e-12)) return undefined
    ;[m[col], m[pivot]] = [m[pivot], m[col]]
    for (let row = col + 1; row < n; row++) {
      const factor = m[row][col] / m[col][col]
      for (let k = col; k <= n; k++) m[row][k] -= factor * m[col][k]
    }
  }
  const v = new Array<number>(n)
  for (let row = n - 1; row >= 0; row--) {
    let sum = m[row][n]
    for (let k = row + 1; k < n; k++) sum -= m[row][k] * v[k]
    v[row] = sum / m[row][row]
  }
  const result = v.map((value, p) => value * scale[p])
  return result.every(Number.isFinite) ? result : undefined
}

export class TtftPredictor {
  readonly settings: PredictorSettings
  private readonly fits = new Map<string, Fit>()
  private readonly pool: Fit

  constructor(settings: PredictorSettings = defaultPredictorSettings) {
    this.settings = settings
    this.pool = this.newFit()
  }

  private newFit(): Fit {
    const { loadMsPerRequest, overheadMs, prefillMsPerToken } = this.settings
    // Variances sized to each feature's scale: a few answers move the prior.
    return new Fit([overheadMs, prefillMsPerToken, loadMsPerRequest], [1e4, 1, 1e2])
  }

  private fit(upstream: string): Fit {
    let fit = this.fits.get(upstream)
    if (fit === undefined) this.fits.set(upstream, fit = this.newFit())
    return fit
  }

  /** The fit a prediction for `upstream` uses: its own once it has enough answers, else the pool's. */
  private used(upstream: string): Fit {
    const own = this.fits.get(upstream)
    return own !== undefined && own.samples >= this.settings.minSamples ? own : this.pool
  }

  /** Predicted milliseconds to first token. */
  predict(upstream: string, input: PredictionInput): number {
    const [overhead, perToken, perRequest] = this.used(upstream).theta
    return overhead + perToken * (input.uncachedTokens + input.queuedPrefillTokens) + perRequest * input.inFlight
  }

  /** Learns from one answer: its time to first token and the uncached tokens it actually prefilled. */
  observe(upstream: string, input: PredictionInput, ttftMs: number): void {
    if (!Number.isFinite(ttftMs) || ttftMs < 0) return
    const x = [1, input.uncachedTokens + input.queuedPrefillTokens, input.inFlight] as const
    this.fit(upstream).update(x, ttftMs, this.settings.forgetting)
    this.pool.update(x, ttftMs, this.settings.forgetting)
  }

  /** The coefficients predictions for the upstream use now, and how many of its own answers it has. */
  coefficients(upstream: string): { readonly overheadMs: number; readonly prefillMsPerToken: number; readonly loadMsPerRequest: number; readonly samples: number } {
    const fit = this.used(upstream)
    return { overheadMs: fit.theta[0], prefillMsPerToken: fit.theta[1], loadMsPerRequest: fit.theta[2], samples: this.fits.get(upstream)?.samples ?? 0 }
  }

  drop(upstream: string): void {
    this.fits.delete(upstream)
  }
}
