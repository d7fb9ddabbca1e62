// Micro-benchmark of one interrupt-mode wake-up through the worker's own path, and of its parts.
//
//   npm run bench:build && node dist-bench/micro-wake.js [--rounds N] [--kick-delay-us US]
//
// (1) Round trips between two pinned threads: the kicker (main thread, CPU 0) writes the kick
// eventfd and spins until the sleeper (a worker thread, CPU 1) says it ran; the sleeper sleeps as
// DataPlaneWorker does — re-arm and re-check the ring, epoll_wait, read the kick eventfd, disarm —
// in several variants, each dropping or merging a part, so the differences say what it costs.
// The kicker waits until the sleeper is in the kernel before kicking, so every round is a real
// wake-up — except in the last two variants, where it kicks --kick-delay-us (default 1) after
// the sleeper has armed (a driver that refills at once, as a closed loop does): with and without
// the worker's look once more without blocking (epollWait timeout 0 and a re-check) before it
// sleeps. A kick that lands during the look, or after it but before the blocking epollWait,
// costs no wake-up. (2) The parts alone, in a tight loop on one awake thread, in thread CPU time.
// Shared machine: compare rows of one run, not runs.
import { readFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { Worker, isMainThread, workerData } from 'node:worker_threads';
import { native } from '../dist/native.js';
import { GuestMemory } from '../dist/dataplane/memory.js';
import { SplitVirtqueue } from '../dist/dataplane/virtqueue.js';
import { splitRingLayout } from '../dist/frontend/vring-driver.js';

const KICKER_CPU = 0;
const SLEEPER_CPU = 1;
const MAX_EVENTS = 64;
const EPOLLIN = 1;
const EPOLLET = 0x80000000;
/** Control words shared by both threads. */
const enum Ctl {
  /** Round the sleeper last finished. */
  DONE,
  /** 1 once the sleeper is about to enter epoll_wait. */
  ARMED,
  /** Variant to run (index into VARIANTS), -1 to quit. */
  VARIANT,
  /** Rounds the look once more served without sleeping (variant LOOK). */
  LOOK_HITS,
  SIZE,
}

const VARIANTS = [
  'before: level-triggered; re-arm+re-check, clock, epollWait, eventfdRead, disarm',
  'now: kick fd edge-triggered, never read; re-arm+re-check, clock, epollWait, disarm',
  'edge-triggered, no clock (what the sleep-time stat costs)',
  'edge-triggered epollWait alone (no re-arm, no clock)',
  'kick soon: re-arm+re-check, epollWait (no look once more)',
  'kick soon: re-arm+re-check, look once more (epollWait 0, re-check), epollWait',
];
/** Variants from this one on are kicked kickDelayUs after the sleeper has armed. */
const KICK_AT_ONCE = 4;
const LOOK = 5;

function threadCpuNs(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

function ring() {
  const size = 256;
  const layout = splitRingLayout(size);
  const buffer = new SharedArrayBuffer(65536);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: 65536, userspaceAddr: 0, buffer, bufferOffset: 0 }]);
  return new SplitVirtqueue({
    memory,
    size,
    descAddr: layout.descOffset,
    availAddr: layout.availOffset,
    usedAddr: layout.usedOffset,
    addressSpace: 'userspace',
    lastAvailIdx: 0,
    eventIdx: true,
    indirectDesc: false,
    index: 0,
  });
}

interface SleeperData {
  ctl: SharedArrayBuffer;
  kickFd: number;
}

function sleeper({ ctl: ctlBuffer, kickFd }: SleeperData): void {
  native.setAffinity([SLEEPER_CPU]);
  const ctl = new Int32Array(ctlBuffer);
  const vq = ring();
  const epollFd = native.epollCreate();
  native.epollCtl(epollFd, 1, kickFd, 1, 0);
  // The same fd in a second set, edge-triggered: each write is an edge, so its counter need not
  // be read (it only grows; 2^64 kicks away from overflow).
  const edgeFd = native.epollCreate();
  native.epollCtl(edgeFd, 1, kickFd, EPOLLIN + EPOLLET, 0);
  const events = new Uint32Array(2 * MAX_EVENTS);
  let round = 0;
  let sleptMs = 0;
  for (;;) {
    const variant = Atomics.load(ctl, Ctl.VARIANT);
    if (variant < 0) break;
    if (variant === 0) {
      if (vq.enableNotificationAndRecheck()) continue;
      const before = performance.now();
      Atomics.store(ctl, Ctl.ARMED, 1);
      const count = native.epollWait(epollFd, events, MAX_EVENTS, 1000);
      sleptMs += performance.now() - before;
      for (let e = 0; e < count; e++) if (events[2 * e + 1] === 0) native.eventfdRead(kickFd);
      vq.disableNotification();
    } else if (variant === 1) {
      if (vq.enableNotificationAndRecheck()) continue;
      const before = performance.now();
      Atomics.store(ctl, Ctl.ARMED, 1);
      native.epollWait(edgeFd, events, MAX_EVENTS, 1000);
      sleptMs += performance.now() - before;
      vq.disableNotification();
    } else if (variant === 2) {
      if (vq.enableNotificationAndRecheck()) continue;
      Atomics.store(ctl, Ctl.ARMED, 1);
      native.epollWait(edgeFd, events, MAX_EVENTS, 1000);
      vq.disableNotification();
    } else if (variant === 3) {
      Atomics.store(ctl, Ctl.ARMED, 1);
      native.epollWait(edgeFd, events, MAX_EVENTS, 1000);
    } else {
      if (vq.enableNotificationAndRecheck()) continue;
      Atomics.store(ctl, Ctl.ARMED, 1);
      // The kicker does not publish chains, so the re-check after the look finds none: only
      // the kick's edge can end the look.
      if (variant === LOOK && (native.epollWait(edgeFd, events, MAX_EVENTS, 0) > 0 || vq.enableNotificationAndRecheck())) {
        Atomics.add(ctl, Ctl.LOOK_HITS, 1);
      } else {
        native.epollWait(edgeFd, events, MAX_EVENTS, 1000);
      }
      vq.disableNotification();
    }
    Atomics.store(ctl, Ctl.DONE, ++round);
  }
  native.close(epollFd);
  native.close(edgeFd);
  if (sleptMs < 0) console.log(sleptMs); // keeps the clock reads live
}

function percentile(sorted: Float64Array, p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))];
}

/** Busy-waits `us` microseconds: gives the sleeper time to enter epoll_wait after saying it will. */
function spin(us: number): void {
  const until = performance.now() + us / 1000;
  while (performance.now() < until) {
    /* wait */
  }
}

async function roundTrips(rounds: number, kickDelayUs: number): Promise<void> {
  native.setAffinity([KICKER_CPU]);
  const ctl = new Int32Array(new SharedArrayBuffer(4 * Ctl.SIZE));
  const kickFd = native.eventfdCreate(0);
  const data: SleeperData = { ctl: ctl.buffer, kickFd };
  const thread = new Worker(new URL(import.meta.url), { workerData: data });
  const exited = new Promise((resolve) => thread.once('exit', resolve));
  console.log(`(1) kick → sleeper ran, wall-clock round trip, ${rounds} wake-ups per variant (µs)`);
  console.log('variant'.padEnd(84) + 'p50'.padStart(8) + 'p90'.padStart(8) + 'mean'.padStart(8));
  let done = 0;
  const times = new Float64Array(rounds);
  for (let v = 0; v < VARIANTS.length; v++) {
    Atomics.store(ctl, Ctl.VARIANT, v);
    for (let r = -50; r < rounds; r++) {
      while (Atomics.load(ctl, Ctl.ARMED) === 0) {
        /* wait for the sleeper to head into epoll_wait */
      }
      spin(v < KICK_AT_ONCE ? 30 : kickDelayUs);
      Atomics.store(ctl, Ctl.ARMED, 0);
      const start = performance.now();
      native.eventfdWrite(kickFd, 1);
      done++;
      while (Atomics.load(ctl, Ctl.DONE) !== done) {
        /* wait for the sleeper to run */
      }
      if (r >= 0) times[r] = (performance.now() - start) * 1000;
    }
    times.sort();
    let sum = 0;
    for (let i = 0; i < rounds; i++) sum += times[i];
    const cells = [percentile(times, 0.5), percentile(times, 0.9), sum / rounds].map((x) => x.toFixed(2).padStart(8));
    const hits = Atomics.load(ctl, Ctl.LOOK_HITS);
    const note = v === LOOK ? `  (the look itself found the kick in ${hits} of ${rounds + 50} rounds)` : '';
    console.log(VARIANTS[v].padEnd(84) + cells.join('') + note);
  }
  // Asleep or about to check the variant: either way it sees -1 and leaves.
  Atomics.store(ctl, Ctl.VARIANT, -1);
  native.eventfdWrite(kickFd, 1);
  await exited;
  native.close(kickFd);
}

/** ns of thread CPU per call of `body` (which runs `per` operations per call). */
function cost(iterations: number, body: () => void): number {
  for (let i = 0; i < 10_000; i++) body();
  const start = threadCpuNs();
  for (let i = 0; i < iterations; i++) body();
  return (threadCpuNs() - start) / iterations;
}

function parts(iterations: number): void {
  const vq = ring();
  const fd = native.eventfdCreate(0);
  const epollFd = native.epollCreate();
  native.epollCtl(epollFd, 1, fd, 1, 0);
  const events = new Uint32Array(2 * MAX_EVENTS);
  const mailbox = new Int32Array(new SharedArrayBuffer(8));
  let sink = 0;
  const rows: [string, number][] = [];
  const write = cost(iterations, () => native.eventfdWrite(fd, 1));
  native.eventfdRead(fd);
  rows.push(['performance.now() (×2 per sleep, for the sleep-time stat)', cost(iterations, () => (sink += performance.now()))]);
  rows.push(['Atomics.load (the mailbox check before sleeping)', cost(iterations, () => (sink += Atomics.load(mailbox, 0)))]);
  rows.push([
    're-arm + re-check (enableNotificationAndRecheck)',
    cost(iterations, () => (sink += +vq.enableNotificationAndRecheck())),
  ]);
  rows.push(['disarm (disableNotification, adaptive)', cost(iterations, () => vq.disableNotification())]);
  rows.push([
    'eventfdRead, counter zero (N-API crossing + read → EAGAIN)',
    cost(iterations, () => (sink += native.eventfdRead(fd))),
  ]);
  rows.push(['eventfdWrite (the kicker side; subtracted below)', write]);
  const writeRead = cost(iterations, () => {
    native.eventfdWrite(fd, 1);
    sink += native.eventfdRead(fd);
  });
  rows.push(['eventfdRead, counter set', writeRead - write]);
  rows.push([
    'epollWait, timeout 0, nothing ready',
    cost(iterations, () => (sink += native.epollWait(epollFd, events, MAX_EVENTS, 0))),
  ]);
  const waitRead = cost(iterations, () => {
    native.eventfdWrite(fd, 1);
    sink += native.epollWait(epollFd, events, MAX_EVENTS, 0);
    sink += native.eventfdRead(fd);
  });
  rows.push(['before: epollWait (1 ready) + eventfdRead: 2 crossings', waitRead - write]);
  const edgeFd = native.epollCreate();
  native.epollCtl(edgeFd, 1, fd, EPOLLIN + EPOLLET, 0);
  const waitEdge = cost(iterations, () => {
    native.eventfdWrite(fd, 1);
    sink += native.epollWait(edgeFd, events, MAX_EVENTS, 0);
  });
  native.close(edgeFd);
  rows.push(['after: epollWait (1 ready, edge-triggered, no read): 1 syscall', waitEdge - write]);
  console.log(`\n(2) parts alone, thread CPU time per call (ns), ${iterations} calls each`);
  for (const [name, ns] of rows) console.log(name.padEnd(70) + ns.toFixed(0).padStart(8));
  native.close(epollFd);
  native.close(fd);
  if (sink === -1) console.log(sink);
}

if (isMainThread) {
  const { values } = parseArgs({
    options: { rounds: { type: 'string', default: '5000' }, 'kick-delay-us': { type: 'string', default: '1' } },
  });
  const rounds = Number(values.rounds);
  await roundTrips(rounds, Number(values['kick-delay-us']));
  parts(rounds * 40);
} else {
  sleeper(workerData as SleeperData);
}
