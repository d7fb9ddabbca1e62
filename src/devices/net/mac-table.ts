// The learning switch's MAC table: unicast source address → port, shared by every worker of
// every port (and the control thread, for SEND_RARP) through one SharedArrayBuffer.
//
// Bounded: a fixed number of entries in groups of GROUP; an address hashes to one group and
// lives in one of its entries. A new address takes a free or expired entry of its group, else
// the group's oldest: the table never grows, a flood of made-up addresses only evicts.
// Entries expire AGE_SECONDS after they were last seen (Linux bridges' default ageing time),
// so a guest that moved to another port is found there again once it transmits.
//
// Concurrency without locks. Each entry has a sequence word (a seqlock): a writer takes it from
// even to odd with compareExchange (a writer that loses the race simply does not learn this
// time: the next frame will), stores the fields, and makes it even again. A reader takes the
// sequence before and after reading the fields and trusts them only when both are the same
// even value; otherwise it treats the address as unknown (the frame is flooded, which a
// switch may always do). All accesses are Atomics, so no torn or reordered reads. Every write
// also bumps a table-wide generation, so a reader may cache an answer for as long as the
// generation and the second stay the same (the switch does, per worker: a stream of frames
// then costs one load instead of a group scan).

/** Entries per group (one hash bucket). */
const GROUP = 8;
/** Int32 words per entry: seq, mac hi (bytes 0-1) | VALID, mac lo (bytes 2-5), port, stamp. */
const WORDS = 8;
const SEQ = 0;
const HI = 1;
const LO = 2;
const PORT = 3;
const STAMP = 4;
const VALID = 0x10000;
/** Seconds without a frame from an address before it is forgotten. */
export const MAC_AGE_SECONDS = 300;
export const DEFAULT_MAC_ENTRIES = 4096;

export function createMacTable(entries = DEFAULT_MAC_ENTRIES): SharedArrayBuffer {
  if (!Number.isInteger(entries) || entries < GROUP || entries > 1 << 20 || (entries & (entries - 1)) !== 0) {
    throw new RangeError(`MAC table entries must be a power of two from ${GROUP} to ${1 << 20}, got ${entries}`);
  }
  // One more entry's worth of words at the end: the generation.
  return new SharedArrayBuffer((entries + 1) * WORDS * 4);
}

export class MacTable {
  private readonly words: Int32Array;
  private readonly groupMask: number;
  /** Index of the generation word (after the last entry). */
  private readonly generationAt: number;

  constructor(buffer: SharedArrayBuffer) {
    this.words = new Int32Array(buffer);
    this.generationAt = this.words.length - WORDS;
    this.groupMask = this.generationAt / WORDS / GROUP - 1;
  }

  /** Entries in all (the bound). */
  get capacity(): number {
    return this.generationAt / WORDS;
  }

  /** Changes whenever an entry is written: an answer read at the same generation still holds. */
  get generation(): number {
    return Atomics.load(this.words, this.generationAt);
  }

  /**
   * Records that `hi:lo` (bytes 0-1 and 2-5 of a unicast address) was seen on `port` at `now`
   * (whole seconds, any origin shared by every user of the table). A multicast or all-zero
   * address is never learned.
   */
  learn(hi: number, lo: number, port: number, now: number): void {
    if ((hi & 0x100) !== 0 || (hi | lo) === 0) return;
    const words = this.words;
    const first = this.group(hi, lo) * GROUP * WORDS;
    let target = -1;
    let oldest = -1;
    let oldestStamp = 0;
    for (let i = 0; i < GROUP; i++) {
      const at = first + i * WORDS;
      const tagged = Atomics.load(words, at + HI);
      if ((tagged & VALID) === 0) {
        if (target < 0) target = at;
        continue;
      }
      const stamp = Atomics.load(words, at + STAMP);
      if (tagged === (hi | VALID) && Atomics.load(words, at + LO) === (lo | 0)) {
        // Known: write only when something changed (a stamp refreshed at most once a second),
        // so steady traffic does not keep a shared cache line bouncing between workers.
        if (Atomics.load(words, at + PORT) === port && stamp === now) return;
        target = at;
        break;
      }
      if (now - stamp > MAC_AGE_SECONDS && target < 0) target = at;
      if (oldest < 0 || stamp < oldestStamp) {
        oldest = at;
        oldestStamp = stamp;
      }
    }
    if (target < 0) target = oldest;
    const seq = Atomics.load(words, target + SEQ);
    if ((seq & 1) !== 0 || Atomics.compareExchange(words, target + SEQ, seq, seq + 1) !== seq) return;
    Atomics.store(words, target + HI, hi | VALID);
    Atomics.store(words, target + LO, lo);
    Atomics.store(words, target + PORT, port);
    Atomics.store(words, target + STAMP, now);
    Atomics.store(words, target + SEQ, seq + 2);
    Atomics.add(words, this.generationAt, 1);
  }

  /** The port `hi:lo` was last seen on, or -1 when unknown, expired or being rewritten. */
  lookup(hi: number, lo: number, now: number): number {
    const words = this.words;
    const first = this.group(hi, lo) * GROUP * WORDS;
    const tagged = hi | VALID;
    for (let i = 0; i < GROUP; i++) {
      const at = first + i * WORDS;
      if (Atomics.load(words, at + HI) !== tagged || Atomics.load(words, at + LO) !== (lo | 0)) continue;
      const seq = Atomics.load(words, at + SEQ);
      if ((seq & 1) !== 0) return -1;
      const port = Atomics.load(words, at + PORT);
      const stamp = Atomics.load(words, at + STAMP);
      // Still the same address, and nobody rewrote the entry while we read it.
      if (Atomics.load(words, at + HI) !== tagged || Atomics.load(words, at + LO) !== (lo | 0)) return -1;
      if (Atomics.load(words, at + SEQ) !== seq) return -1;
      return now - stamp > MAC_AGE_SECONDS ? -1 : port;
    }
    return -1;
  }

  /** Learned, unexpired entries (allocates: for statistics and tests). */
  entries(now: number): { mac: string; port: number; age: number }[] {
    const out: { mac: string; port: number; age: number }[] = [];
    for (let at = 0; at < this.generationAt; at += WORDS) {
      const hi = Atomics.load(this.words, at + HI);
      if ((hi & VALID) === 0) continue;
      const stamp = Atomics.load(this.words, at + STAMP);
      if (now - stamp > MAC_AGE_SECONDS) continue;
      const lo = Atomics.load(this.words, at + LO) >>> 0;
      const bytes = [hi >>> 8, hi, lo >>> 24, lo >>> 16, lo >>> 8, lo].map((b) => (b & 0xff).toString(16).padStart(2, '0'));
      out.push({ mac: bytes.join(':'), port: Atomics.load(this.words, at + PORT), age: now - stamp });
    }
    return out;
  }

  private group(hi: number, lo: number): number {
    // The low bytes vary most between guests (52:54:00:xx:xx:xx): mix them all.
    const h = Math.imul(lo ^ Math.imul(hi, 0x9e3779b1), 0x85ebca6b);
    return (h ^ (h >>> 15)) & this.groupMask;
  }
}

/** The (hi, lo) halves of the 6 bytes at bytes[offset]: hi = bytes 0-1, lo = bytes 2-5 (as i32). */
export function macHi(bytes: ArrayLike<number>, offset: number): number {
  return (bytes[offset] << 8) | bytes[offset + 1];
}

export function macLo(bytes: ArrayLike<number>, offset: number): number {
  return (bytes[offset + 2] << 24) | (bytes[offset + 3] << 16) | (bytes[offset + 4] << 8) | bytes[offset + 5];
}
