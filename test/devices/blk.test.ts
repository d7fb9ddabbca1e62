// virtio-blk through the real daemon, worker data plane and a front-end over a socket: every
// request type on every engine, and the hostile requests a guest can send (virtio 1.x §5.2.6).
import { afterEach, describe, expect, it } from 'vitest';
import { closeSync, mkdtempSync, openSync, readSync, ftruncateSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { BlkEngineOptions } from '../../dist/devices/blk/device.js';
import { BlkRig, S, SERIAL, T, allZero, mismatch, pattern, type BlkGuest } from './blk-rig.js';

const CAPACITY = 16 << 20;
const SECTORS = CAPACITY / 512;
const UNMAP = 1;

const rigs: BlkRig[] = [];
const guests: BlkGuest[] = [];

afterEach(async () => {
  for (const guest of guests.splice(0)) guest.close();
  for (const rig of rigs.splice(0)) await rig.stop();
});

type EngineName = BlkEngineOptions['engine'];

async function start(
  engine: EngineName,
  extra: { readOnly?: boolean; logicalBlockSize?: number } = {},
): Promise<{ rig: BlkRig; guest: BlkGuest; image?: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'vut-blk-'));
  let image: string | undefined;
  if (engine === 'io_uring' || engine === 'threads') {
    image = join(dir, 'disk.img');
    const fd = openSync(image, 'w');
    ftruncateSync(fd, CAPACITY);
    closeSync(fd);
  }
  const rig = await BlkRig.start({ engine: { engine, path: image }, capacityBytes: CAPACITY, ...extra }, dir);
  rigs.push(rig);
  const guest = await rig.connect();
  guests.push(guest);
  return { rig, guest, image };
}

function readImage(image: string, offset: number, length: number): Uint8Array {
  const fd = openSync(image, 'r');
  try {
    const bytes = new Uint8Array(length);
    readSync(fd, bytes, 0, length, offset);
    return bytes;
  } finally {
    closeSync(fd);
  }
}

describe.each(['null', 'memory', 'io_uring', 'threads'] as const)('%s engine', (engine) => {
  const stores = engine !== 'null';

  it('OUT then IN returns the data written, with used.len = data + 1 for IN and 1 for OUT', async () => {
    const { guest, image } = await start(engine);
    const data = pattern(8192, 1);
    const written = await guest.write(8, data);
    expect(written).toEqual({ len: 1, status: S.OK });
    const read = await guest.read(8, 8192);
    expect(read.status).toBe(S.OK);
    expect(read.len).toBe(8193);
    if (stores) expect(mismatch(read.data, data)).toBe(-1);
    else expect(allZero(read.data)).toBe(true); // null: reads leave the buffer untouched
    if (image) expect(mismatch(readImage(image, 8 * 512, 8192), data)).toBe(-1);
  });

  it('reads and writes the last sector, and refuses one sector further (IOERR, used.len 1)', async () => {
    const { guest } = await start(engine);
    expect((await guest.write(SECTORS - 1, pattern(512, 2))).status).toBe(S.OK);
    expect((await guest.read(SECTORS - 1, 512)).status).toBe(S.OK);
    expect(await guest.write(SECTORS, pattern(512, 2))).toEqual({ len: 1, status: S.IOERR });
    const past = await guest.read(SECTORS, 512);
    expect(past.status).toBe(S.IOERR);
    expect(past.len).toBe(1);
    // Starts inside, ends outside.
    expect((await guest.read(SECTORS - 1, 1024)).status).toBe(S.IOERR);
    expect((await guest.write(SECTORS - 1, pattern(1024, 3))).status).toBe(S.IOERR);
  });

  it('refuses sectors whose byte offset overflows 2^53 or u64 (no wrap-around into the disk)', async () => {
    const { guest } = await start(engine);
    for (const sector of [2n ** 64n - 1n, 2n ** 63n, 2n ** 53n / 512n, 2n ** 44n, 2n ** 55n + 8n, 2n ** 32n]) {
      const token = guest.post([
        { gpa: guest.header(T.IN, sector), len: 16, writable: false },
        { gpa: guest.alloc(512), len: 512, writable: true },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]);
      guest.kick();
      expect(await guest.wait(token), `sector ${sector}`).toEqual({ len: 1, status: S.IOERR });
    }
  });

  it('refuses data that is not a multiple of 512 bytes', async () => {
    const { guest } = await start(engine);
    expect((await guest.write(0, pattern(100, 4))).status).toBe(S.IOERR);
    expect((await guest.read(0, 513)).status).toBe(S.IOERR);
  });

  it('refuses IN with device-readable data and OUT with device-writable data', async () => {
    const { guest } = await start(engine);
    const inWithReadable = await guest.run([
      { gpa: guest.header(T.IN, 0), len: 16, writable: false },
      { gpa: guest.alloc(512), len: 512, writable: false },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(inWithReadable).toEqual({ len: 1, status: S.IOERR });
    const outWithWritable = await guest.run([
      { gpa: guest.header(T.OUT, 0), len: 16, writable: false },
      { gpa: guest.alloc(512), len: 512, writable: true },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(outWithWritable).toEqual({ len: 1, status: S.IOERR });
    // FLUSH with data either way.
    expect(
      await guest.run([
        { gpa: guest.header(T.FLUSH, 0), len: 16, writable: false },
        { gpa: guest.alloc(512), len: 512, writable: true },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]),
    ).toEqual({ len: 1, status: S.IOERR });
  });

  it('accepts a header split across two descriptors, and header + data sharing descriptors', async () => {
    const { guest } = await start(engine);
    const data = pattern(4096, 5);
    // OUT: header in two pieces (5 + 11 bytes, in different places), then data.
    const a = guest.alloc(16, 16);
    const b = guest.alloc(16, 16);
    const header = guest.header(T.OUT, 24);
    guest.bytes(a, 5).set(guest.bytes(header, 5));
    guest.bytes(b, 11).set(guest.bytes(header + 5, 11));
    const dataAt = guest.alloc(4096);
    guest.bytes(dataAt, 4096).set(data);
    expect(
      await guest.run([
        { gpa: a, len: 5, writable: false },
        { gpa: b, len: 11, writable: false },
        { gpa: dataAt, len: 4096, writable: false },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]),
    ).toEqual({ len: 1, status: S.OK });
    // IN: header and nothing else in one descriptor; data and status in one writable descriptor.
    const combined = guest.alloc(4097);
    guest.bytes(combined + 4096, 1)[0] = 0xff;
    const done = await guest.run([
      { gpa: guest.header(T.IN, 24), len: 16, writable: false },
      { gpa: combined, len: 4097, writable: true },
    ]);
    expect(done).toEqual({ len: 4097, status: S.OK });
    if (stores) expect(mismatch(guest.bytes(combined, 4096), data)).toBe(-1);
    // OUT: header and data in one readable descriptor.
    const joined = guest.alloc(16 + 512);
    guest.bytes(joined, 16).set(guest.bytes(guest.header(T.OUT, 40), 16));
    guest.bytes(joined + 16, 512).set(data.subarray(0, 512));
    expect(
      await guest.run([
        { gpa: joined, len: 528, writable: false },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]),
    ).toEqual({ len: 1, status: S.OK });
    if (stores) expect(mismatch((await guest.read(40, 512)).data, data.subarray(0, 512))).toBe(-1);
  });

  it('reads a header that is not word-aligned in guest memory (OUT and IN, the sector honoured)', async () => {
    const { guest } = await start(engine);
    const data = pattern(512, 9);
    for (const skew of [1, 2, 3]) {
      const sector = 64 + skew;
      const out = guest.header(T.OUT, sector, guest.alloc(20, 16) + skew);
      const dataAt = guest.alloc(512);
      guest.bytes(dataAt, 512).set(data);
      expect(
        await guest.run([
          { gpa: out, len: 16, writable: false },
          { gpa: dataAt, len: 512, writable: false },
          { gpa: guest.statusByte(), len: 1, writable: true },
        ]),
        `skew ${skew}`,
      ).toEqual({ len: 1, status: S.OK });
      const into = guest.alloc(512);
      expect(
        await guest.run([
          { gpa: guest.header(T.IN, sector, guest.alloc(20, 16) + skew), len: 16, writable: false },
          { gpa: into, len: 512, writable: true },
          { gpa: guest.statusByte(), len: 1, writable: true },
        ]),
        `skew ${skew}`,
      ).toEqual({ len: 513, status: S.OK });
      if (stores) expect(mismatch(guest.bytes(into, 512), data)).toBe(-1);
      // A sector past the end read through the same unaligned path is still refused.
      expect(
        await guest.run([
          { gpa: guest.header(T.IN, SECTORS, guest.alloc(20, 16) + skew), len: 16, writable: false },
          { gpa: guest.alloc(512), len: 512, writable: true },
          { gpa: guest.statusByte(), len: 1, writable: true },
        ]),
      ).toEqual({ len: 1, status: S.IOERR });
    }
  });

  it('spreads data over many segments, direct and indirect', async () => {
    const { guest } = await start(engine);
    const data = pattern(12 * 512, 6);
    const pieces = [512, 1024, 512, 2048, 512, 1536];
    const segments = [{ gpa: guest.header(T.OUT, 100), len: 16, writable: false }];
    let offset = 0;
    for (const length of pieces) {
      const at = guest.alloc(length, 512);
      guest.bytes(at, length).set(data.subarray(offset, offset + length));
      segments.push({ gpa: at, len: length, writable: false });
      offset += length;
    }
    segments.push({ gpa: guest.statusByte(), len: 1, writable: true });
    expect((await guest.run(segments, true)).status).toBe(S.OK);
    const readSegments = [{ gpa: guest.header(T.IN, 100), len: 16, writable: false }];
    const targets: number[] = [];
    for (const length of pieces.slice().reverse()) {
      const at = guest.alloc(length, 512);
      targets.push(at);
      readSegments.push({ gpa: at, len: length, writable: true });
    }
    readSegments.push({ gpa: guest.statusByte(), len: 1, writable: true });
    const done = await guest.run(readSegments);
    expect(done).toEqual({ len: data.length + 1, status: S.OK });
    if (stores) {
      const back = new Uint8Array(data.length);
      let at = 0;
      pieces
        .slice()
        .reverse()
        .forEach((length, i) => {
          back.set(guest.bytes(targets[i], length), at);
          at += length;
        });
      expect(mismatch(back, data)).toBe(-1);
    }
  });

  it('FLUSH completes OK with used.len 1', async () => {
    const { guest } = await start(engine);
    await guest.write(0, pattern(4096, 7));
    expect(await guest.simple(T.FLUSH)).toEqual({ len: 1, status: S.OK });
  });

  it('GET_ID returns the serial, NUL-padded to 20 bytes', async () => {
    const { guest } = await start(engine);
    const id = guest.alloc(20);
    guest.bytes(id, 20).fill(0xee);
    const done = await guest.run([
      { gpa: guest.header(T.GET_ID, 0), len: 16, writable: false },
      { gpa: id, len: 20, writable: true },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(done).toEqual({ len: 21, status: S.OK });
    const expected = new Uint8Array(20);
    expected.set(new TextEncoder().encode(SERIAL));
    expect(mismatch(guest.bytes(id, 20), expected)).toBe(-1);
    // A short buffer gets what fits; a long one gets 20 bytes and keeps the rest.
    for (const [size, written] of [
      [8, 8],
      [64, 20],
    ] as const) {
      const at = guest.alloc(size);
      guest.bytes(at, size).fill(0xee);
      const reply = await guest.run([
        { gpa: guest.header(T.GET_ID, 0), len: 16, writable: false },
        { gpa: at, len: size, writable: true },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]);
      expect(reply).toEqual({ len: written + 1, status: S.OK });
      expect(mismatch(guest.bytes(at, written), expected.subarray(0, written))).toBe(-1);
      if (size > written) expect(guest.bytes(at + written, size - written).every((b) => b === 0xee)).toBe(true);
    }
  });

  it('DISCARD and WRITE_ZEROES (with and without UNMAP) make the range read back as zeroes', async () => {
    const { guest } = await start(engine);
    const data = pattern(64 * 1024, 8);
    for (const [type, flags] of [
      [T.DISCARD, 0],
      [T.WRITE_ZEROES, 0],
      [T.WRITE_ZEROES, UNMAP],
    ] as const) {
      expect((await guest.write(256, data)).status).toBe(S.OK);
      // Zero the middle 32 KiB (sectors 272..335).
      expect(await guest.rangeRequest(type, 272, 64, flags)).toEqual({ len: 1, status: S.OK });
      const read = await guest.read(256, data.length);
      expect(read.status).toBe(S.OK);
      if (!stores) continue;
      expect(mismatch(read.data.subarray(0, 8192), data.subarray(0, 8192))).toBe(-1);
      expect(allZero(read.data.subarray(8192, 8192 + 32768)), `type ${type} flags ${flags}`).toBe(true);
      expect(mismatch(read.data.subarray(40960), data.subarray(40960))).toBe(-1);
    }
  });

  it('refuses bad DISCARD / WRITE_ZEROES: flags → UNSUPP, range outside the disk or too long → IOERR', async () => {
    const { guest } = await start(engine);
    expect((await guest.rangeRequest(T.DISCARD, 0, 8, UNMAP)).status).toBe(S.UNSUPP);
    expect((await guest.rangeRequest(T.WRITE_ZEROES, 0, 8, 2)).status).toBe(S.UNSUPP);
    expect((await guest.rangeRequest(T.DISCARD, SECTORS - 8, 16)).status).toBe(S.IOERR);
    expect((await guest.rangeRequest(T.WRITE_ZEROES, SECTORS, 1)).status).toBe(S.IOERR);
    expect((await guest.rangeRequest(T.DISCARD, 0, 2 ** 32 - 1)).status).toBe(S.IOERR);
    // Two ranges (max_discard_seg is 1), and a truncated range.
    const two = await guest.run([
      { gpa: guest.header(T.DISCARD, 0), len: 16, writable: false },
      { gpa: guest.range(0, 8, 0), len: 16, writable: false },
      { gpa: guest.range(64, 8, 0), len: 16, writable: false },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(two).toEqual({ len: 1, status: S.UNSUPP });
    const short = await guest.run([
      { gpa: guest.header(T.WRITE_ZEROES, 0), len: 16, writable: false },
      { gpa: guest.range(0, 8, 0), len: 12, writable: false },
      { gpa: guest.statusByte(), len: 1, writable: true },
    ]);
    expect(short).toEqual({ len: 1, status: S.UNSUPP });
    // The last 8 sectors, exactly.
    expect((await guest.rangeRequest(T.DISCARD, SECTORS - 8, 8)).status).toBe(S.OK);
  });

  it('answers unknown request types with UNSUPP', async () => {
    const { guest } = await start(engine);
    for (const type of [2, 5, 10, 14, 0xffffffff]) {
      expect(await guest.simple(type), `type ${type}`).toEqual({ len: 1, status: S.UNSUPP });
    }
  });

  it('answers a short header with IOERR and a chain without a writable byte with used.len 0', async () => {
    const { guest } = await start(engine);
    const header = guest.header(T.IN, 0);
    expect(
      await guest.run([
        { gpa: header, len: 8, writable: false },
        { gpa: guest.statusByte(), len: 1, writable: true },
      ]),
    ).toEqual({ len: 1, status: S.IOERR });
    const noStatus = await guest.run([
      { gpa: guest.header(T.OUT, 0), len: 16, writable: false },
      { gpa: guest.alloc(512), len: 512, writable: false },
    ]);
    expect(noStatus).toEqual({ len: 0, status: -1 });
    // Status only, no header at all.
    expect(await guest.run([{ gpa: guest.statusByte(), len: 1, writable: true }])).toEqual({ len: 1, status: S.IOERR });
    // The queue still works.
    expect((await guest.read(0, 512)).status).toBe(S.OK);
  });

  it('keeps 64 requests in flight (direct and indirect chains), completing each with its own status', async () => {
    const { guest } = await start(engine);
    const tokens = new Map<number, number>();
    for (let i = 0; i < 64; i++) {
      const sector = i % 3 === 2 ? SECTORS + i : i * 8; // every third is out of range
      const data = guest.alloc(4096);
      guest.bytes(data, 4096).set(pattern(4096, 100 + i));
      const token = guest.post(
        [
          { gpa: guest.header(T.OUT, sector), len: 16, writable: false },
          { gpa: data, len: 4096, writable: false },
          { gpa: guest.statusByte(), len: 1, writable: true },
        ],
        i % 2 === 0,
      );
      tokens.set(token, i);
    }
    guest.kick();
    for (const [token, i] of tokens) {
      expect((await guest.wait(token)).status).toBe(i % 3 === 2 ? S.IOERR : S.OK);
    }
    for (let i = 0; i < 64; i += 3) {
      const read = await guest.read(i * 8, 4096);
      if (stores) expect(mismatch(read.data, pattern(4096, 100 + i))).toBe(-1);
    }
  });
});

describe.each(['memory', 'io_uring', 'threads'] as const)('%s engine, read-only', (engine) => {
  it('refuses writes with IOERR and leaves the data alone; reads and FLUSH work', async () => {
    const { guest } = await start(engine, { readOnly: true });
    const before = (await guest.read(0, 4096)).data.slice();
    expect(await guest.write(0, pattern(4096, 9))).toEqual({ len: 1, status: S.IOERR });
    expect(mismatch((await guest.read(0, 4096)).data, before)).toBe(-1);
    expect((await guest.simple(T.FLUSH)).status).toBe(S.OK);
    // DISCARD / WRITE_ZEROES are not offered on a read-only disk.
    expect((await guest.rangeRequest(T.WRITE_ZEROES, 0, 8)).status).toBe(S.UNSUPP);
  });
});

describe('4 KiB logical blocks', () => {
  it('refuses requests that do not start and end on a 4 KiB boundary', async () => {
    const { guest } = await start('memory', { logicalBlockSize: 4096 });
    expect((await guest.write(8, pattern(4096, 10))).status).toBe(S.OK);
    expect((await guest.write(9, pattern(4096, 10))).status).toBe(S.IOERR);
    expect((await guest.read(8, 512)).status).toBe(S.IOERR);
    expect((await guest.rangeRequest(T.DISCARD, 8, 4)).status).toBe(S.IOERR);
    expect((await guest.rangeRequest(T.DISCARD, 8, 8)).status).toBe(S.OK);
  });
});

describe('device side', () => {
  it('the memory engine shares one RAM disk between workers and connections', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vut-blk-'));
    const rig = await BlkRig.start({ engine: { engine: 'memory' }, capacityBytes: CAPACITY, cpus: [0, 1] }, dir);
    rigs.push(rig);
    let guest = await rig.connect();
    const data = pattern(65536, 11);
    expect((await guest.write(1000, data)).status).toBe(S.OK);
    guest.close();
    guest = await rig.connect();
    guests.push(guest);
    expect(mismatch((await guest.read(1000, 65536)).data, data)).toBe(-1);
    expect(mismatch(new Uint8Array(rig.device.ramDisk!, 1000 * 512, 65536), data)).toBe(-1);
  });

  it.each(['io_uring', 'threads'] as const)(
    '%s: write-through when the guest clears the writeback byte or does not negotiate FLUSH',
    async (engine) => {
      const { rig, guest } = await start(engine);
      const flag = new Int32Array(rig.device.writeCacheState);
      expect(flag[0]).toBe(1);
      await guest.device.client.request({ type: 'SET_CONFIG', offset: 32, size: 1, flags: 0, payload: Uint8Array.of(0) });
      expect(flag[0]).toBe(0);
      expect(rig.device.writebackEnabled).toBe(false);
      expect((await guest.device.getConfig(32, 1))[0]).toBe(0);
      // Writes and range operations go through the O_DSYNC / fdatasync paths.
      const data = pattern(32768, 12);
      expect((await guest.write(64, data)).status).toBe(S.OK);
      expect((await guest.rangeRequest(T.WRITE_ZEROES, 64, 8)).status).toBe(S.OK);
      expect((await guest.rangeRequest(T.DISCARD, 72, 8)).status).toBe(S.OK);
      const read = await guest.read(64, 32768);
      expect(allZero(read.data.subarray(0, 8192))).toBe(true);
      expect(mismatch(read.data.subarray(8192), data.subarray(8192))).toBe(-1);
      await guest.device.client.request({ type: 'SET_CONFIG', offset: 32, size: 1, flags: 0, payload: Uint8Array.of(1) });
      expect(flag[0]).toBe(1);
      guest.close();
      guests.splice(guests.indexOf(guest), 1);
      // A driver without FLUSH (bit 9) gets write-through: it could never make writes durable.
      const noFlush = await rig.connect({ wantedFeatures: ~(1n << 9n) & ~(1n << 34n) }); // split rings (bit 34)
      guests.push(noFlush);
      expect(flag[0]).toBe(0);
      expect((await noFlush.write(64, data)).status).toBe(S.OK);
    },
  );
});
