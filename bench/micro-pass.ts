// Micro-benchmark of a whole back-end pass for virtio-blk, in-process: a DataPlaneWorker (busy
// mode) with the blk handler on the null engine steps over one split queue that a driver in the
// same thread fills with 3-descriptor 4 KiB reads (header, data, status) — the request shape
// `vhost-user-bench` sends. Two figures per batch size (1 and 32 requests per pass), both over the
// whole loop, the driver's offers included (a few ns per request): wall-clock time (best of 5
// rounds) and the process's CPU time (median of 5). CPU time is the steadier one on a shared
// machine: time spent descheduled does not count. Both are the back-end's own cost
// (pop, chain walk, header parse, completion, used-ring publish, per-pass overhead) without the
// cross-core cache traffic of a real front-end.
//
//   npm run bench:build && node --expose-gc dist-bench/micro-pass.js [batch] [--in-order]
import { GuestMemory } from '../dist/dataplane/memory.js';
import { readQueueStats } from '../dist/dataplane/stats.js';
import { createQueueHandler } from '../dist/devices/blk/handler.js';
import { VringDriver, splitRingLayout } from '../dist/frontend/vring-driver.js';
import { measureAllocations } from './allocations.js';
import { inProcessWorker, splitQueueStart } from './worker-rig.js';

const MiB = 1 << 20;
const SIZE = 256;
const USER_BASE = 0x7f00_0000_0000;
const DATA = 0x40000;
const NEXT = 1;
const WRITE = 2;
const BATCH_MAX = 32;
/** --in-order: the queue starts with VIRTIO_F_IN_ORDER (the worker's reorder path; the null engine completes in order). */
const IN_ORDER = process.argv.includes('--in-order');

async function setup() {
  const { worker, init, command } = await inProcessWorker({
    handlerOptions: {
      engine: 'null',
      capacityBytes: 64 * MiB,
      readOnly: false,
      logicalBlockSize: 512,
      discard: false,
      maxDiscardSectors: 0,
      maxWriteZeroesSectors: 0,
      serial: 'micro',
    },
    createHandler: createQueueHandler,
    queueCount: 1,
    maxSegments: 8,
  });
  const stats = init.stats;
  const buffer = new SharedArrayBuffer(4 * MiB);
  const region = { guestPhysAddr: 0, size: 4 * MiB, userspaceAddr: USER_BASE, buffer, bufferOffset: 0 };
  const memory = new GuestMemory([region]);
  const layout = splitRingLayout(SIZE);
  const rings = { descAddr: 0, availAddr: layout.availOffset, usedAddr: layout.usedOffset };
  const driver = new VringDriver({ memory, size: SIZE, ...rings, eventIdx: true });
  command({ op: 'memory', regions: [region] });
  command({ op: 'start', queue: splitQueueStart(0, SIZE, USER_BASE, rings, { indirectDesc: true, inOrder: IN_ORDER }) });
  // Static chains: chain b at descriptors 4b → 4b+1 → 4b+2, a virtio-blk IN of 4 KiB at sector 8b.
  const view = new DataView(buffer);
  for (let b = 0; b < BATCH_MAX; b++) {
    const base = DATA + b * 0x4000;
    view.setUint32(base, 0, true); // VIRTIO_BLK_T_IN
    view.setUint32(base + 8, 8 * b, true);
    driver.writeDescriptor(4 * b, base, 16, NEXT, 4 * b + 1);
    driver.writeDescriptor(4 * b + 1, base + 0x1000, 4096, WRITE | NEXT, 4 * b + 2);
    driver.writeDescriptor(4 * b + 2, base + 0x3000, 1, WRITE, 0);
  }
  // The front-end reaps in the real set-up; here used_event just follows so EVENT_IDX behaves alike.
  return { worker, driver, stats, bytes: new Uint8Array(buffer) };
}

async function main(): Promise<void> {
  const rig = await setup();
  const { worker, driver } = rig;
  // Batch 0: an idle pass (nothing offered), per pass: what a poller pays between requests.
  const makeCase = (batch: number) => ({
    perCall: Math.max(batch, 1),
    fn: (): void => {
      for (let b = 0; b < batch; b++) driver.offerRawHead(4 * b);
      if (batch > 0) driver.publish();
      worker.step();
    },
  });
  // A number picks one batch size (e.g. to profile it alone).
  const picked = process.argv.slice(2).find((arg) => /^\d+$/.test(arg));
  const batches = picked !== undefined ? [Number(picked)] : [0, 1, 32];
  for (const batch of batches) {
    const c = makeCase(batch);
    const perCall = c.perCall;
    const calls = Math.ceil(400_000 / perCall);
    for (let i = 0; i < calls / 4; i++) c.fn(); // warm up
    let best = Infinity;
    const cpu: number[] = [];
    for (let round = 0; round < 5; round++) {
      const before = process.cpuUsage();
      const start = process.hrtime.bigint();
      for (let i = 0; i < calls; i++) c.fn();
      const wall = Number(process.hrtime.bigint() - start);
      const used = process.cpuUsage(before);
      best = Math.min(best, wall / (calls * perCall));
      cpu.push(((used.user + used.system) * 1e3) / (calls * perCall));
    }
    cpu.sort((a, b) => a - b);
    const { bytesPerOp, gcs, iterations } = await measureAllocations(c);
    const label =
      (batch === 0 ? 'idle pass, no request   ' : `blk pass, null engine, batch ${String(batch).padStart(2)}`) +
      (IN_ORDER ? ', IN_ORDER' : '');
    const unit = batch === 0 ? 'ns/pass' : 'ns/request';
    console.log(
      `${label}: ${best.toFixed(1).padStart(7)} ${unit} (best of 5)  cpu ${cpu[2].toFixed(1).padStart(7)} ${unit}  ` +
        `${bytesPerOp.toFixed(3)} bytes/request, ${gcs} GCs in ${iterations} requests`,
    );
  }
  const stats = readQueueStats(rig.stats, 0);
  if (stats.broken !== 0) throw new Error(`queue broke: reason ${stats.broken}`);
  for (let b = 0; b < BATCH_MAX; b++) {
    if (rig.bytes[DATA + b * 0x4000 + 0x3000] !== 0) throw new Error(`request ${b}: status not OK`);
  }
  worker.close();
  process.exit(0);
}

await main();
