// Shared by the virtio-net tests: the real daemon + WorkerDataPlane + NetDevice, and a small
// "guest driver" on the front-end library that posts RX buffers and TX frames by hand (so tests
// can also build hostile chains) and reassembles received frames from their used entries.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { FrontendDevice, type FrontendQueue } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { NetDevice } from '../../dist/devices/net/device.js';
import type { NetBackendName, NetQueueStats } from '../../dist/devices/net/options.js';
import type { PollMode } from '../../dist/dataplane/commands.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';
import type { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';

export const NET_GUEST_FEATURES = [NetFeature.MRG_RXBUF, NetFeature.MQ, NetFeature.MTU, NetFeature.MAC, NetFeature.STATUS].reduce(
  (mask, feature) => mask | (1n << BigInt(feature)),
  0n,
);

export const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

export interface NetRigOptions {
  backend: NetBackendName;
  mode?: PollMode;
  queuePairs?: number;
  cpus?: number[];
  mtu?: number;
  frameBytes?: number;
  queueSize?: number;
  /** Connect to a listening front-end (DPDK server=1) instead of listening. */
  client?: boolean;
  /** Offer the checksum/TSO offloads; default: as startNetBackend does (loopback yes, sink and source no). */
  offloads?: boolean;
}

export class NetRig {
  private constructor(
    readonly dir: string,
    readonly socketPath: string,
    readonly device: NetDevice,
    readonly plane: WorkerDataPlane,
    readonly daemon: VhostUserDaemon,
  ) {}

  static async start(options: NetRigOptions): Promise<NetRig> {
    const dir = mkdtempSync(join(tmpdir(), 'vut-net-'));
    const socketPath = join(dir, 'net.sock');
    const device = new NetDevice({
      queuePairs: options.queuePairs ?? 1,
      maxQueueSize: options.queueSize ?? 256,
      mac: MAC,
      mtu: options.mtu ?? 1500,
      offloads: options.offloads ?? options.backend === 'loopback',
    });
    const plane = await WorkerDataPlane.start({
      cpus: options.cpus ?? [1],
      queueCount: device.numQueues,
      handler: device.handlerSpec(options.backend, options.frameBytes ?? 64),
      mode: options.mode ?? 'busy',
      queueToWorker: NetDevice.queueToWorker,
      maxSegments: device.maxSegments,
    });
    const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane, client: options.client, retryIntervalMs: 100 });
    try {
      await daemon.start();
    } catch (error) {
      await plane.close();
      throw error;
    }
    return new NetRig(dir, socketPath, device, plane, daemon);
  }

  /** `extraFeatures`: device feature bits to ack beside NET_GUEST_FEATURES (offloads). */
  async connect(
    options: { wantedFeatures?: bigint; queuePairs?: number; queueSize?: number; extraFeatures?: bigint } = {},
  ): Promise<NetGuest> {
    const memory = FrontendMemory.simple(32 << 20);
    const device = await FrontendDevice.connect({
      socketPath: this.socketPath,
      memory,
      queues: 2 * (options.queuePairs ?? 1),
      queueSize: options.queueSize ?? 256,
      indirectEntries: 8,
      // What this test guest understands of virtio-net (it reads num_buffers, drives N pairs).
      deviceFeatures: NET_GUEST_FEATURES | (options.extraFeatures ?? 0n),
      wantedFeatures: options.wantedFeatures,
    });
    return new NetGuest(device, memory);
  }

  /**
   * Posts RX buffers and waits until the worker holds them. A frame sent in the same worker pass
   * as the RX buffers were published could otherwise find them not yet popped (and be dropped).
   */
  async offerRx(guest: NetGuest, count: number, bytes: number, options: { split?: number; pair?: number } = {}): Promise<void> {
    const queue = 2 * (options.pair ?? 0);
    const before = this.plane.queueStats(queue).inFlight;
    guest.postRx(count, bytes, options);
    const deadline = Date.now() + 10_000;
    while (this.plane.queueStats(queue).inFlight < before + count) {
      if (Date.now() > deadline)
        throw new Error(`the back-end holds ${this.plane.queueStats(queue).inFlight} RX buffers, expected ${before + count}`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  stats(queue: number): NetQueueStats {
    return this.device.netStats()[queue];
  }

  /** Waits until `predicate` holds for the net counters (the workers update them asynchronously). */
  async waitStats(predicate: (stats: NetQueueStats[]) => boolean, timeoutMs = 10_000): Promise<NetQueueStats[]> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const stats = this.device.netStats();
      if (predicate(stats)) return stats;
      if (Date.now() > deadline) throw new Error(`net statistics never matched: ${JSON.stringify(stats)}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  async stop(): Promise<void> {
    await this.daemon.stop();
    await this.plane.close();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface Segment {
  gpa: number;
  len: number;
  writable: boolean;
}

export interface Received {
  /** num_buffers from the header (1 without the field). */
  numBuffers: number;
  /** The header bytes as written (10 or 12). */
  header: Uint8Array;
  /** The frame, reassembled from every buffer it spans. */
  frame: Uint8Array;
}

/** A minimal virtio-net guest driver over the front-end library (pair 0, or the pair given). */
export class NetGuest {
  readonly headerBytes: number;
  readonly mergeable: boolean;
  private readonly tokens = new Float64Array(4096);
  private readonly lens = new Uint32Array(4096);
  private nextToken = 1;
  /** RX token → buffer address. */
  private readonly rxBuffers = new Map<number, number>();
  /** RX used entries reaped but not yet assembled into frames, in used-ring order. */
  private readonly rxDone: { gpa: number; len: number }[] = [];
  private readonly txDone = new Map<number, number>();

  constructor(
    readonly device: FrontendDevice,
    readonly memory: FrontendMemory,
  ) {
    const version1 = (device.features & (1n << 32n)) !== 0n;
    this.mergeable = (device.features & (1n << 15n)) !== 0n;
    this.headerBytes = version1 || this.mergeable ? 12 : 10;
  }

  rx(pair = 0): FrontendQueue {
    return this.device.queues[2 * pair];
  }

  tx(pair = 0): FrontendQueue {
    return this.device.queues[2 * pair + 1];
  }

  alloc(bytes: number, align = 64): number {
    return this.memory.allocate(bytes, align);
  }

  bytes(gpa: number, length: number): Uint8Array {
    return this.memory.bytes(gpa, length);
  }

  /** Posts one chain on `queue` and returns its token (not yet published). */
  post(queue: FrontendQueue, segments: Segment[], indirect = false): number {
    const driver = queue.driver;
    driver.beginChain(indirect);
    for (const segment of segments) driver.addSegment(segment.gpa, segment.len, segment.writable);
    const token = this.nextToken++;
    if (driver.endChain(token) < 0) throw new Error('no room in the ring for the chain');
    return token;
  }

  /** Posts one RX chain (not yet published; hostile ones too) so that reapRx knows its address: the first segment's. */
  postRxChain(segments: Segment[], pair = 0): number {
    const token = this.post(this.rx(pair), segments);
    this.rxBuffers.set(token, segments[0].gpa);
    return token;
  }

  /** Offers `count` RX buffers of `bytes` each (one descriptor, or `split` pieces), publishes and kicks. */
  postRx(count: number, bytes: number, options: { split?: number; pair?: number } = {}): void {
    const queue = this.rx(options.pair);
    const pieces = options.split ?? 1;
    for (let i = 0; i < count; i++) {
      const gpa = this.alloc(bytes);
      this.bytes(gpa, bytes).fill(0xee);
      const segments: Segment[] = [];
      let at = 0;
      for (let p = 0; p < pieces; p++) {
        const len = p === pieces - 1 ? bytes - at : Math.floor(bytes / pieces);
        segments.push({ gpa: gpa + at, len, writable: true });
        at += len;
      }
      this.rxBuffers.set(this.post(queue, segments), gpa);
    }
    queue.publishAndKick();
  }

  /**
   * Sends a frame: header (zeroed) then data, as `layout` says — 'one' descriptor, header and
   * frame in 'two', or 'split-header' across three (header cut in the middle).
   */
  send(
    frame: Uint8Array,
    options: {
      layout?: 'one' | 'two' | 'split-header';
      indirect?: boolean;
      pair?: number;
      kick?: boolean;
      /** The virtio-net header's first 10 bytes (offload requests); zero without. */
      header?: Uint8Array;
    } = {},
  ): number {
    const queue = this.tx(options.pair);
    const total = this.headerBytes + frame.length;
    const gpa = this.alloc(total);
    const bytes = this.bytes(gpa, total);
    bytes.fill(0, 0, this.headerBytes);
    if (options.header) bytes.set(options.header.subarray(0, 10), 0);
    bytes.set(frame, this.headerBytes);
    const layout = options.layout ?? 'one';
    const segments: Segment[] =
      layout === 'one'
        ? [{ gpa, len: total, writable: false }]
        : layout === 'two'
          ? [
              { gpa, len: this.headerBytes, writable: false },
              { gpa: gpa + this.headerBytes, len: frame.length, writable: false },
            ]
          : [
              { gpa, len: 5, writable: false },
              { gpa: gpa + 5, len: this.headerBytes - 5 + 3, writable: false },
              { gpa: gpa + this.headerBytes + 3, len: frame.length - 3, writable: false },
            ];
    const token = this.post(queue, segments, options.indirect ?? false);
    if (options.kick ?? true) queue.publishAndKick();
    return token;
  }

  /** Waits until the TX chains with these tokens are used; returns their used.len values. */
  async waitTx(tokens: number[], pair = 0, timeoutMs = 10_000): Promise<number[]> {
    const deadline = Date.now() + timeoutMs;
    const driver = this.tx(pair).driver;
    for (;;) {
      const count = driver.reapUsed(this.tokens, this.lens);
      for (let i = 0; i < count; i++) this.txDone.set(this.tokens[i], this.lens[i]);
      if (tokens.every((t) => this.txDone.has(t))) return tokens.map((t) => this.txDone.get(t)!);
      if (driver.broken) throw new Error(`TX driver broken: ${driver.brokenReason}`);
      if (Date.now() > deadline)
        throw new Error(`TX chains ${tokens.filter((t) => !this.txDone.has(t)).join(',')} not used in ${timeoutMs} ms`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  /** Reaps RX used entries (in order) without waiting. */
  reapRx(pair = 0): number {
    const driver = this.rx(pair).driver;
    const count = driver.reapUsed(this.tokens, this.lens);
    for (let i = 0; i < count; i++) {
      const token = this.tokens[i];
      this.rxDone.push({ gpa: this.rxBuffers.get(token)!, len: this.lens[i] });
      this.rxBuffers.delete(token);
    }
    return count;
  }

  /** RX used entries seen so far (for tests of zero-length hand-backs). */
  takeRxEntries(): { gpa: number; len: number }[] {
    return this.rxDone.splice(0);
  }

  /** Waits for `count` frames on RX and reassembles them (num_buffers decides how many buffers each took). */
  async receive(count: number, pair = 0, timeoutMs = 10_000): Promise<Received[]> {
    const deadline = Date.now() + timeoutMs;
    const frames: Received[] = [];
    for (;;) {
      this.reapRx(pair);
      while (frames.length < count && this.rxDone.length > 0) {
        const first = this.rxDone[0];
        const header = this.bytes(first.gpa, this.headerBytes).slice();
        const numBuffers = this.headerBytes === 12 ? header[10] | (header[11] << 8) : 1;
        if (this.rxDone.length < numBuffers) break;
        const parts = this.rxDone.splice(0, numBuffers);
        const chunks = parts.map((part, i) =>
          this.bytes(part.gpa + (i === 0 ? this.headerBytes : 0), part.len - (i === 0 ? this.headerBytes : 0)).slice(),
        );
        frames.push({ numBuffers, header, frame: Buffer.concat(chunks) });
      }
      if (frames.length >= count) return frames;
      if (this.rx(pair).driver.broken) throw new Error(`RX driver broken: ${this.rx(pair).driver.brokenReason}`);
      if (Date.now() > deadline) throw new Error(`received ${frames.length} of ${count} frames in ${timeoutMs} ms`);
      await new Promise((resolve) => setImmediate(resolve));
    }
  }

  close(): void {
    this.device.close();
    this.memory.close();
  }
}

/** An Ethernet frame of `length` bytes: to MAC, from a local address, then a pattern by seed. */
export function ethernetFrame(length: number, seed: number): Uint8Array {
  const frame = new Uint8Array(length);
  frame.set(MAC, 0);
  frame.set([0x02, 0, 0, 0, 0, seed & 0xff], 6);
  frame[12] = 0x88;
  frame[13] = 0xb5; // local experimental EtherType
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 14; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    frame[i] = x & 0xff;
  }
  return frame;
}

export function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  return Buffer.from(a.buffer, a.byteOffset, a.length).equals(Buffer.from(b.buffer, b.byteOffset, b.length));
}

/** A request of one descriptor at `offset` (readable, or writable for RX), for handler tests without rings. */
export function oneSegmentRequest(
  memory: GuestMemory,
  offset: number,
  length: number,
  writable: boolean,
  head: number,
): VirtqRequest {
  const r = new VirtqRequest(4);
  r.memory = memory;
  r.head = head;
  r.segWindow[0] = 0;
  r.segWindowOffset[0] = offset;
  r.segLength[0] = length;
  r.segmentCount = 1;
  r.readableCount = writable ? 0 : 1;
  r.writableCount = writable ? 1 : 0;
  r.readableBytes = writable ? 0 : length;
  r.writableBytes = writable ? length : 0;
  return r;
}
