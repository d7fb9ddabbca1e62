// The data plane end to end: the real daemon with pinned workers, driven by the front-end
// library from a separate load thread, in every poll mode.
import { afterEach, describe, expect, it } from 'vitest';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { EchoReleaseCount } from '../../dist/devices/echo/handler.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { BrokenReason } from '../../dist/dataplane/chain.js';
import { native } from '../../dist/native.js';
import { runLoad, startLoad } from '../../dist/loadgen/load.js';
import type { PollMode } from '../../dist/dataplane/commands.js';
import type { VringDriver } from '../../dist/frontend/vring-driver.js';

interface Rig {
  daemon: VhostUserDaemon;
  plane: WorkerDataPlane;
  device: FrontendDevice;
  socketPath: string;
  dir: string;
  /** With `hold`: the eventfd the echo handler waits on before completing, and what it counted. */
  releaseFd: number;
  releaseCounts: Float64Array;
}

const rigs: Rig[] = [];

async function startRig(options: {
  mode: PollMode;
  queues: number;
  reorder?: number;
  cpus?: number[];
  indirect?: number;
  throwOnRequest?: number;
  hold?: boolean;
  /** Packed virtqueues (the echo device offers RING_PACKED, the front-end acks it). */
  packed?: boolean;
}): Promise<Rig> {
  const dir = mkdtempSync(join(tmpdir(), 'vut-dp-'));
  const socketPath = join(dir, 'echo.sock');
  const releaseFd = options.hold ? native.eventfdCreate(0) : -1;
  const releaseCounts = new SharedArrayBuffer(EchoReleaseCount.SLOTS * 8);
  const plane = await WorkerDataPlane.start({
    cpus: options.cpus ?? [1],
    queueCount: options.queues,
    handler: EchoDevice.handler({
      reorder: options.reorder,
      throwOnRequest: options.throwOnRequest,
      releaseFd: options.hold ? releaseFd : undefined,
      releaseCounts,
    }),
    mode: options.mode,
  });
  const daemon = new VhostUserDaemon(new EchoDevice(options.queues, 256, options.packed ?? false), {
    socketPath,
    dataPlane: plane,
  });
  await daemon.start();
  const device = await FrontendDevice.connect({
    socketPath,
    queues: options.queues,
    queueSize: 256,
    indirectEntries: options.indirect ?? 8,
    packed: options.packed,
  });
  const rig = { daemon, plane, device, socketPath, dir, releaseFd, releaseCounts: new Float64Array(releaseCounts) };
  rigs.push(rig);
  return rig;
}

afterEach(async () => {
  for (const rig of rigs.splice(0)) {
    // A test that failed while the device held requests: let them go, or the reset would wait forever.
    if (rig.releaseFd >= 0) native.eventfdWrite(rig.releaseFd, 1);
    rig.device.close();
    await rig.daemon.stop();
    await rig.plane.close();
    if (rig.releaseFd >= 0) native.close(rig.releaseFd);
    rmSync(rig.dir, { recursive: true, force: true });
  }
});

const totalRequests = (plane: WorkerDataPlane) => plane.allQueueStats().reduce((sum, s) => sum + s.requests, 0);

/** Polls `condition` (yielding to the event loop: the daemon lives on this thread) until it holds. */
async function waitFor(what: string, condition: () => boolean, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

/** Scheduler state of a thread of this process ('R' running, 'S' sleeping, ...). */
function threadState(tid: number): string {
  const stat = readFileSync(`/proc/self/task/${tid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

describe.each(['busy', 'interrupt', 'adaptive'] as const)('%s mode', (mode) => {
  it('moves 60 000 chained requests through 1 queue in order, every reply verified', async () => {
    const rig = await startRig({ mode, queues: 1 });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 192, segments: 3, indirect: false, verify: true },
      queueDepth: 32,
      requestsPerQueue: 60_000,
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(60_000);
    expect(totalRequests(rig.plane)).toBe(60_000);
    // GET_VRING_BASE reports where the ring stopped: after the last request.
    expect(await rig.device.stopQueue(0)).toBe(60_000 & 0xffff);
  });

  it('moves 60 000 indirect requests through 4 queues completed out of order', async () => {
    const rig = await startRig({ mode, queues: 4, reorder: 8 });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 128, segments: 2, indirect: true, verify: true },
      queueDepth: 16,
      requestsPerQueue: 15_000,
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(60_000);
    const stats = rig.plane.allQueueStats();
    for (const queue of stats) expect(queue.requests).toBe(15_000);
  });
});

describe.each(['busy', 'interrupt', 'adaptive'] as const)('%s mode, packed rings', (mode) => {
  it('moves 60 000 chained requests through 1 queue, every reply verified; GET_VRING_BASE says where', async () => {
    const rig = await startRig({ mode, queues: 1, packed: true });
    expect(rig.device.queues[0].packed).toBe(true);
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 192, segments: 3, indirect: false, verify: true },
      queueDepth: 32,
      requestsPerQueue: 60_000,
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(60_000);
    expect(totalRequests(rig.plane)).toBe(60_000);
    // Where the driver posts next, in both halves: each request took 6 ring descriptors (3 out,
    // 3 back) of 256; the wrap counter starts at 1 and flips every lap.
    const descriptors = 60_000 * 6;
    const base = (descriptors % 256) | ((1 ^ (Math.floor(descriptors / 256) & 1)) << 15);
    expect(await rig.device.stopQueue(0)).toBe(((base << 16) | base) >>> 0);
  });

  it('moves 60 000 indirect requests through 4 queues completed out of order', async () => {
    const rig = await startRig({ mode, queues: 4, reorder: 8, packed: true });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 128, segments: 2, indirect: true, verify: true },
      queueDepth: 16,
      requestsPerQueue: 15_000,
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(60_000);
    for (const queue of rig.plane.allQueueStats()) expect(queue.requests).toBe(15_000);
  });
});

describe('notifications on packed rings (EVENT_IDX: DESC-mode event suppression)', () => {
  it('busy mode at saturation signals far less than once per request and is never kicked', async () => {
    const rig = await startRig({ mode: 'busy', queues: 1, packed: true });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 64,
      requestsPerQueue: 50_000,
      wait: 'event',
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    const stats = rig.plane.queueStats(0);
    expect(stats.requests).toBe(50_000);
    expect(stats.calls / stats.requests).toBeLessThan(0.2);
    expect(result.kicks).toBeLessThan(10);
  });

  it('interrupt mode is woken by kicks and signals calls', async () => {
    const rig = await startRig({ mode: 'interrupt', queues: 1, packed: true });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 1,
      requestsPerQueue: 2_000,
      wait: 'event',
      cpu: 0,
    });
    expect(result.errors, result.firstError).toBe(0);
    const stats = rig.plane.queueStats(0);
    expect(stats.kicks).toBeGreaterThan(0);
    expect(stats.calls).toBeGreaterThan(0);
    expect(stats.sleepMs).toBeGreaterThan(0);
    expect(result.kicks).toBeGreaterThan(0);
  });
});

describe('notifications (EVENT_IDX)', () => {
  it('busy mode at saturation signals far less than once per request and is never kicked', async () => {
    const rig = await startRig({ mode: 'busy', queues: 1 });
    // The driver waits on the call eventfd, so it keeps asking to be notified (used_event).
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 64,
      requestsPerQueue: 50_000,
      wait: 'event',
      cpu: 0,
    });
    expect(result.errors).toBe(0);
    const stats = rig.plane.queueStats(0);
    expect(stats.requests).toBe(50_000);
    expect(stats.calls / stats.requests).toBeLessThan(0.2);
    // A busy worker never arms kicks: avail_event stays stale, the driver (almost) never kicks.
    expect(result.kicks).toBeLessThan(10);
  });

  it('interrupt mode is woken by kicks and signals calls', async () => {
    const rig = await startRig({ mode: 'interrupt', queues: 1 });
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 1,
      requestsPerQueue: 2_000,
      wait: 'event',
      cpu: 0,
    });
    expect(result.errors).toBe(0);
    const stats = rig.plane.queueStats(0);
    expect(stats.kicks).toBeGreaterThan(0);
    expect(stats.calls).toBeGreaterThan(0);
    expect(stats.sleepMs).toBeGreaterThan(0);
    expect(result.kicks).toBeGreaterThan(0);
  });
});

/** CPU time a thread of this process has run, in ms (schedstat: nanoseconds). */
function threadCpuMs(tid: number): number {
  return Number(readFileSync(`/proc/self/task/${tid}/schedstat`, 'utf8').split(' ')[0]) / 1e6;
}

describe('interrupt and adaptive modes: no lost wake-up, no spinning', () => {
  const echo = { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true } as const;

  it('serves closed loops (QD1, QD32; a spinning and a sleeping driver) and a trickle, every request', async () => {
    const rig = await startRig({ mode: 'interrupt', queues: 1 });
    // A lost wake-up leaves a request on the ring with the worker asleep: the load never ends
    // (the test times out) or reports requests still in flight.
    for (const [queueDepth, wait] of [
      [1, 'spin'],
      [32, 'spin'],
      [32, 'event'],
    ] as const) {
      const result = await runLoad(rig.device, { workload: echo, queueDepth, requestsPerQueue: 20_000, wait, cpu: 0 });
      expect(result.errors, `QD${queueDepth} ${wait}`).toBe(0);
      expect(result.inFlightAtEnd).toBe(0);
    }
    const sleepsBefore = rig.plane.queueStats(0).sleeps;
    // 4000 requests/s, one at a time: the worker goes to sleep between them and each kick wakes it.
    const trickle = await runLoad(rig.device, { workload: echo, queueDepth: 4, requestsPerQueue: 2_000, rate: 4000, cpu: 0 });
    expect(trickle.errors).toBe(0);
    expect(trickle.inFlightAtEnd).toBe(0);
    const stats = rig.plane.queueStats(0);
    expect(stats.requests).toBe(3 * 20_000 + 2_000);
    expect(stats.sleeps - sleepsBefore).toBeGreaterThan(100);
  }, 60_000);

  it.each(['interrupt', 'adaptive'] as const)('%s mode: an idle worker uses no CPU (it sleeps in epoll)', async (mode) => {
    const rig = await startRig({ mode, queues: 1 });
    const result = await runLoad(rig.device, { workload: echo, queueDepth: 32, requestsPerQueue: 20_000, cpu: 0 });
    expect(result.errors).toBe(0);
    const [tid] = rig.plane.workerThreadIds;
    await new Promise((resolve) => setTimeout(resolve, 50)); // past adaptive's idle budget
    const cpuBefore = threadCpuMs(tid);
    await new Promise((resolve) => setTimeout(resolve, 1000));
    // A spinning worker would show hundreds of ms here; a sleeping one a few wake-ups' worth at most.
    expect(threadCpuMs(tid) - cpuBefore).toBeLessThan(20);
    expect(threadState(tid)).toBe('S');
  });
});

describe('workers', () => {
  it('are pinned to the configured CPU', async () => {
    const rig = await startRig({ mode: 'busy', queues: 1, cpus: [1] });
    const [tid] = rig.plane.workerThreadIds;
    const status = readFileSync(`/proc/self/task/${tid}/status`, 'utf8');
    expect(status).toMatch(/Cpus_allowed_list:\s*1\n/);
  });

  it('lose nothing when the poll mode switches under load', async () => {
    const rig = await startRig({ mode: 'busy', queues: 2 });
    const load = startLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 32,
      requestsPerQueue: 60_000,
      wait: 'event',
      cpu: 0,
    });
    const modes: PollMode[] = ['interrupt', 'adaptive', 'busy', 'interrupt', 'busy', 'adaptive'];
    let switches = 0;
    let settled = false;
    void load.result.finally(() => (settled = true));
    while (!settled && switches < 60) {
      await rig.plane.setMode(modes[switches % modes.length], 20);
      switches++;
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    const result = await load.result;
    expect(switches).toBeGreaterThan(2);
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(120_000);
    expect(totalRequests(rig.plane)).toBe(120_000);
  });

  it('GET_VRING_BASE waits for requests still held by the device', async () => {
    // The echo handler holds every completion until the test writes its release eventfd.
    const rig = await startRig({ mode: 'interrupt', queues: 1, hold: true });
    const queue = rig.device.queues[0];
    const memory = rig.device.memory;
    const buffer = memory.allocate(4096 * 8, 4096);
    for (let i = 0; i < 8; i++) {
      queue.driver.beginChain();
      queue.driver.addSegment(buffer + i * 4096, 64, false);
      queue.driver.addSegment(buffer + i * 4096 + 2048, 64, true);
      expect(queue.driver.endChain(i)).toBeGreaterThanOrEqual(0);
    }
    queue.publishAndKick();
    // The stop must reach the worker after the kick did: wait until the device holds all 8.
    await waitFor('8 requests held by the device', () => rig.plane.queueStats(0).inFlight === 8);
    let stopped = false;
    const base = rig.device.stopQueue(0).finally(() => (stopped = true));
    // The stop waits as long as the device holds them (a wrong early answer would show here).
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect(stopped).toBe(false);
    expect(rig.plane.queueStats(0).requests).toBe(0);
    native.eventfdWrite(rig.releaseFd, 1);
    expect(await base).toBe(8);
    // Everything popped was completed before the ring stopped.
    expect(rig.plane.queueStats(0).requests).toBe(8);
    const tokens = new Float64Array(8);
    expect(queue.driver.reapUsed(tokens, new Uint32Array(8))).toBe(8);
  });

  it('keep serving a memory table change (ADD_MEM_REG) under load', async () => {
    const rig = await startRig({ mode: 'busy', queues: 1 });
    const load = startLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 16,
      requestsPerQueue: 40_000,
      cpu: 0,
    });
    let settled = false;
    void load.result.finally(() => (settled = true));
    await waitFor('5 000 requests served', () => settled || load.completed() >= 5_000);
    const extra = new FrontendMemory([{ guestPhysAddr: 1 << 30, size: 1 << 20 }]);
    const [region] = extra.describe();
    const { fd, ...description } = region;
    await rig.device.client.request({ type: 'ADD_MEM_REG', region: description, fd });
    const result = await load.result;
    extra.close();
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(40_000);
  });
});

describe('a hostile ring', () => {
  it('breaks only its own queue: the error fd fires, other queues keep serving, the ring still stops', async () => {
    const rig = await startRig({ mode: 'interrupt', queues: 2 });
    const errFd = native.eventfdCreate(0);
    await rig.device.client.request({ type: 'SET_VRING_ERR', index: 0, noFd: false, fd: errFd });
    // Queue 0: a head index beyond the ring.
    const queue0 = rig.device.queues[0];
    (queue0.driver as VringDriver).postRawHead(9999); // a split ring: the front-end did not ask for packed
    queue0.publishAndKick();
    await waitFor('queue 0 broken', () => rig.plane.queueStats(0).broken !== 0);
    expect(rig.plane.queueStats(0).broken).toBe(BrokenReason.HEAD_OUT_OF_RANGE);
    expect(native.eventfdRead(errFd)).toBeGreaterThan(0);
    // Queue 1 is unaffected.
    const result = await runLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queues: [1],
      queueDepth: 8,
      requestsPerQueue: 5_000,
      cpu: 0,
    });
    expect(result.errors).toBe(0);
    expect(result.requests).toBe(5_000);
    // The broken ring still stops on request (no hang), and the daemon serves a new front-end.
    expect(typeof (await rig.device.stopQueue(0))).toBe('number');
    rig.device.close();
    native.close(errFd);
    const again = await FrontendDevice.connect({ socketPath: rig.socketPath, queues: 2, queueSize: 256 });
    const second = await runLoad(again, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 8,
      requestsPerQueue: 1_000,
      cpu: 0,
    });
    again.close();
    expect(second.errors).toBe(0);
    expect(second.requests).toBe(2_000);
  });
});

describe('a device handler that throws', () => {
  it('stops only that queue; the worker lives on and serves the next front-end', async () => {
    const rig = await startRig({ mode: 'busy', queues: 1, throwOnRequest: 500 });
    const load = startLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 8,
      requestsPerQueue: 2_000,
      cpu: 0,
    });
    await waitFor('queue 0 broken', () => rig.plane.queueStats(0).broken !== 0);
    expect(rig.plane.queueStats(0).broken).toBe(BrokenReason.DEVICE_ERROR);
    load.stop();
    await load.result.catch(() => undefined);
    // The ring still stops on request, and a new front-end is served by the same worker.
    expect(typeof (await rig.device.stopQueue(0))).toBe('number');
    rig.device.close();
    const again = await FrontendDevice.connect({ socketPath: rig.socketPath, queues: 1, queueSize: 256 });
    const result = await runLoad(again, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 8,
      requestsPerQueue: 1_000,
      cpu: 0,
    });
    again.close();
    expect(result.errors).toBe(0);
    expect(result.requests).toBe(1_000);
  });
});

describe.each(['busy', 'interrupt', 'adaptive'] as const)('a watched fd (worker event API), %s mode', (mode) => {
  it('wakes or is polled by the worker; the handler is called back and reads the counter itself', async () => {
    const rig = await startRig({ mode, queues: 1, hold: true });
    const [tid] = rig.plane.workerThreadIds;
    const counts = rig.releaseCounts;
    // Idle: interrupt and adaptive workers go to sleep in epoll; a busy one keeps spinning.
    if (mode !== 'busy') await waitFor('the worker asleep', () => threadState(tid) === 'S');
    native.eventfdWrite(rig.releaseFd, 5);
    await waitFor('onFdReady', () => counts[EchoReleaseCount.callbacks] > 0);
    // The worker left the counter alone: the handler read all 5.
    expect(counts[EchoReleaseCount.valueRead]).toBe(5);
    expect(native.eventfdRead(rig.releaseFd)).toBe(0);

    // Requests the handler holds come back when the fd fires again, written from this thread.
    const load = startLoad(rig.device, {
      workload: { kind: 'echo', bytes: 64, segments: 1, indirect: false, verify: true },
      queueDepth: 4,
      requestsPerQueue: 4,
      wait: 'event',
      cpu: 0,
    });
    await waitFor('4 requests held', () => rig.plane.queueStats(0).inFlight === 4);
    const callbacks = counts[EchoReleaseCount.callbacks];
    native.eventfdWrite(rig.releaseFd, 2);
    const result = await load.result;
    expect(result.errors, result.firstError).toBe(0);
    expect(result.requests).toBe(4);
    expect(counts[EchoReleaseCount.callbacks]).toBe(callbacks + 1);
    expect(counts[EchoReleaseCount.valueRead]).toBe(7);
  });
});
