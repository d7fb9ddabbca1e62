// The ways a manager starts vhost-user-blk, each served end to end: a path it binds, an inherited
// listening fd (--socket-fd), systemd socket activation (LISTEN_FDS + fd 3) and client mode; and
// shutdown under repeated signals.
import { existsSync, mkdtempSync, openSync, closeSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { VhostUserClient } from '../../dist/frontend/index.js';
import { systemdListenFd } from '../../dist/cli/common.js';
import { probe, probePath, run, sleep, type Child } from './cli-helpers.js';

/** Not a round size, so a capacity read from the wrong place shows. */
const DISK = ['--engine', 'memory', '--size', '3M', '--cpus', '0', '--poll', 'interrupt'];
const DISK_BYTES = 3n << 20n;

let dir: string;
const children: Child[] = [];
const fds: number[] = [];

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-cli-'));
});

afterEach(async () => {
  for (const child of children.splice(0)) {
    if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
    await child.exited;
  }
  for (const fd of fds.splice(0)) native.close(fd);
  rmSync(dir, { recursive: true, force: true });
});

function start(args: string[], options?: Parameters<typeof run>[1]): Child {
  const child = run(args, options);
  children.push(child);
  return child;
}

/** A listening socket made here, as a manager would, to hand to the child. */
function listen(path: string): number {
  const fd = native.socketListen(path, 0o600, 4);
  fds.push(fd);
  return fd;
}

/** The parent's copy is closed once the child has its own (as a manager does after fork). */
function release(fd: number): void {
  fds.splice(fds.indexOf(fd), 1);
  native.close(fd);
}

async function stopWith(child: Child, signal: NodeJS.Signals = 'SIGTERM') {
  child.process.kill(signal);
  return child.exited;
}

describe('starting', () => {
  it('--socket PATH: binds the path, serves, removes it on SIGTERM with exit 0', async () => {
    const socket = join(dir, 'blk.sock');
    const child = start(['--socket', socket, ...DISK]);
    await child.serving();
    expect(await probePath(socket)).toEqual({ capacityBytes: DISK_BYTES, queues: 1n });
    expect(await stopWith(child)).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
  });

  it('--socket-fd N: serves the inherited listening socket as is (a front-end already waiting in its backlog too); the file is left to its owner', async () => {
    const socket = join(dir, 'inherited.sock');
    const fd = listen(socket);
    // Connected before the child exists: QEMU's qtests connect as soon as the socket listens.
    const early = VhostUserClient.connect(socket, { replyTimeoutMs: 10_000 });
    // stdio slot 5: the number is the caller's choice, not always 3.
    const child = start(['--socket-fd', '5', '--queues', '2', ...DISK], { extraFds: ['ignore', 'ignore', fd] });
    release(fd);
    expect(await probe(await early)).toEqual({ capacityBytes: DISK_BYTES, queues: 2n });
    await child.serving();
    expect(await probePath(socket)).toEqual({ capacityBytes: DISK_BYTES, queues: 2n });
    expect(child.stderr()).toContain('"inherited":true');
    expect(await stopWith(child)).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(true);
  });

  it('systemd socket activation: LISTEN_FDS=1 and LISTEN_PID of the process → fd 3 is served without --socket', async () => {
    const socket = join(dir, 'activated.sock');
    const fd = listen(socket);
    // systemd sets LISTEN_PID after fork; a shell that execs keeps its pid ($$).
    const child = start(DISK, { extraFds: [fd], shell: 'LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=blk exec "$@"' });
    release(fd);
    await child.serving();
    expect(await probePath(socket)).toEqual({ capacityBytes: DISK_BYTES, queues: 1n });
    expect(await stopWith(child)).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(true);
  });

  it('LISTEN_FDS meant for another process (LISTEN_PID differs) is ignored: without --socket that is a usage error', async () => {
    const child = start(DISK, { env: { ...process.env, LISTEN_FDS: '1', LISTEN_PID: '1' } });
    expect(await child.exited).toEqual({ code: 2, signal: null });
    expect(child.stderr()).toMatch(/--socket PATH or --socket-fd N is required/);
  });

  it('systemdListenFd follows sd_listen_fds: fd 3 for this pid only, variables removed, several sockets refused', () => {
    const env = { LISTEN_FDS: '1', LISTEN_PID: '4242', LISTEN_FDNAMES: 'x' };
    expect(systemdListenFd(env, 4242)).toBe(3);
    expect(env).toEqual({});
    expect(systemdListenFd({ LISTEN_FDS: '1', LISTEN_PID: '4243' }, 4242)).toBeUndefined();
    expect(systemdListenFd({ LISTEN_FDS: '0', LISTEN_PID: '4242' }, 4242)).toBeUndefined();
    expect(systemdListenFd({ LISTEN_FDS: 'x', LISTEN_PID: '4242' }, 4242)).toBeUndefined();
    expect(systemdListenFd({}, 4242)).toBeUndefined();
    expect(() => systemdListenFd({ LISTEN_FDS: '2', LISTEN_PID: '4242' }, 4242)).toThrow(/serves one/);
  });

  it("--client: connects to a listening front-end and serves it; the front-end's socket file is not removed", async () => {
    const socket = join(dir, 'frontend.sock');
    const listener = listen(socket);
    const child = start(['--client', '--socket', socket, ...DISK]);
    let fd = -1;
    const deadline = Date.now() + 20_000;
    while ((fd = native.socketAccept(listener)) < 0) {
      if (Date.now() > deadline || child.process.exitCode !== null)
        throw new Error(`no connection from the back-end:\n${child.stderr()}`);
      await sleep(20);
    }
    expect(await probe(new VhostUserClient(fd, { replyTimeoutMs: 5000 }))).toEqual({ capacityBytes: DISK_BYTES, queues: 1n });
    expect(await stopWith(child)).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(true);
  });
});

describe('refusals', () => {
  it.each([
    ['a regular file', () => openSync(join(dir, 'file'), 'w')],
    ['a connected socket, not a listening one', () => native.socketPair()[0]],
  ])('--socket-fd with %s: exit 1 and a clear message', async (_what, open) => {
    const fd = open();
    const child = start(['--socket-fd', '3', ...DISK], { extraFds: [fd] });
    closeSync(fd);
    expect(await child.exited).toEqual({ code: 1, signal: null });
    expect(child.stderr()).toMatch(/fd 3 is not a listening Unix stream socket/);
  });

  it('--socket-fd with an fd that is not open: exit 1 (EBADF)', async () => {
    const child = start(['--socket-fd', '1000', ...DISK]);
    expect(await child.exited).toEqual({ code: 1, signal: null });
    expect(child.stderr()).toMatch(/fd 1000 is not a listening Unix stream socket.*EBADF/);
  });

  it.each([
    [['--socket', 'x', '--socket-fd', '3'], /not both/],
    [['--client', '--socket-fd', '3'], /--client needs --socket PATH/],
    [['--socket-fd=-1'], /--socket-fd "-1" is not a whole number/],
    [['--socket', 'x', '--interrupt-grace-us', '-1'], /--interrupt-grace-us/],
    [['--socket', 'x', '--interrupt-grace-us', '1001'], /--interrupt-grace-us/],
  ])('%j is a usage error (exit 2)', async (args, message) => {
    const child = start([...args, ...DISK]);
    expect(await child.exited).toEqual({ code: 2, signal: null });
    expect(child.stderr()).toMatch(message);
  });
});

describe('stopping', () => {
  it('a second SIGTERM 2 ms after the first is absorbed: exit 0, socket file removed', async () => {
    const socket = join(dir, 'blk.sock');
    const child = start(['--socket', socket, ...DISK]);
    await child.serving();
    // A front-end connected, so the shutdown has a session to close while the second signal lands.
    const client = await VhostUserClient.connect(socket, { replyTimeoutMs: 5000 });
    await client.getFeatures();
    child.process.kill('SIGTERM');
    await sleep(2);
    child.process.kill('SIGTERM');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
    client.close();
  });

  it('a SIGTERM that surely lands during the shutdown (after "stopping" is logged) is absorbed, not fatal', async () => {
    const socket = join(dir, 'blk.sock');
    const child = start(['--socket', socket, ...DISK]);
    await child.serving();
    child.process.kill('SIGTERM');
    // Two signals sent back to back may merge into one pending signal; this one cannot.
    while (!child.stderr().includes('"msg":"stopping"') && child.process.exitCode === null) await sleep(1);
    child.process.kill('SIGTERM');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
  });

  it('a burst of SIGINT and SIGTERM is absorbed the same way', async () => {
    const socket = join(dir, 'blk.sock');
    const child = start(['--socket', socket, ...DISK]);
    await child.serving();
    for (const signal of ['SIGINT', 'SIGTERM', 'SIGINT', 'SIGTERM'] as const) child.process.kill(signal);
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
  });

  it('a SIGTERM during start-up stops it cleanly once started: exit 0, no socket left', async () => {
    const socket = join(dir, 'blk.sock');
    const child = start(['--socket', socket, ...DISK]);
    // Node is up when it logs; the worker pool may still be starting.
    while (!existsSync(socket) && child.process.exitCode === null) await sleep(1);
    child.process.kill('SIGTERM');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(socket)).toBe(false);
  });
});
