// `--engine auto`: io_uring where the host allows it, the threads engine where io_uring_setup is
// refused (EPERM / EACCES / ENOSYS, as under Docker's default seccomp profile), with one warning
// that says why. io_uring is made unavailable through the documented test hook
// (VUT_FAKE_IO_URING_ERRNO), which fails every io_uring_setup of the process at the native boundary.
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { native } from '../../dist/native.js';
import { FAKE_URING_ERRNO_ENV, probeUring, resolveEngine } from '../../dist/devices/blk/engine-select.js';
import { startBlkBackend, type BlkBackend, type BlkBackendOptions } from '../../dist/devices/blk/backend.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import type { Logger } from '../../dist/log.js';
import { BlkGuest, S, mismatch, pattern } from './blk-rig.js';

const MiB = 1 << 20;
const dirs: string[] = [];
const backends: BlkBackend[] = [];
const guests: BlkGuest[] = [];

afterEach(async () => {
  delete process.env[FAKE_URING_ERRNO_ENV];
  for (const guest of guests.splice(0)) guest.close();
  for (const backend of backends.splice(0)) await backend.stop();
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

/** A logger that keeps what it is told. */
function recordingLogger(): Logger & { lines: { level: string; msg: string; fields?: Record<string, unknown> }[] } {
  const lines: { level: string; msg: string; fields?: Record<string, unknown> }[] = [];
  const logger = {
    lines,
    error: (msg: string, fields?: Record<string, unknown>) => lines.push({ level: 'error', msg, fields }),
    warn: (msg: string, fields?: Record<string, unknown>) => lines.push({ level: 'warn', msg, fields }),
    info: (msg: string, fields?: Record<string, unknown>) => lines.push({ level: 'info', msg, fields }),
    debug: (msg: string, fields?: Record<string, unknown>) => lines.push({ level: 'debug', msg, fields }),
    child: () => logger,
  };
  return logger;
}

function makeImage(bytes: number): { dir: string; image: string } {
  const dir = mkdtempSync(join(tmpdir(), 'vut-blk-select-'));
  dirs.push(dir);
  const image = join(dir, 'disk.img');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return { dir, image };
}

function backendOptions(dir: string, image: string, engine: BlkBackendOptions['engine']): BlkBackendOptions {
  return {
    socketPath: join(dir, 'blk.sock'),
    client: false,
    engine,
    diskPath: image,
    direct: false,
    readOnly: false,
    queues: 1,
    queueSize: 128,
    cpus: [1],
    poll: 'interrupt',
    idleBudgetUs: 50,
  };
}

async function connect(socketPath: string): Promise<BlkGuest> {
  const memory = FrontendMemory.simple(16 * MiB);
  const device = await FrontendDevice.connect({ socketPath, memory, queues: 1, queueSize: 128, indirectEntries: 16 });
  const guest = new BlkGuest(device, memory, true);
  guests.push(guest);
  return guest;
}

describe('engine selection', () => {
  it('auto picks io_uring exactly when this host lets a ring be set up', () => {
    let allowed = true;
    try {
      new native.Uring(1).close();
    } catch {
      allowed = false;
    }
    expect(probeUring()).toEqual(allowed ? null : expect.any(String));
    expect(resolveEngine('auto')).toBe(allowed ? 'io_uring' : 'threads');
    expect(resolveEngine('threads')).toBe('threads');
    expect(resolveEngine('memory')).toBe('memory');
  });

  it.each(['EPERM', 'EACCES', 'ENOSYS'])(
    'io_uring_setup failing with %s: auto falls back to threads and says why, once',
    (errno) => {
      process.env[FAKE_URING_ERRNO_ENV] = errno;
      const log = recordingLogger();
      expect(resolveEngine('auto', log)).toBe('threads');
      expect(log.lines).toHaveLength(1);
      expect(log.lines[0].level).toBe('warn');
      expect(log.lines[0].msg).toContain(`io_uring_setup failed with ${errno}`);
      expect(log.lines[0].msg).toMatch(/seccomp/);
      expect(log.lines[0].fields).toEqual({ errno, engine: 'threads' });
      // An engine named explicitly is not second-guessed.
      expect(resolveEngine('io_uring', log)).toBe('io_uring');
      expect(log.lines).toHaveLength(1);
    },
  );

  it('any other io_uring_setup failure is an error, not a silent fallback', () => {
    process.env[FAKE_URING_ERRNO_ENV] = 'ENOMEM';
    expect(() => resolveEngine('auto')).toThrow(/ENOMEM/);
  });

  it('a daemon with --engine auto serves the disk through the threads engine where io_uring is refused', async () => {
    process.env[FAKE_URING_ERRNO_ENV] = 'EPERM';
    const { dir, image } = makeImage(16 * MiB);
    const log = recordingLogger();
    const options = backendOptions(dir, image, 'auto');
    const backend = await startBlkBackend(options, log);
    backends.push(backend);
    const fallbacks = log.lines.filter((line) => line.level === 'warn' && line.msg.includes('threads engine'));
    expect(fallbacks).toHaveLength(1);
    expect(log.lines.find((line) => line.msg === 'serving')!.fields!.engine).toBe('threads');
    const guest = await connect(options.socketPath!);
    const data = pattern(256 * 1024, 31);
    expect((await guest.write(128, data)).status).toBe(S.OK);
    expect(mismatch((await guest.read(128, data.length)).data, data)).toBe(-1);
    // The bytes are in the file: the threads engine wrote them, io_uring never could.
    const fd = openSync(image, 'r');
    const onDisk = new Uint8Array(data.length);
    readSync(fd, onDisk, 0, data.length, 128 * 512);
    closeSync(fd);
    expect(mismatch(onDisk, data)).toBe(-1);
  });

  it('a daemon with --engine io_uring where io_uring is refused fails to start and says why', async () => {
    process.env[FAKE_URING_ERRNO_ENV] = 'EPERM';
    const { dir, image } = makeImage(16 * MiB);
    await expect(startBlkBackend(backendOptions(dir, image, 'io_uring'), recordingLogger())).rejects.toThrow(
      /EPERM.*io_uring_setup/,
    );
  });
});
