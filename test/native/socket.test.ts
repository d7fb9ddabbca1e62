// Unix sockets with fds, and FdWatcher, through the native/ring addon.
import { mkdtempSync, rmSync, statSync } from 'node:fs';
import { constants, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { O_CLOEXEC, O_NONBLOCK, fdFlags, openFdCount, sleep, thrown, track } from './preamble.js';

const bytes = (...values: number[]) => Uint8Array.from(values);

describe('socketPair, sendMsg and recvMsg', () => {
  it('creates non-blocking, close-on-exec sockets', () => {
    for (const fd of track(native.socketPair())) {
      expect(fdFlags(fd) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
    }
  });

  it('moves bytes without fds into data[offset, offset + length)', () => {
    const [a, b] = track(native.socketPair());
    expect(native.sendMsg(a, bytes(1, 2, 3), [])).toBe(3);
    const data = new Uint8Array(8).fill(0xee);
    expect(native.recvMsg(b, data, 2, 4, 8)).toEqual({ bytes: 3, fds: [], truncated: false });
    expect([...data]).toEqual([0xee, 0xee, 1, 2, 3, 0xee, 0xee, 0xee]);
  });

  it('respects the byte offset of a Uint8Array view', () => {
    const [a, b] = track(native.socketPair());
    const backing = new Uint8Array(16);
    native.sendMsg(a, backing.subarray(4, 6).fill(9), []);
    const into = new Uint8Array(16);
    expect(native.recvMsg(b, into.subarray(10), 1, 5, 0).bytes).toBe(2);
    expect([...into.subarray(10, 14)]).toEqual([0, 9, 9, 0]);
  });

  it('passes one fd that is a real, close-on-exec duplicate', () => {
    const [a, b] = track(native.socketPair());
    const event = track(native.eventfdCreate(0));
    native.sendMsg(a, bytes(7), [event]);
    const result = native.recvMsg(b, new Uint8Array(4), 0, 4, 8);
    expect(result).toMatchObject({ bytes: 1, truncated: false });
    expect(result.fds).toHaveLength(1);
    const copy = track(result.fds[0]);
    expect(copy).not.toBe(event);
    expect(fdFlags(copy) & O_CLOEXEC).toBe(O_CLOEXEC);
    native.eventfdWrite(copy, 5);
    expect(native.eventfdRead(event)).toBe(5);
  });

  it('passes eight fds in order', () => {
    const [a, b] = track(native.socketPair());
    const events = track(Array.from({ length: 8 }, () => native.eventfdCreate(0)));
    native.sendMsg(a, bytes(1), events);
    const result = native.recvMsg(b, new Uint8Array(1), 0, 1, 8);
    expect(result.truncated).toBe(false);
    const copies = track(result.fds);
    expect(copies).toHaveLength(8);
    copies.forEach((copy, i) => native.eventfdWrite(copy, i + 1));
    expect(events.map((fd) => native.eventfdRead(fd))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('reports truncation and installs no more than maxFds fds', () => {
    const [a, b] = track(native.socketPair());
    const events = track(Array.from({ length: 4 }, () => native.eventfdCreate(0)));
    for (const maxFds of [0, 1, 2]) {
      native.sendMsg(a, bytes(maxFds), events);
      const before = openFdCount();
      const result = native.recvMsg(b, new Uint8Array(1), 0, 1, maxFds);
      track(result.fds);
      expect(result).toMatchObject({ bytes: 1, truncated: true });
      expect(result.fds).toHaveLength(maxFds);
      expect(openFdCount()).toBe(before + maxFds); // the kernel closed the rest
    }
  });

  it('returns -1 when it would block, 0 at end of stream', () => {
    const [a, b] = track(native.socketPair());
    expect(native.recvMsg(b, new Uint8Array(4), 0, 4, 0)).toEqual({ bytes: -1, fds: [], truncated: false });
    const chunk = new Uint8Array(65536);
    let sent = 0;
    for (let i = 0; i < 10_000 && sent !== -1; i++) sent = native.sendMsg(a, chunk, []);
    expect(sent).toBe(-1);
    native.close(a);
    const drain = new Uint8Array(65536);
    let received;
    do received = native.recvMsg(b, drain, 0, drain.length, 0).bytes;
    while (received > 0);
    expect(received).toBe(0);
  });

  it('throws EPIPE (no SIGPIPE) when the peer is gone', () => {
    const [a, b] = native.socketPair();
    track(a);
    native.close(b);
    expect(thrown(() => native.sendMsg(a, bytes(1), []))).toMatchObject({ code: 'EPIPE', errno: 32, syscall: 'sendmsg' });
  });

  it('rejects bad arguments without touching memory', () => {
    const [a, b] = track(native.socketPair());
    const data = new Uint8Array(8);
    expect(thrown(() => native.recvMsg(b, data, 4, 5, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.recvMsg(b, data, 9, 1, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.recvMsg(b, data, 0, 0, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.recvMsg(b, data, 0.5, 1, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.recvMsg(b, data, 0, 1, 254))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.recvMsg(b, new Uint16Array(4) as never, 0, 1, 0))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.sendMsg(a, new Uint8Array(0), [a]))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.sendMsg(a, data, ['3' as never]))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.sendMsg(a, data, new Array<number>(254).fill(a)))).toBeInstanceOf(RangeError);
    expect(thrown(() => (native.sendMsg as unknown as () => void)())).toBeInstanceOf(TypeError);
    expect(thrown(() => native.close(-1))).toBeInstanceOf(RangeError);
  });

  it('close throws EBADF the second time', () => {
    const [a, b] = native.socketPair();
    native.close(a);
    native.close(b);
    expect(thrown(() => native.close(a))).toMatchObject({ code: 'EBADF', errno: 9, syscall: 'close' });
  });
});

describe('socketListen, socketConnect and socketAccept', () => {
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'ring-socket-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('listens with the given mode, accepts and talks both ways', () => {
    const path = join(dir, 'vhost.sock');
    const listenFd = track(native.socketListen(path, 0o600, 16));
    const stat = statSync(path);
    expect(stat.isSocket()).toBe(true);
    expect(stat.mode & 0o777).toBe(0o600);
    expect(native.socketAccept(listenFd)).toBe(-1);

    const client = track(native.socketConnect(path));
    expect(fdFlags(client) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
    const server = track(native.socketAccept(listenFd));
    expect(server).toBeGreaterThan(0);
    expect(fdFlags(server) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);

    native.sendMsg(client, bytes(1, 2), []);
    const data = new Uint8Array(2);
    expect(native.recvMsg(server, data, 0, 2, 0).bytes).toBe(2);
    native.sendMsg(server, data.reverse(), []);
    expect(native.recvMsg(client, data, 0, 2, 0).bytes).toBe(2);
    expect([...data]).toEqual([2, 1]);
  });

  it('refuses a path that exists', () => {
    const path = join(dir, 'taken.sock');
    track(native.socketListen(path, 0o600, 1));
    expect(thrown(() => native.socketListen(path, 0o600, 1))).toMatchObject({ code: 'EADDRINUSE', syscall: 'bind', path });
  });

  it('throws ENOENT when nothing listens at the path', () => {
    const path = join(dir, 'missing.sock');
    const error = thrown(() => native.socketConnect(path));
    expect(error).toBeInstanceOf(Error);
    expect(error).toMatchObject({ code: 'ENOENT', errno: 2, syscall: 'connect', path });
    expect(error.message).toContain('ENOENT');
  });

  it('socketTryConnect never waits: -1 while the backlog is full, a socket once there is room', () => {
    const path = join(dir, 'busy.sock');
    const listenFd = track(native.socketListen(path, 0o600, 0));
    const queued: number[] = [];
    for (let fd = native.socketTryConnect(path); fd >= 0 && queued.length < 64; fd = native.socketTryConnect(path)) {
      queued.push(track(fd));
    }
    expect(queued.length).toBeGreaterThan(0);
    expect(queued.length).toBeLessThan(64);
    expect(native.socketTryConnect(path)).toBe(-1);
    track(native.socketAccept(listenFd));
    const next = track(native.socketTryConnect(path));
    expect(fdFlags(next) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
  });

  it('socketTryConnect throws what connect reports when nobody listens', () => {
    expect(thrown(() => native.socketTryConnect(join(dir, 'missing.sock')))).toMatchObject({
      code: 'ENOENT',
      syscall: 'connect',
    });
    const path = join(dir, 'dead.sock');
    native.close(native.socketListen(path, 0o600, 1));
    expect(thrown(() => native.socketTryConnect(path))).toMatchObject({ code: 'ECONNREFUSED' });
  });

  it('socketError reports a reset once: the peer closed with bytes of ours unread', () => {
    const [a, b] = native.socketPair();
    track([a]);
    expect(native.socketError(a)).toBe(0);
    native.sendMsg(a, bytes(1, 2, 3), []);
    native.close(b);
    expect(native.socketError(a)).toBe(constants.errno.ECONNRESET);
    expect(native.socketError(a)).toBe(0);
  });

  it('throws ENAMETOOLONG for a path that does not fit sun_path', () => {
    const path = join(dir, 'x'.repeat(120));
    expect(thrown(() => native.socketListen(path, 0o600, 1))).toMatchObject({ code: 'ENAMETOOLONG' });
    expect(thrown(() => native.socketConnect(path))).toMatchObject({ code: 'ENAMETOOLONG' });
    expect(thrown(() => native.socketConnect('a\0b'))).toBeInstanceOf(TypeError);
  });
});

describe('FdWatcher', () => {
  const nextEvent = (fd: number) =>
    new Promise<{ watcher: InstanceType<typeof native.FdWatcher>; event: unknown[] }>((done) => {
      const watcher = new native.FdWatcher(fd, (...event) => done({ watcher, event }));
      watcher.start(true, false);
    });

  it('fires on readable and never after close', async () => {
    const [a, b] = track(native.socketPair());
    const events: unknown[][] = [];
    const watcher = new native.FdWatcher(b, (...event) => events.push(event));
    watcher.start(true, false);
    native.sendMsg(a, bytes(1), []);
    while (events.length === 0) await sleep(1);
    expect(events[0]).toEqual([0, true, false, false]);
    watcher.close();
    watcher.close();
    const count = events.length;
    native.sendMsg(a, bytes(2), []); // still readable: a live watcher would fire every pass
    await sleep(30);
    expect(events.length).toBe(count);
    expect(thrown(() => watcher.start(true, false))).toBeInstanceOf(Error);
    watcher.stop(); // harmless when closed
  });

  it('reports a hang-up while not watching for readable, when asked to', async () => {
    const [a, b] = native.socketPair();
    track([b]);
    const events: unknown[][] = [];
    const watcher = new native.FdWatcher(b, (...event) => events.push(event));
    watcher.start(false, false, true);
    native.sendMsg(a, bytes(1), []); // readable, but not asked for: no event
    await sleep(20);
    expect(events).toEqual([]);
    native.close(a);
    while (events.length === 0) await sleep(1);
    expect(events[0]).toEqual([0, false, false, true]);
    watcher.close();
  });

  it('reports writable and stops on stop()', async () => {
    const [a] = track(native.socketPair());
    const events: unknown[][] = [];
    const watcher = new native.FdWatcher(a, (...event) => events.push(event));
    watcher.start(false, true);
    while (events.length === 0) await sleep(1);
    expect(events[0]).toEqual([0, false, true, false]);
    watcher.stop();
    await sleep(5);
    const count = events.length;
    await sleep(30);
    expect(events.length).toBe(count);
    watcher.close();
  });

  it('keeps firing when JS holds no reference and the GC runs', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const [a, b] = track(native.socketPair());
    const fired = nextEvent(b).then(({ watcher }) => watcher.close());
    for (let i = 0; i < 3; i++) {
      gc();
      await sleep(5);
    }
    native.sendMsg(a, bytes(1), []);
    await fired;
  });

  it('rejects bad arguments', () => {
    const [a] = track(native.socketPair());
    expect(thrown(() => new native.FdWatcher(a, 'x' as never))).toBeInstanceOf(TypeError);
    expect(thrown(() => new native.FdWatcher('1' as never, () => {}))).toBeInstanceOf(TypeError);
    expect(thrown(() => (native.FdWatcher as unknown as (fd: number, cb: () => void) => void)(a, () => {}))).toBeInstanceOf(
      TypeError,
    );
    const regularFile = thrown(() => new native.FdWatcher(999_999, () => {}));
    expect(regularFile).toBeInstanceOf(Error);
    const watcher = new native.FdWatcher(a, () => {});
    const second = new native.FdWatcher(a, () => {});
    watcher.start(true, false);
    expect(thrown(() => second.start(true, false))).toMatchObject({ code: 'EEXIST', syscall: 'uv_poll_start' });
    expect(thrown(() => watcher.start(1 as never, false))).toBeInstanceOf(TypeError);
    watcher.close();
    second.close();
  });

  it('reports a throwing callback as an uncaught exception', async () => {
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       const native = require(workerData.addon);
       const [a, b] = native.socketPair();
       new native.FdWatcher(b, () => { throw new Error('from the callback'); }).start(true, false);
       native.sendMsg(a, new Uint8Array(1), []);`,
      { eval: true, workerData: { addon: resolve('build/Release/ring.node') } },
    );
    const error = await new Promise((done) => worker.once('error', done));
    expect(error).toMatchObject({ message: 'from the callback' });
  });

  it('lets a worker exit cleanly with a watcher still started', async () => {
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       const native = require(workerData.addon);
       const [a, b] = native.socketPair();
       new native.FdWatcher(b, () => {}).start(true, false);
       setTimeout(() => process.exit(0), 10);`,
      { eval: true, workerData: { addon: resolve('build/Release/ring.node') } },
    );
    const code = await new Promise((done, fail) => worker.on('exit', done).on('error', fail));
    expect(code).toBe(0);
  });
});
