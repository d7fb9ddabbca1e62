// Ports sharing workers (WorkerDataPlaneOptions.spaces): two echo ports, each with its own
// daemon and front-end (its own guest memory, queues numbered from 0), served by one pinned
// worker that runs a handler per port. Each port's requests are verified against its own memory,
// its counters are its own, and one port's front-end going away (a reset of its space) leaves
// the other's queues running; the port then serves a new front-end.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { runLoad, startLoad } from '../../dist/loadgen/load.js';
import type { PollMode } from '../../dist/dataplane/commands.js';

const cleanups: (() => Promise<void> | void)[] = [];
/** Front-ends a test closed itself. */
const closed = new Set<FrontendDevice>();
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function twoPorts(mode: PollMode) {
  const dir = mkdtempSync(join(tmpdir(), 'vut-spaces-'));
  cleanups.push(() => rmSync(dir, { recursive: true, force: true }));
  const spec = EchoDevice.handler({});
  // Port 1 completes its requests out of order (reorder window 4): each handler has its own options.
  const plane = await WorkerDataPlane.start({
    cpus: [1],
    queueCount: 2,
    handler: { module: spec.module, options: [spec.options, EchoDevice.handler({ reorder: 4 }).options] },
    spaces: 2,
    mode,
  });
  cleanups.push(() => plane.close());
  const daemons = [0, 1].map(
    (p) =>
      new VhostUserDaemon(new EchoDevice(2, 256, false), { socketPath: join(dir, `port${p}.sock`), dataPlane: plane.port(p) }),
  );
  for (const daemon of daemons) {
    await daemon.start();
    cleanups.push(() => daemon.stop());
  }
  const connect = async (p: number) => {
    const device = await FrontendDevice.connect({
      socketPath: join(dir, `port${p}.sock`),
      queues: 2,
      queueSize: 256,
      indirectEntries: 8,
    });
    cleanups.push(() => {
      if (!closed.has(device)) device.close();
    });
    return device;
  };
  return { plane, connect };
}

const requests = (stats: { requests: number }[]) => stats.reduce((sum, s) => sum + s.requests, 0);

describe.each(['busy', 'interrupt'] as const)('two ports on one worker (%s mode)', (mode) => {
  it("serves both ports' queues at once, each against its own memory, with its own counters", async () => {
    const { plane, connect } = await twoPorts(mode);
    const [a, b] = [await connect(0), await connect(1)];
    const load = {
      workload: { kind: 'echo', bytes: 256, segments: 2, indirect: false, verify: true },
      queueDepth: 16,
      requestsPerQueue: 20_000,
      cpu: 0,
    } as const;
    const [ra, rb] = await Promise.all([runLoad(a, load), runLoad(b, { ...load, requestsPerQueue: 10_000 })]);
    expect(ra.errors, ra.firstError).toBe(0);
    expect(rb.errors, rb.firstError).toBe(0);
    expect(ra.requests).toBe(40_000);
    expect(rb.requests).toBe(20_000);
    expect(requests(plane.port(0).allQueueStats())).toBe(40_000);
    expect(requests(plane.port(1).allQueueStats())).toBe(20_000);
    // Queue 1 of each port is its own ring: GET_VRING_BASE answers per port.
    expect(await a.stopQueue(1)).toBe(20_000);
    expect(await b.stopQueue(1)).toBe(10_000);
  });

  it("one port's front-end leaving resets only that port: the other's load runs on; the port serves a new front-end", async () => {
    const { plane, connect } = await twoPorts(mode);
    const a = await connect(0);
    const b = await connect(1);
    const running = startLoad(b, {
      workload: { kind: 'echo', bytes: 128, segments: 1, indirect: false, verify: true },
      queueDepth: 8,
      seconds: 1.5,
      cpu: 0,
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    a.close(); // port 0's session resets its space
    closed.add(a);
    await new Promise((resolve) => setTimeout(resolve, 200));
    const before = requests(plane.port(1).allQueueStats());
    const again = await connect(0);
    const result = await runLoad(again, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 4,
      requestsPerQueue: 5_000,
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(10_000);
    const bResult = await running.result;
    expect(bResult.errors, bResult.firstError).toBe(0);
    // Port 1 kept completing requests while port 0 went away and came back.
    expect(requests(plane.port(1).allQueueStats())).toBeGreaterThan(before);
    // Every request port 1's load counted was served by port 1 (the load leaves its last in-flight
    // window, 2 queues × depth 8, out of its count).
    const served = requests(plane.port(1).allQueueStats());
    expect(bResult.requests).toBeLessThanOrEqual(served);
    expect(bResult.requests).toBeGreaterThanOrEqual(served - 16);
  });
});

describe('spaces, bad configurations', () => {
  it('refuses handler options that are not one per space, and a port that does not exist', async () => {
    await expect(
      WorkerDataPlane.start({ cpus: [-1], queueCount: 1, handler: EchoDevice.handler({}), spaces: 2 }),
    ).rejects.toThrow(/array of 2/);
    const plane = await WorkerDataPlane.start({ cpus: [-1], queueCount: 1, handler: EchoDevice.handler({}) });
    cleanups.push(() => plane.close());
    expect(() => plane.port(1)).toThrow(/not one of/);
  });
});
