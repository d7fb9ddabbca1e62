// What the two poll-mode studies share (bench:tuning for blk, bench:tuning:net for net): the
// command line, our four poll modes, the pinning, idle-CPU windows, the derived columns and the
// JSON records that bench:plot turns into tuning.md.
import { mkdirSync, writeFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';

export const REPO = new URL('..', import.meta.url).pathname;
/** Every back-end (ours and its peers) runs on this CPU; the load generator on LOAD_CPU. */
export const BACKEND_CPU = 1;
export const LOAD_CPU = 0;

export interface StudyOptions {
  quick: boolean;
  /** Measured seconds per point, after `warmup`. */
  seconds: number;
  warmup: number;
}

export function studyOptions(): StudyOptions {
  const { values } = parseArgs({ options: { quick: { type: 'boolean', default: false } } });
  return { quick: values.quick, seconds: values.quick ? 2 : 5, warmup: 1 };
}

/** Our poll modes as both CLIs (vhost-user-blk, vhost-user-net) take them. */
export interface PollMode {
  name: string;
  poll: 'busy' | 'interrupt' | 'adaptive';
  budgetUs: number;
  /** Interrupt mode: --interrupt-grace-us (undefined: the CLI's default, 2 µs). */
  graceUs?: number;
}

export const POLL_MODES: readonly PollMode[] = [
  { name: 'busy', poll: 'busy', budgetUs: 0 },
  { name: 'interrupt', poll: 'interrupt', budgetUs: 0 },
  // Sleeps as soon as a re-check finds nothing, like QSD's iothread with poll-max-ns=0.
  { name: 'interrupt-grace0', poll: 'interrupt', budgetUs: 0, graceUs: 0 },
  { name: 'adaptive-50us', poll: 'adaptive', budgetUs: 50 },
  { name: 'adaptive-1ms', poll: 'adaptive', budgetUs: 1000 },
];

/** `--cpus 1 --poll MODE [--idle-budget-us N]` for a back-end CLI. */
export function pollArgs(mode: PollMode): string[] {
  const args = ['--cpus', String(BACKEND_CPU), '--poll', mode.poll];
  if (mode.poll === 'adaptive') args.push('--idle-budget-us', String(mode.budgetUs));
  if (mode.graceUs !== undefined) args.push('--interrupt-grace-us', String(mode.graceUs));
  return args;
}

/** CPU seconds over a window as a percentage of one core, one decimal. */
export function cpuPercent(cpuSeconds: number | null, seconds: number): number {
  return Math.round(((cpuSeconds ?? 0) / seconds) * 1000) / 10;
}

/**
 * Operations per second of back-end CPU time: what each request or frame costs the back-end,
 * the column that keeps a poller which wins on rate by burning a core honest. Null without CPU.
 */
export function perCpuSecond(rate: number, cpuPct: number): number | null {
  return cpuPct > 0 ? Math.round(rate / (cpuPct / 100)) : null;
}

export function machine(): string {
  return `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs, Node ${process.version}`;
}

export const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Writes results/NAME-latest.json (what bench:plot reads) and a dated copy, and prints it. */
export function writeRecord(name: string, record: { date: string; [field: string]: unknown }): void {
  mkdirSync(join(REPO, 'results'), { recursive: true });
  const text = JSON.stringify(record, null, 2);
  writeFileSync(join(REPO, 'results', `${name}-latest.json`), text);
  writeFileSync(join(REPO, 'results', `${name}-${record.date.replace(/[:.]/g, '-')}.json`), text);
  process.stdout.write(text + '\n');
}
