// A real guest on packed virtqueues: QEMU 7.2 (TCG) with `packed=on` on vhost-user-blk-pci against
// our vhost-user-blk CLI, 1 and 2 queues. The guest writes a pattern with O_DIRECT and reads it
// back; the host checks it is on the backing file. QEMU silently falls back to split rings when
// the back-end does not offer VIRTIO_F_RING_PACKED, so the test asserts the feature the guest
// driver negotiated (character 34 of /sys/bus/virtio/devices/*/features).
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { spawnBlkBackend } from '../../dist/guest/blk-process.js';
import { assertGuestOk, makePattern, runGuest, type BlkResult } from '../../dist/guest/qemu.js';
import { readFileRange, useGuestRig } from './rig.js';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const DATA_BYTES = 4 * MiB;
const VIRTIO_F_RING_PACKED = 34;
const VIRTIO_F_EVENT_IDX = 29;

const rig = useGuestRig('vut-packed-guest-');

describe.each([
  ['adaptive', 1],
  ['interrupt', 2],
] as const)('a QEMU guest on vhost-user-blk with packed=on, %s polling, %i queue(s)', (mode, queues) => {
  it('negotiates RING_PACKED and verifies its data with O_DIRECT', { timeout: 240_000 }, async () => {
    const name = `${mode}-${queues}`;
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
    ]);
    let run;
    try {
      run = await runGuest<BlkResult>({
        image: rig.image,
        socketPath: backend.socket,
        numQueues: queues,
        blkDeviceProps: ['packed=on'],
        jobArgs: { bytes: DATA_BYTES, seed: 11 + queues, tail: 1, flush: 1 },
        consoleLogPath: join(rig.dir, `${name}.console.log`),
        timeoutMs: 180_000,
      });
    } finally {
      const code = await backend.stop();
      expect(code, backend.log()).toBe(0);
    }
    const r = assertGuestOk(run);
    // The guest driver really runs packed rings (with EVENT_IDX: the packed event suppression).
    expect(r.features?.charAt(VIRTIO_F_RING_PACKED)).toBe('1');
    expect(r.features?.charAt(VIRTIO_F_EVENT_IDX)).toBe('1');
    expect(r.queues).toBe(queues);
    expect(r.data?.verified).toBe(true);
    expect(r.tail?.verified).toBe(true);
    const written = readFileRange(disk, r.data!.offset, DATA_BYTES);
    expect(written.equals(makePattern(r.data!.seed, r.data!.offset, DATA_BYTES))).toBe(true);
    expect(r.flush.requests).toBeGreaterThan(0);
    if (queues === 2) expect(r.vq_interrupts.filter((count) => (count ?? 0) > 0).length).toBe(2);
  });
});
