// npm run bench:plot — turns results/tuning-latest.json (npm run bench:tuning) and
// results/blk-compare-latest.json (npm run bench:blk) into the SVG plots and the generated
// tables of tuning.md and README.md (between <!-- generated:NAME --> markers). Charts are
// Vega-Lite specs rendered headless by Vega.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import * as vega from 'vega';
import * as vegaLite from 'vega-lite';

const REPO = new URL('..', import.meta.url).pathname;

interface TuningPoint {
  mode: string;
  load: string;
  offered_iops: number | null;
  iops: number;
  lat_us: { p50: number; p90: number; p99: number; 'p99.9': number; max: number; mean: number };
  backend_cpu_pct: number;
}
interface Tuning {
  date: string;
  machine: string;
  command: string;
  setup: string;
  points: TuningPoint[];
  idle: { mode: string; backend_cpu_pct: number }[];
  qd1: {
    ours: { mode: string; iops: number; p50: number; p99: number; mean: number }[];
    fio: { p50: number; p99: number; mean: number; iops: number };
  };
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

async function tuning(): Promise<void> {
  const path = join(REPO, 'results', 'tuning-latest.json');
  if (!existsSync(path)) {
    process.stderr.write('no results/tuning-latest.json: run npm run bench:tuning first\n');
    return;
  }
  const data = JSON.parse(readFileSync(path, 'utf8')) as Tuning;
  const rows = data.points.map((p) => ({ ...p, p50: p.lat_us.p50, p99: p.lat_us.p99, 'p99.9': p.lat_us['p99.9'] }));
  const loadOrder = ['1K', '10K', '100K', 'saturation'];
  const common = { data: { values: rows }, width: 360, height: 240 } as const;
  const latency = await svg({
    ...common,
    title: { text: 'p99 latency by offered load', subtitle: `${data.machine}; ${data.date.slice(0, 10)}; ${data.command}` },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'load', type: 'ordinal', sort: loadOrder, title: 'offered load (IOPS)' },
      y: { field: 'p99', type: 'quantitative', scale: { type: 'log' }, title: 'p99 latency (µs, log)' },
      color: { field: 'mode', type: 'nominal' },
    },
  });
  const cpu = await svg({
    ...common,
    title: { text: 'back-end CPU by offered load', subtitle: `${data.machine}; ${data.date.slice(0, 10)}; ${data.command}` },
    mark: { type: 'line', point: true },
    encoding: {
      x: { field: 'load', type: 'ordinal', sort: loadOrder, title: 'offered load (IOPS)' },
      y: { field: 'backend_cpu_pct', type: 'quantitative', title: 'back-end CPU (% of one core)' },
      color: { field: 'mode', type: 'nominal' },
    },
  });
  writeFileSync(join(REPO, 'tuning-latency.svg'), latency);
  writeFileSync(join(REPO, 'tuning-cpu.svg'), cpu);

  const header = `Measured ${data.date} on ${data.machine} with \`${data.command}\`.\n${data.setup}.\n`;
  const table = [
    '| mode | offered | achieved IOPS | p50 µs | p90 µs | p99 µs | p99.9 µs | back-end CPU % |',
    '| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |',
    ...data.points.map(
      (p) =>
        `| ${p.mode} | ${p.load} | ${p.iops} | ${p.lat_us.p50} | ${p.lat_us.p90} | ${p.lat_us.p99} | ${p.lat_us['p99.9']} | ${p.backend_cpu_pct} |`,
    ),
  ].join('\n');
  const idle = [
    '| mode | back-end CPU % with no I/O |',
    '| --- | ---: |',
    ...data.idle.map((i) => `| ${i.mode} | ${i.backend_cpu_pct} |`),
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
    `${header}\n${table}\n\nIdle cost (a front-end connected, rings running, nothing sent):\n\n${idle}\n\nLatency at queue depth 1, closed loop:\n\n${qd1}\n\n![p99 latency](tuning-latency.svg) ![back-end CPU](tuning-cpu.svg)`,
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

await tuning();
compare();
