// A front-end that connects and sends nothing: dropped after the first-message timeout, so the
// front-ends waiting behind it are served; one that sends its first message in time is kept,
// however long it stays quiet afterwards (QEMU is quiet for as long as the VM runs).
import { afterEach, describe, expect, it } from 'vitest';
import { VhostUserConnection, closeAll } from '../../dist/control/connection.js';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { encodeMessage } from '../../dist/control/codec/index.js';
import { HeaderFlag, Request } from '../../dist/control/protocol.js';
import { VhostUserClient } from '../../dist/frontend/index.js';
import { native } from '../../dist/native.js';
import { RecordingDataPlane, captureLogs, testBlkDevice, until } from './helpers.js';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const cleanups: (() => void | Promise<void>)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function connection(firstMessageTimeoutMs: number) {
  const [local, peer] = native.socketPair();
  cleanups.push(() => closeAll([peer]));
  const closes: (Error | undefined)[] = [];
  const messages: number[] = [];
  const c = new VhostUserConnection(
    local,
    {
      onMessage: (header, _payload, fds) => void (closeAll(fds), messages.push(header.request)),
      onClose: (e) => void closes.push(e),
    },
    { firstMessageTimeoutMs },
  );
  cleanups.push(() => c.close());
  return { c, peer, closes, messages };
}

describe('VhostUserConnection first-message timeout', () => {
  it('closes a connection whose peer sends nothing, saying why', async () => {
    const { closes } = connection(100);
    const started = performance.now();
    await until(() => closes.length === 1, 5000, 'the silent peer to be dropped');
    expect(performance.now() - started).toBeGreaterThanOrEqual(90);
    expect(closes[0]?.message).toBe('peer sent no complete message within 100 ms of connecting');
  });

  it('keeps a connection whose first message came in time, however quiet it is afterwards', async () => {
    const { peer, closes, messages } = connection(100);
    native.sendMsg(peer, encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION), []);
    await until(() => messages.length === 1, 5000, 'the first message');
    await sleep(300);
    expect(closes).toEqual([]);
  });
});

describe('a daemon with firstMessageTimeoutMs', () => {
  it('drops a front-end that connects and sends nothing, logs it, and serves the next', async () => {
    const logs = captureLogs();
    cleanups.push(() => logs.restore());
    const dir = mkdtempSync(join(tmpdir(), 'vut-first-'));
    cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
    const socketPath = join(dir, 'vhost.sock');
    const daemon = new VhostUserDaemon(testBlkDevice(), {
      socketPath,
      dataPlane: new RecordingDataPlane(),
      firstMessageTimeoutMs: 150,
    });
    await daemon.start();
    cleanups.push(() => daemon.stop());
    // The clock starts before the connect: the daemon's timer starts later, at accept.
    const started = performance.now();
    const silent = native.socketConnect(socketPath);
    cleanups.push(() => closeAll([silent]));
    await until(() => daemon.connections === 1, 5000, 'the silent front-end to be accepted');
    const next = await VhostUserClient.connect(socketPath, { timeoutMs: 5000, replyTimeoutMs: 5000 });
    cleanups.push(() => next.close());
    expect(await next.getFeatures()).toBeGreaterThan(0n);
    expect(performance.now() - started).toBeGreaterThanOrEqual(145);
    expect(daemon.connections).toBe(2);
    const dropped = logs.lines.find((line) => line.includes('front-end disconnected') && line.includes('"connection":1'));
    expect(dropped).toContain('peer sent no complete message within 150 ms of connecting');
  });
});
