// VhostUserDaemon: the socket it owns, one front-end at a time with a reset in between, client
// mode (QEMU `server=on`, the daemon connects), and a clean stop. Every test ends with the
// process holding the fds it held before the daemon started.
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { FileSeal, native } from '../../dist/native.js';
import { DaemonError, VhostUserDaemon, type DaemonOptions } from '../../dist/control/daemon.js';
import { FrontendDevice, VhostUserClient } from '../../dist/frontend/index.js';
import { BlkConfigOffset } from '../../dist/devices/blk/virtio-blk.js';
import { closeAll } from '../../dist/control/connection.js';
import { HEADER_SIZE, encodeMessage } from '../../dist/control/codec/index.js';
import { HeaderFlag, Request } from '../../dist/control/protocol.js';
import {
  AbandoningDataPlane,
  GatedDataPlane,
  RecordingDataPlane,
  captureLogs,
  fdsBackTo,
  openFds,
  testBlkDevice,
  u64At,
  until,
} from './helpers.js';

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

function daemonAt<Plane extends RecordingDataPlane = RecordingDataPlane>(
  socketPath: string,
  options: Omit<DaemonOptions, 'socketPath' | 'dataPlane'> & { dataPlane?: Plane } = {},
) {
  const dataPlane = options.dataPlane ?? (new RecordingDataPlane() as Plane);
  const daemon = new VhostUserDaemon(testBlkDevice(1), { ...options, socketPath, dataPlane });
  cleanups.push(() => daemon.stop());
  return { daemon, dataPlane };
}

async function listening<Plane extends RecordingDataPlane = RecordingDataPlane>(
  socketPath = join(dir, 'blk.sock'),
  options: Parameters<typeof daemonAt<Plane>>[1] = {},
) {
  const rig = daemonAt(socketPath, options);
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

/** Starts a daemon on `socketPath` in a child process; resolves with how start() ended. */
async function startDaemonInChild(socketPath: string, timeoutMs: number): Promise<string> {
  const daemonModule = new URL('../../dist/control/daemon.js', import.meta.url).href;
  const script = `
    const { VhostUserDaemon } = await import(${JSON.stringify(daemonModule)});
    const idle = () => Promise.resolve(0);
    const dataPlane = { setMemory: idle, startQueue: idle, stopQueue: idle, setNotifyFds: idle, reset: idle };
    const device = { name: 'probe', features: 0n, numQueues: 1, maxQueueSize: 256 };
    const daemon = new VhostUserDaemon(device, { socketPath: process.argv[1], dataPlane });
    try {
      await daemon.start();
      console.log('started');
    } catch (error) {
      console.log('refused: ' + error.message);
    }
    await daemon.stop();`;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script, socketPath], {
    timeout: timeoutMs,
  });
  return stdout.trim();
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

  it('a live daemon whose backlog is full is detected at once, not waited on', async () => {
    const socketPath = join(dir, 'busy.sock');
    const listenFd = native.socketListen(socketPath, 0o600, 0);
    const queued: number[] = [];
    cleanups.push(() => closeAll([listenFd, ...queued]));
    for (let fd = native.socketTryConnect(socketPath); fd >= 0 && queued.length < 64; fd = native.socketTryConnect(socketPath)) {
      queued.push(fd);
    }
    expect(native.socketTryConnect(socketPath), 'the backlog is full').toBe(-1);
    // In a child process: a connect that waits for room in the backlog would hang it, not the test.
    const started = performance.now();
    const outcome = await startDaemonInChild(socketPath, 10 * TIMEOUT_MS);
    expect(outcome).toMatch(/^refused: another process is already listening on .*busy\.sock \(its backlog is full\)$/);
    expect(performance.now() - started).toBeLessThan(10 * TIMEOUT_MS);
    expect(existsSync(socketPath)).toBe(true);
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
    expect(await features).toBe(testBlkDevice(1).features | (1n << 30n) | (1n << 26n));
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

describe('front-ends that misbehave do not hold up the ones behind them', () => {
  const REPLY_BYTES = HEADER_SIZE + 8; // a GET_FEATURES reply

  it('one that floods requests and never reads the replies: its queued replies stay bounded, and the next is served once it leaves', async () => {
    const bound = 8 * 1024;
    const { daemon, socketPath } = await listening(undefined, { maxQueuedReplyBytes: bound });
    const flooder = native.socketConnect(socketPath);
    const open = [flooder];
    cleanups.push(() => closeAll(open.splice(0)));
    const second = await VhostUserClient.connect(socketPath, { replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => second.close());
    const features = second.getFeatures();
    features.catch(() => undefined); // awaited below; a test failing before then must not leave it unhandled

    const header = encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION);
    const chunk = new Uint8Array(HEADER_SIZE * 1024);
    for (let offset = 0; offset < chunk.length; offset += HEADER_SIZE) chunk.set(header, offset);
    let requested = 0;
    let mostQueued = 0;
    const floodEnds = Date.now() + 300;
    while (Date.now() < floodEnds) {
      for (let sent; (sent = native.sendMsg(flooder, chunk, [])) > 0;) requested += sent / HEADER_SIZE;
      await new Promise((resolve) => setTimeout(resolve, 1));
      mostQueued = Math.max(mostQueued, daemon.currentSession?.queuedReplyBytes ?? 0);
    }
    expect(requested * REPLY_BYTES, 'the flood asked for far more than the bound').toBeGreaterThan(10 * bound);
    expect(mostQueued).toBeGreaterThanOrEqual(bound);
    expect(mostQueued).toBeLessThan(bound + REPLY_BYTES);
    expect(daemon.connections).toBe(1);

    closeAll(open.splice(0)); // the flooder leaves
    expect(await features).toBe(testBlkDevice(1).features | (1n << 30n) | (1n << 26n));
    expect(daemon.connections).toBe(2);
  });

  it('one that sends half a header and stops is dropped after the partial-message timeout, and the next is served', async () => {
    const timeoutMs = 150;
    const { daemon, socketPath } = await listening(undefined, { partialMessageTimeoutMs: timeoutMs });
    const logsBefore = logs.lines.length;
    const stalled = native.socketConnect(socketPath);
    cleanups.push(() => closeAll([stalled]));
    native.sendMsg(stalled, encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION).subarray(0, 6), []);
    await until(() => daemon.connections === 1, TIMEOUT_MS, 'the stalled front-end to be accepted');
    const started = performance.now();
    await servedAt(socketPath);
    expect(performance.now() - started).toBeGreaterThanOrEqual(timeoutMs - 20);
    expect(daemon.connections).toBe(2);
    const dropped = logs.lines
      .slice(logsBefore)
      .find((line) => line.includes('front-end disconnected') && line.includes('"connection":1'));
    expect(dropped).toContain(`peer sent 6 of 12 header bytes and nothing more for ${timeoutMs} ms`);
  });

  it('200 front-ends connecting at once: none is refused (EAGAIN), each is served in turn', async () => {
    const { daemon, socketPath } = await listening();
    const fds = Array.from({ length: 200 }, () => native.socketTryConnect(socketPath));
    const clients = fds.filter((fd) => fd >= 0).map((fd) => new VhostUserClient(fd, { replyTimeoutMs: 10 * TIMEOUT_MS }));
    cleanups.push(() => clients.forEach((client) => client.close()));
    expect(fds.filter((fd) => fd < 0).length, 'connects refused with EAGAIN').toBe(0);
    const expected = testBlkDevice(1).features | (1n << 30n) | (1n << 26n);
    await Promise.all(
      clients.map(async (client) => {
        expect(await client.getFeatures()).toBe(expected);
        client.close();
      }),
    );
    expect(daemon.connections).toBe(200);
  });

  it('one that leaves during a long drain (GET_VRING_BASE) is noticed at once; after the drain the next is served', async () => {
    const { daemon, dataPlane, socketPath } = await listening(undefined, { dataPlane: new GatedDataPlane() });
    cleanups.push(() => dataPlane.release()); // a failing test must not leave daemon.stop() waiting on the drain
    const first = await FrontendDevice.connect({ socketPath, replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => first.close());
    dataPlane.hold = 'stop';
    const draining = first.stopQueue(0).catch((error: Error) => error);
    await until(() => dataPlane.held !== undefined, TIMEOUT_MS, 'the drain to start');
    const second = await VhostUserClient.connect(socketPath, { replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => second.close());
    const features = second.getFeatures();
    features.catch(() => undefined); // awaited below; a test failing before then must not leave it unhandled
    const logsBefore = logs.lines.length;

    first.close();
    await until(
      () =>
        logs.lines
          .slice(logsBefore)
          .some((line) => line.includes('while a request was in progress') && line.includes('GET_VRING_BASE')),
      TIMEOUT_MS,
      'the hang-up to be logged while the drain is still held',
    );
    expect(await draining).toBeInstanceOf(Error);
    expect(dataPlane.events).not.toContain('reset'); // the drain runs to its end first
    dataPlane.release();
    expect(await features).toBe(testBlkDevice(1).features | (1n << 30n) | (1n << 26n));
    expect(dataPlane.events.slice(-2)).toEqual(['stop:0', 'reset']);
    expect(daemon.connections).toBe(2);
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
    expect(await client.getFeatures()).toBe(testBlkDevice(1).features | (1n << 30n) | (1n << 26n));
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

  it('a front-end whose backlog is full is retried, never waited on', async () => {
    const socketPath = join(dir, 'qemu.sock');
    const listenFd = native.socketListen(socketPath, 0o600, 0);
    const queued: number[] = [];
    cleanups.push(() => closeAll([listenFd, ...queued]));
    for (let fd = native.socketTryConnect(socketPath); fd >= 0 && queued.length < 64; fd = native.socketTryConnect(socketPath)) {
      queued.push(fd);
    }
    const { daemon } = daemonAt(socketPath, { client: true, retryIntervalMs: 10 });
    await daemon.start();
    await new Promise((resolve) => setTimeout(resolve, 100)); // this loop runs: the daemon is not stuck in connect
    expect(daemon.connections).toBe(0);
    // Room in the backlog: the front-end accepts everyone queued, then the daemon.
    const accepted: number[] = [];
    cleanups.push(() => closeAll(accepted));
    for (let fd; (fd = native.socketAccept(listenFd)) >= 0;) accepted.push(fd);
    await until(() => daemon.connections === 1, TIMEOUT_MS, 'the daemon to connect');
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

describe('sealed memory (a region fd the front-end could shrink later would SIGBUS the daemon)', () => {
  const MiB = 1 << 20;
  const NOT_SEALED = 'not sealed against shrinking';

  /** A 1 MiB memfd, sealed against shrinking and growing as QEMU's memfd backend does, or not. */
  function memfd(sealed: boolean): number {
    const fd = native.memfdCreate(sealed ? 'sealed' : 'unsealed', MiB);
    cleanups.push(() => native.close(fd));
    if (sealed) native.addFileSeals(fd, FileSeal.SHRINK | FileSeal.GROW);
    return fd;
  }

  function region(fd: number, guestPhysAddr: number) {
    return {
      guestPhysAddr: BigInt(guestPhysAddr),
      memorySize: BigInt(MiB),
      userspaceAddr: BigInt(0x7f00_0000_0000 + guestPhysAddr),
      mmapOffset: 0n,
      fd,
    };
  }

  async function negotiated(socketPath: string): Promise<VhostUserClient> {
    const client = await VhostUserClient.connect(socketPath, { replyTimeoutMs: TIMEOUT_MS });
    cleanups.push(() => client.close());
    const features = await client.getFeatures();
    await client.setProtocolFeatures(await client.getProtocolFeatures());
    await client.request({ type: 'SET_OWNER' });
    await client.setFeatures(features);
    return client;
  }

  function warnings(since: number): number {
    return logs.lines.slice(since).filter((line) => line.includes(NOT_SEALED)).length;
  }

  it('a sealed memfd is accepted quietly', async () => {
    const { daemon, dataPlane, socketPath } = await listening();
    const client = await negotiated(socketPath);
    const before = logs.lines.length;
    await client.request({ type: 'SET_MEM_TABLE', regions: [region(memfd(true), 0)] }, { needReply: true });
    expect(dataPlane.memory).toHaveLength(1);
    expect(daemon.currentSession?.memoryRegions[0].sealedAgainstShrink).toBe(true);
    expect(warnings(before)).toBe(0);
  });

  it('unsealed memfds are accepted with one warning per table, naming the regions', async () => {
    const { daemon, dataPlane, socketPath } = await listening();
    const client = await negotiated(socketPath);
    const before = logs.lines.length;
    await client.request(
      { type: 'SET_MEM_TABLE', regions: [region(memfd(false), 0), region(memfd(false), 4 * MiB)] },
      { needReply: true },
    );
    expect(dataPlane.memory).toHaveLength(2);
    expect(daemon.currentSession?.memoryRegions.map((r) => r.sealedAgainstShrink)).toEqual([false, false]);
    expect(warnings(before)).toBe(1);
    expect(logs.lines.slice(before).find((line) => line.includes(NOT_SEALED))).toMatch(/0x0, 0x400000/);
    // Adding a sealed region does not repeat the warning about the ones already there.
    const { fd, ...added } = region(memfd(true), 8 * MiB);
    await client.request({ type: 'ADD_MEM_REG', region: added, fd }, { needReply: true });
    expect(dataPlane.memory).toHaveLength(3);
    expect(warnings(before)).toBe(1);
  });

  it('under requireSealedMemory an unsealed region is refused with a failure ack, a sealed one accepted', async () => {
    const { dataPlane, socketPath } = await listening(undefined, { requireSealedMemory: true });
    const client = await negotiated(socketPath);
    const before = logs.lines.length;
    await expect(
      client.request(
        { type: 'SET_MEM_TABLE', regions: [region(memfd(true), 0), region(memfd(false), 4 * MiB)] },
        { needReply: true },
      ),
    ).rejects.toThrow('SET_MEM_TABLE failed (back-end replied 1)');
    expect(logs.lines.slice(before).join('\n')).toMatch(/region\(s\) at guest address 0x400000 not sealed against shrinking/);
    expect(client.isClosed).toBe(false);
    expect(dataPlane.memory).toHaveLength(0);
    const { fd, ...unsealed } = region(memfd(false), 0);
    await expect(client.request({ type: 'ADD_MEM_REG', region: unsealed, fd }, { needReply: true })).rejects.toThrow(
      'ADD_MEM_REG failed (back-end replied 1)',
    );
    await client.request({ type: 'SET_MEM_TABLE', regions: [region(memfd(true), 0)] }, { needReply: true });
    expect(dataPlane.memory).toHaveLength(1);
  });

  it('what the seal buys: a sealed memfd cannot be shrunk (EPERM); an unsealed one shrunk under a mapping kills the process that touches it (SIGBUS)', async () => {
    // In a child: the SIGBUS would take the test runner down with it.
    const nativeUrl = new URL('../../dist/native.js', import.meta.url).href;
    const script = (sealed: boolean) => `
      import { ftruncateSync } from 'node:fs';
      import { native, FileSeal } from '${nativeUrl}';
      const fd = native.memfdCreate('shrink', ${MiB});
      if (${sealed}) native.addFileSeals(fd, FileSeal.SHRINK | FileSeal.GROW);
      const view = new Uint8Array(native.mmapShared(fd, ${MiB}, 0, true));
      try { ftruncateSync(fd, 0); console.log('truncated'); } catch (error) { console.log(error.code); }
      view[${MiB} - 1] = 1;
      console.log('touched');`;
    const runScript = (sealed: boolean) =>
      new Promise<{ stdout: string; signal: NodeJS.Signals | null }>((resolve) => {
        execFile(process.execPath, ['--input-type=module', '-e', script(sealed)], (error, stdout) =>
          resolve({ stdout, signal: (error as { signal?: NodeJS.Signals } | null)?.signal ?? null }),
        );
      });
    expect(await runScript(true)).toEqual({ stdout: 'EPERM\ntouched\n', signal: null });
    expect(await runScript(false)).toEqual({ stdout: 'truncated\n', signal: 'SIGBUS' });
  });

  it("the front-end library's memory is sealed like QEMU's, so it is served under requireSealedMemory", async () => {
    const { socketPath } = await listening(undefined, { requireSealedMemory: true });
    const before = logs.lines.length;
    await servedAt(socketPath);
    expect(warnings(before)).toBe(0);
    expect(logs.lines.slice(before).join('\n')).not.toMatch(/request refused/);
  });
});

describe('drain timeout (a hung backing device must not hang GET_VRING_BASE for ever)', () => {
  it('a drain that outlives drainTimeoutMs disconnects the front-end and is logged; with a data plane that cannot abandon, the next one is served once the device lets go', async () => {
    const drainTimeoutMs = 100;
    const { daemon, dataPlane, socketPath } = await listening(undefined, { dataPlane: new GatedDataPlane(), drainTimeoutMs });
    cleanups.push(() => dataPlane.release());
    const first = await FrontendDevice.connect({ socketPath, replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => first.close());
    dataPlane.hold = 'stop'; // the stop never resolves: a device whose requests never complete
    const before = logs.lines.length;
    const started = Date.now();
    const draining = await first.stopQueue(0).catch((error: Error) => error);
    expect(draining).toBeInstanceOf(Error);
    expect(Date.now() - started).toBeGreaterThanOrEqual(drainTimeoutMs - 5);
    expect(logs.lines.slice(before).join('\n')).toMatch(/did not finish within the drain timeout \(100 ms\)/);
    // The drain is still held (the device never answered): the next front-end waits, because a
    // late completion could still land in memory until the data plane lets go.
    expect(dataPlane.held).toBeDefined();
    const next = servedAt(socketPath);
    await new Promise((resolve) => setTimeout(resolve, 200));
    expect(daemon.connections).toBe(1);
    dataPlane.release();
    await next;
    expect(daemon.connections).toBe(2);
    expect(dataPlane.events).toContain('reset');
  });

  it('with a data plane that can abandon: the hung rings are written off and the next front-end is served at once', async () => {
    const drainTimeoutMs = 100;
    const { daemon, dataPlane, socketPath } = await listening(undefined, {
      dataPlane: new AbandoningDataPlane(),
      drainTimeoutMs,
    });
    cleanups.push(() => dataPlane.release());
    const first = await FrontendDevice.connect({ socketPath, replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => first.close());
    dataPlane.hold = 'stop';
    const before = logs.lines.length;
    expect(await first.stopQueue(0).catch((error: Error) => error)).toBeInstanceOf(Error);
    // The device never answers, yet the next front-end is served.
    await servedAt(socketPath);
    expect(dataPlane.held).toBeDefined();
    expect(daemon.connections).toBe(2);
    expect(dataPlane.events).toContain('abandon');
    expect(logs.lines.slice(before).join('\n')).toMatch(/abandoning the rings of a drain that timed out/);
  });

  it('a drain that finishes within drainTimeoutMs answers GET_VRING_BASE as usual', async () => {
    const { daemon, dataPlane, socketPath } = await listening(undefined, {
      dataPlane: new GatedDataPlane(),
      drainTimeoutMs: 2000,
    });
    cleanups.push(() => dataPlane.release());
    const first = await FrontendDevice.connect({ socketPath, replyTimeoutMs: 5 * TIMEOUT_MS });
    cleanups.push(() => first.close());
    dataPlane.hold = 'stop';
    const draining = first.stopQueue(0);
    await until(() => dataPlane.held !== undefined, TIMEOUT_MS, 'the drain to start');
    dataPlane.release();
    expect(typeof (await draining)).toBe('number');
    expect(first.client.isClosed).toBe(false);
    expect(daemon.connections).toBe(1);
  });
});
