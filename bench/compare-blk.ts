// npm run bench:blk [-- --quick] — vhost-user-blk back-ends side by side, in one run, on one
// image: ours (null and io_uring engines, each poll mode), qemu-storage-daemon (null-co in its
// main loop and in an iothread with polling off and on — compared with our interrupt and adaptive
// modes —, and file with aio=io_uring, O_DIRECT like ours), SPDK's vhost target (null bdev, and aio
// bdev on the same file — SPDK's aio bdev opens it O_DIRECT) and raw fio on the same file; on the
// page cache, ours `--engine threads` against QSD `aio=threads`. 4 KiB random reads at QD1 and QD32
// on 1 queue; every back-end gets CPU 1, the load generator CPU 0. Prints the absolute figures,
// IOPS per back-end CPU-second, the ratios ours/QSD, ours/SPDK and ours/fio, and writes JSON to
// results/. A "loadgen loopback" row gives the load generator's own ceiling (it completes its own
// requests in its thread), so a reader can tell which side limits. A split-versus-packed pair
// (ours, null engine, busy poll; the load generator drives split rings, then packed ones as
// `vhost-user-bench --packed` does, against the same back-end process) alternates the two
// layouts for a few rounds per QD and prints the medians with packed/split: IOPS, and CPU per
// request on each side (on a shared machine IOPS follows whoever else runs; CPU per request less so).
// Ours (null, busy) and SPDK's null bdev also alternate for a few rounds, each round starting one
// back-end then the other, and print the median of the per-round ratios ours/SPDK: this machine's
// null figures are bimodal from run to run, and a ratio of two rows minutes apart can compare
// the two states rather than the two back-ends.
//
// SPDK comes from ../shared/peers/spdk beside the repository (--spdk DIR to point elsewhere,
// --no-spdk to leave it out): its build.sh builds it once (≈1 min) into ~/.cache and reuses it.
import { execFileSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { randRead4k, runBench, type BenchResult } from '../dist/loadgen/run.js';
import { startStorageDaemon } from '../dist/guest/qsd.js';
import { spawnBlkBackend } from '../dist/guest/blk-process.js';
import { runLoopbackLoad } from '../dist/loadgen/load.js';
import { firstFioJob } from './fio-output.js';
import { fillImage, run } from './shell.js';

const REPO = new URL('..', import.meta.url).pathname;
const BACKEND_CPU = '1';
const LOAD_CPU = 0;

interface Point {
  backend: string;
  engine: string;
  mode: string;
  /** Virtqueue layout the load generator drove. */
  ring: 'split' | 'packed';
  qd: number;
  iops: number;
  lat_us: { p50: number; p90: number; p99: number; 'p99.9': number; max: number; mean: number };
  backend_cpu_s: number | null;
  loadgen_cpu_s: number | null;
  seconds: number;
}

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    image: { type: 'string' },
    'size-mb': { type: 'string' },
    only: { type: 'string' },
    spdk: { type: 'string' },
    'no-spdk': { type: 'boolean', default: false },
  },
});
const quick = values.quick;
const seconds = Number(values.seconds ?? (quick ? 2 : 10));
const warmup = quick ? 0.5 : 2;
const sizeMb = Number(values['size-mb'] ?? (quick ? 256 : 1024));
const only = values.only ? new RegExp(values.only) : undefined;
const work = join(tmpdir(), `vut-compare-${process.pid}`);
mkdirSync(work, { recursive: true });
const image = values.image ?? join(REPO, '.cache', 'bench', `blk-${sizeMb}M.img`);
/** The SPDK peer's scripts: ../shared/peers/spdk relative to the repository root (CI has ../shared beside the clone). */
const spdkDir = values['no-spdk'] ? undefined : (values.spdk ?? join(REPO, '..', 'shared', 'peers', 'spdk'));

async function prepareImage(): Promise<void> {
  if (!existsSync(image)) {
    mkdirSync(join(REPO, '.cache', 'bench'), { recursive: true });
    // Real data, not a sparse file: reading holes would flatter every back-end.
    process.stderr.write(`writing a ${sizeMb} MiB image at ${image}...\n`);
    await fillImage(image, sizeMb);
  }
  // Nothing left to write back when the file rows start (a freshly written image, or another
  // job's dirty pages, would load the disk under the first O_DIRECT rows).
  execFileSync('sync');
}

async function ours(
  engine: 'null' | 'io_uring',
  mode: string,
  extra: string[] = [],
): Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }> {
  const args = ['--engine', engine, '--cpus', BACKEND_CPU, '--poll', mode, ...extra];
  if (engine === 'io_uring') args.push('--disk', image, '--direct');
  else args.push('--size', `${sizeMb}M`);
  return spawnBlkBackend(join(work, `ours-${engine}-${mode}${extra.join('')}.sock`), args, { taskset: BACKEND_CPU });
}

/**
 * Our interrupt mode with --interrupt-grace-us 0: it sleeps as soon as a re-check finds nothing,
 * like QSD's iothread with poll-max-ns=0 (the default stays awake 2 µs after work).
 */
const INTERRUPT_NO_GRACE = 'interrupt grace0';

/** The QSD row each of our poll modes is compared with (null engine; others use QSD's main loop). */
const QSD_MODE_FOR: Record<string, string> = {
  interrupt: 'iothread no-poll',
  [INTERRUPT_NO_GRACE]: 'iothread no-poll',
  adaptive: 'iothread poll',
};

/** QSD's ways of waiting: its main loop, or an iothread with polling off (pure interrupt) or on. */
type QsdLoop = 'main' | 'iothread-no-poll' | 'iothread-poll';

async function qsd(
  engine: 'null-co' | 'file',
  loop: QsdLoop = 'main',
): Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }> {
  const socket = join(work, `qsd-${engine}-${loop}.sock`);
  const blockdev =
    engine === 'null-co'
      ? `driver=null-co,node-name=file0,size=${sizeMb * 2 ** 20},read-zeroes=on`
      : `driver=file,node-name=file0,filename=${image},aio=io_uring,cache.direct=on`;
  const iothread = loop === 'main' ? undefined : loop === 'iothread-no-poll' ? { pollMaxNs: 0 } : {};
  const daemon = await startStorageDaemon({ image, socketPath: socket, blockdev, cpus: BACKEND_CPU, iothread });
  return { socket, pid: daemon.pid, stop: () => daemon.stop() };
}

/** Builds SPDK's vhost target on first use (cached by build.sh); fails loudly if it cannot. */
async function buildSpdk(): Promise<void> {
  if (!spdkDir) return;
  const script = join(spdkDir, 'build.sh');
  if (!existsSync(script)) {
    throw new Error(
      `no SPDK peer at ${spdkDir} (expected build.sh and run-vhost.sh there): pass --spdk DIR, or --no-spdk to leave SPDK out`,
    );
  }
  process.stderr.write('SPDK: built on first use (about a minute), then cached...\n');
  const binary = (await run('bash', [script])).trim();
  process.stderr.write(`SPDK: ${binary}\n`);
}

/** SPDK's vhost target with one bdev, reactor on the back-end CPU. */
async function spdk(kind: 'null' | 'aio'): Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }> {
  const name = `spdk-${kind}`;
  const out = await run('bash', [
    join(spdkDir!, 'run-vhost.sh'),
    work,
    name,
    BACKEND_CPU,
    kind,
    kind === 'null' ? String(sizeMb) : image,
  ]);
  const match = /^(\d+) (\S+)$/m.exec(out.trim());
  if (!match) throw new Error(`SPDK run-vhost.sh printed "${out.trim()}", expected "PID SOCKET"`);
  const pid = Number(match[1]);
  return { socket: match[2], pid, stop: () => stopProcess(pid) };
}

/** SIGTERM a process that is not our child (run-vhost.sh started it), then SIGKILL after 5 s. */
async function stopProcess(pid: number): Promise<void> {
  const alive = () => {
    try {
      // A zombie waiting for a reaper has exited for our purposes.
      return !/^\d+ \(.*\) Z/.test(readFileSync(`/proc/${pid}/stat`, 'utf8'));
    } catch {
      return false;
    }
  };
  if (!alive()) return;
  process.kill(pid, 'SIGTERM');
  const deadline = Date.now() + 5000;
  while (alive() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  if (alive()) process.kill(pid, 'SIGKILL');
}

// Thread-pool engines on the page cache: ours `--engine threads` against QSD `aio=threads`.
async function oursThreads(mode: string): Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }> {
  const args = ['--engine', 'threads', '--disk', image, '--cpus', BACKEND_CPU, '--poll', mode];
  return spawnBlkBackend(join(work, `ours-threads-${mode}.sock`), args, { taskset: BACKEND_CPU });
}

async function qsdThreads(): Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }> {
  const socket = join(work, 'qsd-threads.sock');
  const blockdev = `driver=file,node-name=file0,filename=${image},aio=threads,cache.direct=off`;
  const daemon = await startStorageDaemon({ image, socketPath: socket, blockdev, cpus: BACKEND_CPU });
  return { socket, pid: daemon.pid, stop: () => daemon.stop() };
}

/** Reads the whole image once so that the page-cache rows measure the engines, not the disk. */
function warmPageCache(): void {
  const fd = openSync(image, 'r');
  const chunk = Buffer.alloc(1 << 20);
  try {
    for (let at = 0; readSync(fd, chunk, 0, chunk.length, at) > 0; at += chunk.length);
  } finally {
    closeSync(fd);
  }
}

async function measure(
  backend: string,
  engine: string,
  mode: string,
  socket: string,
  pid: number,
  qd: number,
  packed = false,
): Promise<Point> {
  const r: BenchResult = await runBench(
    randRead4k(socket, { queueDepth: qd, seconds, warmup, cpu: LOAD_CPU, backendPid: pid, packed }),
  );
  if (r.failures.length > 0)
    throw new Error(`${backend}/${engine}/${mode} QD${qd} is not a valid measurement: ${r.failures.join('; ')}`);
  // QEMU falls back to split silently when RING_PACKED is not negotiated; the load generator refuses instead — check anyway.
  if (packed && (BigInt(r.features) & (1n << 34n)) === 0n)
    throw new Error(`${backend}/${engine}/${mode} QD${qd}: VIRTIO_F_RING_PACKED was not negotiated (${r.features})`);
  return {
    backend,
    engine,
    mode,
    ring: packed ? 'packed' : 'split',
    qd,
    iops: r.iops,
    lat_us: r.lat_us,
    backend_cpu_s: r.backend_cpu_s,
    loadgen_cpu_s: r.loadgen_cpu_s,
    seconds: r.seconds,
  };
}

async function fio(qd: number): Promise<Point> {
  const out = await run('taskset', [
    '-c',
    BACKEND_CPU,
    'fio',
    '--name=randread',
    `--filename=${image}`,
    '--ioengine=io_uring',
    '--direct=1',
    '--rw=randread',
    '--bs=4k',
    `--iodepth=${qd}`,
    '--time_based',
    `--runtime=${seconds}`,
    `--ramp_time=${Math.round(warmup * 1000)}ms`,
    '--output-format=json',
  ]);
  const job = firstFioJob(out);
  const pct = job.read.clat_ns.percentile;
  const us = (ns: number) => Math.round(ns / 10) / 100;
  return {
    backend: 'fio',
    engine: 'io_uring',
    mode: '-',
    ring: 'split',
    qd,
    iops: Math.round(job.read.iops),
    lat_us: {
      mean: us(job.read.clat_ns.mean),
      p50: us(pct['50.000000']),
      p90: us(pct['90.000000']),
      p99: us(pct['99.000000']),
      'p99.9': us(pct['99.900000']),
      max: us(job.read.clat_ns.max),
    },
    backend_cpu_s: ((job.usr_cpu + job.sys_cpu) / 100) * seconds,
    loadgen_cpu_s: null,
    seconds,
  };
}

const PAIR_NAME = 'ours null busy split-vs-packed';
/** The pair's mode label: its rows are medians of alternating rounds, not single runs like `ours null busy`. */
const PAIR_MODE = 'busy, paired';
const PAIR_ROUNDS = quick ? 3 : 5;

interface PairSummary {
  qd: number;
  split: { iops: number; backendNs: number; loadgenNs: number };
  packed: { iops: number; backendNs: number; loadgenNs: number };
  /** Median packed IOPS / median split IOPS. */
  iopsRatio: number;
  /** packed/split IOPS of each round (split then packed, back to back). */
  roundRatios: number[];
}

/**
 * Ours (null engine, busy) against SPDK's null bdev in alternating rounds: each round starts one
 * then the other and measures both QDs, so a change in the machine's state between rows (the
 * null figures here are bimodal from run to run) hits both sides of a round alike.
 */
const SPDK_PAIR_NAME = 'ours null busy vs spdk null';
/**
 * Rounds for the ours/SPDK pair: more than for split/packed, because one round in three landed
 * in the other machine state in a quick run here; which side starts alternates from round to round.
 */
const SPDK_PAIR_ROUNDS = quick ? 5 : 7;

interface VsSpdkSummary {
  qd: number;
  /** Median IOPS over the rounds. */
  ours: number;
  spdk: number;
  /** Median of the per-round ratios ours/SPDK. */
  ratio: number;
  roundRatios: number[];
}

/** The point with the median IOPS (the lower middle one for an even count). */
function medianPoint(list: Point[]): Point {
  return [...list].sort((a, b) => a.iops - b.iops)[Math.floor((list.length - 1) / 2)];
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor((sorted.length - 1) / 2)];
}

/** CPU ns per request, each round's own, median over rounds. */
function perRequestNs(list: Point[], cpu: (p: Point) => number | null): number {
  return median(list.map((p) => ((cpu(p) ?? NaN) * 1e9) / (p.iops * p.seconds)));
}

function summarizePair(qd: number, rounds: Record<'split' | 'packed', Point[]>): PairSummary {
  const side = (list: Point[]) => ({
    iops: medianPoint(list).iops,
    backendNs: perRequestNs(list, (p) => p.backend_cpu_s),
    loadgenNs: perRequestNs(list, (p) => p.loadgen_cpu_s),
  });
  const split = side(rounds.split);
  const packed = side(rounds.packed);
  return {
    qd,
    split,
    packed,
    iopsRatio: split.iops > 0 ? packed.iops / split.iops : NaN,
    roundRatios: rounds.split.map((p, i) => (p.iops > 0 ? rounds.packed[i].iops / p.iops : NaN)),
  };
}

async function main(): Promise<void> {
  await prepareImage();
  if (!only || only.test('spdk null') || only.test('spdk aio') || only.test(SPDK_PAIR_NAME)) await buildSpdk();
  const points: Point[] = [];
  const configs: {
    name: string;
    start: () => Promise<{ socket: string; pid: number; stop: () => Promise<unknown> }>;
    backend: string;
    engine: string;
    mode: string;
  }[] = [];
  for (const mode of ['busy', 'interrupt', 'adaptive']) {
    configs.push({ name: `ours null ${mode}`, start: () => ours('null', mode), backend: 'ours', engine: 'null', mode });
  }
  configs.push({
    name: `ours null ${INTERRUPT_NO_GRACE}`,
    start: () => ours('null', 'interrupt', ['--interrupt-grace-us', '0']),
    backend: 'ours',
    engine: 'null',
    mode: INTERRUPT_NO_GRACE,
  });

  for (const mode of ['busy', 'interrupt', 'adaptive']) {
    configs.push({
      name: `ours io_uring ${mode}`,
      start: () => ours('io_uring', mode),
      backend: 'ours',
      engine: 'io_uring',
      mode,
    });
  }
  configs.push({ name: 'qsd null-co', start: () => qsd('null-co'), backend: 'qsd', engine: 'null', mode: 'event loop' });
  // Like for like with our interrupt and adaptive modes: QSD in an iothread, polling off and on.
  configs.push({
    name: 'qsd null-co iothread no-poll',
    start: () => qsd('null-co', 'iothread-no-poll'),
    backend: 'qsd',
    engine: 'null',
    mode: QSD_MODE_FOR.interrupt,
  });
  configs.push({
    name: 'qsd null-co iothread poll',
    start: () => qsd('null-co', 'iothread-poll'),
    backend: 'qsd',
    engine: 'null',
    mode: QSD_MODE_FOR.adaptive,
  });
  configs.push({ name: 'qsd file', start: () => qsd('file'), backend: 'qsd', engine: 'io_uring', mode: 'event loop' });
  if (spdkDir) {
    configs.push({ name: 'spdk null', start: () => spdk('null'), backend: 'spdk', engine: 'null', mode: 'reactor' });
    configs.push({ name: 'spdk aio', start: () => spdk('aio'), backend: 'spdk', engine: 'aio', mode: 'reactor' });
  }
  for (const mode of ['interrupt', 'adaptive']) {
    configs.push({
      name: `ours threads ${mode}`,
      start: () => (warmPageCache(), oursThreads(mode)),
      backend: 'ours',
      engine: 'threads',
      mode,
    });
  }
  configs.push({
    name: 'qsd threads',
    start: () => (warmPageCache(), qsdThreads()),
    backend: 'qsd',
    engine: 'threads',
    mode: 'event loop',
  });
  // The file rows share one disk, and this VM's disk has slowed to a tenth for minutes at a
  // time: fio at QD32 right before the first file row and again at the end (its row) tells a
  // reader whether the file rows between them saw the same disk.
  let diskBefore: Point | null = null;
  for (const config of configs) {
    if (only && !only.test(config.name)) continue;
    if (diskBefore === null && (config.engine === 'io_uring' || config.engine === 'aio') && (!only || only.test('fio'))) {
      process.stderr.write('disk check: fio QD32 before the file rows...\n');
      diskBefore = await fio(32);
    }
    const server = await config.start();
    try {
      for (const qd of [1, 32]) {
        process.stderr.write(`${config.name} QD${qd}...\n`);
        points.push(await measure(config.backend, config.engine, config.mode, server.socket, server.pid, qd));
      }
    } finally {
      await server.stop();
    }
  }
  const pairs: PairSummary[] = [];
  if (!only || only.test(PAIR_NAME)) {
    const server = await ours('null', 'busy');
    try {
      for (const qd of [1, 32]) {
        const rounds: Record<'split' | 'packed', Point[]> = { split: [], packed: [] };
        for (let round = 0; round < PAIR_ROUNDS; round++) {
          for (const packed of [false, true]) {
            process.stderr.write(`${PAIR_NAME} QD${qd} ${packed ? 'packed' : 'split'} round ${round + 1}/${PAIR_ROUNDS}...\n`);
            const point = await measure('ours', 'null', PAIR_MODE, server.socket, server.pid, qd, packed);
            rounds[point.ring].push(point);
          }
        }
        const split = medianPoint(rounds.split);
        const packed = medianPoint(rounds.packed);
        points.push(split, packed);
        pairs.push(summarizePair(qd, rounds));
      }
    } finally {
      await server.stop();
    }
  }
  const vsSpdk: VsSpdkSummary[] = [];
  if (spdkDir && (!only || only.test(SPDK_PAIR_NAME))) {
    const rounds = new Map<number, { ours: number[]; spdk: number[] }>([
      [1, { ours: [], spdk: [] }],
      [32, { ours: [], spdk: [] }],
    ]);
    for (let round = 0; round < SPDK_PAIR_ROUNDS; round++) {
      for (const side of round % 2 === 0 ? (['ours', 'spdk'] as const) : (['spdk', 'ours'] as const)) {
        const server = side === 'ours' ? await ours('null', 'busy') : await spdk('null');
        try {
          for (const qd of [1, 32]) {
            process.stderr.write(`${SPDK_PAIR_NAME} QD${qd} ${side} round ${round + 1}/${SPDK_PAIR_ROUNDS}...\n`);
            const mode = side === 'ours' ? 'busy' : 'reactor';
            const point = await measure(side, 'null', mode, server.socket, server.pid, qd);
            rounds.get(qd)![side].push(point.iops);
          }
        } finally {
          await server.stop();
        }
      }
    }
    for (const [qd, r] of rounds) {
      const roundRatios = r.ours.map((iops, i) => (r.spdk[i] > 0 ? iops / r.spdk[i] : NaN));
      vsSpdk.push({ qd, ours: median(r.ours), spdk: median(r.spdk), ratio: median(roundRatios), roundRatios });
    }
  }
  if (!only || only.test('loadgen loopback')) {
    // The generator's own ceiling: its load thread completing its own requests, no back-end.
    // Its CPU is the generator's, so IOPS/CPU-s here is what one generator core can issue.
    for (const qd of [1, 32]) {
      process.stderr.write(`loadgen loopback QD${qd}...\n`);
      const r = await runLoopbackLoad({ queueDepth: qd, seconds, warmupSeconds: warmup, cpu: LOAD_CPU });
      if (r.errors > 0 || r.requests === 0)
        throw new Error(
          `loadgen loopback QD${qd} is not a valid measurement: ${r.requests} requests, ${r.errors} errors ${r.firstError}`,
        );
      const us = (ns: number) => Math.round(ns / 10) / 100;
      const l = r.latencyNs;
      points.push({
        backend: 'loadgen',
        engine: 'loopback',
        mode: 'in-thread',
        ring: 'split',
        qd,
        iops: Math.round(r.iops),
        lat_us: { mean: us(l.mean), p50: us(l.p50), p90: us(l.p90), p99: us(l.p99), 'p99.9': us(l.p999), max: us(l.max) },
        backend_cpu_s: r.cpuSeconds,
        loadgen_cpu_s: r.cpuSeconds,
        seconds: r.seconds,
      });
    }
  }
  if (!only || only.test('fio')) {
    for (const qd of [1, 32]) {
      process.stderr.write(`fio QD${qd}...\n`);
      points.push(await fio(qd));
    }
  }
  const find = (backend: string, engine: string, qd: number, mode?: string) =>
    points.find(
      (p) =>
        p.backend === backend &&
        p.engine === engine &&
        p.qd === qd &&
        p.ring === 'split' &&
        (mode === undefined || p.mode === mode),
    );
  // Our engines against each peer's counterpart: SPDK's file back-end is its aio bdev.
  const spdkEngine: Record<string, string> = { null: 'null', io_uring: 'aio' };
  const ratio = (ours: Point, peer: Point | undefined) =>
    peer && peer.iops > 0 ? Math.round((ours.iops / peer.iops) * 100) / 100 : null;
  const rows = points.map((p) => {
    const isOurs = p.backend === 'ours';
    return {
      ...p,
      // Requests per second of back-end CPU time: what a polling back-end's 100 % costs it.
      iops_per_cpu_s: p.backend_cpu_s ? Math.round((p.iops * p.seconds) / p.backend_cpu_s) : null,
      // Against QSD waiting the same way where it can (an iothread with polling off for our
      // interrupt mode, on for adaptive), else against its main loop.
      vs_qsd: isOurs
        ? ratio(p, find('qsd', p.engine, p.qd, QSD_MODE_FOR[p.mode]) ?? find('qsd', p.engine, p.qd, 'event loop'))
        : null,
      vs_spdk: isOurs ? ratio(p, find('spdk', spdkEngine[p.engine], p.qd)) : null,
      vs_fio: isOurs && p.engine === 'io_uring' ? ratio(p, find('fio', 'io_uring', p.qd)) : null,
      // Packed rows against the split row of the same back-end, engine, mode and QD.
      vs_split: p.ring === 'packed' ? ratio(p, find(p.backend, p.engine, p.qd, p.mode)) : null,
    };
  });
  const header =
    'back-end  engine    mode              ring    QD    IOPS   p50us   p99us  p99.9us  be-CPU%  lg-CPU%  IOPS/CPU-s  ours/QSD  ours/SPDK  ours/fio  packed/split';
  const lines = [header];
  const fixed = (value: number | null) => (value === null ? '-' : value.toFixed(2));
  for (const r of rows) {
    const cpu = r.backend_cpu_s === null ? '-' : `${Math.round((r.backend_cpu_s / r.seconds) * 100)}`;
    const loadCpu = r.loadgen_cpu_s === null ? '-' : `${Math.round((r.loadgen_cpu_s / r.seconds) * 100)}`;
    lines.push(
      [
        r.backend.padEnd(8),
        r.engine.padEnd(9),
        r.mode.padEnd(16),
        r.ring.padEnd(6),
        String(r.qd).padStart(3),
        String(r.iops).padStart(8),
        r.lat_us.p50.toFixed(1).padStart(7),
        r.lat_us.p99.toFixed(1).padStart(7),
        r.lat_us['p99.9'].toFixed(1).padStart(8),
        cpu.padStart(8),
        loadCpu.padStart(8),
        (r.iops_per_cpu_s === null ? '-' : String(r.iops_per_cpu_s)).padStart(11),
        fixed(r.vs_qsd).padStart(9),
        fixed(r.vs_spdk).padStart(10),
        fixed(r.vs_fio).padStart(9),
        fixed(r.vs_split).padStart(13),
      ].join(' '),
    );
  }
  const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs, Node ${process.version}`;
  const command = `npm run bench:blk${quick ? ' -- --quick' : ''}`;
  if (pairs.length > 0) {
    lines.push(
      '',
      `split versus packed (${PAIR_NAME}, ${PAIR_ROUNDS} alternating rounds per QD, medians; ns/req: CPU per request):`,
    );
    lines.push(
      '  QD  split IOPS  packed IOPS  packed/split  be ns/req split  packed  lg ns/req split  packed  rounds packed/split',
    );
    for (const pair of pairs) {
      lines.push(
        [
          String(pair.qd).padStart(4),
          String(pair.split.iops).padStart(11),
          String(pair.packed.iops).padStart(12),
          pair.iopsRatio.toFixed(2).padStart(13),
          pair.split.backendNs.toFixed(0).padStart(16),
          pair.packed.backendNs.toFixed(0).padStart(7),
          pair.split.loadgenNs.toFixed(0).padStart(16),
          pair.packed.loadgenNs.toFixed(0).padStart(7),
          `  ${pair.roundRatios.map((r) => r.toFixed(2)).join(' ')}`,
        ].join(' '),
      );
    }
  }
  if (vsSpdk.length > 0) {
    lines.push(
      '',
      `ours versus SPDK (${SPDK_PAIR_NAME}, ${SPDK_PAIR_ROUNDS} alternating rounds, who starts alternating too, medians):`,
    );
    lines.push('  QD   ours IOPS   SPDK IOPS  ours/SPDK  rounds ours/SPDK');
    for (const v of vsSpdk) {
      lines.push(
        [
          String(v.qd).padStart(4),
          String(Math.round(v.ours)).padStart(11),
          String(Math.round(v.spdk)).padStart(11),
          v.ratio.toFixed(2).padStart(10),
          `  ${v.roundRatios.map((r) => r.toFixed(2)).join(' ')}`,
        ].join(' '),
      );
    }
  }
  const diskAfter = find('fio', 'io_uring', 32);
  const diskCheck =
    diskBefore && diskAfter && diskBefore.iops > 0
      ? {
          fioQd32Before: Math.round(diskBefore.iops),
          fioQd32After: Math.round(diskAfter.iops),
          ratio: diskAfter.iops / diskBefore.iops,
        }
      : null;
  if (diskCheck) {
    const steady = diskCheck.ratio > 1 / 1.5 && diskCheck.ratio < 1.5;
    lines.push(
      '',
      `disk check: fio QD32 ${diskCheck.fioQd32Before} IOPS before the file rows, ${diskCheck.fioQd32After} after (${diskCheck.ratio.toFixed(2)}×): ` +
        (steady
          ? 'the file rows saw the same disk'
          : 'THE DISK CHANGED SPEED during the file rows: do not compare them in this run'),
    );
  }
  const table = lines.join('\n');
  const legend =
    'be-CPU% / lg-CPU%: back-end / load generator CPU time over the window; IOPS/CPU-s: IOPS per back-end CPU-second\n' +
    "(loadgen loopback: the generator completing its own requests in its thread — its ceiling; its CPU counts as the back-end's)";
  process.stdout.write(
    `\n${machine}; ${new Date().toISOString()}; ${command}\n4 KiB random read, 1 queue, back-end on CPU ${BACKEND_CPU}, load generator on CPU ${LOAD_CPU}, ${seconds} s per point\n${table}\n${legend}\n`,
  );
  mkdirSync(join(REPO, 'results'), { recursive: true });
  const record = {
    date: new Date().toISOString(),
    machine,
    command,
    seconds,
    warmup,
    imageBytes: sizeMb << 20,
    rows,
    splitVsPacked: pairs,
    oursVsSpdk: vsSpdk,
    diskCheck,
    table,
  };
  const stamp = record.date.replace(/[:.]/g, '-');
  writeFileSync(join(REPO, 'results', `blk-compare-${stamp}.json`), JSON.stringify(record, null, 2));
  writeFileSync(join(REPO, 'results', 'blk-compare-latest.json'), JSON.stringify(record, null, 2));
  rmSync(work, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:blk failed: ${error instanceof Error ? error.message : String(error)}\n`);
  rmSync(work, { recursive: true, force: true });
  process.exitCode = 1;
});
