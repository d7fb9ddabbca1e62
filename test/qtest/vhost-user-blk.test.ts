// QEMU's own vhost-user-blk acceptance tests (tests/qtest/vhost-user-blk-test.c in qos-test),
// unmodified, against our back-end in every poll mode and against qemu-storage-daemon, so that a
// failure of ours can be told apart from a harness problem. The qtest starts the back-end as it
// starts qemu-storage-daemon (QTEST_QEMU_STORAGE_DAEMON_BINARY, here scripts/qsd-launcher.sh →
// vhost-user-blk --qsd-compat) with an inherited listening socket, and requires exit 0 on SIGTERM.
// qos-test is built by ../shared/peers/qemu-qtest/build.sh (cached in ~/.cache/qemu-qtest; a few
// minutes the first time). Never skipped: without it every test fails and says what to run.
import { execFileSync, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const LAUNCHER = join(ROOT, 'scripts', 'qsd-launcher.sh');
const QSD = process.env.VUT_QSD ?? '/usr/bin/qemu-storage-daemon';
/** The qtest's machine path for a vhost-user-blk-pci device on pc (i440FX). */
const PREFIX = '/x86_64/pc/i440FX-pcihost/pci-bus-pc/pci-bus/vhost-user-blk-pci';
const TESTS = [
  'vhost-user-blk-pci-tests/idx',
  'vhost-user-blk-pci-tests/nxvirtq',
  'vhost-user-blk-pci-tests/hotplug',
  'vhost-user-blk-pci-tests/multiqueue',
  'vhost-user-blk/vhost-user-blk-tests/basic',
  'vhost-user-blk/vhost-user-blk-tests/indirect',
];
const BUILD_TIMEOUT_MS = 20 * 60_000;
const QTEST_TIMEOUT_MS = 180_000;

/** ../shared beside the clone (CI), or VUT_SHARED. */
function sharedDir(): string {
  if (process.env.VUT_SHARED) return process.env.VUT_SHARED;
  let top = ROOT;
  try {
    top = execFileSync('git', ['rev-parse', '--show-toplevel'], { cwd: ROOT, encoding: 'utf8' }).trim();
  } catch {
    // Not a git checkout: the package root stands in.
  }
  return join(top, '..', 'shared');
}

interface QtestBuild {
  QOS_TEST: string;
  QEMU_MODULE_DIR: string;
  QTEST_QEMU_BINARY: string;
}

/** Runs build.sh (instant when cached) and returns its three variables, or why it could not. */
async function buildQosTest(): Promise<QtestBuild | string> {
  const script = join(sharedDir(), 'peers', 'qemu-qtest', 'build.sh');
  if (!existsSync(script)) return `${script} not found: the qtests need ../shared beside the clone (or VUT_SHARED)`;
  const started = Date.now();
  const result = await new Promise<{ code: number | null; out: string; err: string }>((resolve) => {
    const child = spawn('bash', [script], { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (out += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (err += text));
    const timer = setTimeout(() => child.kill('SIGKILL'), BUILD_TIMEOUT_MS);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, out, err });
    });
  });
  if (result.code !== 0)
    return `bash ${script} failed (exit ${result.code}); run it by hand (as root) to see why:\n${result.err.slice(-3000)}`;
  const vars = Object.fromEntries(
    result.out
      .trim()
      .split('\n')
      .map((line) => line.split('=', 2) as [string, string]),
  );
  if (!vars.QOS_TEST || !existsSync(vars.QOS_TEST)) return `bash ${script} printed no usable QOS_TEST:\n${result.out}`;
  const seconds = (Date.now() - started) / 1000;
  if (seconds > 5) process.stderr.write(`qemu-qtest: built qos-test in ${seconds.toFixed(0)} s\n`);
  return vars as unknown as QtestBuild;
}

interface TapResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  passed: number;
  failed: number;
  output: string;
  ms: number;
}

/** One qtest path through qos-test --tap in a scratch directory; the process group is killed on timeout. */
function runQtest(build: QtestBuild, test: string, storageDaemon: string, pollMode?: string): Promise<TapResult> {
  const scratch = mkdtempSync(join(tmpdir(), 'vut-qtest-'));
  const started = Date.now();
  return new Promise((resolve) => {
    const child = spawn(build.QOS_TEST, ['--tap', '-p', `${PREFIX}/${test}`], {
      cwd: scratch,
      detached: true, // its own process group: QEMU and the back-end go down with it on timeout
      stdio: ['ignore', 'pipe', 'pipe'],
      env: {
        ...process.env,
        QTEST_QEMU_BINARY: build.QTEST_QEMU_BINARY,
        QEMU_MODULE_DIR: build.QEMU_MODULE_DIR,
        QTEST_QEMU_STORAGE_DAEMON_BINARY: storageDaemon,
        VHOST_USER_BLK_POLL: pollMode ?? '',
        NODE: process.execPath,
      },
    });
    let output = '';
    child.stdout.setEncoding('utf8').on('data', (text: string) => (output += text));
    child.stderr.setEncoding('utf8').on('data', (text: string) => (output += text));
    const timer = setTimeout(() => {
      output += `\n(timed out after ${QTEST_TIMEOUT_MS} ms)`;
      try {
        process.kill(-child.pid!, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }, QTEST_TIMEOUT_MS);
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      rmSync(scratch, { recursive: true, force: true });
      resolve({
        code,
        signal,
        passed: (output.match(/^ok \d+ /gm) ?? []).length,
        failed: (output.match(/^not ok \d+/gm) ?? []).length,
        output,
        ms: Date.now() - started,
      });
    });
  });
}

const backEnds: { name: string; binary: string; poll?: string }[] = [
  { name: 'ours, busy polling', binary: LAUNCHER, poll: 'busy' },
  { name: 'ours, interrupt mode', binary: LAUNCHER, poll: 'interrupt' },
  { name: 'ours, adaptive polling', binary: LAUNCHER, poll: 'adaptive' },
  { name: 'qemu-storage-daemon (reference)', binary: QSD },
];

let build: QtestBuild | string = 'not built yet';
const timings: string[] = [];

beforeAll(async () => {
  build = await buildQosTest();
}, BUILD_TIMEOUT_MS);

afterAll(() => {
  if (timings.length > 0) process.stderr.write(`qemu-qtest timings:\n${timings.join('\n')}\n`);
});

describe.each(backEnds)("QEMU's vhost-user-blk qtests: $name", ({ name, binary, poll }) => {
  it.each(TESTS)(
    '%s',
    async (test) => {
      if (typeof build === 'string') throw new Error(`qos-test is not available: ${build}`);
      expect(existsSync(binary), `${binary} is missing`).toBe(true);
      const result = await runQtest(build, test, binary, poll);
      timings.push(
        `${name.padEnd(32)} ${test.padEnd(45)} ${result.failed === 0 && result.code === 0 ? 'ok' : 'FAIL'} ${result.ms} ms`,
      );
      const verdict = { exit: result.code, signal: result.signal, passed: result.passed, failed: result.failed };
      expect(verdict, result.output.slice(-4000)).toEqual({ exit: 0, signal: null, passed: 1, failed: 0 });
    },
    QTEST_TIMEOUT_MS + 10_000,
  );
});
