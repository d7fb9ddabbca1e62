// VhostUserDaemon: the socket it owns, one front-end at a time with a reset in between, client
// mode (QEMU `server=on`, the daemon connects), and a clean stop. Every test ends with the
// process holding the fds it held before the daemon started.
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { DaemonError, VhostUserDaemon } from '../../dist/control/daemon.js';
import { FrontendDevice, VhostUserClient } from '../../dist/frontend/index.js';
import { BlkConfigOffset } from '../../dist/devices/blk/virtio-blk.js';
import { RecordingDataPlane, captureLogs, fdsBackTo, openFds, testBlkDevice, u64At, until } from './helpers.js';

const TIMEOUT_MS = 2000;
const DISK_SECTORS = BigInt((64 << 20) / 512);

let dir: string;
let logs: ReturnType<typeof captureLogs>;
let baseline: number;
const cleanups: (() => unknown)[] = [];

beforeAll(() => {
  logs = captureLogs();
});

afterAll(() => {
  logs.restore();
});

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-daemon-'));
  baseline = openFds();
});

afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  await fdsBackTo(baseline, 'fds after the daemon stopped');
  rmSync(dir, { recursive: true, force: true });
});

function daemonAt(
  socketPath: string,
  options: { client?: boolean; socketMode?: number; retryIntervalMs?: number; connectTimeoutMs?: number } = {},
) {
  const dataPlane = new RecordingDataPlane();
  const daemon = new VhostUserDaemon(testBlkDevice(1), { socketPath, dataPlane, ...options });
  cleanups.push(() => daemon.stop());
  return { daemon, dataPlane };
}

async function listening(socketPath = join(dir, 'blk.sock')) {
  const rig = daemonAt(socketPath);
  await rig.daemon.start();
  return { ...rig, socketPath };
}

/** Negotiates fully and reads the capacity: the daemon serves this front-end. */
async function servedAt(socketPath: string): Promise<void> {
  const device = await FrontendDevice.connect({ socketPath, replyTimeoutMs: TIMEOUT_MS });
  try {
    expect(u64At(await device.getConfig(BlkConfigOffset.capacity, 8))).toBe(DISK_SECTORS);
  } finally {
    device.close();
  }
}

function settled<T>(promise: Promise<T>, ms: number): Promise<boolean> {
  return Promise.race([
    promise.then(
      () => true,
      () => true,
    ),
    new Promise<boolean>((resolve) => setTimeout(() => resolve(false), ms)),
  ]);
}

describe('the listening socket', () => {
  it('is owner-only (0600) by default', async () => {
    const { socketPath } = await listening();
    expect(statSync(socketPath).isSocket()).toBe(true);
    expect(statSync(socketPath).mode & 0o777).toBe(0o600);
  });

  it('takes the mode it is given', async () => {
    const rig = daemonAt(join(dir, 'shared.sock'), { socketMode: 0o660 });
    await rig.daemon.start();
    expect(statSync(join(dir, 'shared.sock')).mode & 0o777).toBe(0o660);
  });

  it('a stale socket file (its daemon died, nobody listens) is replaced', async () => {
    const socketPath = join(dir, 'stale.sock');
    native.close(native.socketListen(socketPath, 0o600, 1));
    expect(statSync(socketPath).isSocket()).toBe(true);
    await listening(socketPath);
    await servedAt(socketPath);
  });

  it('a live socket is refused, and its daemon keeps it (even when the refused one is stopped)', async () => {
    const live = await listening();
    const second = daemonAt(live.socketPath);
    await expect(second.daemon.start()).rejects.toThrow(DaemonError);
    await expect(second.daemon.start()).rejects.toThrow(/already started/);
    await second.daemon.stop();
    expect(existsSync(live.socketPath)).toBe(true);
    await servedAt(live.socketPath);
  });

  it('a file that is not a socket is refused and left untouched', async () => {
    const socketPath = join(dir, 'precious.img');
    writeFileSync(socketPath, 'do not delete');
    const rig = daemonAt(socketPath);
    await expect(rig.daemon.start()).rejects.toThrow(/is not a socket/);
    await rig.daemon.stop();
    expect(readFileSync(socketPath, 'utf8')).toBe('do not delete');
  });

  it('start() twice is an error', async () => {
    const { daemon } = await listening();
    await expect(daemon.start()).rejects.toThrow(/already started/);
  });
});

describe('one front-end at a time', () => {
  it('a second front-end waits until the first disconnects, then is served from a clean state', async () => {
    const { daemon, dataPlane, socketPath } = await listening();
    const first = await FrontendDevice.connect({ socketPath, replyTimeoutMs: TIMEOUT_MS });
    cleanups.push(() => first.close());
    expect(daemon.connections).toBe(1);
    // The second connects (the kernel queues it) but nobody reads its requests yet.
    const second = await VhostUserClient.connect(socketPath, { replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => second.close());
    const features = second.getFeatures();
    expect(await settled(features, 300)).toBe(false);
    expect(daemon.connections).toBe(1);
    first.close();
    expect(await features).toBe(testBlkDevice(1).features | (1n << 30n));
    expect(daemon.connections).toBe(2);
    // The first front-end's rings and memory were dropped before the second was served.
    expect(dataPlane.events.slice(dataPlane.events.indexOf('start:0'))).toEqual(['start:0', 'reset']);
    expect(daemon.currentSession?.features).toBe(0n);
    await second.request({ type: 'SET_OWNER' }); // a new session: the first one's owner is gone
    expect(await second.getU64('GET_FEATURES')).toBeGreaterThan(0n);
  });

  it('serves front-end after front-end (every disconnect resets it)', async () => {
    const { daemon, socketPath } = await listening();
    for (let i = 0; i < 5; i++) await servedAt(socketPath);
    await until(() => daemon.currentSession === undefined, TIMEOUT_MS, 'the last front-end to be let go');
    expect(daemon.connections).toBe(5);
  });
});

describe('client mode (the front-end listens, the daemon connects)', () => {
  /** A front-end listening at `socketPath`, accepting one daemon at a time. */
  function frontendListener(socketPath: string) {
    const listenFd = native.socketListen(socketPath, 0o600, 4);
    cleanups.push(() => native.close(listenFd));
    return {
      async accept(): Promise<VhostUserClient> {
        let fd = -1;
        await until(() => (fd = native.socketAccept(listenFd)) >= 0, TIMEOUT_MS, 'the daemon to connect');
        const client = new VhostUserClient(fd, { replyTimeoutMs: TIMEOUT_MS });
        cleanups.push(() => client.close());
        return client;
      },
    };
  }

  it('retries until the front-end is listening, then is served', async () => {
    const socketPath = join(dir, 'qemu.sock');
    const { daemon } = daemonAt(socketPath, { client: true, retryIntervalMs: 10 });
    await daemon.start();
    await new Promise((resolve) => setTimeout(resolve, 100)); // several failed attempts
    expect(daemon.connections).toBe(0);
    const client = await frontendListener(socketPath).accept();
    expect(await client.getFeatures()).toBe(testBlkDevice(1).features | (1n << 30n));
    expect(daemon.connections).toBe(1);
  });

  it('reconnects after the front-end disconnects', async () => {
    const socketPath = join(dir, 'qemu.sock');
    const listener = frontendListener(socketPath);
    const { daemon, dataPlane } = daemonAt(socketPath, { client: true, retryIntervalMs: 10 });
    await daemon.start();
    const first = await listener.accept();
    await first.request({ type: 'SET_OWNER' });
    await first.getFeatures();
    first.close();
    const second = await listener.accept();
    await second.request({ type: 'SET_OWNER' });
    expect(await second.getFeatures()).toBeGreaterThan(0n);
    expect(daemon.connections).toBe(2);
    expect(dataPlane.events).toContain('reset');
  });

  it('gives up after connectTimeoutMs without a front-end: wait() rejects', async () => {
    const { daemon } = daemonAt(join(dir, 'nobody.sock'), { client: true, retryIntervalMs: 10, connectTimeoutMs: 100 });
    await daemon.start();
    await expect(daemon.wait()).rejects.toThrow(/no front-end listening/);
  });
});

describe('stop()', () => {
  it('unlinks the socket and resolves wait()', async () => {
    const { daemon, socketPath } = await listening();
    const waiting = daemon.wait();
    expect(await settled(waiting, 50)).toBe(false);
    await daemon.stop();
    await waiting;
    expect(existsSync(socketPath)).toBe(false);
  });

  it('disconnects the current front-end and resets the data plane', async () => {
    const { daemon, dataPlane, socketPath } = await listening();
    const device = await FrontendDevice.connect({ socketPath, replyTimeoutMs: TIMEOUT_MS });
    cleanups.push(() => device.close());
    await daemon.stop();
    expect(await settled(device.client.closed(), TIMEOUT_MS)).toBe(true);
    expect(dataPlane.running.size).toBe(0);
    expect(dataPlane.events.at(-1)).toBe('reset');
    await daemon.wait();
  });

  it('is idempotent', async () => {
    const { daemon } = await listening();
    await daemon.stop();
    await daemon.stop();
    await daemon.wait();
  });
});
