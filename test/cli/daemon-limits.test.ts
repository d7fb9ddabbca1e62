// The daemon's limits on both command lines (--max-queued-reply-bytes, --partial-message-timeout-ms,
// --first-message-timeout-ms, --listen-backlog, --drain-timeout-ms, --require-sealed-memory): parsed, refused when out of
// range, listed in --help, and reaching a running daemon.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { parseBlkArgs } from '../../dist/cli/vhost-user-blk.js';
import { parseNetArgs } from '../../dist/cli/vhost-user-net.js';
import { UsageError } from '../../dist/cli/common.js';
import { BIN, run, type Child } from './cli-helpers.js';

const NET_BIN = fileURLToPath(new URL('../../bin/vhost-user-net', import.meta.url));
const FLAGS = [
  '--max-queued-reply-bytes',
  '--partial-message-timeout-ms',
  '--first-message-timeout-ms',
  '--listen-backlog',
  '--drain-timeout-ms',
  '--require-sealed-memory',
];
const BLK = ['--socket', '/tmp/unused.sock'];
const NET = ['--socket', '/tmp/unused.sock'];

const parsers = [
  ['vhost-user-blk', (args: string[]) => parseBlkArgs([...BLK, ...args]).backend.limits],
  ['vhost-user-net', (args: string[]) => parseNetArgs([...NET, ...args]).backend.limits],
] as const;

function usageError(parse: () => unknown): string {
  try {
    parse();
  } catch (error) {
    expect(error).toBeInstanceOf(UsageError);
    return (error as Error).message;
  }
  throw new Error('expected a usage error');
}

describe.each(parsers)('%s limit flags', (_tool, limits) => {
  it('default to the daemon defaults (undefined) and sealed memory not required', () => {
    expect(limits([])).toEqual({
      maxQueuedReplyBytes: undefined,
      partialMessageTimeoutMs: undefined,
      firstMessageTimeoutMs: undefined,
      listenBacklog: undefined,
      drainTimeoutMs: undefined,
      requireSealedMemory: false,
    });
  });

  it('are parsed (the reply bound takes a size suffix)', () => {
    expect(
      limits([
        '--max-queued-reply-bytes',
        '1M',
        '--partial-message-timeout-ms',
        '250',
        '--first-message-timeout-ms',
        '400',
        '--listen-backlog',
        '17',
        '--drain-timeout-ms',
        '3000',
        '--require-sealed-memory',
      ]),
    ).toEqual({
      maxQueuedReplyBytes: 1 << 20,
      partialMessageTimeoutMs: 250,
      firstMessageTimeoutMs: 400,
      listenBacklog: 17,
      drainTimeoutMs: 3000,
      requireSealedMemory: true,
    });
    expect(limits(['--max-queued-reply-bytes', '8192'])?.maxQueuedReplyBytes).toBe(8192);
  });

  it('out of range or not numbers are usage errors naming the flag', () => {
    expect(usageError(() => limits(['--max-queued-reply-bytes', '100']))).toMatch(/--max-queued-reply-bytes must be between/);
    expect(usageError(() => limits(['--max-queued-reply-bytes', 'lots']))).toMatch(
      /--max-queued-reply-bytes "lots" is not a size/,
    );
    expect(usageError(() => limits(['--partial-message-timeout-ms', '0']))).toMatch(
      /--partial-message-timeout-ms must be between/,
    );
    expect(usageError(() => limits(['--first-message-timeout-ms', '0']))).toMatch(/--first-message-timeout-ms must be between/);
    expect(usageError(() => limits(['--listen-backlog', '70000']))).toMatch(/--listen-backlog must be between 1 and 65535/);
    expect(usageError(() => limits(['--drain-timeout-ms', '1.5']))).toMatch(/--drain-timeout-ms "1.5" is not a whole number/);
    expect(usageError(() => limits(['--require-sealed-memory=yes']))).toMatch(/require-sealed-memory/);
  });
});

describe('--help', () => {
  it.each([
    ['vhost-user-blk', BIN],
    ['vhost-user-net', NET_BIN],
  ])('of %s lists every limit flag', async (_tool, bin) => {
    const { stdout } = await promisify(execFile)(process.execPath, [bin, '--help']);
    for (const flag of FLAGS) expect(stdout).toContain(flag);
  });
});

describe('a running vhost-user-blk', () => {
  let dir: string | undefined;
  let child: Child | undefined;

  afterEach(async () => {
    if (child && child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
    await child?.exited;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('listens with the backlog given', async () => {
    dir = mkdtempSync(join(tmpdir(), 'vut-limits-'));
    const socket = join(dir, 'blk.sock');
    child = run(['--socket', socket, '--engine', 'null', '--cpus', '0', '--poll', 'interrupt', '--listen-backlog', '17']);
    await child.serving();
    expect(child.stderr()).toMatch(/"backlog":17,.*"msg":"listening"/);
  });
});
