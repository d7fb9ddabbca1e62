// Shared by the virtio-blk tests: the real daemon + WorkerDataPlane + BlkDevice, and a small
// "guest driver" on the front-end library that builds virtio-blk chains by hand (so tests can
// also build hostile ones) and waits for their used entries.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { FrontendDevice, type FrontendQueue } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { BlkDevice, type BlkEngineOptions } from '../../dist/devices/blk/device.js';
import type { PollMode } from '../../dist/dataplane/commands.js';

export const T = { IN: 0, OUT: 1, FLUSH: 4, GET_ID: 8, DISCARD: 11, WRITE_ZEROES: 13 } as const;
export const S = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;
export const SERIAL = 'vut-blk-serial';

export interface RigOptions {
  engine: BlkEngineOptions;
  capacityBytes?: number;
  readOnly?: boolean;
  mode?: PollMode;
  cpus?: number[];
  queueSize?: number;
  /** Guest memory for the front-end (default 64 MiB). */
  memoryBytes?: number;
  logicalBlockSize?: number;
  /** Reuse a device (and its RAM disk / write-cache flag) from an earlier rig. */
  device?: BlkDevice;
}

export class BlkRig {
  private constructor(
    readonly dir: string,
    readonly socketPath: string,
    readonly device: BlkDevice,
    readonly plane: WorkerDataPlane,
    readonly daemon: VhostUserDaemon,
    readonly options: RigOptions,
  ) {}

  static async start(options: RigOptions, dir = mkdtempSync(join(tmpdir(), 'vut-blk-'))): Promise<BlkRig> {
    const socketPath = join(dir, `blk-${Math.random().toString(36).slice(2)}.sock`);
    const device =
      options.device ??
      new BlkDevice({
        capacityBytes: options.capacityBytes ?? 16 << 20,
        numQueues: 1,
        maxQueueSize: 256,
        readOnly: options.readOnly ?? false,
        logicalBlockSize: options.logicalBlockSize,
        supportsDiscard: true,
        supportsFlush: true,
        serial: SERIAL,
      });
    const plane = await WorkerDataPlane.start({
      cpus: options.cpus ?? [1],
      queueCount: 1,
      handler: device.handlerSpec(options.engine),
      mode: options.mode ?? 'busy',
      maxSegments: device.maxSegments,
    });
    const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane });
    try {
      await daemon.start();
    } catch (error) {
      await plane.close();
      throw error;
    }
    return new BlkRig(dir, socketPath, device, plane, daemon, options);
  }

  async connect(options: { memory?: FrontendMemory; wantedFeatures?: bigint; queueSize?: number } = {}): Promise<BlkGuest> {
    const memory = options.memory ?? FrontendMemory.simple(this.options.memoryBytes ?? 64 << 20);
    const device = await FrontendDevice.connect({
      socketPath: this.socketPath,
      memory,
      queues: 1,
      queueSize: options.queueSize ?? this.options.queueSize ?? 128,
      indirectEntries: 16,
      // The test guest issues every virtio-blk request type, so it understands every device bit.
      deviceFeatures: (1n << 24n) - 1n,
      wantedFeatures: options.wantedFeatures,
    });
    return new BlkGuest(device, memory, !options.memory);
  }

  async stop(removeDir = true): Promise<void> {
    await this.daemon.stop();
    await this.plane.close();
    if (removeDir) rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Seg {
  gpa: number;
  len: number;
  writable: boolean;
}

export interface Done {
  /** used.len */
  len: number;
  /** The status byte (the last writable byte of the chain), or -1 without one. */
  status: number;
}

/** A minimal virtio-blk guest driver over the front-end library. */
export class BlkGuest {
  readonly queue: FrontendQueue;
  private readonly tokens = new Float64Array(1024);
  private readonly lens = new Uint32Array(1024);
  private readonly finished = new Map<number, number>();
  private readonly statusAt = new Map<number, number>();
  private nextToken = 1;

  constructor(
    readonly device: FrontendDevice,
    readonly memory: FrontendMemory,
    private readonly ownsMemory: boolean,
  ) {
    this.queue = device.queues[0]!;
  }

  /** Guest memory for buffers, `align`-aligned. */
  alloc(bytes: number, align = 4096): number {
    return this.memory.allocate(bytes, align);
  }

  bytes(gpa: number, length: number): Uint8Array {
    return this.memory.bytes(gpa, length);
  }

  /** A 16-byte request header in guest memory. */
  header(type: number, sector: number | bigint, at = this.alloc(16, 16)): number {
    const view = new DataView(this.bytes(at, 16).buffer, this.bytes(at, 16).byteOffset, 16);
    view.setUint32(0, type, true);
    view.setUint32(4, 0, true);
    view.setBigUint64(8, BigInt(sector), true);
    return at;
  }

  /** One DISCARD / WRITE_ZEROES range (16 bytes). */
  range(sector: number, sectors: number, flags: number, at = this.alloc(16, 16)): number {
    const view = new DataView(this.bytes(at, 16).buffer, this.bytes(at, 16).byteOffset, 16);
    view.setBigUint64(0, BigInt(sector), true);
    view.setUint32(8, sectors, true);
    view.setUint32(12, flags, true);
    return at;
  }

  /** A 1-byte status buffer preset to 0xff. */
  statusByte(): number {
    const at = this.alloc(1, 1);
    this.bytes(at, 1)[0] = 0xff;
    return at;
  }

  /** Posts one chain (not yet published); returns its token. */
  post(segments: Seg[], indirect = false): number {
    const driver = this.queue.driver;
    driver.beginChain(indirect);
    for (const segment of segments) driver.addSegment(segment.gpa, segment.len, segment.writable);
    const token = this.nextToken++;
    if (driver.endChain(token) < 0) throw new Error('no room in the ring for the chain');
    const last = segments.filter((s) => s.writable).at(-1);
    if (last) this.statusAt.set(token, last.gpa + last.len - 1);
    return token;
  }

  kick(): void {
    this.queue.publishAndKick();
  }

  /** Waits for the token's used entry (yielding to the event loop: the daemon lives on this thread). */
  async wait(token: number, timeoutMs = 20_000): Promise<Done> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.reap();
      const len = this.finished.get(token);
      if (len !== undefined) {
        this.finished.delete(token);
        const at = this.statusAt.get(token);
        this.statusAt.delete(token);
        return { len, status: at === undefined ? -1 : this.bytes(at, 1)[0] };
      }
      if (this.queue.driver.broken) throw new Error(`driver broken: ${this.queue.driver.brokenReason}`);
      if (Date.now() > deadline) throw new Error(`request ${token} did not complete in ${timeoutMs} ms`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Any completed token (for pipelined loads). */
  async waitAny(timeoutMs = 20_000): Promise<{ token: number } & Done> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      this.reap();
      const first = this.finished.keys().next();
      if (!first.done) {
        const token = first.value;
        return { token, ...(await this.wait(token)) };
      }
      if (Date.now() > deadline) throw new Error(`no request completed in ${timeoutMs} ms`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  async run(segments: Seg[], indirect = false): Promise<Done> {
    const token = this.post(segments, indirect);
    this.kick();
    return this.wait(token);
  }

  /** IN of `length` bytes at `sector` into a fresh buffer: status, used.len and the data. */
  async read(sector: number, length: number): Promise<Done & { data: Uint8Array }> {
    const data = this.alloc(length);
    const done = await this.run([
      { gpa: this.header(T.IN, sector), len: 16, writable: false },
      { gpa: data, len: length, writable: true },
      { gpa: this.statusByte(), len: 1, writable: true },
    ]);
    return { ...done, data: this.bytes(data, length) };
  }

  /** OUT of `data` at `sector`. */
  async write(sector: number, data: Uint8Array): Promise<Done> {
    const at = this.alloc(data.length);
    this.bytes(at, data.length).set(data);
    return this.run([
      { gpa: this.header(T.OUT, sector), len: 16, writable: false },
      { gpa: at, len: data.length, writable: false },
      { gpa: this.statusByte(), len: 1, writable: true },
    ]);
  }

  /** A request with no data: FLUSH, or an unknown type. */
  async simple(type: number, sector = 0): Promise<Done> {
    return this.run([
      { gpa: this.header(type, sector), len: 16, writable: false },
      { gpa: this.statusByte(), len: 1, writable: true },
    ]);
  }

  async rangeRequest(type: number, sector: number, sectors: number, flags = 0): Promise<Done> {
    return this.run([
      { gpa: this.header(type, 0), len: 16, writable: false },
      { gpa: this.range(sector, sectors, flags), len: 16, writable: false },
      { gpa: this.statusByte(), len: 1, writable: true },
    ]);
  }

  close(): void {
    this.device.close();
    if (this.ownsMemory) this.memory.close();
  }

  private reap(): void {
    const count = this.queue.driver.reapUsed(this.tokens, this.lens);
    for (let i = 0; i < count; i++) this.finished.set(this.tokens[i], this.lens[i]);
  }
}

/** Deterministic bytes that differ per offset and seed. */
export function pattern(length: number, seed: number): Uint8Array {
  const bytes = new Uint8Array(length);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    bytes[i] = x & 0xff;
  }
  return bytes;
}

export function allZero(bytes: Uint8Array): boolean {
  for (let i = 0; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * Index of the first byte where `actual` differs from `expected` (or the shorter length when
 * only the lengths differ), -1 when equal. vitest's toEqual walks typed arrays element by element
 * (seconds per MiB); compare with this and expect -1.
 */
export function mismatch(actual: Uint8Array, expected: Uint8Array): number {
  const a = Buffer.from(actual.buffer, actual.byteOffset, actual.length);
  const b = Buffer.from(expected.buffer, expected.byteOffset, expected.length);
  if (a.equals(b)) return -1;
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return n;
}
