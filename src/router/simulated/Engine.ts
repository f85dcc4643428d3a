/**
 * The simulated server's engine: continuous batching in steps over a prefix
 * cache of blocks, as vLLM's scheduler runs (docs/simulator.md has the model
 * and its formulas).
 *
 * - A request waits (FIFO) for a running slot (SIM's MAX_CONCURRENCY, vLLM's
 *   max_num_seqs) and for its first chunk's blocks: the cached blocks its
 *   prompt begins with (looked up then), plus fresh ones for up to
 *   SIM_MAX_BATCHED_TOKENS more. The next chunks and the generated tokens
 *   take fresh blocks as they need them; when none is free the running
 *   sequence admitted last is preempted (vLLM's recompute: its blocks released,
 *   back to the head of the queue, its prompt and generated tokens computed
 *   again when readmitted). Its prefill starts no sooner than the part of its
 *   time to first token that is not a step (SIM_TTFT_MS - SIM_ITL_MS, at
 *   least 0) after it was submitted: it holds its slot and blocks meanwhile,
 *   so the cache's metrics count it.
 * - The running sequences advance together, one step at a time, from one
 *   timer per step: a step decodes one token for every sequence past its
 *   prefill (whether its client took the last one or not: a slow reader is
 *   handed the generated tokens as it takes them) and prefills prompt tokens
 *   with what is left of SIM_MAX_BATCHED_TOKENS (chunked prefill). It lasts
 *   SIM_ITL_MS (with its jitter, scaled by SIM_LOAD_FACTOR) plus
 *   SIM_PREFILL_US_PER_TOKEN for each prompt token prefilled in it. A
 *   sequence's first token ends the step that completes its prefill.
 * - Steps of no length (SIM_ITL_MS=0 and nothing to prefill at a cost) run in
 *   a loop, not by timers.
 *
 * Plain callbacks on a TimerClock, not fibers: it runs once per step for every
 * stream (BENCHMARKS.md section 6); tests drive it with TestClock through
 * `effectTimerClock`.
 */
// The module binding: the global `performance` is a getter, read at every step.
import { performance } from "node:perf_hooks"
import type { SimulationStats } from "../core/Backend.ts"
import { type Block, BlockCache, type KvEvent } from "./BlockCache.ts"
import { type FinishReason, planOutput, prng, type TextPlan, tokenEnd } from "./Simulation.ts"
import { blockHash, blockHashes, blockSeed, tokenIdAt } from "./Tokens.ts"

/** What the engine's timers read and arm: the system's, or one on Effect's Clock in tests. */
export interface TimerClock {
  now(): number
  setTimeout(callback: () => void, ms: number): unknown
  clearTimeout(handle: unknown): void
}

export const systemTimerClock: TimerClock = {
  now: () => performance.now(),
  setTimeout: (callback, ms) => setTimeout(callback, ms),
  clearTimeout: (handle) => clearTimeout(handle as ReturnType<typeof setTimeout>)
}

/**
 * Timers shared by every sequence: callbacks due in the same millisecond run
 * from one `setTimeout`. Called from a callback, "now" is when that callback
 * was due, not when its timer ran (up to a millisecond later, or up to half a
 * millisecond earlier: see `fire`; a longer stall is not made up for), so
 * steps average their configured length rather than that plus the timer's
 * lateness (BENCHMARKS.md 6c).
 */
export const makeTokenTimer = (clock: TimerClock = systemTimerClock) => {
  const due = new Map<number, Array<() => void>>()
  let armedFor = Infinity
  let timer: unknown
  /** The millisecond whose callbacks are running, if any. */
  let firing: number | undefined
  const fire = () => {
    timer = undefined
    armedFor = Infinity
    const now = clock.now()
    let next = Infinity
    for (const [at, callbacks] of due) {
      // Due within half a millisecond: run now. Node truncates a timeout to whole milliseconds
      // and counts it from its loop's whole-millisecond clock, so a timer armed for a fraction
      // fires up to about a millisecond before its time by `performance.now()`; armed again, it
      // came ~0.7 ms late on average, which at 8 slots and 20 ms a request cost 3 % of the
      // throughput (BENCHMARKS.md section 17). Half a millisecond, as `after` rounds: steps land
      // on time on average, none more than half a millisecond early.
      if (at >= now + 0.5) {
        if (at < next) next = at
        continue
      }
      due.delete(at)
      firing = at
      for (const callback of callbacks) callback()
      firing = undefined
    }
    // Callbacks may have added earlier-due entries (a zero delay): look again.
    for (const at of due.keys()) if (at < next) next = at
    if (next !== Infinity) arm(next)
  }
  const arm = (at: number) => {
    if (at >= armedFor) return
    if (timer !== undefined) clock.clearTimeout(timer)
    armedFor = at
    timer = clock.setTimeout(fire, Math.max(0, at - clock.now()))
  }
  return {
    /** Runs `callback` about `ms` from now, in the nearest whole millisecond. */
    after(ms: number, callback: () => void): void {
      const now = clock.now()
      const from = firing === undefined ? now : Math.max(firing, now - 1)
      const at = Math.round(from + ms)
      const list = due.get(at)
      if (list === undefined) due.set(at, [callback])
      else list.push(callback)
      arm(at)
    },
    /** Runs `callback` at `time` (the nearest whole millisecond), or as soon as possible when that has passed. */
    at(time: number, callback: () => void): void {
      const at = Math.max(Math.round(time), Math.ceil(clock.now()))
      const list = due.get(at)
      if (list === undefined) due.set(at, [callback])
      else list.push(callback)
      arm(at)
    },
    /** The time the running callbacks were due (else now): what a step's end counts from. */
    now(): number {
      return firing ?? clock.now()
    }
  }
}

export interface EngineSettings {
  /** Tokens per KV block (SIM_BLOCK_SIZE). */
  readonly blockSize: number
  /** Blocks in the KV cache (SIM_KV_BLOCKS). */
  readonly kvBlocks: number
  /** Most sequences running at once (MAX_CONCURRENCY, vLLM's max_num_seqs). */
  readonly maxRunning: number
  /** Most tokens one step computes (SIM_MAX_BATCHED_TOKENS, vLLM's max_num_batched_tokens). */
  readonly maxBatchedTokens: number
  readonly ttftMs: number
  readonly ttftStdDevMs: number
  readonly itlMs: number
  readonly itlStdDevMs: number
  /** Microseconds a step lasts longer per prompt token it prefills (SIM_PREFILL_US_PER_TOKEN). */
  readonly prefillUsPerToken: number
  /** Step length multiplier reached when every running slot is busy (1: none). */
  readonly loadFactor: number
  /** Seeds the block hashes (the model's name, as vLLM seeds them). */
  readonly modelName: string
  /** Seeds the jitter. */
  readonly seed: number
}

/** How one sequence ended. */
export interface SequenceResult {
  readonly text: string
  readonly completionTokens: number
  readonly finishReason: FinishReason
  /** Prompt tokens found in the prefix cache (OpenAI's usage.prompt_tokens_details.cached_tokens). */
  readonly cachedTokens: number
  /** Milliseconds from submission to the first token (0 when none). */
  readonly firstTokenMs: number
  /** Whole milliseconds from submission to the end. */
  readonly processingMs: number
}

/** Receives a sequence's tokens. */
export interface SequenceSink {
  /**
   * One token; call `next` when ready for the next (at once, or once the client's socket drained).
   * The engine does not wait for it: tokens generated meanwhile are handed out, in order, as the
   * client takes them (they are the plan's text: nothing is buffered).
   */
  token(text: string, index: number, next: () => void): void
  end(result: SequenceResult): void
}

/** The engine's counts (core's SimulationStats: what the metrics read). */
export type EngineStats = SimulationStats

/**
 * One request in the engine. The fields a step reads for every sequence come first (V8 lays an
 * object literal's fields out in order): a step touches a thousand sequences that the rest of the
 * process has pushed out of the CPU's caches since the last one, so what it reads per token should
 * sit in as few cache lines as possible (bench:sim, part 4).
 */
interface Sequence {
  /** The whole prompt is computed (its first token is due, or it has been emitted). */
  prefillDone: boolean
  finished: boolean
  stopped: boolean
  /** Runs uncached: its prompt alone is longer than the cache (refused at the door; here should one come anyway). */
  uncached: boolean
  /** Tokens its blocks hold (blockSize per block in `blocks`). */
  blockTokens: number
  /** Tokens the engine generated. */
  generated: number
  readonly promptTokens: number
  /** The plan's source, end and tokens (read per token: kept here rather than behind `plan`). */
  readonly source: string
  readonly planEnd: number
  readonly planTokens: number
  /** Where the generated text ends in `source`. */
  generatedTo: number
  /** Where the last generated token starts in it (-1: none yet). */
  lastTokenFrom: number
  /** Tokens handed to the client (at most `generated`). */
  delivered: number
  /** Where the text handed to the client ends (the client may lag behind the engine). */
  deliveredTo: number
  /** The client took the last token: it may have the next. */
  ready: boolean
  /** Handing tokens out now (a `next` called from within `token` only marks the client ready). */
  delivering: boolean
  readonly sink: SequenceSink
  /** What the sink calls when it took a token (one function per sequence, not one per token). */
  readonly next: () => void
  /** The same, after the last token: the sequence ends. */
  readonly end: () => void
  // Read once per block.
  /** Leading blocks of `blocks` that are full and hashed. */
  stored: number
  blocks: Array<Block>
  /**
   * The ids of what it computes as a prompt: the prompt's, and after a preemption the tokens generated
   * until then (keyed as the cache keys them). The ids of the tokens generated since are not kept (one
   * push per token): they are read again from the text when a block fills or it is preempted.
   */
  readonly ids: Array<number>
  /** Where in `source` the generated tokens of the block being filled that are not in `ids` begin. */
  blockTextFrom: number
  /** The key of the last full block (the seed before the first); a generated token that fills a block keys it. */
  lastHash: number
  // The rest.
  /** The keys of `ids`' full blocks while it is prefilled (computed again after a preemption); undefined after. */
  hashes: ReadonlyArray<number> | undefined
  /** Tokens its (re)computation prefills: the prompt, or after a preemption the prompt and the tokens generated. */
  target: number
  /** Prompt tokens computed or found cached. */
  prefilled: number
  /** Times admitted to the batch (more than once: preempted). */
  admissions: number
  readonly plan: TextPlan
  /** What precedes the reply when a client sends it back (see `submit`): part of its first token's id. */
  readonly replyPrefix: string
  readonly submittedAt: number
  cachedTokens: number
  firstTokenAt: number
  /** Its prefill starts no sooner (the part of TTFT that is not a step); -Infinity: at once. */
  readonly startAt: number
}

/**
 * Shortens a reused array to `length` by popping: setting `length` (or `splice`) is a call into
 * V8's runtime that also shrinks the backing store, which the next push grows again. The engine
 * shortens its step arrays several times per request (about a fifth of its CPU on a zero-latency
 * `/infer`, profiled); `pop` is inlined.
 */
const shorten = (array: Array<unknown>, length = 0): void => {
  while (array.length > length) array.pop()
}

export const makeEngine = (
  settings: EngineSettings,
  clock: TimerClock = systemTimerClock,
  /** Receives each step's KV events, in order (none are built without it). */
  publish?: (events: ReadonlyArray<KvEvent>) => void,
  /** Share of the other slots busy, 0..1, for SIM_LOAD_FACTOR (by default the engine's own running share). */
  busyShare?: () => number
) => {
  const blockSize = settings.blockSize
  const seedHash = blockSeed(settings.modelName)
  const pending: Array<KvEvent> = []
  const cache = new BlockCache(settings.kvBlocks, blockSize, publish === undefined ? undefined : (event) => pending.push(event))
  const timer = makeTokenTimer(clock)
  const random = prng(settings.seed)
  const waiting: Array<Sequence> = []
  const running: Array<Sequence> = []
  let prefixQueries = 0
  let prefixHits = 0
  let preemptions = 0
  /** A step is in flight (its timer armed) or the loop is running steps now. */
  let stepping = false
  /**
   * When the step that just ended was due: the next one, back to back, ends its
   * length after that, however long handing out this one's tokens took (an
   * engine processes outputs beside the GPU's next step), so gaps average the
   * step's length. Undefined while the engine is idle.
   */
  let stepDueAt: number | undefined
  /**
   * While a submission is handled synchronously (steps of no length run at
   * once), its time: what it does takes no simulated time, whatever the CPU
   * took (a request answered at once reports 0 ms, as before the engine).
   */
  let instant: number | undefined
  const now = () => instant ?? timer.now()
  // The current step, reused from step to step.
  const prefillSeqs: Array<Sequence> = []
  const prefillChunks: Array<number> = []
  const decodeSeqs: Array<Sequence> = []

  const flush = () => {
    if (pending.length > 0) publish!(pending.splice(0))
  }

  /** A normal draw (Box-Muller) with this standard deviation. */
  const jitter = (stdDevMs: number) =>
    stdDevMs === 0 ? 0 : stdDevMs * Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random())

  const loadScale = () => {
    if (settings.loadFactor === 1) return 1
    const share = busyShare !== undefined
      ? busyShare()
      : settings.maxRunning <= 1
      ? 0
      : Math.max(0, running.length - 1) / (settings.maxRunning - 1)
    return 1 + (settings.loadFactor - 1) * Math.max(0, Math.min(1, share))
  }

  /**
   * References the blocks of what the sequence computes when admitted (its prompt; after a
   * preemption its prompt and the tokens it generated): the cached ones it begins with and fresh
   * ones for its first chunk. The next chunks' blocks and generated tokens' are taken as they are
   * computed (ensureBlocks), as vLLM allocates them. False when they don't fit yet.
   */
  const reserve = (sequence: Sequence): boolean => {
    const target = sequence.ids.length
    const blocks = Math.ceil(target / blockSize)
    const hashes = sequence.hashes ??= blockHashes(seedHash, sequence.ids, blockSize)
    if (sequence.uncached || Math.ceil(sequence.promptTokens / blockSize) > settings.kvBlocks) {
      // Refused before admission (400); should one come here anyway, it runs uncached rather than waiting forever.
      sequence.uncached = true
      sequence.blocks = []
      sequence.blockTokens = 0
      sequence.target = target
      return true
    }
    // Hits stop at the computed length - 1 tokens, in whole blocks, as vLLM caps them: a fully cached prompt computes its last block again.
    const hits = cache.hits(hashes, target === 0 ? 0 : Math.floor((target - 1) / blockSize))
    // Blocks for its first chunk (at most SIM_MAX_BATCHED_TOKENS past the hits); the next chunks take theirs as they are prefilled.
    const firstChunk = Math.min(blocks, Math.ceil((hits * blockSize + settings.maxBatchedTokens) / blockSize))
    const reserved = cache.reserve(hashes, hits, Math.min(firstChunk, settings.kvBlocks) - hits)
    if (reserved === undefined) return false
    sequence.blocks = reserved
    sequence.blockTokens = reserved.length * blockSize
    sequence.target = target
    sequence.prefilled = hits * blockSize
    sequence.stored = hits
    // As vLLM's num_cached_tokens and prefix-cache counters (PrefixCacheStats.record counts a
    // preempted request's lookups apart, not in queries/hits): the first admission only.
    if (sequence.admissions++ === 0) {
      sequence.cachedTokens = hits * blockSize
      prefixQueries += target
      prefixHits += hits * blockSize
    }
    return true
  }

  /** Preempted (vLLM's recompute): its blocks go back, it waits first in line, and computes its tokens again when admitted. */
  const preempt = (victim: Sequence) => {
    cache.release(victim.blocks)
    victim.blocks = []
    victim.blockTokens = 0
    // What it computes again includes the tokens it generated: their ids join the prompt's.
    const ids = victim.ids
    for (let from = idsTextTo(victim); ids.length < victim.promptTokens + victim.generated;) {
      const to = tokenEndIn(victim, from)
      ids.push(tokenIdAt(victim.source, from, to, from === 0 ? victim.replyPrefix : ""))
      from = to
    }
    victim.prefillDone = false
    victim.prefilled = 0
    victim.stored = 0
    running.splice(running.lastIndexOf(victim), 1)
    waiting.unshift(victim)
    preemptions++
  }

  /**
   * The sequence has blocks for `tokens` tokens (at most the whole cache); a fresh block is taken
   * when needed and, when none is free, the last running sequence is preempted, as vLLM's
   * scheduler does. False when that was this sequence.
   */
  const ensureBlocks = (sequence: Sequence, tokens: number): boolean => {
    // Mostly it has them (a fresh block every blockSize tokens).
    if (sequence.uncached || sequence.blockTokens >= tokens) return true
    const need = Math.min(Math.ceil(tokens / blockSize), settings.kvBlocks)
    while (sequence.blocks.length < need) {
      const fresh = cache.freshBlock()
      if (fresh !== undefined) {
        sequence.blocks.push(fresh)
        sequence.blockTokens += blockSize
        continue
      }
      const victim = running[running.length - 1]
      preempt(victim)
      if (victim === sequence) return false
    }
    return true
  }

  const admitWaiting = () => {
    let admitted = 0
    while (admitted < waiting.length && running.length < settings.maxRunning) {
      const sequence = waiting[admitted]
      if (!sequence.stopped && !reserve(sequence)) break
      admitted++
      if (!sequence.stopped) running.push(sequence)
    }
    // Mostly every waiting sequence was admitted: emptied without splice (see `shorten`).
    if (admitted === waiting.length) shorten(waiting)
    else if (admitted > 0) waiting.splice(0, admitted)
  }

  /** Finished and stopped sequences leave the batch (a stopped one's blocks go back): their slots are free. */
  const dropDone = () => {
    let kept = 0
    for (const sequence of running) {
      if (sequence.stopped) cache.release(sequence.blocks)
      else if (!sequence.finished) running[kept++] = sequence
    }
    shorten(running, kept)
  }

  /** Plans the next step; its length in milliseconds, or -1 when there is nothing to do. */
  const planStep = (): number => {
    shorten(prefillSeqs)
    shorten(prefillChunks)
    shorten(decodeSeqs)
    let budget = settings.maxBatchedTokens
    let prefilled = 0
    // By index: a preemption takes the last sequence away (this one, or one not planned yet).
    for (let i = 0; i < running.length; i++) {
      if (budget === 0) break
      const sequence = running[i]
      if (!sequence.prefillDone) {
        if (sequence.startAt > now()) continue
        // An empty prompt still takes a step (a chunk of nothing) before its first token.
        const chunk = Math.min(sequence.target - sequence.prefilled, budget)
        // The chunk's blocks, and the step that completes the prefill generates a token: its block too.
        const generates = sequence.prefilled + chunk === sequence.target && sequence.generated < sequence.planTokens
        if (!ensureBlocks(sequence, sequence.prefilled + chunk + (generates ? 1 : 0))) break
        prefillSeqs.push(sequence)
        prefillChunks.push(chunk)
        budget -= chunk
        prefilled += chunk
      } else if (!sequence.finished) {
        if (!ensureBlocks(sequence, sequence.promptTokens + sequence.generated + 1)) break
        decodeSeqs.push(sequence)
        budget--
      }
    }
    if (prefillSeqs.length === 0 && decodeSeqs.length === 0) return -1
    const base = settings.itlMs === 0 && settings.itlStdDevMs === 0 ? 0 : Math.max(0, settings.itlMs * loadScale() + jitter(settings.itlStdDevMs))
    return base + prefilled * settings.prefillUsPerToken / 1000
  }

  const finish = (sequence: Sequence) => {
    sequence.finished = true
    cache.release(sequence.blocks)
    sequence.blocks = []
    sequence.blockTokens = 0
  }

  const resultOf = (sequence: Sequence): SequenceResult => ({
    text: planOutput(sequence.plan),
    completionTokens: sequence.plan.tokens,
    finishReason: sequence.plan.finishReason,
    cachedTokens: sequence.cachedTokens,
    firstTokenMs: sequence.delivered === 0 ? 0 : Math.round(sequence.firstTokenAt - sequence.submittedAt),
    processingMs: Math.round(now() - sequence.submittedAt)
  })

  /** The prompt's newly full blocks are cached (BlockStored). */
  const storePrompt = (sequence: Sequence) => {
    const full = Math.min(Math.floor(sequence.prefilled / blockSize), sequence.blocks.length)
    const from = sequence.stored
    if (full <= from) return
    const hashes = sequence.hashes!
    cache.store(
      sequence.blocks.slice(from, full),
      hashes.slice(from, full),
      from === 0 ? undefined : hashes[from - 1],
      sequence.ids,
      from * blockSize
    )
    sequence.stored = full
  }

  /** The prompt (or what a preempted sequence computes again) is computed: what follows its last full block starts the next block. */
  const promptDone = (sequence: Sequence) => {
    const full = Math.floor(sequence.target / blockSize)
    sequence.lastHash = full === 0 ? seedHash : sequence.hashes![full - 1]
    sequence.hashes = undefined
    sequence.blockTextFrom = sequence.generatedTo
  }

  /**
   * Hands the client the tokens generated and not yet taken, while it takes them at once; the
   * last one's `next` ends the sequence. A client that stops reading only stops this: the engine
   * generates on and frees the sequence's blocks and slot when done, as vLLM does.
   */
  const deliver = (sequence: Sequence) => {
    if (sequence.delivering) return
    sequence.delivering = true
    while (sequence.ready && sequence.delivered < sequence.generated && !sequence.stopped) {
      sequence.ready = false
      const index = sequence.delivered++
      const from = sequence.deliveredTo
      // Mostly the token just generated, whose end is known.
      const to = from === sequence.lastTokenFrom ? sequence.generatedTo : tokenEndIn(sequence, from)
      sequence.deliveredTo = to
      const text = sequence.source.slice(from, to)
      if (index === 0) sequence.firstTokenAt = now()
      sequence.sink.token(text, index, sequence.delivered === sequence.planTokens ? sequence.end : sequence.next)
    }
    sequence.delivering = false
  }

  /** Where the sequence's token that starts at `from` ends in its text (a stop sequence may cut the last one short). */
  const tokenEndIn = (sequence: Sequence, from: number): number => Math.min(tokenEnd(sequence.source, from), sequence.planEnd)

  /** Where in the source the generated tokens that `ids` holds end. */
  const idsTextTo = (sequence: Sequence): number => {
    let at = 0
    for (let i = sequence.promptTokens; i < sequence.ids.length; i++) at = tokenEndIn(sequence, at)
    return at
  }

  /** The ids of the block a generated token just filled (see `emit`), reused from block to block. */
  const blockIds: Array<number> = []

  /**
   * The sequence's next token: only where it ends in the text, per token (the client's string is
   * cut when it is handed out, its id read when its block fills). A full block is keyed and cached.
   */
  const emit = (sequence: Sequence) => {
    sequence.generated++
    const from = sequence.generatedTo
    const to = tokenEndIn(sequence, from)
    sequence.lastTokenFrom = from
    sequence.generatedTo = to
    // Generated tokens fill blocks too, keyed as the next prompt that quotes this reply will read them.
    // What was (re)computed as a prompt ends a whole number of blocks before its tail (promptDone).
    const computed = sequence.promptTokens + sequence.generated
    if (computed % blockSize === 0) {
      // The block's ids: the end of `ids` (the first block after a prompt), then the generated tokens' read from the text.
      const ids = sequence.ids
      blockIds.length = 0
      for (let i = computed - blockSize; i < ids.length; i++) blockIds.push(ids[i])
      for (let at = sequence.blockTextFrom; at < to;) {
        const end = tokenEndIn(sequence, at)
        blockIds.push(tokenIdAt(sequence.source, at, end, at === 0 ? sequence.replyPrefix : ""))
        at = end
      }
      sequence.blockTextFrom = to
      const hash = blockHash(sequence.lastHash, blockIds, 0, blockSize)
      // The last token's KV is never computed (nothing follows it): the block it fills is not cached, as in vLLM.
      if (sequence.stored < sequence.blocks.length && sequence.generated < sequence.planTokens) {
        cache.storeBlock(sequence.blocks[sequence.stored], hash, sequence.stored === 0 ? undefined : sequence.lastHash, blockIds, 0)
        sequence.stored++
      }
      sequence.lastHash = hash
    }
    if (sequence.generated === sequence.planTokens) finish(sequence)
    deliver(sequence)
  }

  const applyStep = () => {
    for (let i = 0; i < prefillSeqs.length; i++) {
      const sequence = prefillSeqs[i]
      if (sequence.stopped) continue
      sequence.prefilled += prefillChunks[i]
      storePrompt(sequence)
      if (sequence.prefilled < sequence.target) continue
      sequence.prefillDone = true
      promptDone(sequence)
      if (sequence.planTokens > 0) {
        emit(sequence)
      } else {
        finish(sequence)
        sequence.sink.end(resultOf(sequence))
      }
    }
    for (const sequence of decodeSeqs) if (!sequence.stopped) emit(sequence)
    shorten(prefillSeqs)
    shorten(decodeSeqs)
  }

  const loop = () => {
    for (;;) {
      dropDone()
      admitWaiting()
      const length = planStep()
      flush()
      if (length < 0) {
        stepping = false
        stepDueAt = undefined
        wakeForStart()
        return
      }
      if (length > 0) return stepDueAt === undefined ? timer.after(length, endStep) : timer.at(stepDueAt + length, endStep)
      applyStep()
      flush()
    }
  }

  const endStep = () => {
    stepDueAt = timer.now()
    applyStep()
    flush()
    loop()
  }

  /** When the engine has nothing to step: a timer for the first admitted sequence still to start, if any. */
  let wakeAt = Infinity
  const wake = () => {
    wakeAt = Infinity
    kick()
  }
  const wakeForStart = () => {
    let first = Infinity
    for (const sequence of running) if (!sequence.prefillDone && !sequence.stopped && sequence.startAt < first) first = sequence.startAt
    if (first === Infinity || first >= wakeAt) return
    wakeAt = first
    timer.at(first, wake)
  }

  const kick = () => {
    if (stepping) return
    stepping = true
    loop()
  }

  const enqueue = (sequence: Sequence) => {
    if (sequence.stopped) return
    waiting.push(sequence)
    kick()
  }

  return {
    /**
     * Runs a sequence; returns the function that stops it (it then emits nothing more and never ends).
     * `promptIds` becomes the engine's (a preemption extends it): hand over a fresh array.
     * `replyPrefix`: the blanks a client puts between the prompt and this reply when it sends both back
     * (a chat's next turn joins messages with a newline): by the tokenization rule they belong to the
     * reply's first token, so its cache key includes them and the next turn hits through the reply.
     */
    submit(promptIds: Array<number>, plan: TextPlan, sink: SequenceSink, replyPrefix = ""): () => void {
      // The part of the time to first token that is not a step: the prefill starts no sooner.
      const delay = Math.max(0, (settings.ttftMs - settings.itlMs) * loadScale() + jitter(settings.ttftStdDevMs))
      const sequence: Sequence = {
        prefillDone: false,
        finished: false,
        stopped: false,
        uncached: false,
        blockTokens: 0,
        generated: 0,
        promptTokens: promptIds.length,
        source: plan.source,
        planEnd: plan.end,
        planTokens: plan.tokens,
        generatedTo: 0,
        lastTokenFrom: -1,
        delivered: 0,
        deliveredTo: 0,
        ready: true,
        delivering: false,
        sink,
        next: () => {
          if (sequence.stopped) return
          sequence.ready = true
          // Called from within `token` (a sink that takes each token at once), the loop there hands out the next.
          if (!sequence.delivering) deliver(sequence)
        },
        end: () => {
          if (!sequence.stopped) sink.end(resultOf(sequence))
        },
        stored: 0,
        blocks: [],
        // Kept, not copied: a preemption extends it (callers hand over a fresh array).
        ids: promptIds,
        blockTextFrom: 0,
        lastHash: seedHash,
        hashes: undefined,
        target: promptIds.length,
        prefilled: 0,
        admissions: 0,
        plan,
        replyPrefix,
        submittedAt: timer.now(),
        cachedTokens: 0,
        firstTokenAt: 0,
        // A whole millisecond, as the engine's timers fire.
        startAt: delay > 0 ? Math.round(timer.now() + delay) : -Infinity
      }
      if (sequence.startAt !== -Infinity || instant !== undefined) enqueue(sequence)
      else {
        instant = sequence.submittedAt
        try {
          enqueue(sequence)
        } finally {
          instant = undefined
        }
      }
      return () => {
        if (sequence.stopped) return
        sequence.stopped = true
        const queued = waiting.indexOf(sequence)
        if (queued !== -1) waiting.splice(queued, 1)
        // In the batch while no step runs: its blocks go now (else when the next step is planned).
        else if (!stepping && running.includes(sequence)) {
          dropDone()
          flush()
          kick()
        }
      }
    },
    /**
     * vLLM's reset_prefix_cache: every cached block forgotten (AllBlocksCleared). As vLLM's BlockPool,
     * it refuses (false, nothing changed, no event) while blocks are in use, unless `resetRunning`
     * (vLLM then preempts the running requests; here they keep their blocks, uncached, until they end).
     */
    resetPrefixCache(resetRunning = false): boolean {
      if (cache.usedBlocks > 0 && !resetRunning) return false
      cache.reset()
      flush()
      return true
    },
    stats(): EngineStats {
      return {
        running: running.reduce((count, sequence) => count + (sequence.finished || sequence.stopped ? 0 : 1), 0),
        waiting: waiting.length,
        usedBlocks: cache.usedBlocks,
        kvBlocks: settings.kvBlocks,
        blockSize,
        prefixQueries,
        prefixHits,
        preemptions
      }
    },
    /** The cached blocks' keys (tests compare them with a subscriber's index). */
    cachedHashes: (): Set<number> => cache.cachedHashes()
  }
}

export type Engine = ReturnType<typeof makeEngine>
