// A real guest on our vhost-user-blk: QEMU 7.2 (TCG) boots a Debian kernel against the
// vhost-user-blk CLI (its own process; io_uring engine, and once the threads engine), writes a
// pattern with O_DIRECT, reads it back, flushes, discards, and reports what it saw of the
// device. The host then checks the pattern is on the backing file. Every poll mode, 1 and 2 queues.
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { spawnBlkBackend } from '../../dist/guest/blk-process.js';
import { assertGuestOk, makePattern, runGuest, type BlkResult } from '../../dist/guest/qemu.js';
import { readFileRange, useGuestRig } from './rig.js';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const DATA_BYTES = 4 * MiB;

const rig = useGuestRig('vut-blk-guest-');

// `auto` is the default engine for a disk: io_uring where the host allows it. The threads engine
// (blocking I/O in a thread pool, for hosts that forbid io_uring) runs once, named explicitly.
describe.each([
  ['busy', 1, 'auto'],
  ['busy', 2, 'auto'],
  ['interrupt', 1, 'auto'],
  ['interrupt', 2, 'auto'],
  ['adaptive', 1, 'auto'],
  ['adaptive', 2, 'auto'],
  ['adaptive', 2, 'threads'],
] as const)('a QEMU guest on vhost-user-blk, %s polling, %i queue(s), %s engine', (mode, queues, engine) => {
  it('sees the configured disk, verifies its data with O_DIRECT, flushes and discards', { timeout: 240_000 }, async () => {
    const name = `${mode}-${queues}-${engine}`;
    const disk = join(rig.dir, `${name}.img`);
    const backend = await spawnBlkBackend(join(rig.dir, `${name}.sock`), [
      '--disk',
      disk,
      '--size',
      String(DISK_BYTES),
      '--cpus',
      '1',
      '--poll',
      mode,
      '--queues',
      String(queues),
      '--engine',
      engine,
    ]);
    let run;
    try {
      run = await runGuest<BlkResult>({
        image: rig.image,
        socketPath: backend.socket,
        numQueues: queues,
        jobArgs: { bytes: DATA_BYTES, seed: 7 + queues, tail: 1, discard: MiB, flush: 1 },
        consoleLogPath: join(rig.dir, `${name}.console.log`),
        timeoutMs: 180_000,
      });
    } finally {
      const code = await backend.stop();
      expect(code, backend.log()).toBe(0);
    }
    const r = assertGuestOk(run);
    // What the guest saw of our config space.
    expect(r.size_bytes).toBe(DISK_BYTES);
    expect(r.logical_block_size).toBe(512);
    expect(r.queues).toBe(queues);
    // Data written by the guest came back, and it is on the backing file (not only in a cache).
    expect(r.data?.verified).toBe(true);
    expect(r.tail?.verified).toBe(true);
    const written = readFileRange(disk, r.data!.offset, DATA_BYTES);
    expect(written.equals(makePattern(r.data!.seed, r.data!.offset, DATA_BYTES))).toBe(true);
    // FLUSH reached the back-end; DISCARD was offered and used.
    expect(r.flush.feature).toBe(true);
    expect(r.flush.requests).toBeGreaterThan(0);
    expect(typeof r.discard).toBe('object');
    if (queues === 2) {
      // Both request queues carried completions.
      expect(r.vq_interrupts.filter((count) => (count ?? 0) > 0).length).toBe(2);
    }
  });
});
