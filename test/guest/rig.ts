// What every QEMU guest test file sets up: the rig checked (QEMU, kernel, busybox, extra tools),
// the shared guest image (built once and cached for all files), and a scratch folder removed at
// the end. Files call useGuestRig() at top level and read rig.dir / rig.image inside their tests.
import { closeSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll } from 'vitest';
import { ensureGuestImage, guestRigUnavailable, type GuestImage } from '../../dist/guest/qemu.js';

export interface GuestRig {
  /** The file's scratch folder (sockets, disks, logs). */
  readonly dir: string;
  readonly image: GuestImage;
}

export interface GuestRigOptions {
  /** Extra host tools the file needs, as [command, Debian package] pairs. */
  tools?: Array<[string, string]>;
  /** Runs after the rig is ready (e.g. a network namespace). */
  setUp?: () => void;
  /** Runs before the scratch folder goes, even if a test failed. */
  tearDown?: () => void;
}

export function useGuestRig(prefix: string, options: GuestRigOptions = {}): GuestRig {
  const rig = { dir: '', image: undefined as unknown as GuestImage };
  beforeAll(async () => {
    const unavailable = guestRigUnavailable(options.tools);
    if (unavailable) throw new Error(unavailable);
    rig.dir = mkdtempSync(join(tmpdir(), prefix));
    rig.image = await ensureGuestImage();
    options.setUp?.();
  }, 180_000);
  afterAll(() => {
    try {
      if (rig.dir !== '') options.tearDown?.();
    } finally {
      if (rig.dir !== '') rmSync(rig.dir, { recursive: true, force: true });
    }
  });
  return rig;
}

/** `bytes` bytes of a host file from `offset` (what the guest wrote, checked from outside). */
export function readFileRange(path: string, offset: number, bytes: number): Buffer {
  const buffer = Buffer.alloc(bytes);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, bytes, offset);
  } finally {
    closeSync(fd);
  }
  return buffer;
}
