// The soak: front-end churn against a blk daemon process for minutes, sampling its resident set
// and open fds from /proc. Each round is one front-end: connect and negotiate (memory table,
// rings), do I/O (a write read back), leave requests in flight, and disconnect, most often in
// the middle of that I/O (as a killed VM does); some rounds are a front-end that leaves halfway
// through a message or right after connecting. A daemon that leaks shows it as a curve that keeps
// rising; the verdict compares the end of the run with the value after the warm-up (the first
// minute), and fails above +10 %.
import { encodeRequest } from '../control/codec/index.js';
import { native } from '../native.js';
import { BlkFrontend } from '../fuzz/blk-frontend.js';
import { DaemonProcess } from '../fuzz/socket-fuzz.js';

export interface SoakSample {
  seconds: number;
  rssKb: number;
  fds: number;
  rounds: number;
}

export interface SoakOptions {
  durationMs: number;
  sampleEveryMs: number;
  /** The reference point: the sample at this time (default: one minute, or a quarter of a short run). */
  warmupMs?: number;
  /** Allowed growth from the reference to the end (default 0.10). */
  tolerance?: number;
  onSample?: (sample: SoakSample) => void;
}

export interface SoakResult {
  samples: SoakSample[];
  rounds: number;
  /** Rounds that disconnected with requests in flight. */
  killedMidIo: number;
  baseline: SoakSample;
  end: { rssKb: number; fds: number };
  /** Why the soak failed, empty when it passed. */
  failures: string[];
}

const SAMPLES_AT_END = 3;

export async function runSoak(options: SoakOptions): Promise<SoakResult> {
  const daemon = new DaemonProcess();
  const samples: SoakSample[] = [];
  const failures: string[] = [];
  let rounds = 0;
  let killedMidIo = 0;
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
      const problem = await round(daemon.socketPath, rounds);
      if (problem === 'killed mid-I/O') killedMidIo++;
      else if (problem) failures.push(`round ${rounds}: ${problem}`);
      rounds++;
      if (!daemon.alive) {
        failures.push(`the daemon died (${JSON.stringify(daemon.exit)}): ${daemon.errors.slice(-3).join('\n')}`);
        break;
      }
      if (failures.length > 10) break;
    }
    // The last front-end's release may still be under way: let the daemon settle before the end samples.
    await new Promise((resolve) => setTimeout(resolve, 200));
    for (let i = 0; i < SAMPLES_AT_END && daemon.alive; i++) {
      const sample = { seconds: Math.round((Date.now() - started) / 1000), ...daemon.sample(), rounds };
      samples.push(sample);
      options.onSample?.(sample);
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
    for (const line of daemon.errors) failures.push(`the daemon logged: ${line}`);
  } finally {
    await daemon.stop();
  }
  const warmupMs = options.warmupMs ?? Math.min(60_000, options.durationMs / 4);
  const baseline = samples.find((s) => s.seconds * 1000 >= warmupMs) ?? samples[0];
  const last = samples.slice(-SAMPLES_AT_END);
  const end = {
    rssKb: median(last.map((s) => s.rssKb)),
    fds: median(last.map((s) => s.fds)),
  };
  const tolerance = options.tolerance ?? 0.1;
  if (baseline && end.rssKb > baseline.rssKb * (1 + tolerance)) {
    failures.push(`RSS grew from ${baseline.rssKb} kB (at ${baseline.seconds} s) to ${end.rssKb} kB`);
  }
  if (baseline && end.fds > baseline.fds * (1 + tolerance)) {
    failures.push(`open fds grew from ${baseline.fds} (at ${baseline.seconds} s) to ${end.fds}`);
  }
  return { samples, rounds, killedMidIo, baseline, end, failures };
}

/** One front-end's life; returns a problem, 'killed mid-I/O', or undefined. */
async function round(socketPath: string, n: number): Promise<string | undefined> {
  const kind = n % 10;
  if (kind === 8) return halfMessage(socketPath);
  if (kind === 9) {
    // Connects and leaves at once.
    native.close(native.socketConnect(socketPath));
    return undefined;
  }
  let frontend: BlkFrontend | undefined;
  try {
    frontend = await BlkFrontend.connect(socketPath);
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
