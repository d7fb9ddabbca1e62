// A data-plane worker thread that dies is replaced: the pool starts another, gives it the memory
// table and the dead worker's queues, and they resume from the in-flight region, so every
// request completes exactly once. The echo handler's fault hook ends the worker thread on one
// request (process.exit in a worker ends the thread), with completions held and reordered.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import type { VhostUserDevice } from '../../dist/control/backend.js';
import { FrontendDevice, type FrontendQueue } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { ProtocolFeature, bit } from '../../dist/control/protocol.js';
import { captureLogs } from '../control/helpers.js';
import { setLogLevel } from '../../dist/log.js';

const IN = 0x100000;
const OUT = 0x200000;
const BYTES = 16;
const TIMEOUT_MS = 15_000;

const cleanups: Array<() => Promise<void> | void> = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function post(memory: FrontendMemory, queue: FrontendQueue, token: number): void {
  const input = memory.bytes(IN + token * BYTES, BYTES);
  new DataView(input.buffer, input.byteOffset, BYTES).setFloat64(0, token, true);
  memory.bytes(OUT + token * BYTES, BYTES).fill(0);
  queue.driver.beginChain();
  queue.driver.addSegment(IN + token * BYTES, BYTES, false);
  queue.driver.addSegment(OUT + token * BYTES, BYTES, true);
  queue.driver.endChain(token);
}

async function rig(mode: 'busy' | 'interrupt', inflight: boolean) {
  const capture = captureLogs();
  setLogLevel('info');
  cleanups.push(() => {
    setLogLevel('warn');
    capture.restore();
  });
  const logs = {
    get records() {
      return capture.lines.map((line) => JSON.parse(line) as Record<string, unknown>);
    },
  };
  const dir = mkdtempSync(join(tmpdir(), 'vut-worker-death-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const socketPath = join(dir, 'echo.sock');
  const exitOnce = new SharedArrayBuffer(4);
  const plane = await WorkerDataPlane.start({
    cpus: [-1],
    queueCount: 2,
    handler: EchoDevice.handler({ reorder: 4, exitOnRequest: 10, exitOnce }),
    mode,
  });
  cleanups.push(() => plane.close());
  const echo = new EchoDevice(2, 256);
  const device: VhostUserDevice = {
    name: 'echo',
    numQueues: echo.numQueues,
    maxQueueSize: echo.maxQueueSize,
    features: echo.features,
    protocolFeatures: inflight ? bit(ProtocolFeature.INFLIGHT_SHMFD) : 0n,
  };
  const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane });
  await daemon.start();
  cleanups.push(() => daemon.stop());
  const memory = new FrontendMemory([{ guestPhysAddr: 0, size: 4 << 20 }]);
  cleanups.push(() => memory.close());
  const frontend = await FrontendDevice.connect({
    socketPath,
    memory,
    queues: 2,
    queueSize: 64,
    inflight,
    replyTimeoutMs: TIMEOUT_MS,
  });
  cleanups.push(() => frontend.close());
  return { plane, frontend, memory, logs };
}

describe('worker death', () => {
  for (const mode of ['busy', 'interrupt'] as const) {
    it(`a worker that exits is replaced and its queues resume from the in-flight region: each request once (${mode})`, async () => {
      const { plane, frontend, memory, logs } = await rig(mode, true);
      const seen = new Map<number, number>();
      const perQueue = 24;
      for (const queue of frontend.queues) {
        for (let i = 0; i < perQueue; i++) post(memory, queue, queue.index * 100 + i);
        queue.publishAndKick();
      }
      const tokens = new Float64Array(64);
      const lens = new Uint32Array(64);
      const deadline = Date.now() + TIMEOUT_MS;
      while (seen.size < 2 * perQueue) {
        for (const queue of frontend.queues) {
          const count = queue.driver.reapUsed(tokens, lens);
          for (let i = 0; i < count; i++) {
            const token = tokens[i];
            seen.set(token, (seen.get(token) ?? 0) + 1);
            const out = memory.bytes(OUT + token * BYTES, BYTES);
            expect(new DataView(out.buffer, out.byteOffset, BYTES).getFloat64(0, true), `request ${token}'s echo`).toBe(token);
          }
          expect(queue.driver.broken, queue.driver.brokenReason).toBe(false);
        }
        if (Date.now() > deadline) throw new Error(`timed out with ${seen.size} of ${2 * perQueue} completed`);
        await new Promise((resolve) => setTimeout(resolve, 2));
      }
      await new Promise((resolve) => setTimeout(resolve, 50));
      for (const queue of frontend.queues) expect(queue.driver.reapUsed(tokens, lens)).toBe(0); // nothing twice
      for (const [token, count] of seen) expect(count, `request ${token}`).toBe(1);
      expect(plane.workerRestarts).toBe(1);
      const died = logs.records.filter((r) => r.msg === 'worker died; replacing it and resuming its queues');
      expect(died).toHaveLength(1);
      expect(logs.records.filter((r) => r.msg === 'queue resumed on the replacement worker')).toHaveLength(2);
      // Requests 9 and 10 (at least) were in the dead worker's hands: run again, once.
      const resubmitted = logs.records
        .filter((r) => r.msg === 'queue recovered from the in-flight region')
        .reduce((sum, r) => sum + Number(r.resubmitted), 0);
      expect(resubmitted).toBeGreaterThanOrEqual(2);
      // The queues still work and stop cleanly afterwards.
      for (const queue of frontend.queues) expect(await frontend.stopQueue(queue.index)).toBe(perQueue);
    });
  }
});
