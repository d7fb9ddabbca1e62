// npm run bench:tuning [-- --quick] — the poll-versus-interrupt study behind tuning.md.
// Our vhost-user-blk (io_uring engine, buffered image so the device is not the bottleneck) in
// busy, interrupt and adaptive mode (two idle budgets): latency percentiles, back-end CPU and
// IOPS per back-end CPU-second at offered loads of ~1 K, 10 K, 100 K IOPS (open loop) and at
// saturation (closed loop, QD32). The same loads against qemu-storage-daemon on the same image in
// its two matching modes — an iothread with poll-max-ns=0 (pure interrupt, the peer of our
// interrupt mode) and an iothread with its default adaptive polling (the peer of our adaptive
// modes). Back-end CPU with rings running and no I/O; QD1 latency next to raw fio (io_uring, same
// file, same core; --invalidate=0 keeps the warm page cache). Every back-end on CPU 1, the load
// generator on CPU 0. Writes results/tuning-*.json (bench:plot renders them).
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { FrontendDevice } from '../dist/frontend/device.js';
import { processCpuSeconds, randRead4k, runBench, type BenchResult } from '../dist/loadgen/run.js';
import { spawnBlkBackend } from '../dist/guest/blk-process.js';
import { startStorageDaemon } from '../dist/guest/qsd.js';
import { firstFioJob } from './fio-output.js';
import { fillImage, run } from './shell.js';
import {
  BACKEND_CPU,
  LOAD_CPU,
  POLL_MODES,
  REPO,
  cpuPercent,
  machine,
  perCpuSecond,
  pollArgs,
  sleep,
  studyOptions,
  type PollMode,
  writeRecord,
} from './tuning-common.js';

const { quick, seconds, warmup } = studyOptions();
const sizeMb = 256;
const image = join(REPO, '.cache', 'bench', `tuning-${sizeMb}M.img`);
const work = join(tmpdir(), `vut-tuning-${process.pid}`);
mkdirSync(work, { recursive: true });

const loads = [
  { name: '1K', rate: 1_000, qd: 64 },
  { name: '10K', rate: 10_000, qd: 64 },
  { name: '100K', rate: 100_000, qd: 64 },
  { name: 'saturation', rate: 0, qd: 32 },
];

/**
 * qemu-storage-daemon's ways of waiting that match ours, each with the modes it is the peer of:
 * an iothread with polling off (it sleeps in ppoll/io_uring until an eventfd fires) and one with
 * QEMU's default adaptive polling (it polls up to poll-max-ns, 32 µs, growing and shrinking the
 * window with how often polling paid off).
 */
const QSD_MODES = [
  { name: 'qsd-no-poll', pollMaxNs: 0 as number | undefined, peerOf: ['interrupt', 'interrupt-grace0'] },
  { name: 'qsd-adaptive', pollMaxNs: undefined, peerOf: ['adaptive-50us', 'adaptive-1ms'] },
];

interface Server {
  socket: string;
  pid: number;
  stop: () => Promise<unknown>;
}

function startOurs(mode: PollMode): Promise<Server> {
  return spawnBlkBackend(join(work, `ours-${mode.name}.sock`), ['--disk', image, ...pollArgs(mode)], {
    taskset: String(BACKEND_CPU),
  });
}

/** The same image, buffered, through io_uring like ours: the daemon's launcher with an iothread. */
async function startQsd(name: string, pollMaxNs: number | undefined): Promise<Server> {
  const socket = join(work, `${name}.sock`);
  const daemon = await startStorageDaemon({
    image,
    socketPath: socket,
    blockdev: `driver=file,node-name=file0,filename=${image},aio=io_uring,cache.direct=off`,
    cpus: String(BACKEND_CPU),
    iothread: { pollMaxNs },
  });
  return { socket, pid: daemon.pid, stop: () => daemon.stop() };
}

function bench(socket: string, pid: number, qd: number, rate: number, wait: 'spin' | 'event' = 'event'): Promise<BenchResult> {
  return runBench(randRead4k(socket, { queueDepth: qd, rate, wait, seconds, warmup, cpu: LOAD_CPU, backendPid: pid }));
}

/** Back-end CPU while a front-end is connected, rings started, and nothing is sent. */
async function idleCpu(socket: string, pid: number): Promise<number> {
  const device = await FrontendDevice.connect({ socketPath: socket, queues: 1, queueSize: 256, connectTimeoutMs: 2000 });
  try {
    await sleep(500);
    const before = processCpuSeconds(pid);
    const started = Date.now();
    await sleep(seconds * 1000);
    return cpuPercent(processCpuSeconds(pid) - before, (Date.now() - started) / 1000);
  } finally {
    device.close();
  }
}

/** The offered loads against one back-end: one point each. */
async function sweep(backend: 'ours' | 'qsd', mode: string, peer: string | null, server: Server) {
  const points = [];
  for (const load of loads) {
    process.stderr.write(`${mode} ${load.name}...\n`);
    const r = await bench(server.socket, server.pid, load.qd, load.rate);
    if (r.failures.length > 0) throw new Error(`${mode} ${load.name} is not a valid measurement: ${r.failures.join('; ')}`);
    const cpu = cpuPercent(r.backend_cpu_s, r.seconds);
    points.push({
      backend,
      mode,
      peer,
      load: load.name,
      offered_iops: load.rate || null,
      iops: r.iops,
      lat_us: r.lat_us,
      backend_cpu_pct: cpu,
      iops_per_cpu_s: perCpuSecond(r.iops, cpu),
    });
  }
  return points;
}

async function fioQd1(): Promise<{ p50: number; p99: number; mean: number; iops: number }> {
  const out = await run('taskset', [
    '-c',
    String(BACKEND_CPU),
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
  const began = Date.now();
  if (!existsSync(image)) {
    mkdirSync(join(REPO, '.cache', 'bench'), { recursive: true });
    await fillImage(image, sizeMb);
  }
  // Warm the page cache so every mode reads the same cached data.
  await run('dd', [`if=${image}`, 'of=/dev/null', 'bs=1M']);
  const points = [];
  const idle = [];
  const qd1 = [];
  // Each QSD mode runs right after the first of ours it is the peer of, so that peers see the
  // same machine (others' load on a shared host drifts over minutes).
  const order: ({ ours: PollMode } | { qsd: (typeof QSD_MODES)[number] })[] = [];
  for (const mode of POLL_MODES) {
    order.push({ ours: mode });
    const qsd = QSD_MODES.find((q) => q.peerOf[0] === mode.name);
    if (qsd) order.push({ qsd });
  }
  for (const entry of order) {
    if ('ours' in entry) {
      const mode = entry.ours;
      const server = await startOurs(mode);
      try {
        idle.push({ backend: 'ours', mode: mode.name, backend_cpu_pct: await idleCpu(server.socket, server.pid) });
        const peer = QSD_MODES.find((q) => q.peerOf.includes(mode.name))?.name ?? null;
        points.push(...(await sweep('ours', mode.name, peer, server)));
        // QD1 against fio: the load thread spins (a polling guest driver), so its own wake-up
        // time does not hide what the back-end adds.
        const r = await bench(server.socket, server.pid, 1, 0, 'spin');
        qd1.push({ mode: mode.name, iops: r.iops, p50: r.lat_us.p50, p99: r.lat_us.p99, mean: r.lat_us.mean });
      } finally {
        await server.stop();
      }
    } else {
      const mode = entry.qsd;
      const server = await startQsd(mode.name, mode.pollMaxNs);
      try {
        idle.push({ backend: 'qsd', mode: mode.name, backend_cpu_pct: await idleCpu(server.socket, server.pid) });
        points.push(...(await sweep('qsd', mode.name, null, server)));
      } finally {
        await server.stop();
      }
    }
  }
  const fio = await fioQd1();
  const record = {
    date: new Date().toISOString(),
    machine: machine(),
    command: `npm run bench:tuning${quick ? ' -- --quick' : ''}`,
    setup:
      `vhost-user-blk io_uring engine on a ${sizeMb} MiB buffered image (page cache warm), 4 KiB random reads, 1 queue; ` +
      `qemu-storage-daemon on the same image (file driver, aio=io_uring, cache.direct=off) in an iothread with poll-max-ns=0 (qsd-no-poll, the peer of our interrupt mode) and with its default adaptive polling (qsd-adaptive, the peer of our adaptive modes); ` +
      `back-ends on CPU ${BACKEND_CPU}, vhost-user-bench on CPU ${LOAD_CPU} (open-loop and saturation points: the driver asks for call notifications and sleeps on the call eventfd when the next issue is > 2 ms away; QD1 points: it spins on the used ring); ${seconds} s per point after ${warmup} s warm-up`,
    run_seconds: Math.round((Date.now() - began) / 1000),
    points,
    idle,
    qd1: { ours: qd1, fio },
  };
  writeRecord('tuning', record);
  rmSync(work, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:tuning failed: ${error instanceof Error ? error.message : String(error)}\n`);
  rmSync(work, { recursive: true, force: true });
  process.exitCode = 1;
});
