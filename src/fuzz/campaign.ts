// The fuzzing campaign's loops: each target runs cases (seed, iteration), (seed, iteration + 1),
// ... until its time is up, adding to its totals, keeping the corpus and writing a reproducer for
// every finding. The CLI (cli.ts) adds the state file, the watchdog and the reports; the CI test
// runs the same loops for a few seconds with a fixed seed.
import { mkdirSync, readFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ChainFuzzer } from './chain-fuzz.js';
import { Random, caseSeed } from './random.js';
import { SessionFuzzer, deserializeCase, serializeCase, type SerializedCase, type SessionCase } from './session-fuzz.js';
import { DaemonProcess, SocketFuzzer } from './socket-fuzz.js';

export type TargetName = 'session' | 'chain' | 'socket';
export const TARGETS: readonly TargetName[] = ['session', 'chain', 'socket'];

export interface TargetTotals {
  /** Next iteration to run (cases are numbered from 0 per seed). */
  iteration: number;
  /** Cases run: message sequences (session, socket) or descriptor tables (chain). */
  cases: number;
  /** Messages handled (session, socket) or chains popped and completed (chain). */
  messages: number;
  findings: number;
  seconds: number;
  /** socket: clean front-ends served between cases. */
  healthChecks?: number;
}

export interface Finding {
  target: TargetName;
  seed: number;
  iteration: number;
  finding: string;
  case?: SerializedCase;
}

export interface RunContext {
  seed: number;
  totals: TargetTotals;
  /** Where reproducers go (created on the first finding). */
  crashesDir: string;
  corpus?: Corpus;
  /** Called for each finding, after its reproducer is written. */
  onFinding?: (finding: Finding, file: string) => void;
  /** Per case: the iteration about to run (the watchdog's heartbeat). */
  onCase?: (iteration: number) => void;
  /** Stop before the next case when this returns true. */
  stop: () => boolean;
}

export function emptyTotals(): TargetTotals {
  return { iteration: 0, cases: 0, messages: 0, findings: 0, seconds: 0 };
}

/**
 * The session corpus: message sequences that reached a behaviour (a request with an outcome, a
 * refusal reason) no earlier case reached. New cases mutate them as often as fresh scripts.
 * Kept in the repo so that every run starts from what earlier runs found.
 */
export class Corpus {
  private readonly seen = new Set<string>();
  private added = 0;

  constructor(
    readonly dir: string,
    /** New entries one run may add (the repo should not grow without bound). */
    private readonly maxNew = 100,
  ) {}

  /** The stored cases, in a stable order. */
  load(): SessionCase[] {
    const sessionDir = join(this.dir, 'session');
    let names: string[];
    try {
      names = readdirSync(sessionDir)
        .filter((name) => name.endsWith('.json'))
        .sort();
    } catch {
      return [];
    }
    return names.map((name) => deserializeCase(JSON.parse(readFileSync(join(sessionDir, name), 'utf8')) as SerializedCase));
  }

  /** Records what a case reached; true if any of it was new. */
  note(signature: readonly string[]): boolean {
    let fresh = false;
    for (const item of signature) {
      if (!this.seen.has(item)) {
        this.seen.add(item);
        fresh = true;
      }
    }
    return fresh;
  }

  get behaviours(): number {
    return this.seen.size;
  }

  save(c: SessionCase): void {
    if (this.added >= this.maxNew) return;
    const text = JSON.stringify(serializeCase(c));
    const dir = join(this.dir, 'session');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, `${fnv1a(text)}.json`), text + '\n');
    this.added++;
  }
}

function fnv1a(text: string): string {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  return hash.toString(16).padStart(8, '0');
}

export function writeFinding(dir: string, finding: Finding): string {
  mkdirSync(dir, { recursive: true });
  const file = join(dir, `${finding.target}-${finding.seed}-${finding.iteration}.json`);
  writeFileSync(file, JSON.stringify(finding, null, 2) + '\n');
  return file;
}

function report(ctx: RunContext, finding: Finding): void {
  ctx.totals.findings++;
  const file = writeFinding(ctx.crashesDir, finding);
  ctx.onFinding?.(finding, file);
}

// ---- session ---------------------------------------------------------------------------------------

/** The session target's case generator, seeded by the corpus as loaded at the start. */
export function sessionFuzzer(corpus: Corpus | undefined): SessionFuzzer {
  const fuzzer = new SessionFuzzer();
  if (corpus) fuzzer.bases.push(...corpus.load());
  return fuzzer;
}

/** Replays the corpus once (a regression pass: none may be a finding), noting what it reaches. */
export async function replayCorpus(fuzzer: SessionFuzzer, ctx: RunContext): Promise<number> {
  let index = 0;
  for (const c of fuzzer.bases) {
    const result = await fuzzer.run(c);
    ctx.corpus?.note(result.signature);
    if (result.finding) {
      report(ctx, { target: 'session', seed: ctx.seed, iteration: -1 - index, finding: result.finding, case: serializeCase(c) });
    }
    index++;
  }
  return fuzzer.bases.length;
}

export async function runSession(fuzzer: SessionFuzzer, ctx: RunContext): Promise<void> {
  const started = performance.now();
  const totals = ctx.totals;
  // Refusals are errors, and most mutated messages are refused: capturing a stack for each costs
  // more than handling the message. Findings are re-run with stacks.
  const stackLimit = Error.stackTraceLimit;
  Error.stackTraceLimit = 0;
  try {
    while (!ctx.stop()) {
      const iteration = totals.iteration;
      ctx.onCase?.(iteration);
      const c = fuzzer.generate(new Random(caseSeed(ctx.seed, iteration)));
      let result = await fuzzer.run(c);
      totals.iteration++;
      totals.cases++;
      totals.messages += result.messages;
      if (result.finding) {
        Error.stackTraceLimit = stackLimit;
        result = await fuzzer.run(c);
        Error.stackTraceLimit = 0;
        report(ctx, {
          target: 'session',
          seed: ctx.seed,
          iteration,
          finding: result.finding ?? '(did not recur)',
          case: serializeCase(c),
        });
      } else if (ctx.corpus?.note(result.signature)) {
        ctx.corpus.save(c);
      }
    }
  } finally {
    Error.stackTraceLimit = stackLimit;
    totals.seconds += (performance.now() - started) / 1000;
  }
}

// ---- chain -------------------------------------------------------------------------------------------

export function runChain(fuzzer: ChainFuzzer, ctx: RunContext, reasons?: Map<number, number>): void {
  const started = performance.now();
  const totals = ctx.totals;
  try {
    // Checking the clock per case would cost more than a small case: check every 256.
    while (!ctx.stop()) {
      for (let batch = 0; batch < 256; batch++) {
        const iteration = totals.iteration;
        ctx.onCase?.(iteration);
        const result = fuzzer.run(new Random(caseSeed(ctx.seed, iteration)));
        totals.iteration++;
        totals.cases++;
        totals.messages += result.chains;
        if (reasons) reasons.set(result.reason, (reasons.get(result.reason) ?? 0) + 1);
        if (result.finding) report(ctx, { target: 'chain', seed: ctx.seed, iteration, finding: result.finding });
      }
    }
  } finally {
    totals.seconds += (performance.now() - started) / 1000;
  }
}

// ---- socket ------------------------------------------------------------------------------------------

export async function runSocket(sessions: SessionFuzzer, ctx: RunContext, healthEvery = 100): Promise<void> {
  const started = performance.now();
  const totals = ctx.totals;
  const daemon = new DaemonProcess();
  const fuzzer = new SocketFuzzer(sessions, daemon);
  try {
    await daemon.ready();
    const checkHealth = async (iteration: number): Promise<boolean> => {
      const problem = await fuzzer.healthCheck(iteration % 1000);
      totals.healthChecks = (totals.healthChecks ?? 0) + 1;
      if (problem) report(ctx, { target: 'socket', seed: ctx.seed, iteration, finding: problem });
      return problem === undefined;
    };
    if (!(await checkHealth(totals.iteration))) return;
    let sinceCheck = 0;
    while (!ctx.stop()) {
      const iteration = totals.iteration;
      ctx.onCase?.(iteration);
      const c = sessions.generate(new Random(caseSeed(ctx.seed, iteration)));
      const result = await fuzzer.run(c);
      totals.iteration++;
      totals.cases++;
      totals.messages += result.messages;
      const errors = daemon.errors.splice(0);
      const problem = result.finding ?? (errors.length > 0 ? `the daemon logged: ${errors.join('\n')}` : undefined);
      if (problem) {
        report(ctx, { target: 'socket', seed: ctx.seed, iteration, finding: problem, case: serializeCase(c) });
        if (!daemon.alive) return;
      }
      if (++sinceCheck >= healthEvery) {
        sinceCheck = 0;
        if (!(await checkHealth(iteration))) return;
      }
    }
    await checkHealth(totals.iteration);
  } finally {
    await daemon.stop();
    totals.seconds += (performance.now() - started) / 1000;
  }
}
