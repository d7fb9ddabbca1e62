// A malicious front-end (DESIGN §4 "Hostile input to survive"): raw bytes and fds straight onto
// the socket. Each case checks what the back-end answers (a failure ack, or hanging up when the
// stream cannot be trusted), then the front-end leaves, the daemon's fds return to their
// baseline (no leaked memfds or eventfds), and a fresh front-end negotiates fully and reads the
// config space.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { closeAll } from '../../dist/control/connection.js';
import {
  decodeReply,
  encodeMessage,
  encodeRequest,
  type BackendReply,
  type FrontendRequest,
} from '../../dist/control/codec/index.js';
import { HeaderFlag, MAX_PAYLOAD_SIZE, Request, VIRTIO_F_RING_PACKED, bit } from '../../dist/control/protocol.js';
import { FrontendDevice, FrontendMemory, VhostUserClient } from '../../dist/frontend/index.js';
import { BlkConfigOffset } from '../../dist/devices/blk/virtio-blk.js';
import {
  captureLogs,
  fdsBackTo,
  openFds,
  payloadOf,
  startTestDaemon,
  testBlkDevice,
  u64At,
  until,
  type TestDaemon,
  LIBRARY_PROTOCOL_FEATURES,
} from './helpers.js';

const MiB = 1 << 20;
const QUEUES = 2;
const TIMEOUT_MS = 2000;
const VERSION = HeaderFlag.VERSION;
const NEED_REPLY = HeaderFlag.VERSION | HeaderFlag.NEED_REPLY;

let rig: TestDaemon;
let baseline: number;
let logs: ReturnType<typeof captureLogs>;
const sockets: number[] = [];
const clients: VhostUserClient[] = [];
const memories: FrontendMemory[] = [];
const testFds: number[] = [];

beforeAll(async () => {
  logs = captureLogs();
  rig = await startTestDaemon(testBlkDevice(QUEUES));
  baseline = openFds();
});

afterAll(async () => {
  await rig?.stop();
  logs?.restore();
});

afterEach(async () => {
  for (const client of clients.splice(0)) client.close();
  closeAll(sockets.splice(0));
  for (const memory of memories.splice(0)) memory.close();
  closeAll(testFds.splice(0));
  await until(() => rig.daemon.currentSession === undefined, TIMEOUT_MS, 'the daemon to let the hostile front-end go');
  await fdsBackTo(baseline, 'fds after the hostile front-end left');
  // Asks for every protocol feature the library offers: the daemon must still grant them all.
  const clean = await FrontendDevice.connect({
    socketPath: rig.socketPath,
    queues: QUEUES,
    replyTimeoutMs: TIMEOUT_MS,
    wantedProtocolFeatures: LIBRARY_PROTOCOL_FEATURES,
  });
  try {
    expect(clean.features & bit(30)).toBe(bit(30));
    expect(clean.protocolFeatures).toBe(LIBRARY_PROTOCOL_FEATURES);
    expect(u64At(await clean.getConfig(BlkConfigOffset.capacity, 8))).toBe(BigInt((64 * MiB) / 512));
  } finally {
    clean.close();
  }
  await until(() => rig.daemon.currentSession === undefined, TIMEOUT_MS, 'the clean front-end to be let go');
  await fdsBackTo(baseline, 'fds after the clean front-end left');
});

// ---- helpers -------------------------------------------------------------------------------------

/** A bare socket to the daemon, for writing bytes the client library would never produce. */
function rawSocket(): number {
  const fd = native.socketConnect(rig.socketPath);
  sockets.push(fd);
  return fd;
}

function sendAll(socket: number, bytes: Uint8Array, fds: number[] = []): void {
  expect(native.sendMsg(socket, bytes, fds)).toBe(bytes.length);
}

/** Our end leaves; the daemon must notice and let go. */
function leave(socket: number): void {
  sockets.splice(sockets.indexOf(socket), 1);
  native.close(socket);
}

/** A client that has negotiated REPLY_ACK (and everything else), owns the session, and acked all features but RING_PACKED. */
async function hostile(packed = false): Promise<VhostUserClient> {
  const client = await VhostUserClient.connect(rig.socketPath, { replyTimeoutMs: TIMEOUT_MS });
  clients.push(client);
  const features = await client.getFeatures();
  await client.setProtocolFeatures(LIBRARY_PROTOCOL_FEATURES);
  await client.request({ type: 'SET_OWNER' });
  // Split rings unless asked: most ring address checks below are the split layout's.
  await client.setFeatures(packed ? features : features & ~bit(VIRTIO_F_RING_PACKED));
  return client;
}

function eventfds(count: number): number[] {
  const fds = Array.from({ length: count }, () => native.eventfdCreate(0));
  testFds.push(...fds);
  return fds;
}

/** Sends raw bytes with NEED_REPLY and returns the u64 the back-end answers with. */
async function rawStatus(
  client: VhostUserClient,
  request: number,
  payload: Uint8Array,
  fds: number[] = [],
  flags = NEED_REPLY,
): Promise<bigint> {
  client.sendRaw(encodeMessage(request, flags, payload), fds);
  const message = await client.nextMessage(TIMEOUT_MS);
  const reply = decodeReply(message.header, message.payload, request, message.fds);
  if (reply.type !== 'u64') throw new Error(`expected a u64 status, got ${reply.type}`);
  return reply.value;
}

/** A well-formed request, but with NEED_REPLY forced and fds of our choosing. */
async function requestStatus(client: VhostUserClient, request: FrontendRequest, fds?: number[]): Promise<bigint> {
  const encoded = encodeRequest(request, true);
  client.sendRaw(encoded.bytes, fds ?? encoded.fds);
  const message = await client.nextMessage(TIMEOUT_MS);
  const reply = decodeReply(message.header, message.payload, Request[request.type], message.fds);
  if (reply.type !== 'u64') throw new Error(`expected a u64 status, got ${reply.type}`);
  return reply.value;
}

/** The back-end hangs up: the stream could not be trusted, or the reply has no failure form. */
async function expectHangUp(client: VhostUserClient): Promise<void> {
  const closed = await Promise.race([
    client.closed().then(() => true),
    new Promise<false>((resolve) => setTimeout(() => resolve(false), TIMEOUT_MS)),
  ]);
  expect(closed, 'the back-end hung up').toBe(true);
}

/** The session is still usable after a refusal. */
async function expectStillServing(client: VhostUserClient): Promise<void> {
  expect(await client.getU64('GET_QUEUE_NUM')).toBe(BigInt(QUEUES));
}

/** The daemon logged that the front-end went away with `reason`. */
function expectDisconnectReason(reason: RegExp): Promise<void> {
  return until(
    () => logs.lines.some((line) => line.includes('front-end disconnected') && reason.test(line)),
    TIMEOUT_MS,
    `a disconnect logged as ${reason}`,
  );
}

interface RawRegion {
  gpa: bigint;
  size: bigint;
  uaddr: bigint;
  offset?: bigint;
}

function memoryTable(regions: RawRegion[], count = regions.length): Uint8Array {
  return payloadOf(count, 0, ...regions.flatMap((r) => [r.gpa, r.size, r.uaddr, r.offset ?? 0n]));
}

function singleRegion(region: RawRegion): Uint8Array {
  return payloadOf(0n, region.gpa, region.size, region.uaddr, region.offset ?? 0n);
}

function memfd(size = MiB): number {
  const fd = native.memfdCreate('hostile', size);
  testFds.push(fd);
  return fd;
}

// ---- framing ----------------------------------------------------------------------------------------

describe('framing', () => {
  it('a header cut short (5 of 12 bytes), then the front-end leaves', async () => {
    const socket = rawSocket();
    sendAll(socket, encodeMessage(Request.GET_FEATURES, VERSION).subarray(0, 5));
    leave(socket);
    await expectDisconnectReason(/in the middle of a message/);
  });

  it('a header cut short carrying fds, then the front-end leaves: the fds are closed', async () => {
    const socket = rawSocket();
    sendAll(socket, encodeMessage(Request.SET_VRING_CALL, VERSION, payloadOf(0n)).subarray(0, 7), eventfds(3));
    leave(socket);
    await expectDisconnectReason(/in the middle of a message/);
  });

  it('a payload cut short (10 of 40 bytes) carrying an fd, then the front-end leaves', async () => {
    const socket = rawSocket();
    sendAll(socket, encodeMessage(Request.SET_VRING_ADDR, VERSION, new Uint8Array(40)).subarray(0, 12 + 10), eventfds(1));
    leave(socket);
    await expectDisconnectReason(/in the middle of a message/);
  });

  it.each([
    ['0xffffffff', 0xffff_ffff],
    ['one above the maximum', MAX_PAYLOAD_SIZE + 1],
    ['16 MiB', 16 * MiB],
  ])('a payload size of %s: the back-end hangs up before buffering anything', async (_what, size) => {
    const client = await hostile();
    const header = encodeMessage(Request.SET_FEATURES, VERSION);
    new DataView(header.buffer).setUint32(8, size, true);
    client.sendRaw(header);
    await expectHangUp(client);
    await expectDisconnectReason(/exceeds the maximum/);
  });

  it.each([
    ['version 0', 0x0],
    ['version 2', 0x2],
    ['version 3', 0x3],
    ['an undefined flag bit (4)', VERSION | 0x10],
    ['an undefined flag bit (31)', VERSION | 0x8000_0000],
  ])('a header with %s: the back-end hangs up (the payload cannot be trusted)', async (_what, flags) => {
    const client = await hostile();
    client.sendRaw(encodeMessage(Request.GET_FEATURES, flags >>> 0));
    await expectHangUp(client);
  });

  it('the REPLY flag on a request is refused with a failure ack', async () => {
    const client = await hostile();
    expect(await rawStatus(client, Request.SET_OWNER, new Uint8Array(0), [], NEED_REPLY | HeaderFlag.REPLY)).toBe(1n);
    await expectStillServing(client);
  });

  it('a thousand requests in one write are all answered, in order', async () => {
    const client = await hostile();
    const one = encodeMessage(Request.GET_QUEUE_NUM, VERSION);
    const burst = new Uint8Array(one.length * 1000);
    for (let i = 0; i < 1000; i++) burst.set(one, i * one.length);
    const replies = Array.from({ length: 1000 }, () => client.nextMessage(TIMEOUT_MS));
    client.sendRaw(burst);
    for (const reply of replies) expect(u64At((await reply).payload)).toBe(BigInt(QUEUES));
  });
});

// ---- payload sizes -----------------------------------------------------------------------------------

describe('payload size other than the request defines', () => {
  it.each([
    ['SET_FEATURES with 4 bytes', Request.SET_FEATURES, 4],
    ['SET_FEATURES with 16 bytes', Request.SET_FEATURES, 16],
    ['SET_OWNER with 8 bytes', Request.SET_OWNER, 8],
    ['SET_VRING_NUM with 12 bytes', Request.SET_VRING_NUM, 12],
    ['SET_VRING_ADDR with 32 bytes', Request.SET_VRING_ADDR, 32],
    ['SET_MEM_TABLE with 7 bytes', Request.SET_MEM_TABLE, 7],
    ['SET_STATUS with 0 bytes', Request.SET_STATUS, 0],
  ])('%s is refused with a failure ack', async (_what, request, size) => {
    const client = await hostile();
    expect(await rawStatus(client, request, new Uint8Array(size))).toBe(1n);
    await expectStillServing(client);
  });

  it('a config access whose size field disagrees with the payload is refused', async () => {
    const client = await hostile();
    // offset 0, size 8, flags 0, but only 4 bytes of config follow.
    expect(await rawStatus(client, Request.SET_CONFIG, new Uint8Array([...payloadOf(0, 8, 0), 1, 2, 3, 4]))).toBe(1n);
    await expectStillServing(client);
  });
});

// ---- fd counts ------------------------------------------------------------------------------------------

describe('wrong fd counts', () => {
  it('SET_MEM_TABLE: 2 regions but 1 fd is refused and the fd is closed', async () => {
    const client = await hostile();
    const fd = memfd(2 * MiB);
    const before = openFds();
    const table = memoryTable([
      { gpa: 0n, size: BigInt(MiB), uaddr: 0x10_0000_0000n },
      { gpa: BigInt(MiB), size: BigInt(MiB), uaddr: 0x20_0000_0000n, offset: BigInt(MiB) },
    ]);
    expect(await rawStatus(client, Request.SET_MEM_TABLE, table, [fd])).toBe(1n);
    await fdsBackTo(before, 'the fd of the refused table to be closed');
    expect(rig.dataPlane.memory).toHaveLength(0);
  });

  it('SET_MEM_TABLE: 1 region but 3 fds is refused and every fd is closed', async () => {
    const client = await hostile();
    const fds = [memfd(), memfd(), memfd()];
    const before = openFds();
    expect(
      await rawStatus(client, Request.SET_MEM_TABLE, memoryTable([{ gpa: 0n, size: BigInt(MiB), uaddr: 0x10_0000_0000n }]), fds),
    ).toBe(1n);
    await fdsBackTo(before, 'the fds of the refused table to be closed');
  });

  it.each([
    ['SET_VRING_KICK with 2 fds', Request.SET_VRING_KICK, payloadOf(0n), 2],
    ['SET_VRING_CALL with an fd and the no-fd flag', Request.SET_VRING_CALL, payloadOf(0x100n), 1],
    ['SET_BACKEND_REQ_FD without an fd', Request.SET_BACKEND_REQ_FD, new Uint8Array(0), 0],
    ['SET_OWNER with an fd', Request.SET_OWNER, new Uint8Array(0), 1],
    ['SET_FEATURES with 4 fds', Request.SET_FEATURES, payloadOf(0n), 4],
  ])('%s is refused with a failure ack and the fds are closed', async (_what, request, payload, count) => {
    const client = await hostile();
    const fds = eventfds(count);
    const before = openFds();
    expect(await rawStatus(client, request, payload, fds)).toBe(1n);
    await fdsBackTo(before, 'the fds of the refused request to be closed');
    await expectStillServing(client);
  });

  it('IOTLB_MSG with an fd: the failure form of its reply (u64 1), and the fd is closed', async () => {
    const client = await hostile();
    const fds = eventfds(1);
    const before = openFds();
    const update = payloadOf(0n, 4096n, 0x10_0000_0000n, 0x0203n); // perm 3, type 2 (update)
    expect(await rawStatus(client, Request.IOTLB_MSG, update, fds, VERSION)).toBe(1n);
    await fdsBackTo(before, 'the fd sent with IOTLB_MSG to be closed');
  });

  it('GET_FEATURES with an fd: a feature set has no failure form, so the back-end hangs up', async () => {
    const client = await hostile();
    client.sendRaw(encodeMessage(Request.GET_FEATURES, VERSION), eventfds(1));
    await expectHangUp(client);
  });

  it('more than 8 fds with one message: the back-end hangs up and every fd is closed', async () => {
    const client = await hostile();
    client.sendRaw(encodeMessage(Request.SET_MEM_TABLE, NEED_REPLY, memoryTable([])), eventfds(9));
    await expectHangUp(client);
    await expectDisconnectReason(/more than 8 file descriptors/);
  });
});

// ---- unknown requests -------------------------------------------------------------------------------

describe('unknown request numbers', () => {
  it.each([0, 44, 45, 99, 0x7fff_ffff, 0xffff_ffff])(
    'request %i with NEED_REPLY gets a failure ack; its payload is skipped',
    async (request) => {
      const client = await hostile();
      expect(await rawStatus(client, request, new Uint8Array(24).fill(0xee))).toBe(1n);
      await expectStillServing(client);
    },
  );

  it('without NEED_REPLY an unknown request is ignored, and its fds are closed', async () => {
    const client = await hostile();
    const fds = eventfds(2);
    const before = openFds();
    client.sendRaw(encodeMessage(1000, VERSION, new Uint8Array(100)), fds);
    await expectStillServing(client); // the next message is this reply: nothing was sent for request 1000
    await fdsBackTo(before, 'the fds of the unknown request to be closed');
  });
});

// ---- memory regions -----------------------------------------------------------------------------------

describe('overlapping and absurd memory regions', () => {
  const GiB = 1n << 30n;
  const region = (gpa: bigint, size: bigint, uaddr: bigint, offset = 0n): RawRegion => ({ gpa, size, uaddr, offset });

  it.each([
    [
      'overlapping guest ranges',
      [region(0n, BigInt(MiB), 0x10_0000_0000n), region(BigInt(MiB / 2), BigInt(MiB / 2), 0x20_0000_0000n)],
    ],
    [
      'overlapping userspace ranges',
      [region(0n, BigInt(MiB / 2), 0x10_0000_0000n), region(GiB, BigInt(MiB / 2), 0x10_0000_1000n)],
    ],
    ['a region of size 0', [region(0n, 0n, 0x10_0000_0000n)]],
    ['a region of 2^63 bytes', [region(0n, 1n << 63n, 0x10_0000_0000n)]],
    ['a guest range that wraps past 2^64', [region(0xffff_ffff_ffff_f000n, 0x2000n, 0x10_0000_0000n)]],
    ['a userspace range that wraps past 2^64', [region(0n, 0x2000n, 0xffff_ffff_ffff_f000n)]],
    ['a region larger than its file', [region(0n, 4n * BigInt(MiB), 0x10_0000_0000n)]],
    ['an mmap offset past the end of the file', [region(0n, 4096n, 0x10_0000_0000n, 2n * BigInt(MiB))]],
    ['an mmap offset that wraps past 2^64', [region(0n, 4096n, 0x10_0000_0000n, 0xffff_ffff_ffff_f000n)]],
    ['a guest address beyond 2^52', [region(1n << 60n, 4096n, 0x10_0000_0000n)]],
  ] as [string, RawRegion[]][])(
    'SET_MEM_TABLE with %s is refused; no memory is installed and the fds are closed',
    async (_what, regions) => {
      const client = await hostile();
      const fds = regions.map(() => memfd());
      const before = openFds();
      expect(await rawStatus(client, Request.SET_MEM_TABLE, memoryTable(regions), fds)).toBe(1n);
      expect(rig.dataPlane.memory).toHaveLength(0);
      await fdsBackTo(before, 'the fds of the refused table to be closed');
      await expectStillServing(client);
    },
  );

  it('SET_MEM_TABLE claiming 9 regions (one message holds 8) is refused', async () => {
    const client = await hostile();
    const regions = Array.from({ length: 9 }, (_, i) => region(BigInt(i) * GiB, 4096n, 0x10_0000_0000n + BigInt(i) * GiB));
    expect(await rawStatus(client, Request.SET_MEM_TABLE, memoryTable(regions))).toBe(1n);
  });

  it('ADD_MEM_REG overlapping a mapped region is refused and the table is unchanged', async () => {
    const client = await hostile();
    const fd = memfd(2 * MiB);
    expect(await rawStatus(client, Request.ADD_MEM_REG, singleRegion(region(0n, 2n * BigInt(MiB), 0x10_0000_0000n)), [fd])).toBe(
      0n,
    );
    const inside = region(BigInt(MiB), 4096n, 0x40_0000_0000n);
    expect(await rawStatus(client, Request.ADD_MEM_REG, singleRegion(inside), [fd])).toBe(1n);
    expect(rig.dataPlane.memory.map((r) => r.guestPhysAddr)).toEqual([0]);
  });

  it('ADD_MEM_REG past the 509 slots GET_MAX_MEM_SLOTS promised is refused', async () => {
    const client = await hostile();
    const fd = memfd(4096);
    expect(await client.getU64('GET_MAX_MEM_SLOTS')).toBe(509n);
    for (let slot = 0; slot < 509; slot++) {
      const page = BigInt(slot) * 0x10000n;
      client.sendRaw(encodeMessage(Request.ADD_MEM_REG, VERSION, singleRegion(region(page, 4096n, 0x10_0000_0000n + page))), [
        fd,
      ]);
    }
    expect(await rawStatus(client, Request.ADD_MEM_REG, singleRegion(region(1n << 40n, 4096n, 0x20_0000_0000n)), [fd])).toBe(1n);
    expect(rig.dataPlane.memory).toHaveLength(509);
  });
});

// ---- queues ---------------------------------------------------------------------------------------------

describe('queue indexes out of range', () => {
  it.each([
    ['SET_VRING_NUM', { type: 'SET_VRING_NUM', index: QUEUES, num: 64 }],
    ['SET_VRING_NUM (index 2^32-1)', { type: 'SET_VRING_NUM', index: 0xffff_ffff, num: 64 }],
    ['SET_VRING_BASE', { type: 'SET_VRING_BASE', index: 7, num: 0 }],
    [
      'SET_VRING_ADDR',
      { type: 'SET_VRING_ADDR', index: 100, flags: 0, descUserAddr: 0n, usedUserAddr: 0n, availUserAddr: 0n, logGuestAddr: 0n },
    ],
    ['SET_VRING_ENABLE', { type: 'SET_VRING_ENABLE', index: QUEUES, num: 1 }],
    ['SET_VRING_KICK (no fd)', { type: 'SET_VRING_KICK', index: 255, noFd: true, fd: -1 }],
  ] as [string, FrontendRequest][])('%s is refused with a failure ack', async (_what, request) => {
    const client = await hostile();
    expect(await requestStatus(client, request)).toBe(1n);
    await expectStillServing(client);
  });

  it.each(['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'] as const)(
    '%s for queue 255 with an fd is refused and the fd is closed',
    async (type) => {
      const client = await hostile();
      const [fd] = eventfds(1);
      const before = openFds();
      expect(await requestStatus(client, { type, index: 255, noFd: false, fd: fd })).toBe(1n);
      await fdsBackTo(before, 'the fd for the missing queue to be closed');
    },
  );

  it('GET_VRING_BASE for a missing queue has no failure reply: the back-end hangs up', async () => {
    const client = await hostile();
    client.sendRaw(encodeRequest({ type: 'GET_VRING_BASE', index: QUEUES }, false).bytes);
    await expectHangUp(client);
  });
});

describe('queue sizes and ring addresses', () => {
  it.each([0, 3, 1000, 2048, 32769, 65536])('queue size %i is refused', async (num) => {
    const client = await hostile();
    expect(await requestStatus(client, { type: 'SET_VRING_NUM', index: 0, num })).toBe(1n);
  });

  /** Memory at guest 0 / user 0x7f00_0000_0000 (1 MiB), queue 0 of size 256. */
  async function withMemory(client: VhostUserClient): Promise<bigint> {
    const memory = new FrontendMemory([{ guestPhysAddr: 0, size: MiB }]);
    memories.push(memory);
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await client.request({ type: 'SET_VRING_NUM', index: 0, num: 256 });
    return BigInt(memory.userspaceAddress(0));
  }

  it.each([
    ['a descriptor table outside guest memory', (base: bigint) => [base + 2n * BigInt(MiB), base + 0x1000n, base + 0x2000n]],
    ['a used ring running off the end of the region', (base: bigint) => [base, base + 0x1000n, base + BigInt(MiB) - 0x100n]],
    ['guest-physical instead of user addresses', () => [0n, 0x1000n, 0x2000n]],
    ['an address beyond 2^53', () => [1n << 60n, 0x1000n, 0x2000n]],
  ] as [string, (base: bigint) => bigint[]][])('SET_VRING_ADDR with %s is refused', async (_what, place) => {
    const client = await hostile();
    const [desc, avail, used] = place(await withMemory(client));
    const request: FrontendRequest = {
      type: 'SET_VRING_ADDR',
      index: 0,
      flags: 0,
      descUserAddr: desc,
      availUserAddr: avail,
      usedUserAddr: used,
      logGuestAddr: 0n,
    };
    expect(await requestStatus(client, request)).toBe(1n);
  });

  it('packed rings: the driver and device event areas are 4 bytes each, checked as such', async () => {
    const client = await hostile(true);
    const base = await withMemory(client);
    const end = base + BigInt(MiB);
    const addr = (avail: bigint, used: bigint): FrontendRequest => ({
      type: 'SET_VRING_ADDR',
      index: 0,
      flags: 0,
      descUserAddr: base,
      availUserAddr: avail,
      usedUserAddr: used,
      logGuestAddr: 0n,
    });
    // The last 8 bytes of the region hold both areas (a split avail ring there would not fit).
    expect(await requestStatus(client, addr(end - 8n, end - 4n))).toBe(0n);
    expect(await requestStatus(client, addr(end - 8n, end - 2n))).toBe(1n);
  });

  it('a kick for a ring that has no memory table to live in is refused, and the ring does not start', async () => {
    const client = await hostile();
    await client.request({ type: 'SET_VRING_NUM', index: 0, num: 64 });
    await client.request({
      type: 'SET_VRING_ADDR',
      index: 0,
      flags: 0,
      descUserAddr: 0x1000n,
      availUserAddr: 0x2000n,
      usedUserAddr: 0x3000n,
      logGuestAddr: 0n,
    });
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    expect(await requestStatus(client, { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfds(1)[0] })).toBe(1n);
    expect(rig.dataPlane.running.size).toBe(0);
  });
});

// ---- every request, malformed -------------------------------------------------------------------------

describe('every request with a payload of the wrong size', () => {
  type Outcome = BackendReply | 'hang up';
  const ack1: Outcome = { type: 'u64', value: 1n };
  /** What the back-end answers: a failure ack or the failure form of the reply, else it hangs up. */
  const cases: [keyof typeof Request, number, Outcome][] = [
    ['GET_FEATURES', 1, 'hang up'], // a feature set has no failure form
    ['SET_FEATURES', 7, ack1],
    ['SET_OWNER', 1, ack1],
    ['RESET_OWNER', 1, ack1],
    ['SET_MEM_TABLE', 7, ack1],
    ['SET_LOG_BASE', 8, ack1],
    ['SET_LOG_FD', 1, ack1],
    ['SET_VRING_NUM', 4, ack1],
    ['SET_VRING_ADDR', 39, ack1],
    ['SET_VRING_BASE', 9, ack1],
    ['GET_VRING_BASE', 4, 'hang up'], // a ring index has no failure form
    ['SET_VRING_KICK', 4, ack1],
    ['SET_VRING_CALL', 4, ack1],
    ['SET_VRING_ERR', 4, ack1],
    ['GET_PROTOCOL_FEATURES', 1, 'hang up'],
    ['SET_PROTOCOL_FEATURES', 7, ack1],
    ['GET_QUEUE_NUM', 1, 'hang up'],
    ['SET_VRING_ENABLE', 4, ack1],
    ['SEND_RARP', 6, ack1],
    ['NET_SET_MTU', 4, ack1],
    ['SET_BACKEND_REQ_FD', 1, ack1],
    ['IOTLB_MSG', 24, ack1],
    ['SET_VRING_ENDIAN', 4, ack1],
    ['GET_CONFIG', 11, { type: 'config-error' }],
    ['SET_CONFIG', 11, ack1],
    ['CREATE_CRYPTO_SESSION', 7, 'hang up'],
    ['CLOSE_CRYPTO_SESSION', 7, ack1],
    ['POSTCOPY_ADVISE', 1, 'hang up'], // the reply is an fd
    ['POSTCOPY_LISTEN', 1, ack1],
    ['POSTCOPY_END', 1, ack1],
    ['GET_INFLIGHT_FD', 16, 'hang up'],
    ['SET_INFLIGHT_FD', 16, ack1],
    ['GPU_SET_SOCKET', 1, ack1],
    ['RESET_DEVICE', 1, ack1],
    ['VRING_KICK', 4, ack1],
    ['GET_MAX_MEM_SLOTS', 1, 'hang up'],
    ['ADD_MEM_REG', 32, ack1],
    ['REM_MEM_REG', 32, ack1],
    ['SET_STATUS', 4, ack1],
    ['GET_STATUS', 1, 'hang up'],
    ['GET_SHARED_OBJECT', 0, { type: 'shared-object', fd: -1 }], // no UUID: what QEMU actually sends
    ['SET_DEVICE_STATE_FD', 4, { type: 'device-state', status: 1, fd: -1 }],
    ['CHECK_DEVICE_STATE', 1, ack1],
  ];

  it('covers all 43 requests', () => {
    expect(cases.map(([name]) => Request[name])).toEqual(Array.from({ length: 43 }, (_, i) => i + 1));
  });

  it.each(cases)('%s with %i payload bytes', async (name, size, outcome) => {
    const client = await hostile();
    client.sendRaw(encodeMessage(Request[name], NEED_REPLY, new Uint8Array(size).fill(0x5a)));
    if (outcome === 'hang up') {
      await expectHangUp(client);
      return;
    }
    const message = await client.nextMessage(TIMEOUT_MS);
    expect(decodeReply(message.header, message.payload, Request[name], message.fds)).toEqual(outcome);
    await expectStillServing(client);
  });
});
