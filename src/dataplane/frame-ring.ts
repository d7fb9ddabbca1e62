// A single-producer / single-consumer ring of variable-length records in a SharedArrayBuffer:
// how one worker thread hands frames to another (the net switch between ports), lock-free and
// without allocating per record. One producer thread and one consumer thread per ring; a ring
// per direction between two threads.
//
// Layout. A header of four 64-byte lines (each written by one side only, so the two threads do
// not bounce a cache line on every record): the consumer's head, the producer's tail, the
// consumer's "armed" flag, and the producer's counters. Then `capacity` data bytes (a power of
// two). head and tail are free-running u32 byte counters; used = (tail - head) mod 2^32, and
// position & (capacity - 1) is where they point in the data.
//
// A record is 8-aligned: u32 length, u32 tag, then `length` bytes. A record never wraps around
// the end: when it does not fit before the end, the producer writes WRAP in the length word and
// the record starts at 0 (the skipped bytes count as used until the consumer passes them).
//
// Memory order. The producer writes the record's bytes with plain stores, then publishes the
// tail with Atomics.store; the consumer reads the tail with Atomics.load before it reads any
// byte of a record, and gives the room back with Atomics.store(head) after it is done with
// them. Atomics are sequentially consistent, which orders the plain accesses around them
// (ECMAScript memory model: a synchronizes-with edge from the store to the load that sees it).
//
// Waking a sleeping consumer. A consumer that found the ring empty arms it (armed = 1) and
// looks at the tail once more before it may sleep; a producer that published a record reads
// armed and, when set, clears it and wakes the consumer (an eventfd write the caller does, at
// most once per arming). Both sides store first and load second on SC atomics, so at least one
// of them sees the other: either the consumer's second look finds the record, or the producer
// finds the flag (no lost wake-up).

/** Bytes before the data: four 64-byte lines. */
export const FRAME_RING_HEADER_BYTES = 256;
/** Record header: u32 length, u32 tag. */
export const FRAME_RECORD_HEADER_BYTES = 8;
export const MIN_FRAME_RING_CAPACITY = 4096;
export const MAX_FRAME_RING_CAPACITY = 1 << 28;

// Int32 indexes of the header words.
const HEAD = 0;
const TAIL = 16;
const ARMED = 32;
// Float64 indexes (byte 192 onwards): written by the producer only.
const PRODUCED = 24;
const DROPPED = 25;
/** Length word of a skip-to-the-start marker. */
const WRAP = -1;

/** A new ring of `capacity` data bytes (a power of two, 4 KiB to 256 MiB). */
export function createFrameRing(capacity: number): SharedArrayBuffer {
  if (
    !Number.isInteger(capacity) ||
    capacity < MIN_FRAME_RING_CAPACITY ||
    capacity > MAX_FRAME_RING_CAPACITY ||
    (capacity & (capacity - 1)) !== 0
  ) {
    throw new RangeError(
      `frame ring capacity must be a power of two from ${MIN_FRAME_RING_CAPACITY} to ${MAX_FRAME_RING_CAPACITY}, got ${capacity}`,
    );
  }
  return new SharedArrayBuffer(FRAME_RING_HEADER_BYTES + capacity);
}

/** The largest record a ring of this capacity takes: a quarter, so a wrap never starves it. */
export function maxFrameRecord(capacity: number): number {
  return capacity / 4 - FRAME_RECORD_HEADER_BYTES;
}

class FrameRingSide {
  /** The data bytes (records start at 8-aligned offsets). */
  readonly data: Uint8Array;
  /** The same bytes as u32 words (data[4·i] is the first byte of dataWords[i]), for word copies. */
  readonly dataWords: Uint32Array;
  readonly capacity: number;
  protected readonly control: Int32Array;
  protected readonly counters: Float64Array;
  protected readonly words: Int32Array;
  protected readonly mask: number;

  constructor(readonly buffer: SharedArrayBuffer) {
    const capacity = buffer.byteLength - FRAME_RING_HEADER_BYTES;
    if (capacity < MIN_FRAME_RING_CAPACITY || (capacity & (capacity - 1)) !== 0) {
      throw new RangeError(`not a frame ring: ${buffer.byteLength} bytes`);
    }
    this.capacity = capacity;
    this.mask = capacity - 1;
    this.control = new Int32Array(buffer, 0, FRAME_RING_HEADER_BYTES / 4);
    this.counters = new Float64Array(buffer, 0, FRAME_RING_HEADER_BYTES / 8);
    this.data = new Uint8Array(buffer, FRAME_RING_HEADER_BYTES, capacity);
    this.words = new Int32Array(buffer, FRAME_RING_HEADER_BYTES, capacity / 4);
    this.dataWords = new Uint32Array(buffer, FRAME_RING_HEADER_BYTES, capacity / 4);
  }

  /** Bytes in use (records not yet consumed, wrap gaps included). */
  get used(): number {
    return (Atomics.load(this.control, TAIL) - Atomics.load(this.control, HEAD)) >>> 0;
  }

  /** Records published since the ring was made. */
  get produced(): number {
    return this.counters[PRODUCED];
  }

  /** Records refused because the ring was full. */
  get dropped(): number {
    return this.counters[DROPPED];
  }
}

export class FrameRingProducer extends FrameRingSide {
  private tail: number;
  private pendingTail = -1;

  constructor(buffer: SharedArrayBuffer) {
    super(buffer);
    this.tail = Atomics.load(this.control, TAIL) >>> 0;
  }

  /**
   * Makes room for a record of `length` bytes tagged `tag` (a u32 the consumer gets back).
   * Returns where its bytes go in `data` (write exactly `length` of them, then commit()), or -1
   * when the ring is full or the record is larger than maxFrameRecord (counted as dropped).
   */
  reserve(length: number, tag: number): number {
    const need = (FRAME_RECORD_HEADER_BYTES + length + 7) & ~7;
    if (length < 0 || length > maxFrameRecord(this.capacity)) {
      this.counters[DROPPED]++;
      return -1;
    }
    const free = this.capacity - ((this.tail - Atomics.load(this.control, HEAD)) >>> 0);
    let tail = this.tail;
    let offset = tail & this.mask;
    const toEnd = this.capacity - offset;
    if (need > toEnd) {
      if (toEnd + need > free) {
        this.counters[DROPPED]++;
        return -1;
      }
      // The record starts over at 0: the consumer skips the rest of the data.
      this.words[offset >>> 2] = WRAP;
      tail = (tail + toEnd) >>> 0;
      offset = 0;
    } else if (need > free) {
      this.counters[DROPPED]++;
      return -1;
    }
    const word = offset >>> 2;
    this.words[word] = length;
    this.words[word + 1] = tag | 0;
    this.pendingTail = (tail + need) >>> 0;
    return offset + FRAME_RECORD_HEADER_BYTES;
  }

  /**
   * Publishes the reserved record. Returns true when the consumer had armed the ring (it may be
   * asleep): wake it (the flag is cleared, so only one producer call per arming says so).
   */
  commit(): boolean {
    if (this.pendingTail < 0) throw new Error('FrameRingProducer.commit without a reserve');
    this.tail = this.pendingTail;
    this.pendingTail = -1;
    Atomics.store(this.control, TAIL, this.tail | 0);
    this.counters[PRODUCED]++;
    return Atomics.load(this.control, ARMED) !== 0 && Atomics.compareExchange(this.control, ARMED, 1, 0) === 1;
  }
}

export class FrameRingConsumer extends FrameRingSide {
  /** The current record (after next() returned its length): its bytes start at data[offset]. */
  offset = 0;
  length = 0;
  tag = 0;
  private head: number;

  constructor(buffer: SharedArrayBuffer) {
    super(buffer);
    this.head = Atomics.load(this.control, HEAD) >>> 0;
  }

  /**
   * Looks at the oldest record: returns its length (and sets offset, length, tag), or -1 when the
   * ring is empty. The record stays until release(); next() again returns the same one.
   */
  next(): number {
    const tail = Atomics.load(this.control, TAIL) >>> 0;
    let head = this.head;
    while (head !== tail) {
      const offset = head & this.mask;
      const length = this.words[offset >>> 2];
      if (length === WRAP) {
        head = (head + this.capacity - offset) >>> 0;
        continue;
      }
      if (length < 0 || offset + FRAME_RECORD_HEADER_BYTES + length > this.capacity) {
        // Only our own producer writes here: a bad length is a bug, not input to survive.
        throw new Error(`frame ring corrupt: record of ${length} bytes at ${offset}`);
      }
      this.head = head;
      this.offset = offset + FRAME_RECORD_HEADER_BYTES;
      this.length = length;
      this.tag = this.words[(offset >>> 2) + 1] >>> 0;
      return length;
    }
    this.head = head;
    return -1;
  }

  /** Gives the current record's room back to the producer. */
  release(): void {
    this.head = (this.head + ((FRAME_RECORD_HEADER_BYTES + this.length + 7) & ~7)) >>> 0;
    Atomics.store(this.control, HEAD, this.head | 0);
  }

  /**
   * Asks the producer for a wake-up on its next record; returns true when the ring is still
   * empty after arming (the caller may sleep), false when a record slipped in (consume it).
   */
  arm(): boolean {
    if (Atomics.load(this.control, ARMED) === 0) Atomics.store(this.control, ARMED, 1);
    return Atomics.load(this.control, TAIL) >>> 0 === this.head;
  }

  /** Whether the consumer is armed (for tests). */
  get armed(): boolean {
    return Atomics.load(this.control, ARMED) !== 0;
  }
}
