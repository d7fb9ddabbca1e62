// Micro-benchmark of the switch back-end's per-frame cost between two ports, with real split
// rings (SplitVirtqueue on the device side, VringDriver offering raw heads on the guest side):
// port A transmits 32 frames of 64 bytes per pass to port B (its MAC learned), which offers 32
// RX chains per pass. Two ways, the ones the switch picks between at run time:
//   frame ring   A's handler copies each frame into the SPSC frame ring, B's copies it out into
//                its held RX chains (ports on different workers: two copies)
//   one copy     both handlers in one worker (what the shared workers give): A's copies each
//                frame straight into B's held RX chains
// One thread does both sides here. The driver re-offers the same heads each round and never reaps.
//
//   node --expose-gc <compiled>/bench/micro-switch.js [ring|once ...]   (default: both)
//
// Imports the built library from ../dist (run `npm run build` first).
import { GuestMemory } from '../dist/dataplane/memory.js';
import { VirtqRequest } from '../dist/dataplane/request.js';
import { SplitVirtqueue } from '../dist/dataplane/virtqueue.js';
import { VringDriver, splitRingLayout } from '../dist/frontend/vring-driver.js';
import type { QueueHandler, WorkerQueue } from '../dist/dataplane/device-api.js';
import { createQueueHandler } from '../dist/devices/net/switch.js';
import { SwitchFabric } from '../dist/devices/net/switch-fabric.js';
import { NetDevice } from '../dist/devices/net/device.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat } from '../dist/devices/net/options.js';

const MiB = 1 << 20;
const SIZE = 256;
const WRITE = 2;
const HEADER = 12;
const FRAME = 64;
const RX_BYTES = 2048;
const BATCH = 32;
const SAMPLES = 10;
const MAC_A = [0x02, 0, 0, 0, 0, 0x0a];
const MAC_B = [0x02, 0, 0, 0, 0, 0x0b];

/** A worker queue as QueueRunner is on the hot path: a request pool, pop, complete = pushUsed. */
class BenchQueue implements WorkerQueue {
  readonly stopping = false;
  readonly vq: SplitVirtqueue;
  readonly driver: VringDriver;
  private readonly pool: VirtqRequest[] = [];
  private free = SIZE;
  private head = 0;
  constructor(
    readonly index: number,
    readonly memory: GuestMemory,
    base: number,
    data: number,
    stride: number,
    bytes: number,
    flags: number,
  ) {
    const layout = splitRingLayout(SIZE);
    const rings = { descAddr: base, availAddr: base + layout.availOffset, usedAddr: base + layout.usedOffset };
    this.driver = new VringDriver({ memory, size: SIZE, ...rings, eventIdx: true });
    this.vq = new SplitVirtqueue({ memory, size: SIZE, ...rings, eventIdx: true, indirectDesc: true });
    this.vq.disableNotification();
    for (let i = 0; i < SIZE; i++) {
      this.pool.push(new VirtqRequest(64));
      this.driver.writeDescriptor(i, data + i * stride, bytes, flags, 0);
    }
  }
  offer(count: number): void {
    for (let i = 0; i < count; i++) this.driver.offerRawHead((this.head + i) & (SIZE - 1));
    this.head = (this.head + count) & (SIZE - 1);
    this.driver.publish();
  }
  process(handler: QueueHandler, budget: number): number {
    let popped = 0;
    while (popped < budget && this.free > 0) {
      const request = this.pool[this.free - 1];
      if (!this.vq.pop(request)) break;
      this.free--;
      popped++;
      handler.handle(this, request);
    }
    return popped;
  }
  complete(request: VirtqRequest, writtenLen: number): void {
    this.vq.pushUsed(request.head, writtenLen);
    this.pool[this.free++] = request;
  }
}

/** A guest memory of 8 MiB: rings at 0, TX frames at 1 MiB (A's header and frame for B), RX buffers at 2 MiB. */
function guest(): GuestMemory {
  const buffer = new SharedArrayBuffer(8 * MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: 8 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  const bytes = new Uint8Array(buffer);
  for (let i = 0; i < SIZE; i++) {
    const at = MiB + i * 128 + HEADER;
    bytes.set(MAC_B, at);
    bytes.set(MAC_A, at + 6);
    bytes[at + 12] = 0x88;
    bytes[at + 13] = 0xb5;
  }
  return memory;
}

async function setUp(shared: boolean) {
  const fabric = new SwitchFabric(2, 1, 1);
  const devices = [0, 1].map(
    (p) => new NetDevice({ queuePairs: 1, maxQueueSize: SIZE, mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, p), mtu: 1500 }),
  );
  for (const device of devices) {
    const negotiated = new Int32Array(device.negotiated);
    negotiated[NegotiatedSlot.headerBytes] = HEADER;
    negotiated[NegotiatedSlot.mergeableRxBuffers] = 1;
  }
  const handlers: QueueHandler[] = [];
  for (const p of [0, 1]) {
    handlers.push(
      await createQueueHandler(fabric.handlerSpec(p, devices[p]).options, {
        worker: 0,
        queueCount: 2,
        log: () => {},
        watchFd: () => {},
        unwatchFd: () => {},
        ...(shared && { spaces: 2, space: p, peer: (space: number) => handlers[space] ?? null }),
      }),
    );
  }
  // Each port its own guest memory, as two VMs.
  const tx = new BenchQueue(1, guest(), 0, MiB, 128, HEADER + FRAME, 0);
  const rx = new BenchQueue(0, guest(), 0x10000, 2 * MiB, RX_BYTES, RX_BYTES, WRITE);
  // B transmits once from its MAC: the switch learns where B is (the frame finds no RX at A).
  const bTx = new BenchQueue(1, guest(), 0x20000, MiB, 128, HEADER + FRAME, 0);
  const bBytes = new Uint8Array(bTx.memory.windowBytesView[0].buffer);
  bBytes.set(MAC_A, MiB + HEADER);
  bBytes.set(MAC_B, MiB + HEADER + 6);
  bTx.offer(1);
  bTx.process(handlers[1], 1);
  return { fabric, devices, handlers, tx, rx };
}

type Rig = Awaited<ReturnType<typeof setUp>>;

function round({ handlers: [a, b], tx, rx }: Rig): number {
  rx.offer(BATCH);
  tx.offer(BATCH);
  rx.process(b, BATCH);
  const n = tx.process(a, BATCH);
  a.flush();
  a.poll();
  b.poll();
  b.flush();
  rx.vq.flushUsed();
  tx.vq.flushUsed();
  return n;
}

/** The best of SAMPLES timings of `frames` frames each, in CPU time (the machine is shared). */
function time(name: string, rig: Rig, frames: number): void {
  let done = 0;
  while (done < frames) done += round(rig); // warm up
  const gcBefore = gcCount;
  let best = Infinity;
  let total = 0;
  for (let sample = 0; sample < SAMPLES; sample++) {
    const start = process.cpuUsage();
    done = 0;
    while (done < frames) done += round(rig);
    const used = process.cpuUsage(start);
    best = Math.min(best, ((used.user + used.system) * 1e3) / done);
    total += done;
  }
  const stats = new Float64Array(rig.devices[1].stats);
  const received = stats[NetStat.packets];
  const sent = new Float64Array(rig.devices[0].stats)[NET_STAT_SLOTS + NetStat.packets];
  if (received !== sent || stats[NetStat.drops] !== 0)
    throw new Error(`${name}: ${sent} frames sent, ${received} received, ${stats[NetStat.drops]} dropped`);
  const once = stats[NetStat.copiedOnce];
  console.log(
    `${name.padEnd(40)} ${best.toFixed(1).padStart(7)} ns/frame  (best of ${SAMPLES}; ${gcCount - gcBefore} GCs over ${total} frames; ${((once / received) * 100).toFixed(0)}% copied once)`,
  );
}

let gcCount = 0;
const { PerformanceObserver } = await import('node:perf_hooks');
new PerformanceObserver((list) => (gcCount += list.getEntries().length)).observe({ entryTypes: ['gc'] });

const frames = Number(process.env.FRAMES ?? 500_000);
const only = process.argv.slice(2);
const wanted = (name: string) => only.length === 0 || only.includes(name);
if (wanted('ring')) time('switch, frame ring: 64-byte frames A → B', await setUp(false), frames);
if (wanted('once')) time('switch, one copy: 64-byte frames A → B', await setUp(true), frames);
