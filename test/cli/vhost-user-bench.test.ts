// vhost-user-bench blk fails loudly: the CLI (a child process) against back-ends served from this
// process — one that works (and offers features the generator must not ack), one whose device
// answers IOERR, one that never completes anything, and one that goes away mid-run.
// vhost-user-bench net: short tx / rx / loopback runs against our net back-ends (sink, source,
// loopback) whose own counters must agree with what the CLI reports, and its usage errors.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { DataPlane, VhostUserDevice } from '../../dist/control/backend.js';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import {
  ProtocolFeature,
  VHOST_F_LOG_ALL,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../dist/control/protocol.js';
import { WorkerDataPlane } from '../../dist/dataplane/pool.js';
import { BlkDevice } from '../../dist/devices/blk/device.js';
import { BlkFeature } from '../../dist/devices/blk/virtio-blk.js';
import { EXIT_INVALID_MEASUREMENT } from '../../dist/cli/vhost-user-bench.js';
import { benchFailures, type BenchResult } from '../../dist/loadgen/run.js';
import { netBenchFailures, type NetBenchResult } from '../../dist/loadgen/net-run.js';
import { RecordingDataPlane, captureLogs, until } from '../control/helpers.js';
import { NetRig } from '../devices/net-rig.js';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-bench', import.meta.url));
const CAPACITY = 64 << 20;
/** Transport features a back-end may offer that the generator does not implement. */
const UNIMPLEMENTED = bit(VIRTIO_F_RING_PACKED) | bit(VIRTIO_F_IN_ORDER) | bit(VIRTIO_F_ACCESS_PLATFORM) | bit(VHOST_F_LOG_ALL);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

/** Runs the CLI asynchronously: the back-end under test lives on this process's event loop. */
function bench(args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(process.execPath, [BIN, ...args], { timeout: 30_000 }, (error, stdout, stderr) => {
      const code = error ? ((error as { code?: number }).code ?? null) : 0;
      resolve({ code: typeof code === 'number' ? code : null, stdout, stderr });
    });
  });
}

/**
 * A virtio-blk back-end (real daemon, worker data plane, null engine) whose device can lie: offer
 * extra features, or claim a disk far larger than the handler serves, so that almost every
 * request lands outside the disk and completes with IOERR.
 */
function lyingBlk(extraFeatures: bigint, capacityScale = 1): { device: VhostUserDevice; blk: BlkDevice } {
  const blk = new BlkDevice({
    capacityBytes: CAPACITY,
    numQueues: 1,
    maxQueueSize: 256,
    readOnly: false,
    supportsDiscard: true,
    supportsFlush: true,
  });
  const device: VhostUserDevice = {
    name: blk.name,
    numQueues: blk.numQueues,
    maxQueueSize: blk.maxQueueSize,
    features: blk.features | extraFeatures,
    setFeatures: (features) => blk.setFeatures(features & blk.features),
    getConfig: (offset, size) => {
      const config = blk.getConfig(offset, size);
      if (offset === 0 && size >= 8) {
        const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
        view.setBigUint64(0, view.getBigUint64(0, true) * BigInt(capacityScale), true);
      }
      return config;
    },
    reset: () => blk.reset(),
  };
  return { device, blk };
}

let logs: ReturnType<typeof captureLogs>;
let dir: string;
const cleanups: (() => Promise<unknown>)[] = [];

beforeAll(() => {
  logs = captureLogs();
  dir = mkdtempSync(join(tmpdir(), 'vut-bench-cli-'));
});
afterAll(() => {
  logs.restore();
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function serve(
  device: VhostUserDevice,
  dataPlane?: DataPlane,
  handler?: BlkDevice,
): Promise<{ socketPath: string; daemon: VhostUserDaemon }> {
  const socketPath = join(dir, `blk-${cleanups.length}-${Date.now()}.sock`);
  let plane = dataPlane;
  if (!plane) {
    // Interrupt mode: the tests share two cores with other work; the CLI below waits on events too.
    const workers = await WorkerDataPlane.start({
      cpus: [-1],
      queueCount: 1,
      mode: 'interrupt',
      handler: handler!.handlerSpec({ engine: 'null' }),
      maxSegments: handler!.maxSegments,
    });
    cleanups.push(() => workers.close());
    plane = workers;
  }
  const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane });
  await daemon.start();
  cleanups.push(() => daemon.stop());
  return { socketPath, daemon };
}

const QUICK = ['--seconds', '1', '--warmup', '0', '--wait', 'event', '--json'];

describe('vhost-user-bench blk', () => {
  it('measures a working back-end, acking none of the ring features it does not implement, and reports what was negotiated', async () => {
    const { device, blk } = lyingBlk(UNIMPLEMENTED);
    const { socketPath } = await serve(device, undefined, blk);
    const run = await bench(['blk', '--socket', socketPath, ...QUICK]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as BenchResult;
    expect(result.requests).toBeGreaterThan(0);
    expect(result.errors).toBe(0);
    expect(result.failures).toEqual([]);
    const offered = BigInt(result.offered_features);
    const features = BigInt(result.features);
    expect(offered & UNIMPLEMENTED).toBe(UNIMPLEMENTED);
    expect(features & UNIMPLEMENTED).toBe(0n);
    expect(features & bit(VIRTIO_F_VERSION_1)).toBe(bit(VIRTIO_F_VERSION_1));
    expect(features & bit(VIRTIO_F_EVENT_IDX)).toBe(bit(VIRTIO_F_EVENT_IDX));
    // Blk bits the generator never uses stay unacked, even though this device offers them.
    expect(offered & bit(BlkFeature.FLUSH)).not.toBe(0n);
    expect(features & (bit(BlkFeature.FLUSH) | bit(BlkFeature.DISCARD) | bit(BlkFeature.WRITE_ZEROES))).toBe(0n);
    expect(features & bit(BlkFeature.BLK_SIZE)).not.toBe(0n);
    expect(BigInt(result.protocol_features)).toBe(
      bit(ProtocolFeature.MQ) |
        bit(ProtocolFeature.REPLY_ACK) |
        bit(ProtocolFeature.CONFIG) |
        bit(ProtocolFeature.CONFIGURE_MEM_SLOTS),
    );
    expect(BigInt(result.offered_protocol_features) & bit(ProtocolFeature.STATUS)).not.toBe(0n);
  });

  it('--packed drives packed rings (RING_PACKED acked) and measures', async () => {
    const { device, blk } = lyingBlk(0n);
    const { socketPath } = await serve(device, undefined, blk);
    const run = await bench(['blk', '--socket', socketPath, '--packed', '--qd', '8', ...QUICK]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as BenchResult;
    expect(result.requests).toBeGreaterThan(0);
    expect(result.errors).toBe(0);
    expect(BigInt(result.features) & bit(VIRTIO_F_RING_PACKED)).toBe(bit(VIRTIO_F_RING_PACKED));
  });

  it('exits 3 when requests fail (a device answering IOERR)', async () => {
    const { device, blk } = lyingBlk(0n, 1024);
    const { socketPath } = await serve(device, undefined, blk);
    const run = await bench(['blk', '--socket', socketPath, ...QUICK]);
    expect(run.code).toBe(EXIT_INVALID_MEASUREMENT);
    const result = JSON.parse(run.stdout) as BenchResult;
    expect(result.errors).toBeGreaterThan(0);
    expect(result.first_error).toMatch(/virtio-blk status 1/);
    expect(run.stderr).toMatch(/not a valid measurement: \d+ request\(s\) failed; first: queue 0: virtio-blk status 1/);
  });

  it('exits 3 when no request completes (a stalled back-end), naming the requests it lost', async () => {
    const blk = new BlkDevice({
      capacityBytes: CAPACITY,
      numQueues: 1,
      maxQueueSize: 256,
      readOnly: false,
      supportsDiscard: false,
      supportsFlush: false,
    });
    // The recording data plane accepts the rings and never processes them.
    const { socketPath } = await serve(blk, new RecordingDataPlane());
    const run = await bench(['blk', '--socket', socketPath, '--qd', '4', ...QUICK]);
    expect(run.code).toBe(EXIT_INVALID_MEASUREMENT);
    expect(JSON.parse(run.stdout)).toMatchObject({ requests: 0, iops: 0, in_flight_at_end: 4 });
    expect(run.stderr).toMatch(/no request completed in the 1(\.\d+)? s measured window/);
    expect(run.stderr).toMatch(/4 request\(s\) never completed/);
  });

  it('exits 3 when the back-end goes away mid-run (the window is cut short), in the text report too', async () => {
    const { device, blk } = lyingBlk(0n);
    const { socketPath, daemon } = await serve(device, undefined, blk);
    const running = bench(['blk', '--socket', socketPath, '--seconds', '20', '--warmup', '0', '--wait', 'event']);
    await until(() => (daemon.queueStats()[0]?.requests ?? 0) > 100, 15_000, 'the bench to drive requests');
    await daemon.stop();
    const run = await running;
    expect(run.code).toBe(EXIT_INVALID_MEASUREMENT);
    expect(run.stdout).toMatch(/features 0x[0-9a-f]+ of 0x[0-9a-f]+ offered; protocol features 0x[0-9a-f]+ of 0x[0-9a-f]+/);
    expect(run.stderr).toMatch(/the measured window was [\d.]+ s, shorter than the 20 s asked/);
  });

  it('measures nothing when the back-end goes away during warm-up (no warm-up requests counted)', async () => {
    const { device, blk } = lyingBlk(0n);
    const { socketPath, daemon } = await serve(device, undefined, blk);
    const running = bench(['blk', '--socket', socketPath, '--seconds', '1', '--warmup', '20', '--wait', 'event', '--json']);
    await until(() => (daemon.queueStats()[0]?.requests ?? 0) > 100, 15_000, 'the bench to drive requests');
    await daemon.stop();
    const run = await running;
    expect(run.code).toBe(EXIT_INVALID_MEASUREMENT);
    expect(JSON.parse(run.stdout)).toMatchObject({ requests: 0, seconds: 0, iops: 0 });
    expect(run.stderr).toMatch(/no request completed/);
    expect(run.stderr).toMatch(/the measured window was 0 s, shorter than the 1 s asked/);
  });

  it('refuses a workload the negotiated device cannot take, before measuring (exit 1)', async () => {
    const blk = new BlkDevice({
      capacityBytes: CAPACITY,
      numQueues: 1,
      maxQueueSize: 256,
      readOnly: true,
      supportsDiscard: false,
      supportsFlush: false,
    });
    const { socketPath } = await serve(blk, new RecordingDataPlane());
    const run = await bench(['blk', '--socket', socketPath, '--rw', 'randwrite', ...QUICK]);
    expect(run.code).toBe(1);
    expect(run.stderr).toMatch(/read-only \(VIRTIO_BLK_F_RO\)/);
  });

  it('documents its exit codes', async () => {
    const run = await bench(['--help']);
    expect(run.code).toBe(0);
    expect(run.stdout).toMatch(/\n {2}3 {2}the measurement is not valid/);
  });
});

describe('benchFailures', () => {
  const ok = { requests: 10, errors: 0, in_flight_at_end: 0, seconds: 2, first_error: undefined, disconnected: undefined };
  it('accepts a full window of completed requests', () => {
    expect(benchFailures(ok as never, { seconds: 2 })).toEqual([]);
  });
  it('names each reason a run is not a measurement', () => {
    expect(benchFailures({ ...ok, requests: 0 } as never, { seconds: 2 })).toEqual([
      'no request completed in the 2 s measured window',
    ]);
    expect(benchFailures({ ...ok, seconds: 1.5 } as never, { seconds: 2 })).toEqual([
      'the measured window was 1.5 s, shorter than the 2 s asked',
    ]);
    expect(benchFailures({ ...ok, disconnected: 'gone' } as never, { seconds: 2 })).toEqual([
      'the back-end closed the connection during the run: gone',
    ]);
    expect(benchFailures({ ...ok, errors: 2, first_error: 'status 1' } as never, { seconds: 2 })).toEqual([
      '2 request(s) failed; first: status 1',
    ]);
  });
});

/** Within 1 % of each other. */
const near = (a: number, b: number) => Math.abs(a - b) <= 0.01 * Math.max(Math.abs(a), Math.abs(b));

describe('vhost-user-bench net', () => {
  async function netRig(backend: 'sink' | 'source' | 'loopback', frameBytes = 64): Promise<NetRig> {
    // Interrupt mode: the tests share two cores with other work.
    const rig = await NetRig.start({ backend, mode: 'interrupt', cpus: [-1], frameBytes });
    cleanups.push(() => rig.stop());
    return rig;
  }

  it('tx: counts the frames a sink took, as the sink counted them', async () => {
    const rig = await netRig('sink');
    const run = await bench(['net', '--socket', rig.socketPath, '--mode', 'tx', '--frame-size', '128', ...QUICK]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as NetBenchResult;
    expect(result.device).toBe('net');
    expect(result.failures).toEqual([]);
    expect(result.tx_frames).toBeGreaterThan(0);
    expect(result.rx_frames).toBe(0);
    // result.seconds is rounded to the millisecond: rates agree to well within 1 %.
    expect(near(result.tx_pps, result.tx_frames / result.seconds)).toBe(true);
    expect(near(result.mbps, (result.tx_frames * 128) / result.seconds / 1e6)).toBe(true);
    // The sink saw at least every frame measured (the window excludes the drain), all of 128 bytes.
    const sink = rig.stats(1);
    expect(sink.packets).toBeGreaterThanOrEqual(result.tx_frames);
    expect(sink.bytes).toBe(sink.packets * 128);
    expect(result.lat_us!.min).toBeLessThanOrEqual(result.lat_us!.p50);
    expect(result.lat_us!.p50).toBeLessThanOrEqual(result.lat_us!.max);
    expect(BigInt(result.features) & bit(VIRTIO_F_VERSION_1)).toBe(bit(VIRTIO_F_VERSION_1));
    expect(result.settings.headerBytes).toBe(12);
  });

  it('rx: counts the 1514-byte frames a source wrote, as the source counted them', async () => {
    const rig = await netRig('source', 1514);
    const run = await bench(['net', '--socket', rig.socketPath, '--mode', 'rx', '--frame-size', '1514', ...QUICK]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as NetBenchResult;
    expect(result.rx_frames).toBeGreaterThan(0);
    expect(result.tx_frames).toBe(0);
    expect(result.errors).toBe(0);
    expect(result.lat_us).toBeNull();
    expect(near(result.mbps, (result.rx_frames * 1514) / result.seconds / 1e6)).toBe(true);
    expect(rig.stats(0).packets).toBeGreaterThanOrEqual(result.rx_frames);
  });

  it('loopback: frames come back and their round trip is timed; the text report says what was measured', async () => {
    const rig = await netRig('loopback');
    const run = await bench(['net', '--socket', rig.socketPath, '--mode', 'loopback', '--qd', '4', ...QUICK]);
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as NetBenchResult;
    expect(result.rx_frames).toBeGreaterThan(0);
    // Frames sent in the window come back in it, but for the few in flight at its ends.
    expect(Math.abs(result.tx_frames - result.rx_frames)).toBeLessThanOrEqual(4);
    expect(result.lat_us!.p50).toBeGreaterThan(0);
    expect(result.lat_us!.min).toBeLessThanOrEqual(result.lat_us!.p99);
    expect(rig.stats(0).noBuffer).toBe(0);
    const text = await bench(['net', '--socket', rig.socketPath, '--mode', 'loopback', '--seconds', '1', '--warmup', '0']);
    expect(text.code).toBe(0);
    expect(text.stdout).toMatch(/^vhost-user-bench net: loopback frame=64 B qd=1 /);
    expect(text.stdout).toMatch(/\nmachine: .+ CPUs, Node v/);
    expect(text.stdout).toMatch(/\nmethod: RX ring kept full/);
    expect(text.stdout).toMatch(/round trip us: mean [\d.]+ +min/);
  });

  it('--rate: loopback and tx follow a low offered rate (open loop), and say so', async () => {
    // 2000 frames/s: low enough that a loaded machine keeps up, so the schedule, not the
    // back-end, sets the rate; latency is then timed from when each frame was due.
    const rate = 2000;
    const loopback = await netRig('loopback');
    const run = await bench(['net', '--socket', loopback.socketPath, '--mode', 'loopback', '--rate', String(rate), ...QUICK]);
    expect(run.stderr).toBe('');
    expect(run.code).toBe(0);
    const result = JSON.parse(run.stdout) as NetBenchResult;
    expect(result.settings.rate).toBe(rate);
    expect(result.settings.queueDepth).toBe(128);
    expect(result.method).toMatch(/open loop/);
    expect(Math.abs(result.tx_pps - rate)).toBeLessThanOrEqual(0.1 * rate);
    expect(Math.abs(result.rx_pps - rate)).toBeLessThanOrEqual(0.1 * rate);
    expect(result.lat_us!.p50).toBeGreaterThan(0);
    expect(loopback.stats(0).noBuffer).toBe(0);
    const sink = await netRig('sink');
    const tx = await bench(['net', '--socket', sink.socketPath, '--mode', 'tx', '--rate', String(rate), ...QUICK]);
    expect(tx.code).toBe(0);
    const txResult = JSON.parse(tx.stdout) as NetBenchResult;
    expect(Math.abs(txResult.tx_pps - rate)).toBeLessThanOrEqual(0.1 * rate);
    // Closed loop against the same sink runs far faster than the offered rate: the pacing is real.
    const closed = JSON.parse(
      (await bench(['net', '--socket', sink.socketPath, '--mode', 'tx', ...QUICK])).stdout,
    ) as NetBenchResult;
    expect(closed.tx_pps).toBeGreaterThan(2 * rate);
    const text = await bench([
      'net',
      '--socket',
      sink.socketPath,
      '--mode',
      'tx',
      '--rate',
      '500',
      '--seconds',
      '1',
      '--warmup',
      '0',
    ]);
    expect(text.stdout).toMatch(/^vhost-user-bench net: tx frame=64 B qd=256 rate=500\/s /);
  });

  it('exits 3 when no frame moves in the measured direction (rx against a sink)', async () => {
    const rig = await netRig('sink');
    const run = await bench(['net', '--socket', rig.socketPath, '--mode', 'rx', ...QUICK]);
    expect(run.code).toBe(EXIT_INVALID_MEASUREMENT);
    expect(run.stderr).toMatch(/no frame arrived on RX/);
    expect((JSON.parse(run.stdout) as NetBenchResult).rx_frames).toBe(0);
  });

  it('bad arguments exit 2 with the reason; no back-end exits 1', async () => {
    const socket = join(dir, 'nobody.sock');
    const cases: [string[], RegExp][] = [
      [['net', '--socket', socket], /--mode is required/],
      [['net', '--socket', socket, '--mode', 'sideways'], /--mode "sideways"/],
      [['net', '--mode', 'tx'], /--socket PATH is required/],
      [['net', '--socket', socket, '--mode', 'tx', '--frame-size', '59'], /--frame-size/],
      [['net', '--socket', socket, '--mode', 'tx', '--qd', '0'], /--qd/],
      [['net', '--socket', socket, '--mode', 'tx', '--queue-size', '100'], /power of two/],
      [['net', '--socket', socket, '--mode', 'tx', '--rw', 'read'], /--rw/],
      [['net', '--socket', socket, '--mode', 'tx', '--rate', '0'], /--rate must be between 1 and/],
      [['net', '--socket', socket, '--mode', 'loopback', '--rate', '-5'], /--rate/],
      [['net', '--socket', socket, '--mode', 'loopback', '--rate', '1.5k'], /--rate "1.5k" is not a whole number/],
      [['net', '--socket', socket, '--mode', 'tx', '--rate', '200000000'], /--rate must be between/],
      [['net', '--socket', socket, '--mode', 'rx', '--rate', '1000'], /--rate paces TX frames/],
      [['disk', '--socket', socket], /unknown device "disk"/],
    ];
    for (const [args, reason] of cases) {
      const run = await bench(args);
      expect(run.code, args.join(' ')).toBe(2);
      expect(run.stderr).toMatch(reason);
    }
    const missing = await bench(['net', '--socket', socket, '--mode', 'tx', ...QUICK]);
    expect(missing.code).toBe(1);
  });
});

describe('netBenchFailures', () => {
  const ok = { tx_frames: 10, rx_frames: 10, errors: 0, in_flight_at_end: 0, seconds: 2 };
  it('accepts a full window in which frames moved', () => {
    expect(netBenchFailures(ok as never, { seconds: 2, mode: 'loopback' })).toEqual([]);
    expect(netBenchFailures({ ...ok, rx_frames: 0 } as never, { seconds: 2, mode: 'tx' })).toEqual([]);
  });
  it('names each reason a run is not a measurement', () => {
    expect(netBenchFailures({ ...ok, tx_frames: 0 } as never, { seconds: 2, mode: 'tx' })).toEqual([
      'the back-end took no frame in the 2 s measured window',
    ]);
    expect(netBenchFailures({ ...ok, rx_frames: 0 } as never, { seconds: 2, mode: 'loopback' })).toEqual([
      'no frame arrived on RX in the 2 s measured window',
    ]);
    expect(netBenchFailures({ ...ok, in_flight_at_end: 3 } as never, { seconds: 2, mode: 'tx' })).toEqual([
      '3 TX frame(s) never taken (the back-end stalled or lost them)',
    ]);
    expect(netBenchFailures({ ...ok, errors: 1, first_error: 'len 3' } as never, { seconds: 2, mode: 'rx' })).toEqual([
      '1 malformed completion(s); first: len 3',
    ]);
  });
});
