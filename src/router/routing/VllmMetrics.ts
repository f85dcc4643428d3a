/**
 * What an upstream's `/metrics` says about its load and its cache, in vLLM's
 * names (the simulator serves the same): requests running and waiting,
 * `vllm:cache_config_info`'s `block_size` and `num_gpu_blocks`, and the KV
 * cache's use. Pure parsing of the Prometheus text format; a series with
 * several `model_name`s (one server, several models) is summed.
 */

export interface VllmSignals {
  readonly running: number
  readonly waiting: number
  readonly blockSize: number | undefined
  readonly numGpuBlocks: number | undefined
  readonly kvCacheUsage: number | undefined
}

const sample = /^([A-Za-z_:][A-Za-z0-9_:]*)(\{[^}]*\})?\s+(\S+)/

const labelValue = (labels: string, name: string): string | undefined => {
  const match = new RegExp(`[{,]\\s*${name}="((?:[^"\\\\]|\\\\.)*)"`).exec(labels)
  return match === null ? undefined : match[1]
}

/** The signals in `text`; undefined when it has none of vLLM's series (not a vLLM-like server). */
export const parseVllmMetrics = (text: string): VllmSignals | undefined => {
  let running: number | undefined
  let waiting: number | undefined
  let blockSize: number | undefined
  let numGpuBlocks: number | undefined
  let kvCacheUsage: number | undefined
  for (const line of text.split("\n")) {
    if (!line.startsWith("vllm:")) continue
    const match = sample.exec(line)
    if (match === null) continue
    const [, name, labels = "", raw] = match
    const value = Number(raw)
    if (!Number.isFinite(value)) continue
    switch (name) {
      case "vllm:num_requests_running":
        running = (running ?? 0) + value
        break
      case "vllm:num_requests_waiting":
        waiting = (waiting ?? 0) + value
        break
      case "vllm:kv_cache_usage_perc":
      case "vllm:gpu_cache_usage_perc":
        kvCacheUsage = Math.max(kvCacheUsage ?? 0, value)
        break
      case "vllm:cache_config_info": {
        const size = Number(labelValue(labels, "block_size"))
        const blocks = Number(labelValue(labels, "num_gpu_blocks"))
        if (Number.isInteger(size) && size > 0) blockSize = size
        if (Number.isInteger(blocks) && blocks > 0) numGpuBlocks = blocks
        break
      }
    }
  }
  if (running === undefined && waiting === undefined && blockSize === undefined) return undefined
  return { running: running ?? 0, waiting: waiting ?? 0, blockSize, numGpuBlocks, kvCacheUsage }
}
