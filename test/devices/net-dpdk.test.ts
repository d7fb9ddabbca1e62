// vhost-user-net against a real peer: DPDK 22.11 testpmd with a virtio-user port (the Debian
// package dpdk-dev; scripts/setup.sh installs it). testpmd txonly feeds our sink, rxonly drains
// our source, io --tx-first bounces frames through our loopback; each test checks that frames
// flow, that both sides count the same frames, and that testpmd's stop (SET_VRING_ENABLE 0,
// GET_VRING_BASE for every ring) leaves the back-end healthy for the next front-end. One poll
// mode per test, so the suite covers all three against DPDK.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync } from 'node:child_process';
import { NetRig } from './net-rig.js';
import type { NetQueueStats } from '../../dist/devices/net/options.js';

const TESTPMD = 'dpdk-testpmd';
const QUEUE_SIZE = 256;
/** Enough frames to show that traffic flows, few enough for a loaded shared machine. */
const MIN_FRAMES = 2000;

const rigs: NetRig[] = [];
afterEach(async () => {
  for (const rig of rigs.splice(0)) await rig.stop();
});

interface TestpmdResult {
  rxPackets: number;
  txPackets: number;
  output: string;
  code: number | null;
}

let runs = 0;

/**
 * Runs testpmd with a virtio-user port on `socket` in `forwardMode` until `enough()` holds (or
 * `maxMs` passes: testpmd alone takes about 5 s to start on a loaded 2-CPU machine, most of it
 * building its mbuf pool without hugepages), then stops it with SIGINT as an operator would and
 * parses its final port statistics. Forwarding runs on CPU 0; our worker is on CPU 1.
 */
async function runTestpmd(
  socket: string,
  forwardMode: string,
  enough: () => boolean,
  extraArgs: string[] = [],
  port: { queues?: number; server?: boolean; lcores?: string; packed?: boolean } = {},
  maxMs = 25_000,
): Promise<TestpmdResult> {
  const queues = port.queues ?? 1;
  const args = [
    '--no-huge',
    '-m',
    '1024',
    '--no-pci',
    '--single-file-segments',
    '--lcores',
    port.lcores ?? '0@1,1@0',
    '--file-prefix',
    `vut-net-${process.pid}-${runs++}`,
    // Prints which Rx/Tx burst functions the virtio PMD chose (set_rxtx_funcs): inOrderPaths().
    '--log-level=pmd.net.virtio.init:debug',
    '--vdev',
    `virtio_user0,path=${socket},queues=${queues},queue_size=${QUEUE_SIZE}${port.server ? ',server=1' : ''}` +
      `,packed_vq=${port.packed ? 1 : 0}`,
    '--',
    `--forward-mode=${forwardMode}`,
    '--stats-period',
    '1',
    '--no-flush-rx',
    ...extraArgs,
  ];
  const child = spawn(TESTPMD, args, { stdio: ['ignore', 'pipe', 'pipe'] });
  let output = '';
  child.stdout.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + maxMs;
  let done = false;
  void exited.then(() => (done = true));
  while (!done && !enough() && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 50));
  child.kill('SIGINT');
  const killer = setTimeout(() => child.kill('SIGKILL'), 8000);
  const code = await exited;
  clearTimeout(killer);
  const block = /Forward statistics for port 0[\s\S]*?RX-packets:\s*(\d+)[\s\S]*?TX-packets:\s*(\d+)/.exec(output);
  if (!block) throw new Error(`testpmd printed no port statistics (exit ${code}):\n${output.slice(-3000)}`);
  return { rxPackets: Number(block[1]), txPackets: Number(block[2]), output, code };
}

/**
 * We offer VIRTIO_F_IN_ORDER, so on split rings testpmd's virtio-user runs its in-order Rx and
 * Tx paths, as against DPDK's own vhost PMD (not the mergeable/standard ones).
 */
function inOrderPaths(output: string): void {
  expect(output, output.slice(0, 4000)).toMatch(/using inorder Tx path/);
  expect(output, output.slice(0, 4000)).toMatch(/using inorder Rx path/);
}

function healthy(stats: NetQueueStats[], rig: NetRig): void {
  for (const queue of rig.plane.allQueueStats()) expect(queue.broken, `queue ${queue.queue}`).toBe(0);
  expect(stats[1].badChain + stats[1].tooBig).toBe(0);
  expect(stats[0].badBuffers).toBe(0);
}

/** The session saw the front-end go: every ring stopped, the next one may connect. */
async function waitDisconnected(rig: NetRig): Promise<void> {
  const deadline = Date.now() + 5000;
  while (rig.daemon.currentSession !== undefined && Date.now() < deadline)
    await new Promise((resolve) => setTimeout(resolve, 20));
  expect(rig.daemon.currentSession).toBeUndefined();
}

describe('DPDK testpmd (virtio-user) against vhost-user-net', () => {
  it('testpmd is installed (apt-get install dpdk dpdk-dev; scripts/setup.sh does it)', () => {
    expect(spawnSync(TESTPMD, ['--version'], { encoding: 'utf8' }).error).toBeUndefined();
  });

  it('txonly into our sink (busy mode): frames flow, counts agree, and a second testpmd works after the first stops', async () => {
    const rig = await NetRig.start({ backend: 'sink', mode: 'busy', queueSize: QUEUE_SIZE });
    rigs.push(rig);
    let expected = 0;
    for (let round = 0; round < 2; round++) {
      const result = await runTestpmd(rig.socketPath, 'txonly', () => rig.stats(1).packets >= expected + 50 * MIN_FRAMES);
      expect(result.txPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
      inOrderPaths(result.output);
      await waitDisconnected(rig);
      expected += result.txPackets;
      const stats = rig.device.netStats();
      // Every frame testpmd counted as sent was taken by us before its GET_VRING_BASE returned.
      expect(stats[1].packets).toBe(expected);
      expect(stats[1].bytes).toBe(expected * 64);
      expect(stats[1].drops).toBe(0);
      healthy(stats, rig);
    }
    expect(rig.daemon.connections).toBe(2);
  });

  it('rxonly from our source (interrupt mode): valid frames flow and counts agree', async () => {
    const rig = await NetRig.start({ backend: 'source', mode: 'interrupt', queueSize: QUEUE_SIZE, frameBytes: 64 });
    rigs.push(rig);
    const result = await runTestpmd(rig.socketPath, 'rxonly', () => rig.stats(0).packets >= 50 * MIN_FRAMES);
    expect(result.rxPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    inOrderPaths(result.output);
    await waitDisconnected(rig);
    const stats = rig.device.netStats();
    // We may have filled up to one ring of buffers that testpmd had not polled when it stopped.
    expect(stats[0].packets).toBeGreaterThanOrEqual(result.rxPackets);
    expect(stats[0].packets - result.rxPackets).toBeLessThanOrEqual(QUEUE_SIZE);
    expect(stats[0].bytes).toBe(stats[0].packets * 64);
    // testpmd's own error counter stays 0: every frame passed its checks.
    expect(/RX-errors:\s*0\b/.test(result.output)).toBe(true);
    healthy(stats, rig);
  });

  it('io --tx-first through our loopback (adaptive mode): frames bounce and both sides agree', async () => {
    const rig = await NetRig.start({ backend: 'loopback', mode: 'adaptive', queueSize: QUEUE_SIZE });
    rigs.push(rig);
    const result = await runTestpmd(rig.socketPath, 'io', () => rig.stats(0).packets >= 50 * MIN_FRAMES, ['--tx-first']);
    expect(result.rxPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    inOrderPaths(result.output);
    expect(result.txPackets).toBeGreaterThanOrEqual(MIN_FRAMES);
    await waitDisconnected(rig);
    const stats = rig.device.netStats();
    expect(stats[1].packets).toBe(result.txPackets);
    // Every frame we took was returned, or dropped for want of an RX buffer (counted).
    expect(stats[0].packets + stats[0].noBuffer).toBe(stats[1].packets);
    expect(stats[0].packets).toBeGreaterThanOrEqual(result.rxPackets);
    expect(stats[0].packets - result.rxPackets).toBeLessThanOrEqual(QUEUE_SIZE);
    healthy(stats, rig);
  });

  it('txonly on 2 queue pairs, testpmd listening (--client, 2 workers): each pair carries frames and the totals agree', async () => {
    const rig = await NetRig.start({
      backend: 'sink',
      mode: 'adaptive',
      queueSize: QUEUE_SIZE,
      queuePairs: 2,
      cpus: [1, 0],
      client: true,
    });
    rigs.push(rig);
    const result = await runTestpmd(
      rig.socketPath,
      'txonly',
      () => rig.stats(1).packets >= 20 * MIN_FRAMES && rig.stats(3).packets >= 20 * MIN_FRAMES,
      ['--rxq=2', '--txq=2', '--nb-cores=2'],
      { queues: 2, server: true, lcores: '0@1,1@0,2@0' },
    );
    expect(result.txPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    const stats = await rig.waitStats((s) => s[1].packets + s[3].packets === result.txPackets);
    expect(stats[1].packets).toBeGreaterThan(0);
    expect(stats[3].packets).toBeGreaterThan(0);
    expect([0, 1, 2, 3].map((q) => rig.plane.workerFor(q))).toEqual([0, 0, 1, 1]);
    healthy(stats, rig);
    for (const queue of [2, 3]) expect(rig.plane.queueStats(queue).broken).toBe(0);
  });
});

const VIRTIO_F_RING_PACKED = 34n;
const VIRTIO_F_IN_ORDER = 35n;

describe('DPDK testpmd (virtio-user, packed_vq=1) against vhost-user-net on packed rings', () => {
  /** `enough`, also recording whether the session negotiated RING_PACKED (and IN_ORDER) while testpmd ran. */
  function watchPacked(rig: NetRig, enough: () => boolean) {
    const seen = { packed: false, inOrder: false };
    const check = () => {
      const session = rig.daemon.currentSession;
      if (session && ((session.features >> VIRTIO_F_RING_PACKED) & 1n) === 1n) seen.packed = true;
      if (session && ((session.features >> VIRTIO_F_IN_ORDER) & 1n) === 1n) seen.inOrder = true;
      return enough();
    };
    return { seen, check };
  }

  it('txonly into our sink (busy mode): frames flow on packed rings and counts agree', async () => {
    const rig = await NetRig.start({ backend: 'sink', mode: 'busy', queueSize: QUEUE_SIZE });
    rigs.push(rig);
    const { seen, check } = watchPacked(rig, () => rig.stats(1).packets >= 50 * MIN_FRAMES);
    const result = await runTestpmd(rig.socketPath, 'txonly', check, [], { packed: true });
    expect(seen).toEqual({ packed: true, inOrder: true });
    expect(result.txPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    await waitDisconnected(rig);
    const stats = rig.device.netStats();
    expect(stats[1].packets).toBe(result.txPackets);
    expect(stats[1].bytes).toBe(result.txPackets * 64);
    healthy(stats, rig);
  });

  it('rxonly from our source (interrupt mode): valid frames flow on packed rings', async () => {
    const rig = await NetRig.start({ backend: 'source', mode: 'interrupt', queueSize: QUEUE_SIZE, frameBytes: 64 });
    rigs.push(rig);
    const { seen, check } = watchPacked(rig, () => rig.stats(0).packets >= 50 * MIN_FRAMES);
    const result = await runTestpmd(rig.socketPath, 'rxonly', check, [], { packed: true });
    expect(seen).toEqual({ packed: true, inOrder: true });
    expect(result.rxPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    await waitDisconnected(rig);
    const stats = rig.device.netStats();
    expect(stats[0].packets).toBeGreaterThanOrEqual(result.rxPackets);
    expect(stats[0].packets - result.rxPackets).toBeLessThanOrEqual(QUEUE_SIZE);
    expect(/RX-errors:\s*0\b/.test(result.output)).toBe(true);
    healthy(stats, rig);
  });

  it('io --tx-first through our loopback (adaptive mode): frames bounce on packed rings', async () => {
    const rig = await NetRig.start({ backend: 'loopback', mode: 'adaptive', queueSize: QUEUE_SIZE });
    rigs.push(rig);
    const { seen, check } = watchPacked(rig, () => rig.stats(0).packets >= 50 * MIN_FRAMES);
    const result = await runTestpmd(rig.socketPath, 'io', check, ['--tx-first'], { packed: true });
    expect(seen).toEqual({ packed: true, inOrder: true });
    expect(result.rxPackets, result.output.slice(-2000)).toBeGreaterThanOrEqual(MIN_FRAMES);
    await waitDisconnected(rig);
    const stats = rig.device.netStats();
    expect(stats[1].packets).toBe(result.txPackets);
    expect(stats[0].packets + stats[0].noBuffer).toBe(stats[1].packets);
    expect(stats[0].packets - result.rxPackets).toBeLessThanOrEqual(QUEUE_SIZE);
    healthy(stats, rig);
  });
});
