// Fds a hostile front-end hands over for the data plane and the back-end channel: kick, call and
// error fds must be eventfds and are made non-blocking (a pipe, or a blocking eventfd whose
// counter the front-end pushed to the maximum, would block a write forever); the back-end
// channel fd must be a socket. Each refusal is a failure ack, and the connection goes on.
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { closeAll } from '../../dist/control/connection.js';
import { ProtocolFeature, bit } from '../../dist/control/protocol.js';
import { VhostUserClient } from '../../dist/frontend/index.js';
import { native } from '../../dist/native.js';
import { run, type Child } from '../cli/cli-helpers.js';
import { captureLogs, startTestDaemon, type TestDaemon } from './helpers.js';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

/** A connected client with REPLY_ACK negotiated, so every request is acked or refused. */
async function negotiated(socketPath: string): Promise<VhostUserClient> {
  const client = await VhostUserClient.connect(socketPath, { timeoutMs: 5000, replyTimeoutMs: 5000 });
  cleanups.push(() => client.close());
  await client.getFeatures();
  await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.BACKEND_REQ));
  client.useReplyAck = true;
  // Rings stay disabled until SET_VRING_ENABLE, so a kick fd alone is accepted (not started).
  await client.setFeatures(bit(30));
  return client;
}

async function inProcessDaemon(): Promise<TestDaemon> {
  const logs = captureLogs();
  cleanups.push(() => logs.restore());
  const daemon = await startTestDaemon();
  cleanups.push(() => daemon.stop());
  return daemon;
}

function isOpen(fd: number): boolean {
  try {
    readFileSync(`/proc/self/fdinfo/${fd}`);
    return true;
  } catch {
    return false;
  }
}

/** The O_NONBLOCK bit of an fd's open file description, as /proc shows it. */
function nonBlocking(fd: number): boolean {
  const flags = /flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'));
  return (parseInt(flags![1], 8) & 0o4000) !== 0;
}

describe('kick, call and error fds', () => {
  it.each(['SET_VRING_CALL', 'SET_VRING_KICK', 'SET_VRING_ERR'] as const)(
    '%s with a pipe (a FIFO) or /dev/null is refused with a failure ack, and the connection goes on',
    async (type) => {
      const { socketPath, daemon } = await inProcessDaemon();
      const client = await negotiated(socketPath);
      const dir = mkdtempSync(join(tmpdir(), 'vut-fifo-'));
      cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
      execFileSync('mkfifo', [join(dir, 'pipe')]);
      for (const path of [join(dir, 'pipe'), '/dev/null']) {
        const fd = openSync(path, 'r+');
        cleanups.push(() => closeAll([fd]));
        await expect(client.request({ type, index: 0, noFd: false, fd })).rejects.toThrow(new RegExp(`${type} failed`));
      }
      // Still served after the refusals, on the same connection.
      expect(daemon.connections).toBe(1);
      expect(await client.getFeatures()).toBeGreaterThan(0n);
    },
  );

  it('an eventfd is accepted and made non-blocking (the front-end shares the change)', async () => {
    const { socketPath } = await inProcessDaemon();
    const client = await negotiated(socketPath);
    const call = native.eventfdCreate(0, true);
    cleanups.push(() => closeAll([call]));
    expect(nonBlocking(call)).toBe(false);
    await client.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: call });
    expect(nonBlocking(call)).toBe(true);
    // The back-end signals a new call fd once.
    expect(native.eventfdRead(call)).toBe(1);
  });

  it('a refused fd is closed by the daemon (only our copy stays open)', async () => {
    const { socketPath } = await inProcessDaemon();
    const client = await negotiated(socketPath);
    const before = new Set(readdirFds());
    const fd = openSync('/dev/null', 'r');
    await expect(client.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd })).rejects.toThrow(/failed/);
    closeAll([fd]);
    expect(isOpen(fd)).toBe(false);
    expect(new Set(readdirFds())).toEqual(before);
  });
});

function readdirFds(): number[] {
  return readdirSync('/proc/self/fd').map(Number);
}

describe('a blocking eventfd at its maximum count as call fd (daemon in a child process)', () => {
  let child: Child | undefined;
  let dir: string | undefined;
  afterEach(async () => {
    if (child && child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
    await child?.exited;
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it('does not block the daemon: SET_VRING_CALL is acked and the next request answered', async () => {
    dir = mkdtempSync(join(tmpdir(), 'vut-maxed-'));
    const socket = join(dir, 'blk.sock');
    child = run(['--socket', socket, '--engine', 'null', '--cpus', '0', '--poll', 'interrupt'], {
      env: { ...process.env, VHOST_USER_LOG: 'info' },
    });
    await child.serving();
    const client = await negotiated(socket);
    const call = native.eventfdCreate(0, true);
    cleanups.push(() => closeAll([call]));
    // Counter to 2^64 - 2, its maximum: one more write blocks a blocking eventfd.
    const big = Number.MAX_SAFE_INTEGER; // 2^53 - 1
    for (let i = 0; i < 2048; i++) native.eventfdWrite(call, big);
    native.eventfdWrite(call, 2046);
    // The daemon's signal on the new call fd would block forever without O_NONBLOCK.
    await client.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: call });
    expect(await client.getFeatures()).toBeGreaterThan(0n);
    expect(nonBlocking(call)).toBe(true);
  });
});

describe('SET_BACKEND_REQ_FD', () => {
  it('with an fd that is not a socket is refused with a failure ack; the connection goes on', async () => {
    const { socketPath } = await inProcessDaemon();
    const client = await negotiated(socketPath);
    for (const fd of [native.memfdCreate('not-a-socket', 4096), native.eventfdCreate(0)]) {
      cleanups.push(() => closeAll([fd]));
      await expect(client.request({ type: 'SET_BACKEND_REQ_FD', fd })).rejects.toThrow(/SET_BACKEND_REQ_FD failed/);
    }
    const [ours, theirs] = native.socketPair();
    cleanups.push(() => closeAll([ours, theirs]));
    await client.request({ type: 'SET_BACKEND_REQ_FD', fd: theirs });
    expect(await client.getFeatures()).toBeGreaterThan(0n);
  });
});
