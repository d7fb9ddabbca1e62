// Micro-benchmark of one QD1 request through the threads engine's ring (thread-ring.ts): a 4 KiB
// read of a page-cached file, submitted and reaped one at a time by this thread, the poller.
//
//   npm run bench:build && node dist-bench/micro-threads.js [--rounds N] [--cpus 1]
//
// Variants, each a different way for the request to come back:
//   inline           read run by submit() itself (preadv2 RWF_NOWAIT), reaped at once
//   lane, spin       handed to a pool thread; the poller spins on reap() (adaptive mode, awake)
//   lane, epoll      handed to a pool thread; the poller sleeps in epoll_wait on the completion
//                    eventfd as an interrupt-mode worker does (edge-triggered, never read)
//   blockIo alone    the syscall path the lane runs, called here directly (no hand-off)
// The differences are the costs of the hand-offs: spin − blockIo = waking the lane and seeing its
// completion; epoll − spin = waking the poller. Everything runs on --cpus (default CPU 1, as
// `npm run bench:blk` runs a back-end: its pool threads share that CPU). Wall time per request
// (median, p99) and this thread's CPU time per request. Shared machine: compare rows of one run.
import { closeSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { performance } from 'node:perf_hooks';
import { native } from '../dist/native.js';
import { ThreadPoolRing } from '../dist/devices/blk/thread-ring.js';
import { IOVEC_WORDS, Iovec, Opcode, SQE_WORDS, Sqe } from '../dist/devices/blk/records.js';

const FILE_BYTES = 16 << 20;
const BLOCK = 4096;
const EPOLLIN = 1;
const EPOLLET = 0x80000000;

const { values } = parseArgs({
  options: { rounds: { type: 'string', default: '20000' }, cpus: { type: 'string', default: '1' } },
});
const rounds = Number(values.rounds);
native.setAffinity(values.cpus.split(',').map(Number));

function threadCpuNs(): number {
  return Number(readFileSync('/proc/thread-self/schedstat', 'utf8').split(' ')[0]);
}

const path = join(tmpdir(), `micro-threads-${process.pid}.img`);
writeFileSync(path, Buffer.alloc(FILE_BYTES, 1));
readFileSync(path); // into the page cache
const fd = openSync(path, 'r');
const memory = new SharedArrayBuffer(BLOCK);
const sqes = new Uint32Array(SQE_WORDS);
const iovecs = new Uint32Array(IOVEC_WORDS);
const cqes = new Int32Array(2);
const results = new Int32Array(1);
sqes[Sqe.OPCODE] = Opcode.READV;
sqes[Sqe.FD] = fd;
sqes[Sqe.IOVEC_COUNT] = 1;
iovecs[Iovec.REGION] = 0;
iovecs[Iovec.LENGTH] = BLOCK;
const epollFd = native.epollCreate();
const events = new Uint32Array(2 * 4);
const latencies = new Float64Array(rounds);

function next(round: number): void {
  const offset = ((round * 2654435761) >>> 0) % (FILE_BYTES / BLOCK);
  sqes[Sqe.OFFSET_LOW] = offset * BLOCK;
  sqes[Sqe.USER_DATA] = round;
}

type Wait = 'reap' | 'spin' | 'epoll';

function run(ring: ThreadPoolRing | null, wait: Wait): void {
  for (let round = 0; round < rounds; round++) {
    next(round);
    const start = performance.now();
    if (ring === null) {
      native.blockIo([memory], sqes, iovecs, 1, results);
    } else {
      ring.submit(sqes, iovecs, 1);
      for (;;) {
        if (ring.reap(cqes, 1) === 1) break;
        if (wait === 'epoll') native.epollWait(epollFd, events, 4, -1);
      }
      if (cqes[0] !== round || cqes[1] !== BLOCK) throw new Error(`round ${round}: got ${cqes[0]} → ${cqes[1]}`);
    }
    latencies[round] = performance.now() - start;
  }
}

function report(name: string, cpuNs: number): void {
  const sorted = Array.from(latencies).sort((a, b) => a - b);
  const us = (q: number) => (sorted[Math.floor(q * (sorted.length - 1))] * 1000).toFixed(1).padStart(7);
  console.log(`${name.padEnd(16)} ${us(0.5)} ${us(0.99)} ${(cpuNs / rounds / 1000).toFixed(2).padStart(9)}`);
}

async function variant(name: string, inline: boolean, wait: Wait, direct = false): Promise<void> {
  const ring = direct ? null : await ThreadPoolRing.open({ threads: 1, entries: 64, inlineReadBytes: inline ? 65536 : 0 });
  if (ring !== null) {
    ring.setRegions([memory]);
    native.epollCtl(epollFd, 1, ring.eventfd(), EPOLLIN + EPOLLET, 0);
  }
  try {
    run(ring, wait); // warm-up
    const cpu = threadCpuNs();
    run(ring, wait);
    report(name, threadCpuNs() - cpu);
  } finally {
    if (ring !== null) {
      native.epollCtl(epollFd, 2, ring.eventfd(), 0, 0);
      ring.close();
    }
  }
}

try {
  console.log(`QD1 4 KiB page-cache read through the threads ring, ${rounds} rounds, CPUs ${values.cpus}`);
  console.log('variant          p50 µs  p99 µs  poller CPU µs/req');
  await variant('inline', true, 'reap');
  await variant('lane, spin', false, 'spin');
  await variant('lane, epoll', false, 'epoll');
  await variant('blockIo alone', false, 'reap', true);
} finally {
  closeSync(fd);
  native.close(epollFd);
  rmSync(path, { force: true });
}
