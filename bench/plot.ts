// npm run bench:plot — turns results/tuning-latest.json (npm run bench:tuning),
// results/tuning-net-latest.json (npm run bench:tuning:net) and results/blk-compare-latest.json
// (npm run bench:blk) and results/net-latest.json (npm run bench:net) into the SVG plots and the generated tables of tuning.md and README.md
// (between <!-- generated:NAME --> markers). Charts are Vega-Lite specs rendered headless by Vega.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';

const REPO = new URL('..', import.meta.url).pathname;

type Latency = { p50: number; p90: number; p99: number; 'p99.9': number; max: number; mean: number };

interface TuningPoint {
  /** 'ours' or 'qsd' (records before the QSD rows have none: ours). */
  backend?: string;
  mode: string;
  /** The QSD mode this one of ours is compared with. */
  peer?: string | null;
  load: string;
  offered_iops: number | null;
  iops: number;
  lat_us: Latency;
  backend_cpu_pct: number;
  iops_per_cpu_s?: number | null;
}
interface Tuning {
  date: string;
  machine: string;
  command: string;
  setup: string;
  run_seconds?: number;
  points: TuningPoint[];
  idle: { backend?: string; mode: string; backend_cpu_pct: number }[];
  qd1: {
    ours: { mode: string; iops: number; p50: number; p99: number; mean: number }[];
    fio: { p50: number; p99: number; mean: number; iops: number };
  };
}
interface NetPoint {
  backend: string;
  mode: string;
  load: string;
  offered_fps: number | null;
  fps: number;
  lost: number | null;
  lat_us: Latency;
  backend_cpu_pct: number;
  fps_per_cpu_s: number | null;
  loadgen_cpu_pct: number;
}
interface TuningNet {
  date: string;
  machine: string;
  command: string;
  setup: string;
  run_seconds?: number;
  points: NetPoint[];
  idle: { backend: string; mode: string; backend_cpu_pct: number }[];
}

async function svg(spec: vegaLite.TopLevelSpec): Promise<string> {
  const view = new vega.View(vega.parse(vegaLite.compile(spec).spec), { renderer: 'none' });
  return view.toSVG();
}

function replaceGenerated(file: string, name: string, content: string): void {
  const path = join(REPO, file);
  const text = readFileSync(path, 'utf8');
  const start = `<!-- generated:${name} -->`;
  const end = `<!-- /generated:${name} -->`;
  const from = text.indexOf(start);
  const to = text.indexOf(end);
  if (from < 0 || to < from) throw new Error(`${file} has no ${start} ... ${end} markers`);
  writeFileSync(path, text.slice(0, from + start.length) + '\n' + content.trim() + '\n' + text.slice(to));
}

function readRecord<T>(name: string, command: string): T | undefined {
  const path = join(REPO, 'results', `${name}-latest.json`);
  if (existsSync(path)) return JSON.parse(readFileSync(path, 'utf8')) as T;
  process.stderr.write(`no results/${name}-latest.json: run ${command} first\n`);
  return undefined;
}

/** What one study's three plots need: one row per point, its load's rank, and the axis words. */
interface ChartInput {
  rows: { mode: string; backend: string; load: string; p50: number; p99: number; backend_cpu_pct: number }[];
  loadOrder: string[];
  unit: string;
  subtitle: string;
  /** Files: `${prefix}-latency.svg`, `${prefix}-cpu.svg`, `${prefix}-latency-cpu.svg`. */
  prefix: string;
}

/** p99 by offered load, back-end CPU by offered load, and p50/p99 against back-end CPU. */
async function studyCharts(c: ChartInput): Promise<string> {
  const values = c.rows.map((r) => ({ ...r, load_rank: c.loadOrder.indexOf(r.load) }));
  const common = { data: { values }, width: 360, height: 240 } as const;
  // Peers (QSD) dashed, ours solid: one colour per mode either way.
  const dash = { field: 'backend', type: 'nominal', legend: null } as const;
  const dashed = values.some((v) => v.backend !== 'ours') ? ' (dashed: qemu-storage-daemon)' : '';
  const latency = await svg({
    ...common,
    title: { text: `p99 latency by offered load${dashed}`, subtitle: c.subtitle },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'load', type: 'ordinal', sort: c.loadOrder, title: `offered load (${c.unit})` },
      y: { field: 'p99', type: 'quantitative', scale: { type: 'log' }, title: 'p99 latency (µs, log)' },
      color: { field: 'mode', type: 'nominal' },
      strokeDash: dash,
    },
  });
  const cpu = await svg({
    ...common,
    title: { text: `back-end CPU by offered load${dashed}`, subtitle: c.subtitle },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'load', type: 'ordinal', sort: c.loadOrder, title: `offered load (${c.unit})` },
      y: { field: 'backend_cpu_pct', type: 'quantitative', title: 'back-end CPU (% of one core)' },
      color: { field: 'mode', type: 'nominal' },
      strokeDash: dash,
    },
  });
  // One line per mode through its offered loads (in load order), p50 and p99 side by side.
  const latencyCpu = await svg({
    data: { values },
    transform: [{ fold: ['p50', 'p99'], as: ['percentile', 'latency'] }],
    title: { text: `latency against back-end CPU (points: offered loads, low to saturation)${dashed}`, subtitle: c.subtitle },
    mark: { type: 'line', point: true },
    width: 300,
    height: 240,
    encoding: {
      column: { field: 'percentile', type: 'nominal', title: null },
      x: { field: 'backend_cpu_pct', type: 'quantitative', title: 'back-end CPU (% of one core)' },
      y: { field: 'latency', type: 'quantitative', scale: { type: 'log' }, title: 'latency (µs, log)' },
      color: { field: 'mode', type: 'nominal' },
      strokeDash: dash,
      order: { field: 'load_rank', type: 'quantitative' },
      tooltip: [{ field: 'load' }],
    },
  });
  writeFileSync(join(REPO, `${c.prefix}-latency.svg`), latency);
  writeFileSync(join(REPO, `${c.prefix}-cpu.svg`), cpu);
  writeFileSync(join(REPO, `${c.prefix}-latency-cpu.svg`), latencyCpu);
  return `![p99 latency](${c.prefix}-latency.svg) ![back-end CPU](${c.prefix}-cpu.svg)\n\n![latency against CPU](${c.prefix}-latency-cpu.svg)`;
}

const ratio = (a: number | null | undefined, b: number | null | undefined) =>
  a && b ? (Math.round((a / b) * 100) / 100).toFixed(2) : '–';
const dashIfNull = (value: number | null | undefined) => (value === null || value === undefined ? '–' : String(value));
const took = (seconds: number | undefined) => (seconds === undefined ? '' : ` (${Math.round(seconds / 6) / 10} min)`);

async function tuning(): Promise<void> {
  const data = readRecord<Tuning>('tuning', 'npm run bench:tuning');
  if (!data) return;
  const points = data.points.map((p) => ({
    ...p,
    backend: p.backend ?? 'ours',
    iops_per_cpu_s: p.iops_per_cpu_s ?? (p.backend_cpu_pct > 0 ? Math.round(p.iops / (p.backend_cpu_pct / 100)) : null),
  }));
  const charts = await studyCharts({
    rows: points.map((p) => ({ ...p, p50: p.lat_us.p50, p99: p.lat_us.p99 })),
    loadOrder: ['1K', '10K', '100K', 'saturation'],
    unit: 'IOPS',
    subtitle: `${data.machine}; ${data.date.slice(0, 10)}; ${data.command}`,
    prefix: 'tuning',
  });
  const header = `Measured ${data.date} on ${data.machine} with \`${data.command}\`${took(data.run_seconds)}.\n${data.setup}.\n`;
  const peerOf = (p: (typeof points)[number]) =>
    p.peer ? points.find((q) => q.backend === 'qsd' && q.mode === p.peer && q.load === p.load) : undefined;
  const table = [
    "| back-end | mode | offered | achieved IOPS | p50 µs | p90 µs | p99 µs | p99.9 µs | back-end CPU % | IOPS per CPU-s | peer | IOPS per CPU-s ÷ peer's | p99 ÷ peer's |",
    '| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: | ---: |',
    ...points.map((p) => {
      const peer = peerOf(p);
      return `| ${p.backend} | ${p.mode} | ${p.load} | ${p.iops} | ${p.lat_us.p50} | ${p.lat_us.p90} | ${p.lat_us.p99} | ${p.lat_us['p99.9']} | ${p.backend_cpu_pct} | ${dashIfNull(p.iops_per_cpu_s)} | ${p.peer ?? '–'} | ${ratio(p.iops_per_cpu_s, peer?.iops_per_cpu_s)} | ${ratio(p.lat_us.p99, peer?.lat_us.p99)} |`;
    }),
  ].join('\n');
  const idle = [
    '| back-end | mode | back-end CPU % with no I/O |',
    '| --- | --- | ---: |',
    ...data.idle.map((i) => `| ${i.backend ?? 'ours'} | ${i.mode} | ${i.backend_cpu_pct} |`),
  ].join('\n');
  const f = data.qd1.fio;
  const qd1 = [
    '| QD1 | IOPS | mean µs | p50 µs | p99 µs | p50 added over fio µs |',
    '| --- | ---: | ---: | ---: | ---: | ---: |',
    `| fio io_uring (same file, same core) | ${f.iops} | ${f.mean} | ${f.p50} | ${f.p99} | – |`,
    ...data.qd1.ours.map(
      (o) => `| ours, ${o.mode} | ${o.iops} | ${o.mean} | ${o.p50} | ${o.p99} | ${Math.round((o.p50 - f.p50) * 100) / 100} |`,
    ),
  ].join('\n');
  replaceGenerated(
    'tuning.md',
    'tuning',
    `${header}\n${table}\n\nIdle cost (a front-end connected, rings running, nothing sent):\n\n${idle}\n\nLatency at queue depth 1, closed loop:\n\n${qd1}\n\n${charts}`,
  );
}

async function tuningNet(): Promise<void> {
  const data = readRecord<TuningNet>('tuning-net', 'npm run bench:tuning:net');
  if (!data) return;
  const charts = await studyCharts({
    rows: data.points.map((p) => ({ ...p, p50: p.lat_us.p50, p99: p.lat_us.p99 })),
    loadOrder: ['10K', '100K', '1M', 'saturation'],
    unit: 'frames/s',
    subtitle: `${data.machine}; ${data.date.slice(0, 10)}; ${data.command}`,
    prefix: 'tuning-net',
  });
  const header = `Measured ${data.date} on ${data.machine} with \`${data.command}\`${took(data.run_seconds)}.\n${data.setup}.\n`;
  const table = [
    '| mode | offered frames/s | achieved frames/s | lost | p50 µs | p90 µs | p99 µs | p99.9 µs | back-end CPU % | frames per CPU-s | load generator CPU % |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...data.points.map(
      (p) =>
        `| ${p.mode} | ${p.load} | ${p.fps} | ${dashIfNull(p.lost)} | ${p.lat_us.p50} | ${p.lat_us.p90} | ${p.lat_us.p99} | ${p.lat_us['p99.9']} | ${p.backend_cpu_pct} | ${dashIfNull(p.fps_per_cpu_s)} | ${p.loadgen_cpu_pct} |`,
    ),
  ].join('\n');
  const idle = [
    '| mode | back-end CPU % with no traffic |',
    '| --- | ---: |',
    ...data.idle.map((i) => `| ${i.mode} | ${i.backend_cpu_pct} |`),
  ].join('\n');
  replaceGenerated(
    'tuning.md',
    'tuning-net',
    `${header}\n${table}\n\nIdle cost (a front-end connected, both rings running, every RX buffer offered, nothing sent):\n\n${idle}\n\n${charts}`,
  );
}

function compare(): void {
  const path = join(REPO, 'results', 'blk-compare-latest.json');
  if (!existsSync(path)) {
    process.stderr.write('no results/blk-compare-latest.json: run npm run bench:blk first\n');
    return;
  }
  const data = JSON.parse(readFileSync(path, 'utf8')) as { date: string; machine: string; command: string; table: string };
  replaceGenerated(
    'README.md',
    'compare',
    `Measured ${data.date} on ${data.machine} with \`${data.command}\`:\n\n\`\`\`\n${data.table}\n\`\`\``,
  );
}

function compareNet(): void {
  const path = join(REPO, 'results', 'net-latest.json');
  if (!existsSync(path)) {
    process.stderr.write('no results/net-latest.json: run npm run bench:net first\n');
    return;
  }
  const data = JSON.parse(readFileSync(path, 'utf8')) as { header: string; table?: string };
  if (data.table === undefined) return; // written before the table was kept in the JSON
  replaceGenerated('README.md', 'compare-net', `${data.header}\n\n\`\`\`\n${data.table}\n\`\`\``);
}

await tuning();
await tuningNet();
compare();
compareNet();
