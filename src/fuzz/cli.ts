// npm run fuzz -- [--target session,chain,socket] [--minutes N | --seconds N] [--seed N]
//                 [--state FILE] [--fresh] [--corpus DIR] [--replay FILE]
//
// Runs the fuzzing campaign (campaign.ts) and resumes it: the state file keeps the seed and, per
// target, the next iteration and the totals so far. Reports iterations per second every few
// seconds and the totals at the end; exits 1 if anything was found, each finding written as a
// reproducer to <corpus>/crashes/ (`--replay` runs one again). A watchdog thread catches a case
// that never ends (a blocked syscall or a promise that never settles): it writes the reproducer
// and kills the process.
import { existsSync, readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import { setLogLevel } from '../log.js';
import { ChainFuzzer } from './chain-fuzz.js';
import {
  Corpus,
  TARGETS,
  emptyTotals,
  replayCorpus,
  runChain,
  runSession,
  runSocket,
  sessionFuzzer,
  type Finding,
  type RunContext,
  type TargetName,
  type TargetTotals,
} from './campaign.js';
import { Random, caseSeed } from './random.js';
import { deserializeCase } from './session-fuzz.js';
import { DaemonProcess, SocketFuzzer } from './socket-fuzz.js';

interface CampaignState {
  seed: number;
  targets: Record<TargetName, TargetTotals>;
}

/** Share of the time per target when several run. */
const SHARE: Record<TargetName, number> = { session: 0.4, chain: 0.3, socket: 0.3 };
const REPORT_EVERY_MS = 5000;
const HANG_MS = 60_000;

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      target: { type: 'string', default: TARGETS.join(',') },
      minutes: { type: 'string' },
      seconds: { type: 'string' },
      seed: { type: 'string' },
      state: { type: 'string', default: 'fuzz/state.json' },
      fresh: { type: 'boolean', default: false },
      corpus: { type: 'string', default: 'fuzz/corpus' },
      replay: { type: 'string' },
    },
  });
  setLogLevel('error');
  const corpusDir = resolve(values.corpus);
  const crashesDir = join(corpusDir, 'crashes');
  if (values.replay) return replay(values.replay);

  const targets = values.target.split(',').map((name) => name.trim()) as TargetName[];
  for (const name of targets) if (!TARGETS.includes(name)) throw new Error(`unknown target ${name} (${TARGETS.join(', ')})`);
  const seconds = values.seconds !== undefined ? Number(values.seconds) : 60 * Number(values.minutes ?? '10');
  if (!(seconds > 0)) throw new Error('--minutes / --seconds must be positive');

  const statePath = resolve(values.state);
  const state: CampaignState =
    !values.fresh && existsSync(statePath)
      ? (JSON.parse(readFileSync(statePath, 'utf8')) as CampaignState)
      : { seed: 1, targets: { session: emptyTotals(), chain: emptyTotals(), socket: emptyTotals() } };
  if (values.seed !== undefined) {
    const seed = Number(values.seed) >>> 0;
    if (seed !== state.seed) {
      // Another seed is another campaign: its iterations start again, the totals go on.
      state.seed = seed;
      for (const name of TARGETS) state.targets[name].iteration = 0;
    }
  }
  for (const name of TARGETS) state.targets[name] ??= emptyTotals();
  const save = () => {
    mkdirSync(dirname(statePath), { recursive: true });
    writeFileSync(statePath, JSON.stringify(state, null, 2) + '\n');
  };

  const heartbeat = new Int32Array(new SharedArrayBuffer(16));
  const watchdog = startWatchdog(heartbeat, crashesDir, state.seed);
  const findings: Finding[] = [];
  const corpus = new Corpus(corpusDir);
  const sessions = sessionFuzzer(corpus);
  const shareTotal = targets.reduce((sum, name) => sum + SHARE[name], 0);
  console.log(`fuzz: seed ${state.seed}, ${targets.join(', ')} for ${seconds} s, corpus ${sessions.bases.length} sequences`);
  try {
    for (const [targetIndex, name] of targets.entries()) {
      const totals = state.targets[name];
      const before = { ...totals };
      const deadline = performance.now() + (1000 * seconds * SHARE[name]) / shareTotal;
      let nextReport = performance.now() + REPORT_EVERY_MS;
      let lastCases = totals.cases;
      let lastMessages = totals.messages;
      let lastAt = performance.now();
      const ctx: RunContext = {
        seed: state.seed,
        totals,
        crashesDir,
        corpus,
        onFinding: (finding, file) => {
          findings.push(finding);
          console.log(`FINDING ${name} iteration ${finding.iteration}: ${finding.finding.split('\n')[0]} → ${file}`);
        },
        onCase: (iteration) => {
          Atomics.store(heartbeat, 1, iteration % 0x4000_0000);
          Atomics.store(heartbeat, 2, Math.floor(iteration / 0x4000_0000));
          Atomics.store(heartbeat, 3, targetIndex + 1);
          Atomics.add(heartbeat, 0, 1);
        },
        stop: () => {
          const now = performance.now();
          if (now >= nextReport) {
            const dt = (now - lastAt) / 1000;
            console.log(
              `  ${name}: ${count(totals.cases)} cases (${count((totals.cases - lastCases) / dt)}/s), ` +
                `${count(totals.messages)} ${unit(name)} (${count((totals.messages - lastMessages) / dt)}/s), ` +
                `${totals.findings} findings${name === 'session' ? `, ${corpus.behaviours} behaviours` : ''}`,
            );
            lastCases = totals.cases;
            lastMessages = totals.messages;
            lastAt = now;
            nextReport = now + REPORT_EVERY_MS;
            save();
          }
          return now >= deadline;
        },
      };
      heartbeatTarget[targetIndex + 1] = name;
      watchdog.postMessage({ targets: heartbeatTarget });
      if (name === 'session') {
        const replayed = await replayCorpus(sessions, ctx);
        console.log(`  session: corpus replayed (${replayed} sequences, ${corpus.behaviours} behaviours)`);
        await runSession(sessions, ctx);
      } else if (name === 'chain') {
        runChain(new ChainFuzzer(), ctx);
      } else {
        await runSocket(sessions, ctx);
      }
      const run = {
        cases: totals.cases - before.cases,
        messages: totals.messages - before.messages,
        seconds: totals.seconds - before.seconds,
      };
      console.log(
        `${name}: this run ${count(run.cases)} cases, ${count(run.messages)} ${unit(name)} in ${run.seconds.toFixed(0)} s ` +
          `(${count(run.messages / run.seconds)} ${unit(name)}/s); campaign total ${count(totals.cases)} cases, ` +
          `${count(totals.messages)} ${unit(name)}, ${totals.findings} findings` +
          (totals.healthChecks !== undefined ? `, ${totals.healthChecks} clean front-ends served` : ''),
      );
      save();
    }
  } finally {
    save();
    sessions.dispose();
    await watchdog.terminate();
  }
  console.log(findings.length > 0 ? `${findings.length} findings: see ${crashesDir}` : 'no findings');
  return findings.length > 0 ? 1 : 0;
}

const heartbeatTarget: string[] = [''];

function unit(name: TargetName): string {
  return name === 'chain' ? 'chains' : 'messages';
}

function count(n: number): string {
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)} M`;
  if (n >= 1e4) return `${(n / 1e3).toFixed(1)} k`;
  return n.toFixed(0);
}

/** Re-runs one reproducer and prints what it finds now. */
async function replay(file: string): Promise<number> {
  const finding = JSON.parse(readFileSync(file, 'utf8')) as Finding;
  console.log(
    `replaying ${finding.target} seed ${finding.seed} iteration ${finding.iteration}: ${finding.finding.split('\n')[0]}`,
  );
  let now: string | undefined;
  if (finding.target === 'chain') {
    now = new ChainFuzzer().run(new Random(caseSeed(finding.seed, finding.iteration))).finding;
  } else {
    const sessions = sessionFuzzer(new Corpus(resolve('fuzz/corpus')));
    try {
      const c = finding.case
        ? deserializeCase(finding.case)
        : sessions.generate(new Random(caseSeed(finding.seed, finding.iteration)));
      if (finding.target === 'session') {
        now = (await sessions.run(c)).finding;
      } else {
        const daemon = new DaemonProcess();
        try {
          await daemon.ready();
          const fuzzer = new SocketFuzzer(sessions, daemon);
          now = (await fuzzer.run(c)).finding ?? (await fuzzer.healthCheck());
          if (daemon.errors.length > 0) now = `${now ?? ''} the daemon logged: ${daemon.errors.join('\n')}`;
        } finally {
          await daemon.stop();
        }
      }
    } finally {
      sessions.dispose();
    }
  }
  console.log(now ? `still found: ${now}` : 'not found any more');
  return now ? 1 : 0;
}

/**
 * A thread that watches the heartbeat (a counter bumped before each case): if it stands still for
 * HANG_MS, the case in progress hangs. The main thread may be blocked in a syscall, so this
 * thread writes the reproducer and ends the process itself.
 */
function startWatchdog(heartbeat: Int32Array, crashesDir: string, seed: number): Worker {
  const code = `
    const { workerData, parentPort } = require('node:worker_threads');
    const { mkdirSync, writeFileSync } = require('node:fs');
    const { join } = require('node:path');
    const { heartbeat, crashesDir, seed, hangMs } = workerData;
    let targets = [''];
    parentPort.on('message', (m) => { targets = m.targets; });
    let last = -1, since = Date.now();
    setInterval(() => {
      const beat = Atomics.load(heartbeat, 0);
      if (beat !== last) { last = beat; since = Date.now(); return; }
      const target = targets[Atomics.load(heartbeat, 3)];
      if (!target || Date.now() - since < hangMs) return;
      const iteration = Atomics.load(heartbeat, 1) + Atomics.load(heartbeat, 2) * 0x40000000;
      mkdirSync(crashesDir, { recursive: true });
      const file = join(crashesDir, target + '-' + seed + '-' + iteration + '.json');
      const finding = 'hang: the case did not finish within ' + hangMs + ' ms';
      writeFileSync(file, JSON.stringify({ target, seed, iteration, finding }, null, 2) + '\\n');
      process.stderr.write('FINDING ' + target + ' iteration ' + iteration + ': ' + finding + ' → ' + file + '\\n');
      process.kill(process.pid, 'SIGKILL');
    }, 1000);
  `;
  const worker = new Worker(code, { eval: true, workerData: { heartbeat, crashesDir, seed, hangMs: HANG_MS } });
  return worker;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);
