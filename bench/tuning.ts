// npm run bench:tuning [-- --quick] — the poll-versus-interrupt study behind tuning.md.
// Our vhost-user-blk (io_uring engine, buffered image so the device is not the bottleneck) in
// busy, interrupt and adaptive mode (two idle budgets): latency percentiles and back-end CPU at
// offered loads of ~1 K, 10 K, 100 K IOPS (open loop) and at saturation (closed loop, QD32);
// back-end CPU with rings running and no I/O; QD1 latency next to raw fio (io_uring, same file,
// same core; --invalidate=0 keeps the warm page cache). Back-end on CPU 1, load generator on
// CPU 0. Writes results/tuning-*.json.
import { existsSync, mkdirSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { FrontendDevice } from '../dist/frontend/device.js';
import { processCpuSeconds, randRead4k, runBench, type BenchResult } from '../dist/loadgen/run.js';
import { spawnBlkBackend } from '../dist/guest/blk-process.js';
import { firstFioJob } from './fio-output.js';
import { fillImage, run } from './shell.js';

const REPO = new URL('..', import.meta.url).pathname;
const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } } });
const quick = values.quick;
const seconds = quick ? 2 : 5;
const warmup = 1;
const sizeMb = 256;
const image = join(REPO, '.cache', 'bench', `tuning-${sizeMb}M.img`);
const work = join(tmpdir(), `vut-tuning-${process.pid}`);
mkdirSync(work, { recursive: true });

const modes = [
  { name: 'busy', poll: 'busy', budgetUs: 0 },
  { name: 'interrupt', poll: 'interrupt', budgetUs: 0 },
  { name: 'adaptive-50us', poll: 'adaptive', budgetUs: 50 },
  { name: 'adaptive-1ms', poll: 'adaptive', budgetUs: 1000 },
];
const loads = [
  { name: '1K', rate: 1_000, qd: 64 },
  { name: '10K', rate: 10_000, qd: 64 },
  { name: '100K', rate: 100_000, qd: 64 },
  { name: 'saturation', rate: 0, qd: 32 },
];

function startOurs(poll: string, budgetUs: number) {
  const args = ['--disk', image, '--cpus', '1', '--poll', poll];
  if (poll === 'adaptive') args.push('--idle-budget-us', String(budgetUs));
  return spawnBlkBackend(join(work, `ours-${poll}-${budgetUs}.sock`), args, { taskset: '1' });
}

function bench(socket: string, pid: number, qd: number, rate: number, wait: 'spin' | 'event' = 'event'): Promise<BenchResult> {
  return runBench(randRead4k(socket, { queueDepth: qd, rate, wait, seconds, warmup, cpu: 0, backendPid: pid }));
}

/** Back-end CPU while a front-end is connected, rings started, and nothing is sent. */
async function idleCpu(socket: string, pid: number): Promise<number> {
  const device = await FrontendDevice.connect({ socketPath: socket, queues: 1, queueSize: 256, connectTimeoutMs: 2000 });
  try {
    await new Promise((resolve) => setTimeout(resolve, 500));
    const before = processCpuSeconds(pid);
    const started = Date.now();
    await new Promise((resolve) => setTimeout(resolve, seconds * 1000));
    return (processCpuSeconds(pid) - before) / ((Date.now() - started) / 1000);
  } finally {
    device.close();
  }
}

async function fioQd1(): Promise<{ p50: number; p99: number; mean: number; iops: number }> {
  const out = await run('taskset', [
    '-c',
    '1',
    'fio',
    '--name=qd1',
    `--filename=${image}`,
    '--ioengine=io_uring',
    '--rw=randread',
    '--bs=4k',
    '--iodepth=1',
    '--invalidate=0',
    '--time_based',
    `--runtime=${seconds}`,
    `--ramp_time=${warmup}`,
    '--output-format=json',
  ]);
  const read = firstFioJob(out).read;
  const us = (ns: number) => Math.round(ns / 10) / 100;
  return {
    p50: us(read.clat_ns.percentile['50.000000']),
    p99: us(read.clat_ns.percentile['99.000000']),
    mean: us(read.clat_ns.mean),
    iops: Math.round(read.iops),
  };
}

async function main(): Promise<void> {
  if (!existsSync(image)) {
    mkdirSync(join(REPO, '.cache', 'bench'), { recursive: true });
    await fillImage(image, sizeMb);
  }
  // Warm the page cache so every mode reads the same cached data.
  await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=1M']);
  const points = [];
  const idle = [];
  const qd1 = [];
  for (const mode of modes) {
    const server = await startOurs(mode.poll, mode.budgetUs);
    try {
      idle.push({ mode: mode.name, backend_cpu_pct: Math.round((await idleCpu(server.socket, server.pid)) * 1000) / 10 });
      for (const load of loads) {
        process.stderr.write(`${mode.name} ${load.name}...\n`);
        const r = await bench(server.socket, server.pid, load.qd, load.rate);
        if (r.errors) throw new Error(`${mode.name} ${load.name}: ${r.errors} errors`);
        points.push({
          mode: mode.name,
          load: load.name,
          offered_iops: load.rate || null,
          iops: r.iops,
          lat_us: r.lat_us,
          backend_cpu_pct: Math.round(((r.backend_cpu_s ?? 0) / r.seconds) * 1000) / 10,
        });
      }
      // QD1 against fio: the load thread spins (a polling guest driver), so its own wake-up
      // time does not hide what the back-end adds.
      const r = await bench(server.socket, server.pid, 1, 0, 'spin');
      qd1.push({ mode: mode.name, iops: r.iops, p50: r.lat_us.p50, p99: r.lat_us.p99, mean: r.lat_us.mean });
    } finally {
      await server.stop();
    }
  }
  const fio = await fioQd1();
  const record = {
    date: new Date().toISOString(),
    machine: `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs, Node ${process.version}`,
    command: `npm run bench:tuning${quick ? ' -- --quick' : ''}`,
    setup: `vhost-user-blk io_uring engine on a ${sizeMb} MiB buffered image (page cache warm), 4 KiB random reads, 1 queue; back-end on CPU 1, vhost-user-bench on CPU 0 (open-loop and saturation points: the driver asks for call notifications and sleeps on the call eventfd when the next issue is > 2 ms away; QD1 points: it spins on the used ring); ${seconds} s per point after ${warmup} s warm-up`,
    points,
    idle,
    qd1: { ours: qd1, fio },
  };
  mkdirSync(join(REPO, 'results'), { recursive: true });
  writeFileSync(join(REPO, 'results', 'tuning-latest.json'), JSON.stringify(record, null, 2));
  writeFileSync(join(REPO, 'results', `tuning-${record.date.replace(/[:.]/g, '-')}.json`), JSON.stringify(record, null, 2));
  process.stdout.write(JSON.stringify(record, null, 2) + '\n');
  rmSync(work, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:tuning failed: ${error instanceof Error ? error.message : String(error)}\n`);
  rmSync(work, { recursive: true, force: true });
  process.exitCode = 1;
});
