// Quick virtio-blk IOPS check: 4 KiB random reads, 1 queue, through the real daemon and worker
// data plane (busy mode, worker pinned to CPU 1) driven by the front-end load thread (CPU 0),
// at QD1 and QD32, for the null engine and the io_uring engine (buffered and O_DIRECT) —
// with fio (io_uring engine, pinned to CPU 1) on the same image in the same run as the anchor.
//
//   npm run bench:build && node dist-bench/blk-quick.js [--seconds 5] [--image /path] [--no-fio]
//
// The image (default /tmp/vut-blk-quick.img, 1 GiB) is filled with data once so that reads hit
// real blocks (the page cache for buffered runs, the disk for O_DIRECT), not holes, and read
// through before buffered runs so they start from a warm page cache. fio's buffered QD1
// completes inline in io_submit (clat ≈ 0.1 µs), so its QD1 ratio compares a round trip
// through two threads and a virtqueue with a function call.
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readSync, rmSync, statSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { VhostUserDaemon } from '../dist/control/daemon.js';
import { FrontendDevice } from '../dist/control/frontend/device.js';
import { WorkerDataPlane } from '../dist/dataplane/pool.js';
import { BlkDevice, type BlkEngineOptions } from '../dist/devices/blk/device.js';
import { runLoad } from '../dist/bench/load.js';

const { values } = parseArgs({
  options: {
    seconds: { type: 'string', default: '5' },
    image: { type: 'string', default: '/tmp/vut-blk-quick.img' },
    'no-fio': { type: 'boolean', default: false },
    sqpoll: { type: 'boolean', default: false },
  },
});
const seconds = Number(values.seconds);
const image = values.image!;
const IMAGE_BYTES = 1 << 30;
const BACKEND_CPU = 1;
const LOAD_CPU = 0;

function prepareImage(): void {
  if (existsSync(image) && statSync(image).size === IMAGE_BYTES && statSync(image).blocks * 512 >= IMAGE_BYTES) return;
  const fd = openSync(image, 'w');
  const chunk = Buffer.alloc(1 << 20);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 131 + 7) & 0xff;
  for (let offset = 0; offset < IMAGE_BYTES; offset += chunk.length) writeSync(fd, chunk, 0, chunk.length, offset);
  closeSync(fd);
}

/** Reads the image once so buffered runs hit the page cache (a direct fio run may have dropped it). */
function warmPageCache(): void {
  const fd = openSync(image, 'r');
  const chunk = Buffer.alloc(1 << 20);
  for (let offset = 0; offset < IMAGE_BYTES; offset += chunk.length) readSync(fd, chunk, 0, chunk.length, offset);
  closeSync(fd);
}

interface Row {
  name: string;
  depth: number;
  iops: number;
  meanUs: number;
  p99Us: number;
  backendCpu?: number;
}

async function measure(name: string, engine: BlkEngineOptions, depths: number[]): Promise<Row[]> {
  const dir = mkdtempSync(join(tmpdir(), 'vut-blk-quick-'));
  const socketPath = join(dir, 'blk.sock');
  const device = new BlkDevice({
    capacityBytes: IMAGE_BYTES,
    numQueues: 1,
    maxQueueSize: 256,
    readOnly: false,
    supportsDiscard: true,
    supportsFlush: true,
  });
  const plane = await WorkerDataPlane.start({
    cpus: [BACKEND_CPU],
    queueCount: 1,
    handler: device.handlerSpec(engine),
    mode: 'busy',
    maxSegments: device.maxSegments,
  });
  const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane });
  await daemon.start();
  const rows: Row[] = [];
  try {
    for (const depth of depths) {
      const frontend = await FrontendDevice.connect({ socketPath, queues: 1, queueSize: 256, memory: [{ guestPhysAddr: 0, size: 64 << 20 }] });
      try {
        const report = await runLoad(frontend, {
          workload: { kind: 'blk', pattern: 'randread', blockSize: 4096, capacityBytes: IMAGE_BYTES, readShare: 1, seed: 1 },
          queueDepth: depth,
          seconds,
          warmupSeconds: 1,
          wait: 'spin',
          cpu: LOAD_CPU,
        });
        if (report.errors > 0) throw new Error(`${name} QD${depth}: ${report.errors} errors, first: ${report.firstError}`);
        rows.push({ name, depth, iops: report.iops, meanUs: report.latencyNs.mean / 1000, p99Us: report.latencyNs.p99 / 1000 });
      } finally {
        frontend.close();
      }
    }
  } finally {
    await daemon.stop();
    await plane.close();
    rmSync(dir, { recursive: true, force: true });
  }
  return rows;
}

function fio(depth: number, direct: boolean): Row {
  const output = execFileSync(
    'taskset',
    [
      '-c', String(BACKEND_CPU), 'fio', '--name=quick', `--filename=${image}`, '--ioengine=io_uring', '--rw=randread', '--bs=4k',
      `--iodepth=${depth}`, `--direct=${direct ? 1 : 0}`, '--time_based', `--runtime=${seconds}`, '--ramp_time=1',
      '--numjobs=1', '--output-format=json', '--invalidate=0',
    ],
    { encoding: 'utf8' },
  );
  const job = JSON.parse(output).jobs[0].read;
  return {
    name: `fio io_uring${direct ? ' direct' : ''}`,
    depth,
    iops: job.iops,
    meanUs: job.clat_ns.mean / 1000,
    p99Us: (job.clat_ns.percentile?.['99.000000'] ?? 0) / 1000,
  };
}

async function main(): Promise<void> {
  prepareImage();
  const depths = [1, 32];
  const rows: Row[] = [];
  rows.push(...(await measure('null', { engine: 'null' }, depths)));
  warmPageCache();
  rows.push(...(await measure('io_uring', { engine: 'io_uring', path: image, sqpoll: values.sqpoll }, depths)));
  rows.push(...(await measure('io_uring direct', { engine: 'io_uring', path: image, direct: true, sqpoll: values.sqpoll }, depths)));
  if (!values['no-fio']) {
    warmPageCache();
    for (const direct of [false, true]) for (const depth of depths) rows.push(fio(depth, direct));
  }
  console.log(`4 KiB random read, 1 queue, ${seconds} s per point; back-end worker on CPU ${BACKEND_CPU} (busy), load on CPU ${LOAD_CPU}`);
  console.log('engine               QD       IOPS   mean µs    p99 µs   vs fio');
  for (const row of rows) {
    const anchor = rows.find((r) => r.depth === row.depth && r.name === (row.name.includes('direct') ? 'fio io_uring direct' : 'fio io_uring'));
    const ratio = anchor && !row.name.startsWith('fio') && row.name !== 'null' ? `${((row.iops / anchor.iops) * 100).toFixed(0)}%` : '';
    console.log(
      `${row.name.padEnd(20)} ${String(row.depth).padStart(3)} ${row.iops.toFixed(0).padStart(10)} ${row.meanUs.toFixed(1).padStart(9)} ${row.p99Us.toFixed(1).padStart(9)} ${ratio.padStart(8)}`,
    );
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});
