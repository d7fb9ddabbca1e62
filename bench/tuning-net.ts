// npm run bench:tuning:net [-- --quick] — the poll-mode study for the network side of tuning.md.
// Our vhost-user-net `loopback` back-end (every frame a port transmits comes back on its RX) in
// busy, interrupt and adaptive mode (two idle budgets), driven by `vhost-user-bench net --mode
// loopback` with 64-byte frames: offered loads of ~10 K, 100 K and 1 M frames/s (open loop,
// latency timed from when each frame was due) and saturation (closed loop); achieved rate,
// round-trip latency (post on TX → reap on RX), back-end CPU and frames per back-end CPU-second.
// Then back-end CPU with a connected, running port (every RX buffer offered) and nothing sent.
// Back-end on CPU 1, load generator on CPU 0. Writes results/tuning-net-*.json (bench:plot
// renders them).
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runNetBench, type NetBenchArgs, type NetBenchResult } from '../dist/loadgen/net-run.js';
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
  writeRecord,
  type PollMode,
} from './tuning-common.js';

const { quick, seconds, warmup } = studyOptions();
const NET_BIN = join(REPO, 'bin', 'vhost-user-net');
const FRAME_BYTES = 64;
const QUEUE_SIZE = 256;
/** Open-loop cap on TX frames in flight, and the saturation depth: half the RX ring, so every frame finds an RX buffer. */
const IN_FLIGHT = QUEUE_SIZE / 2;
const work = join(tmpdir(), `vut-tuning-net-${process.pid}`);
mkdirSync(work, { recursive: true });

const loads = [
  { name: '10K', rate: 10_000 },
  { name: '100K', rate: 100_000 },
  { name: '1M', rate: 1_000_000 },
  { name: 'saturation', rate: 0 },
];

interface Server {
  pid: number;
  socket: string;
  stop: () => Promise<void>;
}

/** `vhost-user-net --backend loopback` in one poll mode, pinned to the back-end CPU. */
async function startOurs(mode: PollMode): Promise<Server> {
  const socket = join(work, `net-${mode.name}.sock`);
  const argv = [NET_BIN, '--socket', socket, '--backend', 'loopback', '--queue-size', String(QUEUE_SIZE), ...pollArgs(mode)];
  const child = spawn('taskset', ['-c', String(BACKEND_CPU), process.execPath, ...argv], { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (log += text));
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const deadline = Date.now() + 15_000;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`vhost-user-net did not listen on ${socket}:\n${log}`);
    }
    await sleep(50);
  }
  return {
    pid: child.pid!,
    socket,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}

function netArgs(server: Server, overrides: Partial<NetBenchArgs>): NetBenchArgs {
  return {
    socketPath: server.socket,
    mode: 'loopback',
    frameBytes: FRAME_BYTES,
    queueDepth: IN_FLIGHT,
    rate: 0,
    queueSize: QUEUE_SIZE,
    seconds,
    warmup,
    // Like a guest driver: ask for used-buffer notifications and sleep on them when idle.
    wait: 'event',
    cpu: LOAD_CPU,
    backendPid: server.pid,
    memoryBytes: 64 << 20,
    json: true,
    verbose: false,
    ...overrides,
  };
}

/**
 * Back-end CPU with a front-end connected, both rings running and every RX buffer offered, and
 * no frame sent: an rx-mode run against loopback (nothing arrives, which is the point).
 */
async function idleCpu(server: Server): Promise<number> {
  const r = await runNetBench(netArgs(server, { mode: 'rx' }));
  if (r.rx_frames !== 0 || r.errors !== 0) throw new Error(`idle window moved ${r.rx_frames} frames, ${r.errors} errors`);
  return cpuPercent(r.backend_cpu_s, r.seconds);
}

function point(mode: string, load: (typeof loads)[number], r: NetBenchResult) {
  const cpu = cpuPercent(r.backend_cpu_s, r.seconds);
  return {
    backend: 'ours',
    mode,
    load: load.name,
    offered_fps: load.rate || null,
    fps: r.rx_pps,
    lost: r.lost,
    lat_us: r.lat_us!,
    backend_cpu_pct: cpu,
    fps_per_cpu_s: perCpuSecond(r.rx_pps, cpu),
    loadgen_cpu_pct: cpuPercent(r.loadgen_cpu_s, r.seconds),
  };
}

async function main(): Promise<void> {
  const began = Date.now();
  const points = [];
  const idle = [];
  for (const mode of POLL_MODES) {
    const server = await startOurs(mode);
    try {
      process.stderr.write(`${mode.name} idle...\n`);
      idle.push({ backend: 'ours', mode: mode.name, backend_cpu_pct: await idleCpu(server) });
      for (const load of loads) {
        process.stderr.write(`${mode.name} ${load.name}...\n`);
        const r = await runNetBench(netArgs(server, { rate: load.rate }));
        if (r.failures.length > 0 || !r.lat_us)
          throw new Error(`${mode.name} ${load.name} is not a valid measurement: ${r.failures.join('; ') || 'no latency'}`);
        points.push(point(mode.name, load, r));
      }
    } finally {
      await server.stop();
    }
  }
  writeRecord('tuning-net', {
    date: new Date().toISOString(),
    machine: machine(),
    command: `npm run bench:tuning:net${quick ? ' -- --quick' : ''}`,
    setup:
      `vhost-user-net --backend loopback, ${FRAME_BYTES}-byte frames, 1 queue pair of ${QUEUE_SIZE} entries, split rings; ` +
      `back-end on CPU ${BACKEND_CPU}, vhost-user-bench net --mode loopback on CPU ${LOAD_CPU} (RX ring kept full; open-loop points post TX frames at the offered rate, at most ${IN_FLIGHT} in flight, latency timed from when each frame was due; saturation: ${IN_FLIGHT} frames in flight, closed loop; the driver asks for used-buffer notifications and sleeps on the call eventfds when the next frame is > 2 ms away); ` +
      `rate: frames back on RX per second; latency: post on TX to reap on RX; ${seconds} s per point after ${warmup} s warm-up`,
    run_seconds: Math.round((Date.now() - began) / 1000),
    points,
    idle,
  });
  rmSync(work, { recursive: true, force: true });
}

main().catch((error: unknown) => {
  process.stderr.write(`bench:tuning:net failed: ${error instanceof Error ? error.message : String(error)}\n`);
  rmSync(work, { recursive: true, force: true });
  process.exitCode = 1;
});
