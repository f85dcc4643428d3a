/**
 * Writes a tiny llama model with random weights as a GGUF file, the same
 * bytes every run: a real inference engine (node-llama-cpp, i.e. llama.cpp)
 * can load it and generate tokens, in milliseconds, with no download.
 *
 *   node scripts/make-tiny-gguf.ts [out.gguf]   (default: .cache/tiny-random-llama.gguf)
 *
 * The shape is the one of a known-good file of this kind (one block,
 * embedding 8, 2 heads, F32 weights; see test/Llama.e2e.test.ts, which
 * compares them when that file is at hand), with a small SentencePiece-style
 * vocabulary of its own: the control tokens, 256 byte tokens, and every
 * prefix of a list of English words (llama.cpp's SPM tokenizer builds a word
 * by merging adjacent pieces that are themselves in the vocabulary).
 *
 * GGUF v3: header, metadata key/values, tensor infos, then tensor data, each
 * aligned to 32 bytes (https://github.com/ggml-org/ggml/blob/master/docs/gguf.md).
 */
import { mkdirSync, writeFileSync } from "node:fs"
import { dirname } from "node:path"

const words = (
  "the of and to in is that for it as with was on be by at this are from or an have not but which one all " +
  "they were there been has will more when out what time about some would make like into could than other " +
  "model router server token stream request queue slot upstream cluster pod node cache prompt answer load " +
  "fast slow ready health metric retry budget weight version canary drain signal latency byte frame event"
).split(" ")

const letters = "abcdefghijklmnopqrstuvwxyz"

/** The vocabulary: [piece, score, type] with llama.cpp's token types (1 normal, 2 unknown, 3 control, 6 byte). */
export const vocabulary = (): Array<readonly [string, number, number]> => {
  const pieces: Array<readonly [string, number, number]> = [["<unk>", 0, 2], ["<s>", 0, 3], ["</s>", 0, 3]]
  for (let byte = 0; byte < 256; byte++) pieces.push([`<0x${byte.toString(16).toUpperCase().padStart(2, "0")}>`, 0, 6])
  const seen = new Set<string>()
  const add = (piece: string) => {
    if (seen.has(piece)) return
    seen.add(piece)
    // Longer pieces score higher, so merges build whole words.
    pieces.push([piece, -1000 + piece.length * 10 - seen.size / 1000, 1])
  }
  add("\u2581")
  for (const letter of letters) {
    add(letter)
    add(`\u2581${letter}`)
  }
  for (const word of words) {
    const piece = `\u2581${word}`
    for (let end = 2; end <= piece.length; end++) add(piece.slice(0, end))
  }
  return pieces
}

const embedding = 8
const feedForward = 32
const heads = 2

/** mulberry32: deterministic weights. */
const random = (seed: number) => () => {
  seed = (seed + 0x6d2b79f5) | 0
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed)
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296
}

class Writer {
  private chunks: Array<Buffer> = []
  length = 0
  bytes(buffer: Buffer) {
    this.chunks.push(buffer)
    this.length += buffer.length
  }
  u32(value: number) {
    const b = Buffer.alloc(4)
    b.writeUInt32LE(value)
    this.bytes(b)
  }
  i32(value: number) {
    const b = Buffer.alloc(4)
    b.writeInt32LE(value)
    this.bytes(b)
  }
  u64(value: number) {
    const b = Buffer.alloc(8)
    b.writeBigUInt64LE(BigInt(value))
    this.bytes(b)
  }
  f32(value: number) {
    const b = Buffer.alloc(4)
    b.writeFloatLE(value)
    this.bytes(b)
  }
  string(value: string) {
    const b = Buffer.from(value, "utf8")
    this.u64(b.length)
    this.bytes(b)
  }
  pad(alignment: number) {
    const extra = (alignment - (this.length % alignment)) % alignment
    if (extra > 0) this.bytes(Buffer.alloc(extra))
  }
  result() {
    return Buffer.concat(this.chunks)
  }
}

// GGUF value types.
const UINT32 = 4, INT32 = 5, FLOAT32 = 6, STRING = 8, ARRAY = 9

type Value =
  | { readonly type: typeof UINT32 | typeof INT32 | typeof FLOAT32; readonly value: number }
  | { readonly type: typeof STRING; readonly value: string }
  | { readonly type: typeof ARRAY; readonly of: typeof INT32 | typeof FLOAT32 | typeof STRING; readonly value: ReadonlyArray<number | string> }

export const makeTinyGguf = (seed = 42): Buffer => {
  const vocab = vocabulary()
  const metadata: Array<readonly [string, Value]> = [
    ["general.architecture", { type: STRING, value: "llama" }],
    ["general.name", { type: STRING, value: "tiny-random-llama (inference-router tests)" }],
    ["general.file_type", { type: UINT32, value: 0 }], // all F32
    ["llama.context_length", { type: UINT32, value: 4096 }],
    ["llama.embedding_length", { type: UINT32, value: embedding }],
    ["llama.block_count", { type: UINT32, value: 1 }],
    ["llama.feed_forward_length", { type: UINT32, value: feedForward }],
    ["llama.rope.dimension_count", { type: UINT32, value: embedding / heads }],
    ["llama.attention.head_count", { type: UINT32, value: heads }],
    ["llama.attention.head_count_kv", { type: UINT32, value: heads }],
    ["llama.attention.layer_norm_rms_epsilon", { type: FLOAT32, value: 1e-5 }],
    ["tokenizer.ggml.model", { type: STRING, value: "llama" }],
    ["tokenizer.ggml.tokens", { type: ARRAY, of: STRING, value: vocab.map(([piece]) => piece) }],
    ["tokenizer.ggml.scores", { type: ARRAY, of: FLOAT32, value: vocab.map(([, score]) => score) }],
    ["tokenizer.ggml.token_type", { type: ARRAY, of: INT32, value: vocab.map(([, , type]) => type) }],
    ["tokenizer.ggml.bos_token_id", { type: UINT32, value: 1 }],
    ["tokenizer.ggml.eos_token_id", { type: UINT32, value: 2 }],
    ["tokenizer.ggml.unknown_token_id", { type: UINT32, value: 0 }]
  ]
  const v = vocab.length
  const tensors: Array<readonly [string, ReadonlyArray<number>, "random" | "ones"]> = [
    ["token_embd.weight", [embedding, v], "random"],
    ["blk.0.attn_q.weight", [embedding, embedding], "random"],
    ["blk.0.attn_k.weight", [embedding, embedding], "random"],
    ["blk.0.attn_v.weight", [embedding, embedding], "random"],
    ["blk.0.attn_output.weight", [embedding, embedding], "random"],
    ["blk.0.ffn_gate.weight", [embedding, feedForward], "random"],
    ["blk.0.ffn_up.weight", [embedding, feedForward], "random"],
    ["blk.0.ffn_down.weight", [feedForward, embedding], "random"],
    ["blk.0.attn_norm.weight", [embedding], "ones"],
    ["blk.0.ffn_norm.weight", [embedding], "ones"],
    ["output_norm.weight", [embedding], "ones"],
    ["output.weight", [embedding, v], "random"]
  ]

  const out = new Writer()
  out.bytes(Buffer.from("GGUF", "ascii"))
  out.u32(3)
  out.u64(tensors.length)
  out.u64(metadata.length)
  for (const [key, entry] of metadata) {
    out.string(key)
    out.u32(entry.type)
    if (entry.type === STRING) out.string(entry.value)
    else if (entry.type === ARRAY) {
      out.u32(entry.of)
      out.u64(entry.value.length)
      for (const item of entry.value) {
        if (entry.of === STRING) out.string(item as string)
        else if (entry.of === FLOAT32) out.f32(item as number)
        else out.i32(item as number)
      }
    } else if (entry.type === FLOAT32) out.f32(entry.value)
    else if (entry.type === INT32) out.i32(entry.value)
    else out.u32(entry.value)
  }
  let offset = 0
  const sizes = tensors.map(([, dims]) => dims.reduce((a, b) => a * b, 1) * 4)
  tensors.forEach(([name, dims], i) => {
    out.string(name)
    out.u32(dims.length)
    for (const dim of dims) out.u64(dim)
    out.u32(0) // GGML_TYPE_F32
    out.u64(offset)
    offset += Math.ceil(sizes[i] / 32) * 32
  })
  out.pad(32)
  const next = random(seed)
  tensors.forEach(([, dims, fill], i) => {
    const count = dims.reduce((a, b) => a * b, 1)
    const data = Buffer.alloc(Math.ceil(sizes[i] / 32) * 32)
    for (let j = 0; j < count; j++) data.writeFloatLE(fill === "ones" ? 1 : (next() - 0.5) * 2, j * 4)
    out.bytes(data)
  })
  return out.result()
}

const isMain = process.argv[1] !== undefined && import.meta.url.endsWith(process.argv[1].replace(/^.*\//, "/"))
if (isMain) {
  const target = process.argv[2] ?? ".cache/tiny-random-llama.gguf"
  mkdirSync(dirname(target), { recursive: true })
  const bytes = makeTinyGguf()
  writeFileSync(target, bytes)
  console.log(`wrote ${target} (${bytes.length} bytes)`)
}
