// The soak: front-end churn against a blk daemon process for minutes, sampling its resident set
// and open fds from /proc. Each round is one front-end: connect and negotiate (memory table,
// rings), do I/O (a write read back), leave requests in flight, and disconnect, most often in
// the middle of that I/O (as a killed VM does); some rounds are a front-end that leaves halfway
// through a message or right after connecting. A daemon that leaks shows it as a curve that keeps
// rising; the verdict compares the last minute with the minute after the first one (medians), and
// fails above +10 %.
import { performance } from 'node:perf_hooks';
import { encodeRequest } from '../control/codec/index.js';
import { native } from '../native.js';
import { BlkFrontend } from '../fuzz/blk-frontend.js';
import { DaemonProcess } from '../fuzz/socket-fuzz.js';

export interface SoakSample {
  seconds: number;
  rssKb: number;
  /** RssAnon: the heap and everything else private. */
  anonKb: number;
  /** RssShmem: touched pages of guest memory still mapped (unmapped when the GC frees them). */
  shmemKb: number;
  fds: number;
  rounds: number;
}

export interface SoakOptions {
  durationMs: number;
  sampleEveryMs: number;
  /**
   * Length of the two windows compared (default: one minute, or a quarter of a shorter run): the
   * median of the samples in the window after the first one (the value after the warm-up) against
   * the median of the last window. Medians, because RSS is a sawtooth: guest memory mappings of
   * departed front-ends are unmapped only when the daemon's GC frees them.
   */
  windowMs?: number;
  /** Allowed growth of the fd count from the reference to the end (default 0.10). */
  tolerance?: number;
  /**
   * Allowed RSS growth (default: `tolerance`). A run shorter than the daemon's warm-up (its heap
   * grows for about the first 40 s of churn) can only hold RSS to a looser bound.
   */
  rssTolerance?: number;
  onSample?: (sample: SoakSample) => void;
}

export interface SoakResult {
  samples: SoakSample[];
  rounds: number;
  /** Rounds that disconnected with requests in flight. */
  killedMidIo: number;
  /**
   * Milliseconds from connect() to a negotiated, running ring (memory table, ring set up) for each
   * front-end that came right after one that left with I/O in flight: how long the next front-end
   * waits while the daemon drains or abandons the last one's requests and resets.
   */
  servedAfterKillMs: { count: number; p50: number; p99: number; max: number };
  /** Medians of the window after the warm-up and of the last window. */
  baseline: { rssKb: number; fds: number; from: number; to: number };
  end: { rssKb: number; fds: number; from: number; to: number };
  /** Why the soak failed, empty when it passed. */
  failures: string[];
}

/**
 * V8 starts its young generation small and doubles it under allocation pressure up to two 16 MiB
 * semi-spaces: measured under this churn, a one-time step of about +32 MB RSS some 1-4 minutes in,
 * flat afterwards, with the heap after a full GC flat throughout. Started at its full size, it
 * cannot pass for a leak after the first minute; nothing else about the daemon changes.
 */
const STEADY_YOUNG_GENERATION = ['--min-semi-space-size=16'];

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const daemon = new DaemonProcess([], STEADY_YOUNG_GENERATION);
  const samples: SoakSample[] = [];
  const failures: string[] = [];
  let rounds = 0;
  let killedMidIo = 0;
  let lastKilled = false;
  const servedAfterKill: number[] = [];
  const started = Date.now();
  try {
    await daemon.ready();
    let nextSample = started;
    while (Date.now() - started < options.durationMs) {
      if (Date.now() >= nextSample) {
        const sample = { seconds: Math.round((Date.now() - started) / 1000), ...daemon.sample(), rounds };
        samples.push(sample);
        options.onSample?.(sample);
        nextSample += options.sampleEveryMs;
      }
      const problem = await round(daemon.socketPath, rounds, lastKilled ? servedAfterKill : undefined);
      lastKilled = problem === 'killed mid-I/O';
      if (problem === 'killed mid-I/O') killedMidIo++;
      else if (problem) failures.push(`round ${rounds}: ${problem}`);
      rounds++;
      if (!daemon.alive) {
        failures.push(`the daemon died (${JSON.stringify(daemon.exit)}): ${daemon.errors.slice(-3).join('\n')}`);
        break;
      }
      if (failures.length > 10) break;
    }
    for (const line of daemon.errors) failures.push(`the daemon logged: ${line}`);
  } finally {
    await daemon.stop();
  }
  const windowMs = options.windowMs ?? Math.min(60_000, options.durationMs / 4);
  const durationS = options.durationMs / 1000;
  const windowS = windowMs / 1000;
  const baseline = windowMedian(samples, windowS, 2 * windowS);
  const end = windowMedian(samples, durationS - windowS, durationS);
  const tolerance = options.tolerance ?? 0.1;
  if (baseline.count === 0 || end.count === 0) {
    failures.push(`too few samples (${samples.length}) for two ${windowS} s windows`);
  } else {
    if (end.rssKb > baseline.rssKb * (1 + (options.rssTolerance ?? tolerance))) {
      failures.push(
        `RSS grew from ${baseline.rssKb} kB (${baseline.from}-${baseline.to} s) to ${end.rssKb} kB (${end.from}-${end.to} s)`,
      );
    }
    if (end.fds > baseline.fds * (1 + tolerance)) {
      failures.push(
        `open fds grew from ${baseline.fds} (${baseline.from}-${baseline.to} s) to ${end.fds} (${end.from}-${end.to} s)`,
      );
    }
  }
  const served = [...servedAfterKill].sort((a, b) => a - b);
  const at = (q: number) => served[Math.min(served.length - 1, Math.floor(q * served.length))] ?? 0;
  const servedAfterKillMs = { count: served.length, p50: at(0.5), p99: at(0.99), max: served[served.length - 1] ?? 0 };
  return { samples, rounds, killedMidIo, servedAfterKillMs, baseline, end, failures };
}

/** Medians of RSS and fds over the samples taken in [from, to) seconds. */
function windowMedian(samples: readonly SoakSample[], from: number, to: number) {
  const inside = samples.filter((s) => s.seconds >= from && s.seconds < to);
  return {
    rssKb: median(inside.map((s) => s.rssKb)),
    fds: median(inside.map((s) => s.fds)),
    from: Math.round(from),
    to: Math.round(to),
    count: inside.length,
  };
}

/** One front-end's life; returns a problem, 'killed mid-I/O', or undefined. */
async function round(socketPath: string, n: number, servedMs?: number[]): Promise<string | undefined> {
  const kind = n % 10;
  if (kind === 8) return halfMessage(socketPath);
  if (kind === 9) {
    // Connects and leaves at once.
    native.close(native.socketConnect(socketPath));
    return undefined;
  }
  let frontend: BlkFrontend | undefined;
  try {
    const connecting = performance.now();
    frontend = await BlkFrontend.connect(socketPath);
    servedMs?.push(performance.now() - connecting);
    await frontend.roundTrip((n * 8) % 4096);
    if (kind < 6) {
      // Requests in flight, then gone: the daemon drains or abandons them and resets.
      frontend.postWrites(16, 8, (n * 128) % 16384);
      return 'killed mid-I/O';
    }
    // An orderly stop: GET_VRING_BASE drains the ring first.
    await frontend.device.stopQueue(0);
    return undefined;
  } catch (error) {
    return `a front-end was not served: ${(error as Error).message}`;
  } finally {
    frontend?.close();
  }
}

/** Half a GET_FEATURES header, then a hang-up. */
function halfMessage(socketPath: string): undefined {
  const fd = native.socketConnect(socketPath);
  try {
    native.sendMsg(fd, encodeRequest({ type: 'GET_FEATURES' }, false).bytes.subarray(0, 6), []);
  } finally {
    native.close(fd);
  }
  return undefined;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}
