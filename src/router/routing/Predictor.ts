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
 * The three coefficients are fitted per upstream by recursive least squares
 * with forgetting (recent answers count most, so a server that slows down is
 * noticed within tens of requests), from each answer's observed time to first
 * token and the `cached_tokens` it reports (so the fit uses the truth, not the
 * index's guess). One more fit over every upstream's answers stands in for an
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

/** Fit of y ≈ θ·x by recursive least squares with forgetting, over three features. */
class Fit {
  readonly theta: [number, number, number]
  /** Inverse covariance, 3×3 row-major. */
  private readonly p: Array<number>
  samples = 0

  constructor(prior: [number, number, number], priorVariance: ReadonlyArray<number>) {
    this.theta = [...prior]
    this.p = [priorVariance[0], 0, 0, 0, priorVariance[1], 0, 0, 0, priorVariance[2]]
  }

  update(x: readonly [number, number, number], y: number, lambda: number): void {
    const p = this.p
    const px = [
      p[0] * x[0] + p[1] * x[1] + p[2] * x[2],
      p[3] * x[0] + p[4] * x[1] + p[5] * x[2],
      p[6] * x[0] + p[7] * x[1] + p[8] * x[2]
    ]
    const denominator = lambda + x[0] * px[0] + x[1] * px[1] + x[2] * px[2]
    if (!(denominator > 0) || !Number.isFinite(denominator)) return
    const gain = [px[0] / denominator, px[1] / denominator, px[2] / denominator]
    const error = y - (this.theta[0] * x[0] + this.theta[1] * x[1] + this.theta[2] * x[2])
    for (let i = 0; i < 3; i++) this.theta[i] = Math.max(0, this.theta[i] + gain[i] * error)
    // P = (P - gain · xᵀP) / λ; xᵀP = pxᵀ since P is symmetric.
    for (let i = 0; i < 3; i++) {
      for (let j = 0; j < 3; j++) p[i * 3 + j] = (p[i * 3 + j] - gain[i] * px[j]) / lambda
    }
    this.samples++
  }
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
