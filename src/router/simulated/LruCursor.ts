/**
 * The least recently used key of a Map kept in use order (insertion order; a use deletes and
 * re-inserts), in amortized constant time.
 *
 * Not `map.keys().next()` per eviction: a fresh iterator starts over the deleted slots V8 leaves at
 * the front of a Map until it rehashes, so with the cache full a fresh block cost 8–15 µs (in
 * process) and a full /detokenize vocabulary blocked the event loop for seconds. One live iterator
 * kept across evictions skips deleted keys and reaches those added since, in order. It is dropped
 * after as many other changes as the Map holds: a live iterator keeps every table V8 rebuilt the
 * Map into since its last step (cache hits without evictions grew memory without bound).
 */
export class LruCursor<K> {
  private iterator: MapIterator<K> | undefined
  private changes = 0
  private readonly map: Map<K, unknown>

  constructor(map: Map<K, unknown>) {
    this.map = map
  }

  /** Call on every insertion or deletion that is not an eviction. */
  changed(): void {
    if (this.iterator !== undefined && ++this.changes > this.map.size) this.reset()
  }

  /** The least recently used key (the Map is not empty); the caller deletes it. */
  oldest(): K {
    this.changes = 0
    let next = this.iterator?.next()
    if (next === undefined || next.done === true) {
      this.iterator = this.map.keys()
      next = this.iterator.next()
    }
    return next.value as K
  }

  /** After the Map was cleared. */
  reset(): void {
    this.iterator = undefined
    this.changes = 0
  }
}
