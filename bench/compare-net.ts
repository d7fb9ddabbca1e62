// npm run bench:net [-- --quick] — vhost-user-net back-ends side by side, in one run, with one
// front-end: DPDK's testpmd with a virtio-user port (forwarding on CPU 0) drives ours
// (`vhost-user-net`, each poll mode, on CPU 1) and DPDK's own vhost PMD (`net_vhost`, testpmd
// forwarding on CPU 1) in the same three roles:
//   guest → back-end   front-end txonly   ours --backend sink       DPDK rxonly
//   back-end → guest   front-end rxonly   ours --backend source     DPDK txonly
//   loopback           front-end io --tx-first  ours --backend loopback  DPDK io
// at 64-byte and 1514-byte frames (1518 on the wire with the FCS). The rate is what the front-end's
// own counters say it moved (Tx-pps for txonly, Rx-pps otherwise): the median of its per-second
// samples once traffic flows. Prints the table with ours/DPDK for each point and the back-end's CPU
// share, and writes JSON to results/.
//
// Split versus packed: DPDK and our busy mode run a second time with the front-end asking for
// packed rings (virtio-user `packed_vq=1`; both back-ends offer VIRTIO_F_RING_PACKED, and DPDK's
// negotiated features are checked in its log), right after their split run; those rows print
// packed/split against it. --quick keeps them to 64-byte frames, where per-frame ring work weighs most.
//
// Ours versus DPDK in rounds: the table's rows are one run each, and this machine flips between a
// fast and a slow state from one run to the next (both back-ends, about 2x apart), so a single
// pair of runs can show almost any ratio. After the table, our busy mode and DPDK's vhost PMD
// (64-byte frames, split rings) alternate for 3 rounds (5 without --quick) in each direction, who
// starts alternating too; each round's ours/DPDK and their median are printed. That median is the
// comparison to quote.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { fileURLToPath } from 'node:url';

const { values } = parseArgs({
  options: {
    quick: { type: 'boolean', default: false },
    seconds: { type: 'string' },
    only: { type: 'string' },
  },
});
const quick = values.quick;
const seconds = Number(values.seconds ?? (quick ? 4 : 10));
const only = values.only ? new RegExp(values.only) : undefined;

const FRONTEND_CPU = 0;
const BACKEND_CPU = 1;
const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const NET_BIN = join(REPO_ROOT, 'bin', 'vhost-user-net');
const TESTPMD = 'dpdk-testpmd';
const QUEUE_SIZE = 256;
/** testpmd takes ~5 s to start without hugepages on this machine; traffic must appear within this. */
const START_TIMEOUT_MS = 40_000;

type Direction = 'guest-to-backend' | 'backend-to-guest' | 'loopback';
const ROLES: Record<Direction, { frontend: string; ours: string; dpdk: string; counter: 'Tx-pps' | 'Rx-pps' }> = {
  'guest-to-backend': { frontend: 'txonly', ours: 'sink', dpdk: 'rxonly', counter: 'Tx-pps' },
  'backend-to-guest': { frontend: 'rxonly', ours: 'source', dpdk: 'txonly', counter: 'Rx-pps' },
  loopback: { frontend: 'io', ours: 'loopback', dpdk: 'io', counter: 'Rx-pps' },
};

interface Point {
  /** Why this point has no rate (the run goes on; the exit code is 1 at the end). */
  failure?: string;
  backend: 'ours' | 'dpdk';
  mode: string;
  /** The virtqueue layout the front-end asked for (packed_vq=1 for packed). */
  ring: 'split' | 'packed';
  direction: Direction;
  frameBytes: number;
  pps: number;
  samples: number[];
  backend_cpu_pct: number | null;
  /** The front-end's virtio Rx/Tx paths (they follow the features the back-end offered). */
  frontend_paths?: string;
}

/** The alternating pair: our busy mode against DPDK's vhost PMD, split rings, 64-byte frames. */
const PAIR_NAME = 'ours busy vs dpdk, 64 B split';
const PAIR_FRAME_BYTES = 64;
const PAIR_ROUNDS = quick ? 3 : 5;

interface Versus {
  direction: Direction;
  /** Medians over the rounds. */
  ours: number;
  dpdk: number;
  /** Median of the per-round ratios (each round: ours / DPDK of that round). */
  ratio: number;
  roundRatios: number[];
  ourRounds: number[];
  dpdkRounds: number[];
}

/** Per back-end and ring layout: the front-end paths seen in its runs. */
const frontendPathsSeen = new Map<string, Set<string>>();

const work = mkdtempSync(join(tmpdir(), 'vut-bench-net-'));
let prefixes = 0;

function testpmdArgs(lcores: string, vdev: string, forwardMode: string, extra: string[]): string[] {
  return [
    '--no-huge',
    '-m',
    '1024',
    '--no-pci',
    '--single-file-segments',
    '--lcores',
    lcores,
    '--file-prefix',
    `vut-bench-net-${process.pid}-${prefixes++}`,
    '--vdev',
    vdev,
    '--',
    `--forward-mode=${forwardMode}`,
    '--stats-period',
    '1',
    '--no-flush-rx',
    ...extra,
  ];
}

/** testpmd writes its statistics through stdio: line-buffer it (stdbuf) so each second arrives on time. */
function spawnTestpmd(args: string[], ealExtra: string[] = []): ChildProcess {
  return spawn('stdbuf', ['-oL', TESTPMD, ...ealExtra, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
}

/** The virtio PMD's Rx and Tx paths as its init log names them ("inorder", "mergeable buffer", ...). */
function frontendPaths(output: string): string {
  const tx = /using (.+?) Tx path/.exec(output)?.[1] ?? '?';
  const rx = /using (.+?) Rx path/.exec(output)?.[1] ?? '?';
  return `Tx ${tx}, Rx ${rx}`;
}

function collect(child: ChildProcess): () => string {
  let output = '';
  child.stdout?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr?.on('data', (chunk: Buffer) => (output += chunk.toString()));
  return () => output;
}

async function stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGINT'): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  child.kill(signal);
  const killer = setTimeout(() => child.kill('SIGKILL'), 8000);
  await exited;
  clearTimeout(killer);
}

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / 100;
}

/** Per-second samples of `counter` for port 0 (the front-end has one port). */
function samplesOf(output: string, counter: string): number[] {
  const pattern = new RegExp(`${counter}:\\s+(\\d+)`, 'g');
  const samples: number[] = [];
  for (let match = pattern.exec(output); match; match = pattern.exec(output)) samples.push(Number(match[1]));
  return samples;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted.length === 0 ? 0 : sorted[Math.floor(sorted.length / 2)];
}

/** Starts the back-end under test on BACKEND_CPU; resolves once its socket exists. */
async function startBackend(backend: 'ours' | 'dpdk', mode: string, direction: Direction, frameBytes: number, socket: string) {
  const role = ROLES[direction];
  let child: ChildProcess;
  if (backend === 'ours') {
    const args = [NET_BIN, '--socket', socket, '--backend', role.ours, '--poll', mode, '--cpus', String(BACKEND_CPU)];
    if (role.ours === 'source') args.push('--frame-size', String(frameBytes));
    child = spawn('taskset', ['-c', String(BACKEND_CPU), process.execPath, ...args], { stdio: ['ignore', 'pipe', 'pipe'] });
  } else {
    const extra = role.dpdk === 'txonly' ? [`--txpkts=${frameBytes}`] : [];
    const args = testpmdArgs(`0@${FRONTEND_CPU},1@${BACKEND_CPU}`, `net_vhost0,iface=${socket},queues=1`, role.dpdk, extra);
    // The vhost PMD needs no shared memory of its own: drop --single-file-segments.
    child = spawnTestpmd(args.filter((a) => a !== '--single-file-segments'));
  }
  const output = collect(child);
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      await stop(child, 'SIGKILL');
      throw new Error(`${backend} back-end did not create ${socket}:\n${output().slice(-2000)}`);
    }
    await sleep(50);
  }
  return { child, output };
}

/** DPDK's vhost library logs the features the front-end acked; packed runs must show RING_PACKED (34) there. */
function dpdkPackedProblem(output: string): string | undefined {
  const match = /negotiated Virtio features: (0x[0-9a-f]+)/i.exec(output);
  if (match && ((BigInt(match[1]) >> 34n) & 1n) === 0n) return `VIRTIO_F_RING_PACKED was not negotiated (${match[1]})`;
  return undefined;
}

async function measure(
  backend: 'ours' | 'dpdk',
  mode: string,
  direction: Direction,
  frameBytes: number,
  ring: 'split' | 'packed',
): Promise<Point> {
  const role = ROLES[direction];
  const socket = join(work, `${backend}-${mode}-${ring}-${direction}-${frameBytes}.sock`);
  const server = await startBackend(backend, mode, direction, frameBytes, socket);
  const extra = [
    ...(role.frontend === 'txonly' ? [`--txpkts=${frameBytes}`] : []),
    ...(role.frontend === 'io' ? ['--tx-first', `--txpkts=${frameBytes}`] : []),
  ];
  const frontend = spawnTestpmd(
    testpmdArgs(
      `0@${BACKEND_CPU},1@${FRONTEND_CPU}`,
      `virtio_user0,path=${socket},queues=1,queue_size=${QUEUE_SIZE}${ring === 'packed' ? ',packed_vq=1' : ''}`,
      role.frontend,
      extra,
    ),
    // Its init log names the Rx/Tx paths it picked from the negotiated features (printed below the table).
    ['--log-level=pmd.net.virtio.init:debug'],
  );
  const output = collect(frontend);
  try {
    // Wait for traffic, then measure `seconds` of per-second samples.
    const deadline = Date.now() + START_TIMEOUT_MS;
    while (!samplesOf(output(), role.counter).some((pps) => pps > 0)) {
      if (frontend.exitCode !== null) throw new Error(`front-end testpmd exited:\n${output().slice(-2000)}`);
      if (Date.now() > deadline) throw new Error(`no traffic within ${START_TIMEOUT_MS} ms:\n${output().slice(-2000)}`);
      await sleep(100);
    }
    const cpuBefore = server.child.pid === undefined ? 0 : cpuSeconds(server.child.pid);
    const started = Date.now();
    const skip = samplesOf(output(), role.counter).length; // the first busy second (already seen) is a ramp
    await sleep(seconds * 1000 + 500);
    const elapsed = (Date.now() - started) / 1000;
    const cpuPct =
      server.child.pid === undefined ? null : Math.round(((cpuSeconds(server.child.pid) - cpuBefore) / elapsed) * 100);
    const samples = samplesOf(output(), role.counter).slice(skip);
    if (samples.length < 2) throw new Error(`only ${samples.length} samples in ${seconds} s:\n${output().slice(-2000)}`);
    const problem = backend === 'dpdk' && ring === 'packed' ? dpdkPackedProblem(server.output()) : undefined;
    if (problem) throw new Error(problem);
    const key = `${backend} ${ring}`;
    if (!frontendPathsSeen.has(key)) frontendPathsSeen.set(key, new Set());
    frontendPathsSeen.get(key)!.add(frontendPaths(output()));
    return {
      backend,
      mode,
      ring,
      direction,
      frameBytes,
      pps: median(samples),
      samples,
      backend_cpu_pct: cpuPct,
      frontend_paths: frontendPaths(output()),
    };
  } finally {
    await stop(frontend);
    await stop(server.child, backend === 'ours' ? 'SIGTERM' : 'SIGINT');
  }
}

async function main(): Promise<void> {
  const points: Point[] = [];
  // Each packed run right after its split counterpart, so that the two see the same machine.
  const runs: { backend: 'ours' | 'dpdk'; mode: string; ring: 'split' | 'packed' }[] = [
    { backend: 'dpdk', mode: 'poll', ring: 'split' },
    { backend: 'dpdk', mode: 'poll', ring: 'packed' },
    { backend: 'ours', mode: 'busy', ring: 'split' },
    { backend: 'ours', mode: 'busy', ring: 'packed' },
    { backend: 'ours', mode: 'adaptive', ring: 'split' },
    { backend: 'ours', mode: 'interrupt', ring: 'split' },
  ];
  for (const direction of Object.keys(ROLES) as Direction[]) {
    for (const frameBytes of [64, 1514]) {
      for (const run of runs) {
        if (run.ring === 'packed' && quick && frameBytes !== 64) continue;
        const name = `${run.backend} ${run.mode}${run.ring === 'packed' ? ' packed' : ''} ${direction} ${frameBytes}`;
        if (only && !only.test(name)) continue;
        process.stderr.write(`${name}...\n`);
        try {
          points.push(await measure(run.backend, run.mode, direction, frameBytes, run.ring));
        } catch (error) {
          const failure = (error as Error).message.split('\n')[0];
          process.stderr.write(`${name}: FAILED: ${(error as Error).message}\n`);
          points.push({
            backend: run.backend,
            mode: run.mode,
            ring: run.ring,
            direction,
            frameBytes,
            pps: 0,
            samples: [],
            backend_cpu_pct: null,
            failure,
          });
        }
      }
    }
  }
  // Ours (busy) against DPDK at 64-byte frames in alternating rounds, each round starting with
  // the other side: this machine flips between a fast and a slow state from one run to the next
  // (both back-ends, ~2x apart), so one run per side can show any ratio; the median of per-round
  // ratios is the comparison to quote.
  const versus: Versus[] = [];
  for (const direction of Object.keys(ROLES) as Direction[]) {
    if (only && !only.test(`${PAIR_NAME} ${direction}`)) continue;
    const rounds = { ours: [] as number[], dpdk: [] as number[] };
    for (let round = 0; round < PAIR_ROUNDS; round++) {
      for (const side of round % 2 === 0 ? (['ours', 'dpdk'] as const) : (['dpdk', 'ours'] as const)) {
        const name = `${PAIR_NAME} ${direction} ${side} round ${round + 1}/${PAIR_ROUNDS}`;
        process.stderr.write(`${name}...\n`);
        try {
          const point = await measure(side, side === 'ours' ? 'busy' : 'poll', direction, PAIR_FRAME_BYTES, 'split');
          rounds[side].push(point.pps);
        } catch (error) {
          process.stderr.write(`${name}: FAILED: ${(error as Error).message}\n`);
          rounds[side].push(0);
          process.exitCode = 1;
        }
      }
    }
    const roundRatios = rounds.ours.map((pps, i) => (rounds.dpdk[i] > 0 ? pps / rounds.dpdk[i] : NaN));
    versus.push({
      direction,
      ours: median(rounds.ours),
      dpdk: median(rounds.dpdk),
      ratio: roundRatios.some((r) => !Number.isNaN(r)) ? median(roundRatios.filter((r) => !Number.isNaN(r))) : NaN,
      roundRatios,
      ourRounds: rounds.ours,
      dpdkRounds: rounds.dpdk,
    });
  }
  const ratio = (p: Point, base: Point | undefined) =>
    !p.failure && base && !base.failure && base.pps > 0 ? Math.round((p.pps / base.pps) * 100) / 100 : null;
  const rows = points.map((p) => {
    // Ours against DPDK on the same ring layout; packed rows against their own split run.
    const dpdk = points.find(
      (q) => q.backend === 'dpdk' && q.ring === p.ring && q.direction === p.direction && q.frameBytes === p.frameBytes,
    );
    const split = points.find(
      (q) =>
        q.backend === p.backend &&
        q.mode === p.mode &&
        q.ring === 'split' &&
        q.direction === p.direction &&
        q.frameBytes === p.frameBytes,
    );
    return {
      ...p,
      vs_dpdk: p.backend === 'ours' ? ratio(p, dpdk) : null,
      vs_split: p.ring === 'packed' ? ratio(p, split) : null,
    };
  });
  const lines = ['back-end  mode       ring    direction          frame       Mpps  be-CPU%  ours/DPDK  packed/split'];
  for (const r of rows) {
    lines.push(
      [
        r.backend.padEnd(9),
        r.mode.padEnd(10),
        r.ring.padEnd(7),
        r.direction.padEnd(18),
        `${r.frameBytes} B`.padStart(6),
        (r.pps / 1e6).toFixed(2).padStart(10),
        (r.backend_cpu_pct === null ? '-' : String(r.backend_cpu_pct)).padStart(8),
        (r.vs_dpdk === null ? '-' : r.vs_dpdk.toFixed(2)).padStart(10),
        (r.vs_split === null ? '-' : r.vs_split.toFixed(2)).padStart(13),
        r.failure ? `  FAILED: ${r.failure}` : '',
      ].join(' '),
    );
  }
  if (versus.length > 0) {
    lines.push(
      '',
      `ours versus DPDK (${PAIR_NAME}, ${PAIR_ROUNDS} alternating rounds, who starts alternating too, medians):`,
      'direction           ours Mpps  DPDK Mpps  ours/DPDK  rounds ours/DPDK (ours Mpps / DPDK Mpps)',
    );
    for (const v of versus) {
      const each = v.roundRatios
        .map((r, i) => `${r.toFixed(2)} (${(v.ourRounds[i] / 1e6).toFixed(2)}/${(v.dpdkRounds[i] / 1e6).toFixed(2)})`)
        .join(' ');
      lines.push(
        [
          v.direction.padEnd(18),
          (v.ours / 1e6).toFixed(2).padStart(10),
          (v.dpdk / 1e6).toFixed(2).padStart(10),
          (Number.isNaN(v.ratio) ? '-' : v.ratio.toFixed(2)).padStart(10),
          ` ${each}`,
        ].join(' '),
      );
    }
  }
  // Which code the same front-end ran against each back-end: the features a back-end offers
  // (IN_ORDER, MRG_RXBUF, ...) pick the virtio PMD's paths, and they differ in cost.
  const paths = frontendPathsSeen;
  if (paths.size > 0) {
    lines.push('', 'front-end virtio paths: ' + [...paths].map(([key, set]) => `${key}: ${[...set].join(' | ')}`).join('; '));
  }
  const legend =
    "Mpps: median of the front-end's per-second counter (Tx-pps for txonly, Rx-pps otherwise); be-CPU%: back-end process CPU over the window.";
  const machine = `${cpus()[0]?.model ?? 'unknown CPU'}, ${cpus().length} CPUs, Node ${process.version}`;
  const header = `Measured ${new Date().toISOString()} on ${machine} with \`npm run bench:net${quick ? ' -- --quick' : ''}\` (${seconds} s per point; front-end: dpdk-testpmd virtio-user forwarding on CPU ${FRONTEND_CPU}; back-end on CPU ${BACKEND_CPU}):`;
  process.stdout.write(`${header}\n\n${lines.join('\n')}\n`);
  mkdirSync(join(REPO_ROOT, 'results'), { recursive: true });
  process.stdout.write(`${legend}\n`);
  const file = join(REPO_ROOT, 'results', `net-${new Date().toISOString().replace(/[:.]/g, '-')}.json`);
  const record = JSON.stringify({ header, machine, seconds, rows, versus, table: `${lines.join('\n')}\n${legend}` }, null, 2);
  writeFileSync(file, record);
  // npm run bench:plot copies the latest table into the README.
  writeFileSync(join(REPO_ROOT, 'results', 'net-latest.json'), record);
  process.stderr.write(`JSON: ${file}\n`);
  if (points.some((p) => p.failure)) process.exitCode = 1;
}

try {
  await main();
} finally {
  rmSync(work, { recursive: true, force: true });
}
