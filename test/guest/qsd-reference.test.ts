// The real-guest rig proven against qemu-storage-daemon, the reference vhost-user-blk back-end:
// if this fails, the rig (not our back-end) is broken.
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  assertGuestOk,
  ensureGuestImage,
  guestRigUnavailable,
  makePattern,
  runGuest,
  sha256,
  type BlkResult,
  type GuestImage,
} from '../../dist/guest/qemu.js';
import { createRawImage, startStorageDaemon, type StorageDaemon } from '../../dist/guest/qsd.js';

const MiB = 1024 * 1024;
const unavailable = guestRigUnavailable([
  ['qemu-storage-daemon', 'qemu-utils'],
  ['qemu-img', 'qemu-utils'],
]);

// No silent skips: a machine without QEMU fails here with the package to install.
describe('guest rig vs qemu-storage-daemon', () => {
  let dir: string;
  let image: GuestImage;
  const daemons: StorageDaemon[] = [];

  beforeAll(async () => {
    if (unavailable) throw new Error(unavailable);
    dir = mkdtempSync(join(tmpdir(), 'vut-guest-'));
    image = await ensureGuestImage();
  }, 120_000);

  afterAll(async () => {
    await Promise.all(daemons.map((d) => d.stop()));
    rmSync(dir, { recursive: true, force: true });
  });

  async function boot(name: string, numQueues: number, seed: number) {
    const img = join(dir, `${name}.img`);
    const sock = join(dir, `${name}.sock`);
    await createRawImage(img, 64 * MiB);
    const qsd = await startStorageDaemon({ image: img, socketPath: sock, numQueues });
    daemons.push(qsd);
    const run = await runGuest<BlkResult>({
      image,
      socketPath: sock,
      numQueues,
      jobArgs: { bytes: 4 * MiB, seed },
      consoleLogPath: join(dir, `${name}.console.log`),
      timeoutMs: 150_000,
    });
    await qsd.stop();
    console.log(
      `[guest ${name}] boot-to-result ${run.durationMs} ms (guest uptime ${run.result.uptime_s} s, ` +
        `QEMU exit ${run.exitMs} ms)`,
    );
    const r = assertGuestOk(run);
    return { r, img };
  }

  function checkCommon(r: BlkResult, img: string, seed: number) {
    expect(r.job).toBe('blk');
    expect(r.sectors).toBe(131072); // 64 MiB / 512
    expect(r.size_bytes).toBe(64 * MiB);
    expect(r.logical_block_size).toBe(512);
    expect(r.ro).toBe(0);
    // data written with O_DIRECT, read back with O_DIRECT, checksums equal
    expect(r.data?.verified).toBe(true);
    expect(r.data?.bytes).toBe(4 * MiB);
    expect(r.tail?.verified).toBe(true);
    expect(r.stat.writes).toBeGreaterThan(0);
    expect(r.stat.reads).toBeGreaterThan(0);
    // the host computes the same pattern and finds it in the image file
    const disk = readFileSync(img);
    const expected = makePattern(seed, 0, 4 * MiB);
    expect(r.data?.sha256).toBe(sha256(expected));
    expect(sha256(disk.subarray(0, 4 * MiB))).toBe(sha256(expected));
    const tailOff = 64 * MiB - 4096;
    expect(sha256(disk.subarray(tailOff))).toBe(sha256(makePattern(seed, tailOff, 4096)));
    // QSD offers FLUSH and DISCARD: both must reach it
    expect(r.flush.feature).toBe(true);
    expect(r.write_cache).toBe('write through'); // QSD's config says writeback=0 ...
    expect(r.flush.forced_write_back).toBe('cache_type'); // ... and accepts the guest's SET_CONFIG
    expect(r.flush.requests).toBeGreaterThan(0);
    expect(r.discard).toEqual({ offset: 4 * MiB, bytes: MiB });
    expect(r.stat.discards).toBeGreaterThan(0);
  }

  it('1 queue: size, block size, write/read-back, flush, discard', { timeout: 180_000 }, async () => {
    const seed = 123;
    const { r, img } = await boot('q1', 1, seed);
    checkCommon(r, img, seed);
    expect(r.queues).toBe(1);
    expect(r.vq_interrupts).toHaveLength(1);
    expect(r.vq_interrupts[0]).toBeGreaterThan(0);
  });

  it('2 queues: the guest sees and uses both', { timeout: 180_000 }, async () => {
    const seed = 4242;
    const { r, img } = await boot('q2', 2, seed);
    checkCommon(r, img, seed);
    expect(r.cpus).toBe(2);
    expect(r.queues).toBe(2);
    // both virtqueues completed requests (the guest spread reads over both CPUs)
    expect(r.vq_interrupts).toHaveLength(2);
    for (const n of r.vq_interrupts) expect(n).toBeGreaterThan(0);
  });
});
