// The file engines against real files — io_uring, and threads (the same engine logic over a
// thread pool doing blocking syscalls): a 1 GiB pattern through QD32, persistence across
// reconnects and restarts, FLUSH, holes, O_DIRECT, an image that shrinks under the daemon, the
// WRITE_ZEROES fallbacks, a tiny ring, memory table swaps, SQPOLL (io_uring), every poll mode.
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync, statSync, truncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { runLoad } from '../../dist/loadgen/load.js';
import type { BlkEngineOptions } from '../../dist/devices/blk/device.js';
import type { PollMode } from '../../dist/dataplane/commands.js';
import { BlkRig, S, T, allZero, mismatch, pattern, type BlkGuest } from './blk-rig.js';

const MiB = 1 << 20;
const rigs: BlkRig[] = [];
const guests: BlkGuest[] = [];
const dirs: string[] = [];

afterEach(async () => {
  for (const guest of guests.splice(0)) guest.close();
  for (const rig of rigs.splice(0)) await rig.stop(false);
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function makeImage(bytes: number, base = tmpdir()): { dir: string; image: string } {
  const dir = mkdtempSync(join(base, 'vut-blk-uring-'));
  dirs.push(dir);
  const image = join(dir, 'disk.img');
  const fd = openSync(image, 'w');
  ftruncateSync(fd, bytes);
  closeSync(fd);
  return { dir, image };
}

type FileEngine = 'io_uring' | 'threads';

async function start(
  engine: FileEngine,
  image: string,
  dir: string,
  capacityBytes: number,
  options: { engine?: Partial<BlkEngineOptions>; mode?: PollMode; memoryBytes?: number } = {},
): Promise<{ rig: BlkRig; guest: BlkGuest }> {
  const rig = await BlkRig.start(
    { engine: { engine, path: image, ...options.engine }, capacityBytes, mode: options.mode, memoryBytes: options.memoryBytes },
    dir,
  );
  rigs.push(rig);
  const guest = await rig.connect();
  guests.push(guest);
  return { rig, guest };
}

function fileBytes(image: string, offset: number, length: number): Uint8Array {
  const fd = openSync(image, 'r');
  try {
    const bytes = new Uint8Array(length);
    readSync(fd, bytes, 0, length, offset);
    return bytes;
  } finally {
    closeSync(fd);
  }
}

/** Word w of the disk holds a value unique to its position (and the pass). */
function fillWords(words: Uint32Array, firstWord: number, seed: number): void {
  for (let w = 0; w < words.length; w++) words[w] = (Math.imul(firstWord + w, 2654435761) + seed) >>> 0;
}

function firstMismatch(words: Uint32Array, firstWord: number, seed: number): number {
  for (let w = 0; w < words.length; w++) if (words[w] !== (Math.imul(firstWord + w, 2654435761) + seed) >>> 0) return w;
  return -1;
}

describe.each(['io_uring', 'threads'] as const)('%s engine', (engine) => {
  it('writes and reads back 1 GiB of pattern at QD32 (1 MiB requests in 4 segments)', async () => {
    const capacity = 1024 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity, { memoryBytes: 64 * MiB });
    const depth = 32;
    const request = MiB;
    const piece = request / 4;
    const buffers = Array.from({ length: depth }, () => guest.alloc(request));
    const seed = 0x5eed;
    const slotOf = new Map<number, { slot: number; index: number }>();
    for (const phase of ['write', 'read'] as const) {
      let next = 0;
      let done = 0;
      const total = capacity / request;
      const post = (slot: number) => {
        const index = next++;
        const words = new Uint32Array(guest.memory.regions[0].buffer, buffers[slot], request / 4);
        if (phase === 'write') fillWords(words, (index * request) / 4, seed);
        else words.fill(0);
        const segments = [
          {
            gpa: guest.header(phase === 'write' ? T.OUT : T.IN, (index * request) / 512, guest.alloc(16, 16)),
            len: 16,
            writable: false,
          },
        ];
        for (let p = 0; p < 4; p++) segments.push({ gpa: buffers[slot] + p * piece, len: piece, writable: phase === 'read' });
        segments.push({ gpa: guest.statusByte(), len: 1, writable: true });
        slotOf.set(guest.post(segments, true), { slot, index });
      };
      for (let slot = 0; slot < depth; slot++) post(slot);
      guest.kick();
      while (done < total) {
        const completed = await guest.waitAny();
        expect(completed.status).toBe(S.OK);
        const { slot, index } = slotOf.get(completed.token)!;
        slotOf.delete(completed.token);
        if (phase === 'read') {
          expect(completed.len).toBe(request + 1);
          const words = new Uint32Array(guest.memory.regions[0].buffer, buffers[slot], request / 4);
          expect(firstMismatch(words, (index * request) / 4, seed), `request ${index}`).toBe(-1);
        }
        done++;
        if (next < total) {
          post(slot);
          guest.kick();
        }
      }
    }
    // The header/status allocations above are small; the image really holds the data.
    const tail = new Uint32Array(fileBytes(image, capacity - 4096, 4096).buffer);
    expect(firstMismatch(tail, (capacity - 4096) / 4, seed)).toBe(-1);
  }, 120_000);

  it('keeps data across a reconnect and across a daemon restart', async () => {
    const capacity = 64 * MiB;
    const { dir, image } = makeImage(capacity);
    const first = await start(engine, image, dir, capacity);
    const data = pattern(256 * 1024, 21);
    expect((await first.guest.write(2048, data)).status).toBe(S.OK);
    expect((await first.guest.simple(T.FLUSH)).status).toBe(S.OK);
    first.guest.close();
    guests.splice(guests.indexOf(first.guest), 1);
    const again = await first.rig.connect();
    guests.push(again);
    expect(mismatch((await again.read(2048, data.length)).data, data)).toBe(-1);
    again.close();
    guests.splice(guests.indexOf(again), 1);
    await first.rig.stop(false);
    rigs.splice(rigs.indexOf(first.rig), 1);
    expect(mismatch(fileBytes(image, 2048 * 512, data.length), data)).toBe(-1);
    const restarted = await start(engine, image, dir, capacity);
    expect(mismatch((await restarted.guest.read(2048, data.length)).data, data)).toBe(-1);
  });

  it('FLUSH posted behind writes completes after them, and the file then holds every write', async () => {
    const capacity = 64 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity);
    const writes: number[] = [];
    for (let i = 0; i < 32; i++) {
      const at = guest.alloc(65536);
      guest.bytes(at, 65536).set(pattern(65536, 300 + i));
      writes.push(
        guest.post(
          [
            { gpa: guest.header(T.OUT, i * 256), len: 16, writable: false },
            { gpa: at, len: 65536, writable: false },
            { gpa: guest.statusByte(), len: 1, writable: true },
          ],
          true,
        ),
      );
    }
    guest.kick();
    for (const token of writes) expect((await guest.wait(token)).status).toBe(S.OK);
    // Every write above completed: a FLUSH now must cover all of them.
    const flush = guest.post(
      [
        { gpa: guest.header(T.FLUSH, 0), len: 16, writable: false },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ],
      true,
    );
    guest.kick();
    expect(await guest.wait(flush)).toEqual({ len: 1, status: S.OK });
    for (let i = 0; i < 32; i++) expect(mismatch(fileBytes(image, i * 256 * 512, 65536), pattern(65536, 300 + i))).toBe(-1);
    // FLUSH in the same batch as writes (the spec orders nothing between them): all complete OK.
    const mixed: number[] = [];
    for (let i = 0; i < 8; i++) {
      const at = guest.alloc(4096);
      mixed.push(
        guest.post(
          [
            { gpa: guest.header(i === 4 ? T.FLUSH : T.OUT, 9000 + i * 8), len: 16, writable: false },
            ...(i === 4 ? [] : [{ gpa: at, len: 4096, writable: false }]),
            { gpa: guest.statusByte(), len: 1, writable: true },
          ],
          true,
        ),
      );
    }
    guest.kick();
    for (const token of mixed) expect((await guest.wait(token)).status).toBe(S.OK);
  });

  it('DISCARD punches a hole: the blocks are freed and the range reads back as zeroes', async () => {
    const capacity = 64 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity);
    const data = pattern(4 * MiB, 22);
    expect((await guest.write(0, data)).status).toBe(S.OK);
    expect((await guest.simple(T.FLUSH)).status).toBe(S.OK);
    const allocatedBefore = statSync(image).blocks;
    expect(allocatedBefore * 512).toBeGreaterThanOrEqual(4 * MiB);
    expect((await guest.rangeRequest(T.DISCARD, 4096, 4096)).status).toBe(S.OK); // the last 2 MiB
    const allocatedAfter = statSync(image).blocks;
    expect(allocatedBefore - allocatedAfter).toBeGreaterThanOrEqual((2 * MiB) / 512);
    const read = await guest.read(0, 4 * MiB);
    expect(mismatch(read.data.subarray(0, 2 * MiB), data.subarray(0, 2 * MiB))).toBe(-1);
    expect(allZero(read.data.subarray(2 * MiB))).toBe(true);
    expect(allZero(fileBytes(image, 2 * MiB, 2 * MiB))).toBe(true);
  });

  it('falls back to writing zeroes where the file cannot zero ranges (tmpfs), in every mode', async () => {
    if (!existsSync('/dev/shm')) return;
    const capacity = 16 * MiB;
    const { dir, image } = makeImage(capacity, '/dev/shm');
    const { guest } = await start(engine, image, dir, capacity);
    const data = pattern(8 * MiB, 23);
    for (const flags of [0, 1]) {
      expect((await guest.write(0, data)).status).toBe(S.OK);
      // 3.5 MiB: four iovecs from the 1 MiB zero mapping, the last one partial.
      expect((await guest.rangeRequest(T.WRITE_ZEROES, 1024, 7168, flags)).status).toBe(S.OK);
      const read = await guest.read(0, 8 * MiB);
      expect(mismatch(read.data.subarray(0, 512 * 1024), data.subarray(0, 512 * 1024))).toBe(-1);
      expect(allZero(read.data.subarray(512 * 1024, 4 * MiB)), `flags ${flags}`).toBe(true);
      expect(mismatch(read.data.subarray(4 * MiB), data.subarray(4 * MiB))).toBe(-1);
    }
  });

  it('O_DIRECT: aligned requests work, a misaligned guest buffer fails with IOERR and writes nothing', async () => {
    const capacity = 16 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity, { engine: { direct: true } });
    const data = pattern(65536, 24);
    expect((await guest.write(128, data)).status).toBe(S.OK);
    expect(mismatch((await guest.read(128, 65536)).data, data)).toBe(-1);
    const misaligned = guest.alloc(8192) + 8;
    guest.bytes(misaligned, 4096).set(pattern(4096, 25));
    const done = await guest.run([
      { gpa: guest.header(T.OUT, 128), len: 16, writable: false },
      { gpa: misaligned, len: 4096, writable: false },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(done).toEqual({ len: 1, status: S.IOERR });
    expect(mismatch((await guest.read(128, 65536)).data, data)).toBe(-1);
    expect((await guest.simple(T.FLUSH)).status).toBe(S.OK);
  });

  it('fails reads the image no longer backs (it shrank: short read, then nothing) with IOERR', async () => {
    const capacity = 16 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity);
    const data = pattern(8192, 26);
    expect((await guest.write(8 * 2048 - 8, data)).status).toBe(S.OK); // straddles 8 MiB
    truncateSync(image, 8 * MiB + 2048);
    expect((await guest.read(0, 4096)).status).toBe(S.OK);
    const straddling = await guest.read(8 * 2048, 4096); // 2 KiB left in the file, then EOF
    expect(straddling.status).toBe(S.IOERR);
    expect(straddling.len).toBe(4097);
    expect((await guest.read(12 * 2048, 4096)).status).toBe(S.IOERR);
    expect(mismatch((await guest.read(8 * 2048 - 8, 4096)).data, data.subarray(0, 4096))).toBe(-1);
  });

  it('refuses to start on an image smaller than the disk, and says why', async () => {
    const { dir, image } = makeImage(MiB);
    await expect(BlkRig.start({ engine: { engine, path: image }, capacityBytes: 2 * MiB }, dir)).rejects.toThrow(/smaller than/);
    await expect(BlkRig.start({ engine: { engine, path: join(dir, 'missing.img') }, capacityBytes: MiB }, dir)).rejects.toThrow(
      /cannot open the disk image/,
    );
  });

  it('queues what a tiny ring cannot take and submits it as room frees up (2-entry ring, 96 in flight)', async () => {
    const capacity = 64 * MiB;
    const { dir, image } = makeImage(capacity);
    const { guest } = await start(engine, image, dir, capacity, { engine: { ringEntries: 2 } });
    for (const type of [T.OUT, T.IN]) {
      const tokens = new Map<number, { at: number; i: number }>();
      for (let i = 0; i < 96; i++) {
        const at = guest.alloc(65536);
        if (type === T.OUT) guest.bytes(at, 65536).set(pattern(65536, 400 + i));
        const token = guest.post(
          [
            { gpa: guest.header(type, i * 128), len: 16, writable: false },
            { gpa: at, len: 32768, writable: type === T.IN },
            { gpa: at + 32768, len: 32768, writable: type === T.IN },
            { gpa: guest.statusByte(), len: 1, writable: true },
          ],
          true,
        );
        tokens.set(token, { at, i });
      }
      guest.kick();
      for (const [token, { at, i }] of tokens) {
        expect((await guest.wait(token)).status).toBe(S.OK);
        if (type === T.IN) expect(mismatch(guest.bytes(at, 65536), pattern(65536, 400 + i)), `request ${i}`).toBe(-1);
      }
    }
  });

  it('swaps the memory table under load: requests in flight finish on the old mapping, data intact', async () => {
    const capacity = 256 * MiB;
    const { dir, image } = makeImage(capacity);
    const { rig, guest } = await start(engine, image, dir, capacity, { memoryBytes: 128 * MiB });
    const tokens = new Map<number, number>();
    for (let i = 0; i < 48; i++) {
      const at = guest.alloc(MiB);
      guest.bytes(at, MiB).set(pattern(MiB, 500 + i));
      tokens.set(
        guest.post(
          [
            { gpa: guest.header(T.OUT, i * 2048), len: 16, writable: false },
            { gpa: at, len: MiB, writable: false },
            { gpa: guest.statusByte(), len: 1, writable: true },
          ],
          true,
        ),
        i,
      );
    }
    guest.kick();
    // Same regions, new mappings (as QEMU re-sends the table on a memory hotplug).
    await guest.device.client.request({ type: 'SET_MEM_TABLE', regions: guest.memory.describe() });
    for (const token of tokens.keys()) expect((await guest.wait(token)).status).toBe(S.OK);
    for (let i = 0; i < 48; i += 7)
      expect(mismatch((await guest.read(i * 2048, MiB)).data, pattern(MiB, 500 + i)), `request ${i}`).toBe(-1);
    expect(rig.plane.queueStats(0).broken).toBe(0);
  });

  // The threads engine runs small cached reads inline. A remainder it resubmits while reaping a
  // pool thread's short read, and completes inline right there, must still wake a worker that
  // sleeps: no pool thread will write the completion eventfd for it.
  if (engine === 'threads')
    it('interrupt mode: a pool short read whose remainder completes inline while reaping still completes', async () => {
      const capacity = 16 * MiB;
      const { dir, image } = makeImage(capacity);
      const { guest } = await start(engine, image, dir, capacity, { mode: 'interrupt' });
      const data = pattern(8192, 28);
      expect((await guest.write(8 * 2048 - 8, data)).status).toBe(S.OK);
      truncateSync(image, 8 * MiB + 40 * 1024);
      for (let i = 0; i < 4; i++) {
        // 96 KiB (too large to run inline): the pool reads 40 KiB; the 56 KiB left run inline, at EOF.
        const straddling = await guest.read(8 * 2048, 96 * 1024);
        expect(straddling.status).toBe(S.IOERR);
      }
      expect(mismatch((await guest.read(8 * 2048 - 8, 4096)).data, data.subarray(0, 4096))).toBe(-1);
    });

  // SQPOLL is an io_uring feature: the threads engine has no such test to run.
  if (engine === 'io_uring')
    it('works with an SQPOLL ring', async () => {
      const capacity = 16 * MiB;
      const { dir, image } = makeImage(capacity);
      const { guest } = await start(engine, image, dir, capacity, { engine: { sqpoll: true, sqpollIdleMs: 10 } });
      const data = pattern(131072, 27);
      expect((await guest.write(0, data)).status).toBe(S.OK);
      expect(mismatch((await guest.read(0, data.length)).data, data)).toBe(-1);
      expect((await guest.rangeRequest(T.WRITE_ZEROES, 0, 64, 1)).status).toBe(S.OK);
      expect(allZero((await guest.read(0, 32768)).data)).toBe(true);
    });

  describe.each(['busy', 'interrupt', 'adaptive'] as const)('%s mode', (mode) => {
    it('serves a random read/write load from a load thread, then verified data', async () => {
      const capacity = 64 * MiB;
      const { dir, image } = makeImage(capacity);
      const { rig, guest } = await start(engine, image, dir, capacity, { mode });
      const result = await runLoad(guest.device, {
        workload: { kind: 'blk', pattern: 'randrw', blockSize: 4096, capacityBytes: capacity, readShare: 0.5, seed: 7 },
        queueDepth: 16,
        requestsPerQueue: 5000,
        wait: 'event',
        cpu: 0,
      });
      expect(result.errors, result.firstError).toBe(0);
      expect(result.requests).toBe(5000);
      const stats = rig.plane.queueStats(0);
      expect(stats.requests).toBe(5000);
      if (mode !== 'busy') expect(stats.sleepMs).toBeGreaterThan(0);
      // The load thread drove this connection's ring; verify data through a fresh one.
      guest.close();
      guests.splice(guests.indexOf(guest), 1);
      const fresh = await rig.connect();
      guests.push(fresh);
      const data = pattern(1 * MiB, 28);
      expect((await fresh.write(4096, data)).status).toBe(S.OK);
      expect(mismatch((await fresh.read(4096, data.length)).data, data)).toBe(-1);
    });
  });
});
