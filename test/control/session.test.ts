// The back-end session against the spec (QEMU docs/interop/vhost-user.rst), one request at a time,
// driven by the front-end library over a real socket to a daemon in this process. Every request
// id 1–43 has its happy path where the back-end implements it, otherwise the documented refusal
// (a failure ack, the failure form of its reply, or a disconnect when the reply has none). After
// every test the front-end leaves, the daemon's fds return to their baseline, and a fresh
// front-end negotiates fully and reads the config space.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { fstatSync } from 'node:fs';
import { FileSeal, native } from '../../dist/native.js';
import { inflightQueueBytes } from '../../dist/dataplane/inflight.js';
import { closeAll } from '../../dist/control/connection.js';
import {
  decodeBackendRequest,
  decodeHeader,
  decodeReply,
  encodeMessage,
  encodeRequest,
  requestSpecs,
  type BackendReply,
  type FrontendRequest,
  type MessageHeader,
} from '../../dist/control/codec/index.js';
import {
  HeaderFlag,
  ProtocolFeature,
  Request,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VHOST_F_LOG_ALL,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  bit,
} from '../../dist/control/protocol.js';
import { FrontendDevice, FrontendMemory, VhostUserClient, splitRingLayout } from '../../dist/frontend/index.js';
import type { DeviceRequest, VhostUserDevice, VringConfig } from '../../dist/control/backend.js';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { BLK_CONFIG_SIZE, BlkConfigOffset } from '../../dist/devices/blk/virtio-blk.js';
import {
  GatedDataPlane,
  captureLogs,
  fdsBackTo,
  openFds,
  startTestDaemon,
  testBlkDevice,
  u64At,
  until,
  type TestDaemon,
  LIBRARY_PROTOCOL_FEATURES,
} from './helpers.js';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const QUEUES = 2;
const REPLY_TIMEOUT_MS = 2000;
const VERSION = HeaderFlag.VERSION;
const NEED_REPLY = HeaderFlag.VERSION | HeaderFlag.NEED_REPLY;
const REPLY = HeaderFlag.VERSION | HeaderFlag.REPLY;

let rig: TestDaemon;
let baseline: number;
let logs: ReturnType<typeof captureLogs>;
const clients: VhostUserClient[] = [];
const memories: FrontendMemory[] = [];
const testFds: number[] = [];
/** Request ids that have a describe block below; the last test checks all 43 are here. */
const covered = new Set<number>();

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
  for (const memory of memories.splice(0)) memory.close();
  closeAll(testFds.splice(0));
  await until(() => rig.daemon.currentSession === undefined, 2000, 'the daemon to let the front-end go');
  await fdsBackTo(baseline, 'fds after the front-end left');
  // Still serving: a clean front-end negotiates everything and reads the disk size.
  const clean = await FrontendDevice.connect({ socketPath: rig.socketPath, queues: QUEUES, replyTimeoutMs: REPLY_TIMEOUT_MS });
  try {
    expect(clean.queues).toHaveLength(QUEUES);
    expect(u64At(await clean.getConfig(BlkConfigOffset.capacity, 8)) * 512n).toBe(BigInt(DISK_BYTES));
  } finally {
    clean.close();
  }
  await until(() => rig.daemon.currentSession === undefined, 2000, 'the clean front-end to be let go');
  await fdsBackTo(baseline, 'fds after the clean front-end left');
  rig.dataPlane.events.length = 0;
  rig.dataPlane.stopIndex.clear();
});

// ---- helpers -------------------------------------------------------------------------------------

async function connect(): Promise<VhostUserClient> {
  const client = await VhostUserClient.connect(rig.socketPath, { replyTimeoutMs: REPLY_TIMEOUT_MS });
  clients.push(client);
  return client;
}

function session() {
  const current = rig.daemon.currentSession;
  if (!current) throw new Error('no front-end is being served');
  return current;
}

/** Dirty-page logging: offered for every device, since the (recording) data plane can log. */
const LOG_ALL = bit(VHOST_F_LOG_ALL);
const offeredFeatures = () => rig.device.features | bit(VHOST_USER_F_PROTOCOL_FEATURES) | LOG_ALL;
/** What the tests ack by default: everything but RING_PACKED (whose ring base rules differ) and LOG_ALL. */
const splitFeatures = () => offeredFeatures() & ~bit(VIRTIO_F_RING_PACKED) & ~LOG_ALL;

/** QEMU's order up to the point where rings are set up; REPLY_ACK on unless `protocol` says otherwise. */
async function negotiated(options: { protocol?: bigint; features?: bigint } = {}): Promise<VhostUserClient> {
  const client = await connect();
  expect(await client.getFeatures()).toBe(offeredFeatures());
  expect(await client.getProtocolFeatures()).toBe(LIBRARY_PROTOCOL_FEATURES);
  await client.setProtocolFeatures(options.protocol ?? LIBRARY_PROTOCOL_FEATURES);
  await client.request({ type: 'SET_OWNER' });
  // LOG_ALL only comes with a migration, RING_PACKED only where a test asks (tests ack them themselves).
  await client.setFeatures(options.features ?? splitFeatures());
  rig.dataPlane.events.length = 0;
  return client;
}

function guestMemory(...regions: { guestPhysAddr: number; size: number }[]): FrontendMemory {
  const memory = new FrontendMemory(regions.length > 0 ? regions : [{ guestPhysAddr: 0, size: MiB }]);
  memories.push(memory);
  return memory;
}

function eventfd(): number {
  const fd = native.eventfdCreate(0);
  testFds.push(fd);
  return fd;
}

/** Closes one of the test's own fds early (it stays off the afterEach list). */
function closeTestFd(fd: number): void {
  testFds.splice(testFds.indexOf(fd), 1);
  native.close(fd);
}

interface RingAddresses {
  desc: number;
  avail: number;
  used: number;
}

/** SET_VRING_NUM, SET_VRING_BASE and SET_VRING_ADDR for a ring placed in `memory`. */
async function describeRing(
  client: VhostUserClient,
  memory: FrontendMemory,
  index: number,
  size = 64,
  base = 0,
): Promise<RingAddresses> {
  const layout = splitRingLayout(size);
  const gpa = memory.allocate(layout.totalBytes, 4096);
  const ring = {
    desc: memory.userspaceAddress(gpa + layout.descOffset),
    avail: memory.userspaceAddress(gpa + layout.availOffset),
    used: memory.userspaceAddress(gpa + layout.usedOffset),
  };
  await client.request({ type: 'SET_VRING_NUM', index, num: size });
  await client.request({ type: 'SET_VRING_BASE', index, num: base });
  await client.request(vringAddr(index, ring));
  return ring;
}

function vringAddr(index: number, ring: RingAddresses): FrontendRequest {
  return {
    type: 'SET_VRING_ADDR',
    index,
    flags: 0,
    descUserAddr: BigInt(ring.desc),
    usedUserAddr: BigInt(ring.used),
    availUserAddr: BigInt(ring.avail),
    logGuestAddr: 0n,
  };
}

/** A negotiated front-end with memory and ring 0 described, kicked and enabled: the ring runs. */
async function runningRing(options: { base?: number; features?: bigint } = {}) {
  const client = await negotiated({ features: options.features });
  const memory = guestMemory();
  await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
  const ring = await describeRing(client, memory, 0, 64, options.base ?? 0);
  const callFd = eventfd();
  const kickFd = eventfd();
  await client.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: callFd });
  await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: kickFd });
  await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
  const config = rig.dataPlane.running.get(0);
  if (!config) throw new Error('ring 0 did not start');
  return { client, memory, ring, callFd, kickFd, config };
}

/** The request with NEED_REPLY set, bypassing the library's reply policy. */
function sendNeedReply(client: VhostUserClient, request: FrontendRequest): void {
  const encoded = encodeRequest(request, true);
  client.sendRaw(encoded.bytes, encoded.fds);
}

async function nextReply(client: VhostUserClient, request: number): Promise<{ header: MessageHeader; reply: BackendReply }> {
  const message = await client.nextMessage(REPLY_TIMEOUT_MS);
  return { header: message.header, reply: decodeReply(message.header, message.payload, request, message.fds) };
}

/** Nothing more arrives from the back-end for a while. */
async function expectNoMoreMessages(client: VhostUserClient, ms = 100): Promise<void> {
  await expect(client.nextMessage(ms)).rejects.toThrow(/no message from the back-end within/);
}

/** The request is refused with a REPLY_ACK failure status, and the connection stays up. */
async function expectFailureAck(client: VhostUserClient, request: FrontendRequest, reason?: RegExp): Promise<void> {
  const before = logs.lines.length;
  await expect(client.request(request, { needReply: true })).rejects.toThrow(`${request.type} failed (back-end replied 1)`);
  if (reason) expect(logs.lines.slice(before).join('\n')).toMatch(reason);
  expect(client.isClosed).toBe(false);
}

/** A request that always replies, refused: the reply is a u64 status of 1. */
async function expectFailureStatus(client: VhostUserClient, request: FrontendRequest): Promise<void> {
  expect(await client.request(request)).toEqual({ type: 'u64', value: 1n });
  expect(client.isClosed).toBe(false);
}

/** A request whose reply has no failure form: the back-end hangs up rather than leave it waiting. */
async function expectDisconnect(client: VhostUserClient, request: FrontendRequest): Promise<void> {
  await expect(client.request(request)).rejects.toThrow(/back-end closed the connection/);
  await client.closed();
  expect(client.isClosed).toBe(true);
}

function vringConfig(index = 0): VringConfig {
  const config = rig.dataPlane.running.get(index);
  if (!config) throw new Error(`ring ${index} is not running`);
  return config;
}

/** Reads one message from our end of the back-end channel (a non-blocking socket), or 'closed' at EOF. */
async function readBackendMessage(fd: number): Promise<{ header: MessageHeader; payload: Uint8Array; fds: number[] } | 'closed'> {
  const fds: number[] = [];
  const deadline = Date.now() + REPLY_TIMEOUT_MS;
  const fill = async (target: Uint8Array): Promise<boolean> => {
    for (let got = 0; got < target.length;) {
      const result = native.recvMsg(fd, target, got, target.length - got, 8);
      fds.push(...result.fds);
      if (result.bytes === 0) return false;
      if (result.bytes > 0) got += result.bytes;
      else if (Date.now() > deadline) throw new Error('no message on the back-end channel');
      else await new Promise((resolve) => setTimeout(resolve, 2));
    }
    return true;
  };
  const headerBytes = new Uint8Array(12);
  if (!(await fill(headerBytes))) return 'closed';
  const header = decodeHeader(headerBytes);
  const payload = new Uint8Array(header.size);
  if (!(await fill(payload))) return 'closed';
  return { header, payload, fds };
}

// ---- requests 1–43 -------------------------------------------------------------------------------

describe('VHOST_USER_GET_FEATURES (1)', () => {
  covered.add(Request.GET_FEATURES);

  it('answers the device features plus VHOST_USER_F_PROTOCOL_FEATURES (bit 30) and VHOST_F_LOG_ALL (26)', async () => {
    const client = await connect();
    const features = await client.getFeatures();
    expect(features).toBe(rig.device.features | bit(30) | bit(26));
    expect(features & bit(32)).toBe(bit(32)); // VERSION_1
  });

  it('a GET_FEATURES with a payload is malformed; a feature set has no failure form, so the back-end hangs up', async () => {
    const client = await connect();
    client.sendRaw(encodeMessage(Request.GET_FEATURES, VERSION, new Uint8Array(8)));
    await expect(client.nextMessage(REPLY_TIMEOUT_MS)).rejects.toThrow(/back-end closed the connection/);
  });
});

describe('VHOST_USER_SET_FEATURES (2)', () => {
  covered.add(Request.SET_FEATURES);

  it('records the acked subset and acks it', async () => {
    const client = await negotiated({ features: bit(32) | bit(30) | bit(29) });
    expect(session().features).toBe(bit(32) | bit(30) | bit(29));
    await client.setFeatures(bit(32) | bit(30));
    expect(session().features).toBe(bit(32) | bit(30));
  });

  it('acking a feature that was never offered is refused and changes nothing', async () => {
    const client = await negotiated();
    await expectFailureAck(
      client,
      { type: 'SET_FEATURES', features: offeredFeatures() | bit(VIRTIO_F_IN_ORDER) },
      /never offered/,
    );
    expect(session().features).toBe(splitFeatures());
  });

  it('a device that refuses the features (its setFeatures throws) gets a failure ack, not a dropped connection', async () => {
    const device: VhostUserDevice = {
      name: 'picky',
      numQueues: 1,
      maxQueueSize: 256,
      features: bit(32) | bit(29),
      setFeatures(features) {
        if (features & bit(29)) throw new Error('EVENT_IDX cannot be used with this disk');
      },
    };
    const picky = await startTestDaemon(device);
    const client = await VhostUserClient.connect(picky.socketPath, { replyTimeoutMs: REPLY_TIMEOUT_MS });
    try {
      await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
      await expect(client.setFeatures(bit(32) | bit(29))).rejects.toThrow('SET_FEATURES failed (back-end replied 1)');
      await client.setFeatures(bit(32));
      expect(picky.daemon.currentSession?.features).toBe(bit(32));
    } finally {
      client.close();
      await picky.stop();
    }
  });

  it('without VHOST_USER_F_PROTOCOL_FEATURES every ring is enabled at once: the kick alone starts it', async () => {
    // A front-end that never negotiates protocol features: no REPLY_ACK, so GET_FEATURES syncs.
    const client = await connect();
    const memory = guestMemory();
    await client.request({ type: 'SET_OWNER' });
    await client.setFeatures(rig.device.features);
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 1);
    await client.request({ type: 'SET_VRING_KICK', index: 1, noFd: false, fd: eventfd() });
    await client.getFeatures();
    expect(rig.dataPlane.events).toEqual(['memory:1', 'start:1']);
  });
});

describe('VHOST_USER_SET_OWNER (3)', () => {
  covered.add(Request.SET_OWNER);

  it('marks the session start and is acked', async () => {
    const client = await connect();
    await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK));
    await client.request({ type: 'SET_OWNER' });
  });

  it('a second SET_OWNER on the same connection is refused', async () => {
    const client = await negotiated();
    await expectFailureAck(client, { type: 'SET_OWNER' }, /already has an owner/);
  });
});

describe('VHOST_USER_RESET_OWNER (4)', () => {
  covered.add(Request.RESET_OWNER);

  it('disables every ring and forgets the device state, but keeps the negotiated protocol features', async () => {
    const { client } = await runningRing();
    await client.request({ type: 'SET_STATUS', status: 0x0fn });
    const fdsWhileRunning = openFds();
    await client.request({ type: 'RESET_OWNER' }); // acked: REPLY_ACK survives
    expect(rig.dataPlane.events).toContain('stop:0');
    expect(rig.dataPlane.running.size).toBe(0);
    // The ring's kick and call fds are released by the back-end (ours stay open).
    await fdsBackTo(fdsWhileRunning - 2, 'the ring fds to be closed');
    expect(session().features).toBe(0n);
    expect(session().protocolFeatures).toBe(LIBRARY_PROTOCOL_FEATURES);
    expect(await client.getU64('GET_STATUS')).toBe(0n);
    // Spec: "some back-ends interpreted it to also discard connection state (this interpretation
    // would lead to bugs)": GET_CONFIG still works without a new SET_PROTOCOL_FEATURES.
    expect(await client.getConfig(0, 8)).toHaveLength(8);
    await client.request({ type: 'SET_OWNER' });
  });

  it('a RESET_OWNER with a payload is malformed: refused, and the ring keeps running', async () => {
    const { client } = await runningRing();
    client.sendRaw(encodeMessage(Request.RESET_OWNER, NEED_REPLY, new Uint8Array(8)));
    expect((await nextReply(client, Request.RESET_OWNER)).reply).toEqual({ type: 'u64', value: 1n });
    expect(rig.dataPlane.running.has(0)).toBe(true);
  });
});

describe('VHOST_USER_SET_MEM_TABLE (5)', () => {
  covered.add(Request.SET_MEM_TABLE);

  it('maps every region: bytes written by the front-end are read by the data plane, and back', async () => {
    const client = await negotiated();
    const memory = guestMemory({ guestPhysAddr: 0, size: MiB }, { guestPhysAddr: 4 * MiB, size: 2 * MiB });
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    expect(rig.dataPlane.events).toEqual(['memory:2']);
    const mapped = rig.dataPlane.memory;
    expect(mapped.map((r) => [r.guestPhysAddr, r.size, r.userspaceAddr])).toEqual(
      memory.regions.map((r) => [r.guestPhysAddr, r.size, r.userspaceAddr]),
    );
    memory.bytes(4 * MiB + 100, 5).set([1, 2, 3, 4, 5]);
    const second = mapped[1];
    expect([...new Uint8Array(second.buffer, second.bufferOffset + 100, 5)]).toEqual([1, 2, 3, 4, 5]);
    new Uint8Array(mapped[0].buffer, mapped[0].bufferOffset + MiB - 3, 3).set([7, 8, 9]);
    expect([...memory.bytes(MiB - 3, 3)]).toEqual([7, 8, 9]);
  });

  it("a region's first byte is the byte at its mmap_offset in the fd (offsets need not be page-aligned)", async () => {
    const client = await negotiated();
    const fd = native.memfdCreate('offset-region', 3 * 4096);
    testFds.push(fd);
    const file = new Uint8Array(native.mmapShared(fd, 3 * 4096, 0, true));
    file.set([0xaa, 0xbb], 4096 + 200);
    await client.request({
      type: 'SET_MEM_TABLE',
      regions: [{ guestPhysAddr: 0n, memorySize: 4096n, userspaceAddr: 0x10000n, mmapOffset: 4096n + 200n, fd }],
    });
    const region = rig.dataPlane.memory[0];
    expect([...new Uint8Array(region.buffer, region.bufferOffset, 2)]).toEqual([0xaa, 0xbb]);
  });

  it('a new table replaces the old one', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_MEM_TABLE', regions: guestMemory().describe() });
    const next = guestMemory({ guestPhysAddr: 8 * MiB, size: 2 * MiB });
    await client.request({ type: 'SET_MEM_TABLE', regions: next.describe() });
    expect(rig.dataPlane.memory.map((r) => r.guestPhysAddr)).toEqual([8 * MiB]);
    expect(session().memoryRegions).toHaveLength(1);
  });

  it('a region with no fd for it is refused and the table is unchanged', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    const [region] = memory.describe();
    const encoded = encodeRequest({ type: 'SET_MEM_TABLE', regions: [region] }, true);
    client.sendRaw(encoded.bytes, []);
    expect((await nextReply(client, Request.SET_MEM_TABLE)).reply).toEqual({ type: 'u64', value: 1n });
    expect(rig.dataPlane.memory).toHaveLength(0);
  });

  it('a region larger than its file is refused (touching past the end would SIGBUS the daemon)', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    const [region] = memory.describe();
    await expectFailureAck(
      client,
      { type: 'SET_MEM_TABLE', regions: [{ ...region, memorySize: 2n * BigInt(MiB) }] },
      /exceeds its file/,
    );
    expect(rig.dataPlane.memory).toHaveLength(0);
  });
});

describe('VHOST_USER_SET_LOG_BASE (6)', () => {
  covered.add(Request.SET_LOG_BASE);

  function logFd(bytes: number): number {
    const fd = native.memfdCreate('log', bytes);
    testFds.push(fd);
    return fd;
  }

  it("QEMU's migration start on a running ring: log mapped and answered, logging from SET_FEATURES(LOG_ALL), used-ring log address from SET_VRING_ADDR, off again without LOG_ALL", async () => {
    const { client, ring } = await runningRing();
    rig.dataPlane.events.length = 0;
    // 1 MiB of guest memory needs 32 bytes of log; the log sits at a non-page-aligned offset in its fd.
    const fd = logFd(8192);
    const before = openFds();
    expect(await client.request({ type: 'SET_LOG_BASE', mmapSize: 32n, mmapOffset: 4096n + 16n, fd })).toEqual({
      type: 'u64',
      value: 0n,
    });
    await fdsBackTo(before, 'the log fd to be closed once mapped');
    expect(rig.dataPlane.events).toEqual([]); // not logging before LOG_ALL is acked
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() }, { needReply: true });
    expect(rig.dataPlane.events).toEqual(['log:32']);
    // The data plane got the fd's memory at the given offset: a mark there is what the front-end reads.
    const area = rig.dataPlane.dirtyLog!;
    new Uint8Array(area.buffer, area.offset, area.size)[3] = 0x81;
    const front = new Uint8Array(native.mmapShared(fd, 8192, 0, false));
    expect(front[4096 + 16 + 3]).toBe(0x81);
    // The running ring switches its used-ring logging in place (no stop, no restart).
    const usedGpa = 0x7000; // log_guest_addr: the used ring's guest-physical address, as QEMU gives it
    await client.request({ ...vringAddr(0, ring), flags: 1, logGuestAddr: BigInt(usedGpa) } as FrontendRequest, {
      needReply: true,
    });
    expect(rig.dataPlane.events).toEqual(['log:32', `ring-log:0:${usedGpa}`]);
    expect(vringConfig().logGuestAddr).toBe(usedGpa);
    // Migration over (or cancelled): LOG_ALL cleared, logging stops; the ring never stopped.
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() & ~LOG_ALL }, { needReply: true });
    expect(rig.dataPlane.events).toEqual(['log:32', `ring-log:0:${usedGpa}`, 'log:off']);
    expect(rig.dataPlane.running.has(0)).toBe(true);
  });

  it('a ring started while logging carries its log address to the data plane', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await client.request({ type: 'SET_LOG_BASE', mmapSize: 32n, mmapOffset: 0n, fd: logFd(32) });
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() }, { needReply: true });
    const ring = await describeRing(client, memory, 0);
    await client.request({ ...vringAddr(0, ring), flags: 1, logGuestAddr: 0x5000n } as FrontendRequest);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfd() });
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    expect(vringConfig().logGuestAddr).toBe(0x5000);
    expect(rig.dataPlane.dirtyLog?.size).toBe(32);
  });

  it('a log too small for the memory table is refused with what it needs (u64 failure), nothing is logged, the fd is closed', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_MEM_TABLE', regions: guestMemory().describe() });
    const fd = logFd(4096);
    const before = openFds();
    const logged = logs.lines.length;
    await expectFailureStatus(client, { type: 'SET_LOG_BASE', mmapSize: 16n, mmapOffset: 0n, fd });
    expect(logs.lines.slice(logged).join('\n')).toMatch(/dirty log has 16 bytes but guest memory up to 0x100000 needs 32/);
    await fdsBackTo(before, 'the log fd to be closed');
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() }, { needReply: true });
    expect(rig.dataPlane.dirtyLog).toBeNull();
  });

  it('a log beyond the end of its fd is refused (marking it would SIGBUS the daemon)', async () => {
    const client = await negotiated();
    await expectFailureStatus(client, { type: 'SET_LOG_BASE', mmapSize: 4096n, mmapOffset: 4096n, fd: logFd(4096) });
    expect(logs.lines.join('\n')).toMatch(/exceeds its file/);
  });

  it('while logging, a memory table the log cannot cover is refused (a region above 4 GiB), and so is LOG_ALL after one', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_MEM_TABLE', regions: guestMemory().describe() });
    await client.request({ type: 'SET_LOG_BASE', mmapSize: 32n, mmapOffset: 0n, fd: logFd(32) });
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() }, { needReply: true });
    const high = guestMemory({ guestPhysAddr: 0, size: MiB }, { guestPhysAddr: 4 * 1024 * MiB, size: MiB });
    await expectFailureAck(client, { type: 'SET_MEM_TABLE', regions: high.describe() }, /needs 131104/);
    expect(rig.dataPlane.memory).toHaveLength(1);
    // Not logging: the table is accepted; turning logging on with the small log is then refused.
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() & ~LOG_ALL }, { needReply: true });
    await client.request({ type: 'SET_MEM_TABLE', regions: high.describe() }, { needReply: true });
    await expectFailureAck(
      client,
      { type: 'SET_FEATURES', features: offeredFeatures() },
      /VHOST_F_LOG_ALL: the dirty log has 32 bytes/,
    );
    expect(rig.dataPlane.dirtyLog).toBeNull();
    // A log that covers it (QEMU resizes before enabling) is taken.
    await client.request({ type: 'SET_LOG_BASE', mmapSize: 131104n, mmapOffset: 0n, fd: logFd(131104) });
    await client.request({ type: 'SET_FEATURES', features: offeredFeatures() }, { needReply: true });
    expect(rig.dataPlane.dirtyLog?.size).toBe(131104);
  });
});

describe('VHOST_USER_SET_LOG_FD (7)', () => {
  covered.add(Request.SET_LOG_FD);

  it('is refused without LOG_SHMFD, and its fd is closed', async () => {
    const client = await negotiated({ protocol: LIBRARY_PROTOCOL_FEATURES & ~bit(ProtocolFeature.LOG_SHMFD) });
    const fd = eventfd();
    const before = openFds();
    await expectFailureAck(client, { type: 'SET_LOG_FD', fd }, /protocol feature 1/);
    await fdsBackTo(before, 'the log eventfd to be closed');
  });
});

describe('VHOST_USER_SET_VRING_NUM (8)', () => {
  covered.add(Request.SET_VRING_NUM);

  it('sets the size the ring starts with', async () => {
    await runningRing();
    expect(vringConfig().size).toBe(64);
  });

  it.each([
    ['not a power of two', 0, 100],
    ['zero', 0, 0],
    ['above the device maximum (1024)', 0, 2048],
    ['above the virtio maximum (32768)', 0, 65536],
    ['for a queue index out of range', QUEUES, 64],
  ])('a size %s is refused', async (_what, index, num) => {
    const client = await negotiated();
    await expectFailureAck(client, { type: 'SET_VRING_NUM', index, num });
  });

  it('a running ring cannot be resized', async () => {
    const { client } = await runningRing();
    await expectFailureAck(client, { type: 'SET_VRING_NUM', index: 0, num: 128 }, /is running/);
    expect(vringConfig().size).toBe(64);
  });
});

describe('VHOST_USER_SET_VRING_ADDR (9)', () => {
  covered.add(Request.SET_VRING_ADDR);

  it('hands the ring addresses (front-end virtual addresses) to the data plane', async () => {
    const { ring } = await runningRing();
    const config = vringConfig();
    expect([config.descUserAddr, config.availUserAddr, config.usedUserAddr]).toEqual([ring.desc, ring.avail, ring.used]);
  });

  it('a ring outside guest memory is refused, and the ring keeps the addresses it had', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    const ring = await describeRing(client, memory, 0);
    const outside = { desc: ring.desc + 2 * MiB, avail: ring.avail, used: ring.used };
    await expectFailureAck(client, vringAddr(0, outside), /outside guest memory/);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfd() });
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    expect(vringConfig().descUserAddr).toBe(ring.desc);
  });

  it('a misaligned descriptor table is refused', async () => {
    const client = await negotiated();
    await expectFailureAck(client, vringAddr(0, { desc: 0x1008, avail: 0x2000, used: 0x3000 }), /aligned/);
  });
});

describe('VHOST_USER_SET_VRING_BASE (10)', () => {
  covered.add(Request.SET_VRING_BASE);

  it('sets the index the ring starts processing at', async () => {
    await runningRing({ base: 1234 });
    expect(vringConfig().lastAvailIdx).toBe(1234);
  });

  it("an index that does not fit a split ring's u16 is refused", async () => {
    const client = await negotiated();
    await expectFailureAck(client, { type: 'SET_VRING_BASE', index: 0, num: 0x10000 }, /u16/);
  });

  it('packed rings: avail position and wrap counter from bits 0–15; QEMU’s used half (16–31) is not needed', async () => {
    await runningRing({ base: 0x8005_8003, features: offeredFeatures() });
    expect(vringConfig().lastAvailIdx).toBe(0x8003);
  });

  it('packed rings: a position beyond the queue size is refused', async () => {
    const client = await negotiated({ features: offeredFeatures() });
    await client.request({ type: 'SET_VRING_NUM', index: 0, num: 64 });
    await expectFailureAck(client, { type: 'SET_VRING_BASE', index: 0, num: 0x8040 }, /beyond queue size/);
  });
});

describe('VHOST_USER_GET_VRING_BASE (11)', () => {
  covered.add(Request.GET_VRING_BASE);

  it("stops the ring and returns the data plane's next available index", async () => {
    const { client } = await runningRing();
    rig.dataPlane.stopIndex.set(0, 77);
    const fdsWhileRunning = openFds();
    expect(await client.getVringBase(0)).toBe(77);
    expect(rig.dataPlane.events.at(-1)).toBe('stop:0');
    expect(rig.dataPlane.running.has(0)).toBe(false);
    // A stopped ring is done with its kick fd.
    await fdsBackTo(fdsWhileRunning - 1, 'the kick fd to be closed');
  });

  it('packed rings: position and wrap counter in both halves', async () => {
    const { client } = await runningRing({ features: offeredFeatures() });
    rig.dataPlane.stopIndex.set(0, 0x8005);
    expect(await client.getVringBase(0)).toBe(0x8005_8005);
  });

  it('a stopped ring is restarted by a new kick and resumes at the index it stopped at', async () => {
    const { client } = await runningRing();
    rig.dataPlane.stopIndex.set(0, 300);
    await client.getVringBase(0);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfd() });
    expect(vringConfig().lastAvailIdx).toBe(300);
  });

  it('a ring that never ran reports the index SET_VRING_BASE gave it', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_VRING_BASE', index: 1, num: 42 });
    expect(await client.getVringBase(1)).toBe(42);
    expect(rig.dataPlane.events).toEqual([]);
  });

  it('a queue index out of range has no failure reply: the back-end disconnects', async () => {
    const client = await negotiated();
    await expectDisconnect(client, { type: 'GET_VRING_BASE', index: QUEUES });
  });
});

describe('VHOST_USER_SET_VRING_KICK (12)', () => {
  covered.add(Request.SET_VRING_KICK);

  it("the data plane gets the back-end's copy of the kick eventfd", async () => {
    const { kickFd } = await runningRing();
    native.eventfdWrite(kickFd, 3);
    expect(native.eventfdRead(vringConfig().kickFd)).toBe(3);
  });

  it('with PROTOCOL_FEATURES negotiated the kick alone does not start a disabled ring', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 0);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfd() });
    expect(rig.dataPlane.events).toEqual(['memory:1']);
  });

  it('bit 8 (no fd) asks the back-end to poll: the ring starts with kickFd -1', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 0);
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: true, fd: -1 });
    expect(vringConfig().kickFd).toBe(-1);
  });

  it('a new kick fd for a running ring restarts it with that fd, where it stopped, and closes the old one', async () => {
    const { client, kickFd } = await runningRing();
    rig.dataPlane.stopIndex.set(0, 9);
    const replacement = eventfd();
    const before = openFds();
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: replacement });
    expect(rig.dataPlane.events.slice(-2)).toEqual(['stop:0', 'start:0']);
    expect(vringConfig().lastAvailIdx).toBe(9);
    native.eventfdWrite(replacement, 1);
    expect(native.eventfdRead(vringConfig().kickFd)).toBe(1);
    closeTestFd(kickFd);
    await fdsBackTo(before - 1, "the back-end's old kick fd to be closed");
  });

  it('the no-fd flag together with an fd is refused, and the fd is closed', async () => {
    const client = await negotiated();
    const fd = eventfd();
    const before = openFds();
    client.sendRaw(encodeMessage(Request.SET_VRING_KICK, NEED_REPLY, encodeU64(0x100n)), [fd]);
    expect((await nextReply(client, Request.SET_VRING_KICK)).reply).toEqual({ type: 'u64', value: 1n });
    await fdsBackTo(before, 'the refused kick fd to be closed');
  });
});

describe('VHOST_USER_SET_VRING_CALL (13)', () => {
  covered.add(Request.SET_VRING_CALL);

  it("the data plane gets the back-end's copy of the call eventfd", async () => {
    const { callFd } = await runningRing();
    expect(native.eventfdRead(callFd)).toBe(1); // the one signal on a new call fd (below)
    native.eventfdWrite(vringConfig().callFd, 1);
    expect(native.eventfdRead(callFd)).toBe(1);
  });

  it('a new call fd for a running ring is swapped in place, and the old one is closed', async () => {
    const { client, callFd } = await runningRing();
    const replacement = eventfd();
    const before = openFds();
    await client.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: replacement });
    expect(rig.dataPlane.events.at(-1)).toBe('notify:0');
    expect(rig.dataPlane.events).not.toContain('stop:0');
    expect(native.eventfdRead(replacement)).toBe(1); // the one signal on a new call fd (next test)
    native.eventfdWrite(vringConfig().callFd, 1);
    expect(native.eventfdRead(replacement)).toBe(1);
    closeTestFd(callFd);
    await fdsBackTo(before - 1, "the back-end's old call fd to be closed");
  });

  it('every new call fd is signalled once, as libvhost-user does, whether the ring runs or not (QEMU sets it before starting the ring)', async () => {
    const { client: running } = await runningRing();
    const early = eventfd(); // ring 1 is not even described
    await running.request({ type: 'SET_VRING_CALL', index: 1, noFd: false, fd: early });
    expect(native.eventfdRead(early)).toBe(1);
    expect(native.eventfdRead(early)).toBe(0);
    const live = eventfd();
    await running.request({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: live });
    expect(native.eventfdRead(live)).toBe(1);
    expect(native.eventfdRead(live)).toBe(0);
    // Only on SET_VRING_CALL: a kick fd, an err fd or a re-enable signals nothing.
    await running.request({ type: 'SET_VRING_ENABLE', index: 0, num: 0 });
    await running.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    await running.request({ type: 'SET_VRING_ERR', index: 0, noFd: false, fd: eventfd() });
    expect(native.eventfdRead(live)).toBe(0);
  });

  it('bit 8 (no fd) leaves the ring without notifications: callFd -1', async () => {
    const { client } = await runningRing();
    await client.request({ type: 'SET_VRING_CALL', index: 0, noFd: true, fd: -1 });
    expect(vringConfig().callFd).toBe(-1);
  });

  it('a queue index out of range is refused, and the fd is closed', async () => {
    const client = await negotiated();
    const fd = eventfd();
    const before = openFds();
    await expectFailureAck(client, { type: 'SET_VRING_CALL', index: 200, noFd: false, fd }, /out of range/);
    await fdsBackTo(before, 'the refused call fd to be closed');
  });
});

describe('VHOST_USER_SET_VRING_ERR (14)', () => {
  covered.add(Request.SET_VRING_ERR);

  it('is handed to the data plane (swapped in place on a running ring)', async () => {
    const { client } = await runningRing();
    const errFd = eventfd();
    await client.request({ type: 'SET_VRING_ERR', index: 0, noFd: false, fd: errFd });
    expect(rig.dataPlane.events.at(-1)).toBe('notify:0');
    native.eventfdWrite(vringConfig().errFd, 1);
    expect(native.eventfdRead(errFd)).toBe(1);
  });

  it('an fd missing without the no-fd flag is refused', async () => {
    const client = await negotiated();
    client.sendRaw(encodeMessage(Request.SET_VRING_ERR, NEED_REPLY, encodeU64(0n)));
    expect((await nextReply(client, Request.SET_VRING_ERR)).reply).toEqual({ type: 'u64', value: 1n });
  });
});

describe('VHOST_USER_GET_PROTOCOL_FEATURES (15)', () => {
  covered.add(Request.GET_PROTOCOL_FEATURES);

  it("answers the library's protocol features plus CONFIG for a device with a config space", async () => {
    const client = await connect();
    expect(await client.getProtocolFeatures()).toBe(LIBRARY_PROTOCOL_FEATURES);
  });

  it('with a payload it is malformed; a feature set has no failure form, so the back-end hangs up', async () => {
    const client = await connect();
    client.sendRaw(encodeMessage(Request.GET_PROTOCOL_FEATURES, VERSION, new Uint8Array(4)));
    await expect(client.nextMessage(REPLY_TIMEOUT_MS)).rejects.toThrow(/back-end closed the connection/);
  });
});

describe('VHOST_USER_SET_PROTOCOL_FEATURES (16)', () => {
  covered.add(Request.SET_PROTOCOL_FEATURES);

  it('enables the acked subset', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG) });
    expect(session().protocolFeatures).toBe(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG));
    expect(await client.getConfig(0, 8)).toHaveLength(8);
  });

  it('acking a protocol feature that was never offered is refused and enables nothing', async () => {
    const client = await connect();
    // RARP is not offered (a blk device); with REPLY_ACK in the same request nothing can be acked either.
    sendNeedReply(client, {
      type: 'SET_PROTOCOL_FEATURES',
      features: bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.RARP),
    });
    sendNeedReply(client, { type: 'SET_OWNER' });
    expect(await client.getFeatures()).toBe(offeredFeatures()); // the next message is this reply
    expect(session().protocolFeatures).toBe(0n);
  });

  it('without REPLY_ACK, NEED_REPLY is not answered (the front-end cannot expect an ack)', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.CONFIG) });
    sendNeedReply(client, { type: 'SET_VRING_NUM', index: 0, num: 64 });
    sendNeedReply(client, { type: 'SET_VRING_NUM', index: 0, num: 3 }); // refused: still silent
    expect(await client.getFeatures()).toBe(offeredFeatures());
    await expectNoMoreMessages(client);
  });
  it('a NEED_REPLY SET_PROTOCOL_FEATURES that clears REPLY_ACK is still acked (issue 10, bug 4); later requests are not', async () => {
    const client = await negotiated();
    sendNeedReply(client, { type: 'SET_PROTOCOL_FEATURES', features: bit(ProtocolFeature.CONFIG) });
    expect(await nextReply(client, Request.SET_PROTOCOL_FEATURES)).toEqual({
      header: { request: Request.SET_PROTOCOL_FEATURES, flags: REPLY, size: 8 },
      reply: { type: 'u64', value: 0n },
    });
    expect(session().protocolFeatures).toBe(bit(ProtocolFeature.CONFIG));
    sendNeedReply(client, { type: 'SET_VRING_NUM', index: 0, num: 64 });
    expect(await client.getFeatures()).toBe(offeredFeatures()); // the next message is this reply
    await expectNoMoreMessages(client);
  });
});

describe('REPLY_ACK negotiated without GET_PROTOCOL_FEATURES (a front-end restored from migration)', () => {
  it('after SET_PROTOCOL_FEATURES with REPLY_ACK, every NEED_REPLY request gets exactly one ack', async () => {
    const client = await connect();
    // The destination QEMU knows the features from the source: no GET_FEATURES, no GET_PROTOCOL_FEATURES.
    client.sendRaw(encodeRequest({ type: 'SET_PROTOCOL_FEATURES', features: LIBRARY_PROTOCOL_FEATURES }, false).bytes);
    const memory = guestMemory();
    const layout = splitRingLayout(64);
    const ringGpa = memory.allocate(layout.totalBytes, 4096);
    const requests: FrontendRequest[] = [
      { type: 'SET_OWNER' },
      { type: 'SET_FEATURES', features: offeredFeatures() },
      { type: 'SET_MEM_TABLE', regions: memory.describe() },
      { type: 'SET_VRING_NUM', index: 0, num: 64 },
      { type: 'SET_VRING_BASE', index: 0, num: 5 },
      vringAddr(0, {
        desc: memory.userspaceAddress(ringGpa + layout.descOffset),
        avail: memory.userspaceAddress(ringGpa + layout.availOffset),
        used: memory.userspaceAddress(ringGpa + layout.usedOffset),
      }),
      { type: 'SET_VRING_CALL', index: 0, noFd: false, fd: eventfd() },
      { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: eventfd() },
      { type: 'SET_VRING_ENABLE', index: 0, num: 1 },
      { type: 'SET_STATUS', status: 0x0fn },
      { type: 'SET_CONFIG', offset: BlkConfigOffset.writeback, size: 1, flags: 0, payload: Uint8Array.of(0) },
    ];
    for (const request of requests) {
      sendNeedReply(client, request);
      const { header, reply } = await nextReply(client, Request[request.type]);
      expect({ request: request.type, flags: header.flags, reply }).toEqual({
        request: request.type,
        flags: REPLY,
        reply: { type: 'u64', value: 0n },
      });
    }
    await expectNoMoreMessages(client);
    expect(vringConfig().lastAvailIdx).toBe(5);
  });

  it('a refused NEED_REPLY request gets exactly one failure ack', async () => {
    const client = await connect();
    client.sendRaw(encodeRequest({ type: 'SET_PROTOCOL_FEATURES', features: bit(ProtocolFeature.REPLY_ACK) }, false).bytes);
    sendNeedReply(client, { type: 'SET_VRING_NUM', index: 0, num: 3 });
    expect((await nextReply(client, Request.SET_VRING_NUM)).reply).toEqual({ type: 'u64', value: 1n });
    await expectNoMoreMessages(client);
  });

  it('requests that always reply answer once, NEED_REPLY or not', async () => {
    const client = await connect();
    client.sendRaw(encodeRequest({ type: 'SET_PROTOCOL_FEATURES', features: LIBRARY_PROTOCOL_FEATURES }, false).bytes);
    const requests: [FrontendRequest, BackendReply['type']][] = [
      [{ type: 'GET_FEATURES' }, 'u64'],
      [{ type: 'GET_VRING_BASE', index: 0 }, 'vring-state'],
      [{ type: 'GET_CONFIG', offset: 0, size: 8, flags: 0 }, 'config'],
      [{ type: 'GET_STATUS' }, 'u64'],
    ];
    for (const [request, kind] of requests) {
      sendNeedReply(client, request);
      expect((await nextReply(client, Request[request.type])).reply.type).toBe(kind);
      await expectNoMoreMessages(client, 50);
    }
  });
});

describe('VHOST_USER_GET_QUEUE_NUM (17)', () => {
  covered.add(Request.GET_QUEUE_NUM);

  it("answers the device's queue count", async () => {
    const client = await negotiated();
    expect(await client.getU64('GET_QUEUE_NUM')).toBe(BigInt(QUEUES));
  });

  it('without MQ negotiated it is refused; a count has no failure form (1 would read as one queue): hang up', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) });
    await expectDisconnect(client, { type: 'GET_QUEUE_NUM' });
  });
});

describe('VHOST_USER_SET_VRING_ENABLE (18)', () => {
  covered.add(Request.SET_VRING_ENABLE);

  it('enabling a kicked ring starts it; disabling stops it; enabling again resumes where it stopped', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 1);
    await client.request({ type: 'SET_VRING_KICK', index: 1, noFd: false, fd: eventfd() });
    expect(rig.dataPlane.running.has(1)).toBe(false);
    await client.request({ type: 'SET_VRING_ENABLE', index: 1, num: 1 });
    expect(rig.dataPlane.events).toEqual(['memory:1', 'start:1']);
    const kickFd = vringConfig(1).kickFd;
    rig.dataPlane.stopIndex.set(1, 17);
    await client.request({ type: 'SET_VRING_ENABLE', index: 1, num: 0 });
    expect(rig.dataPlane.events.at(-1)).toBe('stop:1');
    await client.request({ type: 'SET_VRING_ENABLE', index: 1, num: 1 });
    expect(vringConfig(1)).toMatchObject({ lastAvailIdx: 17, kickFd });
  });

  it("QEMU's end of migration: SET_VRING_ENABLE(0) drains and stops the ring, GET_VRING_BASE then answers that index", async () => {
    const { client } = await runningRing();
    rig.dataPlane.stopIndex.set(0, 42);
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 0 });
    expect(rig.dataPlane.events.filter((event) => event === 'stop:0')).toHaveLength(1);
    expect(await client.request({ type: 'GET_VRING_BASE', index: 0 })).toEqual({
      type: 'vring-state',
      index: 0,
      num: 42,
    });
    // Stopped once: the drain happened at the disable, the index is the one it reported.
    expect(rig.dataPlane.events.filter((event) => event === 'stop:0')).toHaveLength(1);
  });

  it('num other than 0 or 1 is refused', async () => {
    const client = await negotiated();
    client.sendRaw(encodeMessage(Request.SET_VRING_ENABLE, NEED_REPLY, encodeState(0, 2)));
    expect((await nextReply(client, Request.SET_VRING_ENABLE)).reply).toEqual({ type: 'u64', value: 1n });
  });

  it('a queue index out of range is refused', async () => {
    const client = await negotiated();
    await expectFailureAck(client, { type: 'SET_VRING_ENABLE', index: 5, num: 1 }, /out of range/);
  });
});

describe('requests for features this back-end does not offer: refused with a failure ack', () => {
  const refusals: [number, FrontendRequest][] = [
    [Request.SEND_RARP, { type: 'SEND_RARP', mac: Uint8Array.of(2, 0, 0, 0, 0, 1) }],
    [Request.NET_SET_MTU, { type: 'NET_SET_MTU', mtu: 1500n }],
    [Request.SET_VRING_ENDIAN, { type: 'SET_VRING_ENDIAN', index: 0, num: 1 }],
    [Request.CLOSE_CRYPTO_SESSION, { type: 'CLOSE_CRYPTO_SESSION', sessionId: 1n }],
    [Request.POSTCOPY_LISTEN, { type: 'POSTCOPY_LISTEN' }],
    [Request.VRING_KICK, { type: 'VRING_KICK', index: 0 }],
  ];
  for (const [id, request] of refusals) {
    covered.add(id);
    it(`VHOST_USER_${request.type} (${id})`, async () => {
      const client = await negotiated();
      await expectFailureAck(client, request, /not supported by this back-end/);
      await client.request({ type: 'SET_VRING_NUM', index: 0, num: 64 }); // the connection goes on
    });
  }

  const withFd: [number, (fd: number) => FrontendRequest][] = [
    [Request.GPU_SET_SOCKET, (fd) => ({ type: 'GPU_SET_SOCKET', fd })],
  ];
  for (const [id, make] of withFd) {
    covered.add(id);
    it(`VHOST_USER_${make(0).type} (${id}), and its fd is closed`, async () => {
      const client = await negotiated();
      const fd = eventfd();
      const before = openFds();
      await expectFailureAck(client, make(fd), /not supported by this back-end/);
      await fdsBackTo(before, 'the refused fd to be closed');
    });
  }
});

describe('device-specific requests (SEND_RARP, NET_SET_MTU) go to the device hook', () => {
  const RARP_AND_MTU = bit(ProtocolFeature.RARP) | bit(ProtocolFeature.MTU);
  const MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56);

  /** A net-like device: declares RARP and NET_MTU, records what its hook gets (when it has one). */
  function hookedDevice(hook?: (request: DeviceRequest) => boolean | Promise<boolean>) {
    const requests: DeviceRequest[] = [];
    const device: VhostUserDevice = {
      name: 'hooked',
      numQueues: 2,
      maxQueueSize: 256,
      features: bit(32),
      protocolFeatures: RARP_AND_MTU,
    };
    if (hook) {
      device.handleRequest = (request) => {
        requests.push(request);
        return hook(request);
      };
    }
    return { device, requests };
  }

  /** A daemon of its own serving `device`, and a front-end that acked `protocol`. */
  async function withDevice(
    device: VhostUserDevice,
    protocol: bigint,
    body: (client: VhostUserClient) => Promise<void>,
  ): Promise<void> {
    const own = await startTestDaemon(device);
    const client = await VhostUserClient.connect(own.socketPath, { replyTimeoutMs: REPLY_TIMEOUT_MS });
    try {
      expect(await client.getProtocolFeatures()).toBe(
        bit(ProtocolFeature.MQ) |
          bit(ProtocolFeature.REPLY_ACK) |
          bit(ProtocolFeature.BACKEND_REQ) |
          bit(ProtocolFeature.RESET_DEVICE) |
          bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
          bit(ProtocolFeature.STATUS) |
          bit(ProtocolFeature.LOG_SHMFD) |
          RARP_AND_MTU,
      );
      await client.setProtocolFeatures(protocol);
      await body(client);
    } finally {
      client.close();
      await own.stop();
    }
  }

  const ackAll = bit(ProtocolFeature.REPLY_ACK) | RARP_AND_MTU;

  it('the hook gets each request with its decoded payload, and its true is acked with 0', async () => {
    const { device, requests } = hookedDevice(() => true);
    await withDevice(device, ackAll, async (client) => {
      sendNeedReply(client, { type: 'NET_SET_MTU', mtu: 9000n });
      expect(await nextReply(client, Request.NET_SET_MTU)).toEqual({
        header: { request: Request.NET_SET_MTU, flags: REPLY, size: 8 },
        reply: { type: 'u64', value: 0n },
      });
      sendNeedReply(client, { type: 'SEND_RARP', mac: MAC });
      expect((await nextReply(client, Request.SEND_RARP)).reply).toEqual({ type: 'u64', value: 0n });
      await expectNoMoreMessages(client);
    });
    expect(requests).toEqual([
      { type: 'NET_SET_MTU', mtu: 9000 },
      { type: 'SEND_RARP', mac: MAC },
    ]);
  });

  it('an asynchronous hook is awaited before the ack', async () => {
    let finished = false;
    const { device } = hookedDevice(async () => {
      await new Promise((resolve) => setTimeout(resolve, 20));
      finished = true;
      return true;
    });
    await withDevice(device, ackAll, async (client) => {
      await client.request({ type: 'NET_SET_MTU', mtu: 1500n }, { needReply: true });
      expect(finished).toBe(true);
    });
  });

  it('a device without the hook refuses them as not supported (failure ack), and the connection goes on', async () => {
    const { device } = hookedDevice();
    await withDevice(device, ackAll, async (client) => {
      for (const request of [
        { type: 'NET_SET_MTU', mtu: 1500n },
        { type: 'SEND_RARP', mac: MAC },
      ] as FrontendRequest[]) {
        await expectFailureAck(client, request, new RegExp(`${request.type} is not supported by this back-end`));
      }
      expect(await client.getFeatures()).toBe(bit(32) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | LOG_ALL);
    });
  });

  it('a hook that returns false is "not supported"; one that throws refuses with its reason; both get a failure ack', async () => {
    const { device, requests } = hookedDevice((request) => {
      if (request.type === 'SEND_RARP') return false;
      if (request.mtu < 68) throw new RangeError(`MTU ${request.mtu} is below the minimum of 68`);
      return true;
    });
    await withDevice(device, ackAll, async (client) => {
      await expectFailureAck(client, { type: 'SEND_RARP', mac: MAC }, /SEND_RARP is not supported by this back-end/);
      await expectFailureAck(
        client,
        { type: 'NET_SET_MTU', mtu: 10n },
        /NET_SET_MTU: the device refused it: MTU 10 is below the minimum of 68/,
      );
      await client.request({ type: 'NET_SET_MTU', mtu: 1500n }, { needReply: true });
    });
    expect(requests.map((request) => request.type)).toEqual(['SEND_RARP', 'NET_SET_MTU', 'NET_SET_MTU']);
  });

  it("an MTU beyond virtio-net's u16 is refused before the device sees it", async () => {
    const { device, requests } = hookedDevice(() => true);
    await withDevice(device, ackAll, async (client) => {
      await expectFailureAck(client, { type: 'NET_SET_MTU', mtu: 0x10000n }, /does not fit virtio-net's 16-bit mtu/);
    });
    expect(requests).toEqual([]);
  });

  it('without REPLY_ACK the hook still runs and nothing is answered', async () => {
    const { device, requests } = hookedDevice((request) => request.type === 'NET_SET_MTU');
    await withDevice(device, RARP_AND_MTU, async (client) => {
      sendNeedReply(client, { type: 'NET_SET_MTU', mtu: 1500n });
      sendNeedReply(client, { type: 'SEND_RARP', mac: MAC }); // declined: still silent
      expect(await client.getFeatures()).toBe(bit(32) | bit(VHOST_USER_F_PROTOCOL_FEATURES) | LOG_ALL); // the next message is this reply
      await expectNoMoreMessages(client);
    });
    expect(requests.map((request) => request.type)).toEqual(['NET_SET_MTU', 'SEND_RARP']);
  });

  it('each needs its protocol feature acked (RARP = 2, NET_MTU = 4); until then the hook is not called', async () => {
    const { device, requests } = hookedDevice(() => true);
    await withDevice(device, bit(ProtocolFeature.REPLY_ACK), async (client) => {
      await expectFailureAck(
        client,
        { type: 'SEND_RARP', mac: MAC },
        /SEND_RARP needs protocol feature 2, which was not negotiated/,
      );
      await expectFailureAck(
        client,
        { type: 'NET_SET_MTU', mtu: 1500n },
        /NET_SET_MTU needs protocol feature 4, which was not negotiated/,
      );
      await client.setProtocolFeatures(bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.MTU));
      await client.request({ type: 'NET_SET_MTU', mtu: 1500n }, { needReply: true });
      await expectFailureAck(client, { type: 'SEND_RARP', mac: MAC }, /protocol feature 2/);
    });
    expect(requests).toEqual([{ type: 'NET_SET_MTU', mtu: 1500 }]);
  });
});

describe('VHOST_USER_SET_BACKEND_REQ_FD (21)', () => {
  covered.add(Request.SET_BACKEND_REQ_FD);

  it("opens the back-end channel: notifyConfigChange() arrives at the front-end's end as CONFIG_CHANGE_MSG", async () => {
    const client = await negotiated();
    const [frontendEnd, backendEnd] = native.socketPair();
    testFds.push(frontendEnd, backendEnd);
    await client.request({ type: 'SET_BACKEND_REQ_FD', fd: backendEnd });
    expect(session().notifyConfigChange()).toBe(true);
    const message = await readBackendMessage(frontendEnd);
    if (message === 'closed') throw new Error('the back-end channel was closed');
    expect(decodeBackendRequest(message.header, message.payload, message.fds)).toEqual({ type: 'CONFIG_CHANGE_MSG' });
    expect(message.header.flags & HeaderFlag.NEED_REPLY).toBe(0);
  });

  it('CONFIG_CHANGE_MSG is only sent when CONFIG was negotiated', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.BACKEND_REQ) });
    const [frontendEnd, backendEnd] = native.socketPair();
    testFds.push(frontendEnd, backendEnd);
    await client.request({ type: 'SET_BACKEND_REQ_FD', fd: backendEnd });
    expect(session().notifyConfigChange()).toBe(false);
  });

  it('without BACKEND_REQ negotiated it is refused and the back-end closes its copy of the fd', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) | bit(ProtocolFeature.CONFIG) });
    const [frontendEnd, backendEnd] = native.socketPair();
    testFds.push(frontendEnd, backendEnd);
    await expectFailureAck(client, { type: 'SET_BACKEND_REQ_FD', fd: backendEnd }, /protocol feature 5/);
    closeTestFd(backendEnd); // ours; the back-end's copy must be gone too for the channel to read EOF
    expect(await readBackendMessage(frontendEnd)).toBe('closed');
    expect(session().notifyConfigChange()).toBe(false);
  });
});

describe('VHOST_USER_IOTLB_MSG (22)', () => {
  covered.add(Request.IOTLB_MSG);

  it('is refused (no IOMMU support) with the failure form of its reply, u64 1', async () => {
    const client = await negotiated();
    await expectFailureStatus(client, {
      type: 'IOTLB_MSG',
      iova: 0n,
      size: 4096n,
      userAddr: 0x7f00_0000_0000n,
      perm: 3,
      iotlbType: 2,
    });
  });
});

describe('VHOST_USER_GET_CONFIG (24)', () => {
  covered.add(Request.GET_CONFIG);

  it('answers the virtio-blk config space: capacity in sectors, queue count, write-back on', async () => {
    const client = await negotiated();
    const config = await client.getConfig(0, BLK_CONFIG_SIZE);
    const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
    expect(view.getBigUint64(BlkConfigOffset.capacity, true)).toBe(BigInt(DISK_BYTES / 512));
    expect(view.getUint16(BlkConfigOffset.numQueues, true)).toBe(QUEUES);
    expect(config[BlkConfigOffset.writeback]).toBe(1);
  });

  it('a range beyond the config space gets the zero-length error reply', async () => {
    const client = await negotiated();
    expect(await client.request({ type: 'GET_CONFIG', offset: BLK_CONFIG_SIZE - 4, size: 8, flags: 0 })).toEqual({
      type: 'config-error',
    });
  });

  it('without CONFIG negotiated it gets the zero-length error reply', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) });
    expect(await client.request({ type: 'GET_CONFIG', offset: 0, size: 8, flags: 0 })).toEqual({ type: 'config-error' });
  });
});

describe('VHOST_USER_SET_CONFIG (25)', () => {
  covered.add(Request.SET_CONFIG);

  it('the driver may switch the write-back byte (CONFIG_WCE); GET_CONFIG reads it back', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_CONFIG', offset: BlkConfigOffset.writeback, size: 1, flags: 0, payload: Uint8Array.of(0) });
    expect((await client.getConfig(BlkConfigOffset.writeback, 1))[0]).toBe(0);
    await client.request({ type: 'SET_CONFIG', offset: BlkConfigOffset.writeback, size: 1, flags: 0, payload: Uint8Array.of(1) });
    expect((await client.getConfig(BlkConfigOffset.writeback, 1))[0]).toBe(1);
  });

  it('a write to a read-only field (capacity) is refused and changes nothing', async () => {
    const client = await negotiated();
    await expectFailureAck(
      client,
      { type: 'SET_CONFIG', offset: 0, size: 8, flags: 0, payload: new Uint8Array(8).fill(0xff) },
      /read-only/,
    );
    expect(u64At(await client.getConfig(0, 8))).toBe(BigInt(DISK_BYTES / 512));
  });
});

describe('requests whose reply has no failure form, for features not offered: the back-end disconnects', () => {
  const cases: [number, FrontendRequest][] = [
    [Request.CREATE_CRYPTO_SESSION, { type: 'CREATE_CRYPTO_SESSION', payload: new Uint8Array(64) }],
    [Request.POSTCOPY_ADVISE, { type: 'POSTCOPY_ADVISE' }],
  ];
  for (const [id, request] of cases) {
    covered.add(id);
    it(`VHOST_USER_${request.type} (${id})`, async () => {
      const client = await negotiated();
      await expectDisconnect(client, request);
    });
  }
});

describe('VHOST_USER_GET_INFLIGHT_FD (31) and VHOST_USER_SET_INFLIGHT_FD (32)', () => {
  covered.add(Request.GET_INFLIGHT_FD);
  covered.add(Request.SET_INFLIGHT_FD);

  async function getInflight(client: VhostUserClient, numQueues: number, queueSize: number) {
    const reply = await client.request({ type: 'GET_INFLIGHT_FD', numQueues, queueSize });
    if (!reply || reply.type !== 'inflight') throw new Error('GET_INFLIGHT_FD: unexpected reply');
    testFds.push(reply.fd);
    return reply;
  }

  it('GET answers a zero-filled memfd sized for the split layout, sealed against resizing', async () => {
    const client = await negotiated();
    const reply = await getInflight(client, QUEUES, 64);
    expect(reply).toMatchObject({ mmapOffset: 0n, numQueues: QUEUES, queueSize: 64 });
    expect(reply.mmapSize).toBe(BigInt(QUEUES * inflightQueueBytes(64)));
    expect(fstatSync(reply.fd).size).toBe(Number(reply.mmapSize));
    expect(native.fileSeals(reply.fd) & (FileSeal.SHRINK | FileSeal.GROW)).toBe(FileSeal.SHRINK | FileSeal.GROW);
    const bytes = new Uint8Array(native.mmapShared(reply.fd, Number(reply.mmapSize), 0, false));
    expect(bytes.every((b) => b === 0)).toBe(true);
  });

  it('SET maps the region and each ring gets its part at start', async () => {
    const { client, memory } = await (async () => {
      const client = await negotiated();
      const memory = guestMemory();
      await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
      return { client, memory };
    })();
    const reply = await getInflight(client, QUEUES, 64);
    await client.request({
      type: 'SET_INFLIGHT_FD',
      mmapSize: reply.mmapSize,
      mmapOffset: 0n,
      numQueues: QUEUES,
      queueSize: 64,
      fd: reply.fd,
    });
    for (const index of [0, 1]) {
      await describeRing(client, memory, index, 64);
      await client.request({ type: 'SET_VRING_KICK', index, noFd: true, fd: -1 });
      await client.request({ type: 'SET_VRING_ENABLE', index, num: 1 });
      const slice = rig.dataPlane.running.get(index)?.inflight;
      expect(slice, `queue ${index}`).toBeDefined();
      expect(slice!.offset).toBe(index * inflightQueueBytes(64));
      expect(slice!.descNum).toBe(64);
      expect(slice!.buffer.byteLength).toBeGreaterThanOrEqual(Number(reply.mmapSize));
    }
  });

  it('a ring larger than the region’s queue_size does not start', async () => {
    const client = await negotiated();
    const memory = guestMemory();
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    const reply = await getInflight(client, 1, 16);
    await client.request({
      type: 'SET_INFLIGHT_FD',
      mmapSize: reply.mmapSize,
      mmapOffset: 0n,
      numQueues: 1,
      queueSize: 16,
      fd: reply.fd,
    });
    await describeRing(client, memory, 0, 64);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: true, fd: -1 });
    await expectFailureAck(
      client,
      { type: 'SET_VRING_ENABLE', index: 0, num: 1 },
      /ring size 64 exceeds the in-flight region's queue_size 16/,
    );
    expect(rig.dataPlane.running.has(0)).toBe(false);
  });

  for (const [name, numQueues, queueSize] of [
    ['no queues', 0, 64],
    ['more queues than the device has', QUEUES + 1, 64],
    ['a queue size of 0', 1, 0],
    ['a queue size above the device maximum', 1, 65535],
  ] as const) {
    it(`GET with ${name} has no failure form: the back-end disconnects`, async () => {
      await expectDisconnect(await negotiated(), { type: 'GET_INFLIGHT_FD', numQueues, queueSize });
    });
  }

  it('SET refuses an area larger than its file, a size too small for the shape, or a bad shape; the fd is closed', async () => {
    const client = await negotiated();
    const reply = await getInflight(client, 1, 64);
    const cases: [Partial<{ mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number }>, RegExp][] = [
      [{ mmapSize: reply.mmapSize + 4096n }, /exceeds its file/],
      [{ mmapOffset: 4096n }, /exceeds its file/],
      [{ mmapSize: 64n }, /smaller than/],
      [{ numQueues: 2 }, /smaller than/],
      [{ numQueues: QUEUES + 1 }, /num_queues/],
      [{ mmapOffset: 4n, mmapSize: 64n }, /smaller than|aligned/],
    ];
    for (const [change, message] of cases) {
      const fd = native.memfdCreate('test-inflight', Number(reply.mmapSize));
      testFds.push(fd);
      const before = openFds();
      await expectFailureAck(
        client,
        { type: 'SET_INFLIGHT_FD', mmapSize: reply.mmapSize, mmapOffset: 0n, numQueues: 1, queueSize: 64, ...change, fd },
        message,
      );
      await fdsBackTo(before, 'the refused in-flight fd to be closed');
    }
  });

  it('SET with mmap_size 0 turns tracking off; its fd is closed', async () => {
    const client = await negotiated();
    const fd = eventfd();
    const before = openFds();
    await client.request({ type: 'SET_INFLIGHT_FD', mmapSize: 0n, mmapOffset: 0n, numQueues: 1, queueSize: 64, fd });
    await fdsBackTo(before, 'the unused fd to be closed');
  });

  it('SET while a ring runs is refused', async () => {
    const { client } = await runningRing();
    const reply = await getInflight(client, 1, 64);
    await expectFailureAck(
      client,
      { type: 'SET_INFLIGHT_FD', mmapSize: reply.mmapSize, mmapOffset: 0n, numQueues: 1, queueSize: 64, fd: reply.fd },
      /queue 0 is running/,
    );
  });
});

describe('requests that always reply, for features not offered: the failure form of the reply', () => {
  covered.add(Request.POSTCOPY_END);
  covered.add(Request.CHECK_DEVICE_STATE);
  covered.add(Request.GET_SHARED_OBJECT);
  covered.add(Request.SET_DEVICE_STATE_FD);

  it('VHOST_USER_POSTCOPY_END (30): u64 1', async () => {
    await expectFailureStatus(await negotiated(), { type: 'POSTCOPY_END' });
  });

  it('VHOST_USER_CHECK_DEVICE_STATE (43): u64 1', async () => {
    await expectFailureStatus(await negotiated(), { type: 'CHECK_DEVICE_STATE' });
  });

  it('VHOST_USER_GET_SHARED_OBJECT (41): no fd', async () => {
    const client = await negotiated();
    expect(await client.request({ type: 'GET_SHARED_OBJECT', uuid: new Uint8Array(16).fill(7) })).toEqual({
      type: 'shared-object',
      fd: -1,
    });
  });

  it('VHOST_USER_SET_DEVICE_STATE_FD (42): a non-zero status without an fd, and the offered fd is closed', async () => {
    const client = await negotiated();
    const [readEnd, writeEnd] = native.socketPair();
    testFds.push(readEnd, writeEnd);
    const before = openFds();
    expect(await client.request({ type: 'SET_DEVICE_STATE_FD', direction: 0, phase: 0, fd: writeEnd })).toEqual({
      type: 'device-state',
      status: 1,
      fd: -1,
    });
    await fdsBackTo(before, 'the transfer fd to be closed');
  });
});

describe('VHOST_USER_RESET_DEVICE (34)', () => {
  covered.add(Request.RESET_DEVICE);

  it('disables every ring and resets the device to its initial state; ownership and protocol features stay', async () => {
    const { client, memory } = await runningRing();
    await client.request({ type: 'SET_STATUS', status: 0x0fn });
    await client.request({ type: 'SET_CONFIG', offset: BlkConfigOffset.writeback, size: 1, flags: 0, payload: Uint8Array.of(0) });
    const fdsWhileRunning = openFds();
    await client.request({ type: 'RESET_DEVICE' });
    expect(rig.dataPlane.events.at(-1)).toBe('stop:0');
    expect(rig.dataPlane.running.size).toBe(0);
    await fdsBackTo(fdsWhileRunning - 2, 'the ring fds to be closed');
    expect(session().features).toBe(0n);
    expect(session().protocolFeatures).toBe(LIBRARY_PROTOCOL_FEATURES);
    expect(await client.getU64('GET_STATUS')).toBe(0n);
    expect((await client.getConfig(BlkConfigOffset.writeback, 1))[0]).toBe(1);
    await expectFailureAck(client, { type: 'SET_OWNER' }, /already has an owner/);
    // Ready to be reinitialized: the ring comes back with the usual sequence.
    await client.setFeatures(offeredFeatures());
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 0);
    await client.request({ type: 'SET_VRING_KICK', index: 0, noFd: true, fd: -1 });
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    expect(rig.dataPlane.running.has(0)).toBe(true);
  });

  it('without RESET_DEVICE negotiated it is refused and nothing is reset', async () => {
    const client = await negotiated({ protocol: LIBRARY_PROTOCOL_FEATURES & ~bit(ProtocolFeature.RESET_DEVICE) });
    await client.request({ type: 'SET_STATUS', status: 0x0fn });
    await expectFailureAck(client, { type: 'RESET_DEVICE' }, /protocol feature 13/);
    expect(await client.getU64('GET_STATUS')).toBe(0x0fn);
  });
});

describe('VHOST_USER_GET_MAX_MEM_SLOTS (36)', () => {
  covered.add(Request.GET_MAX_MEM_SLOTS);

  it("answers QEMU's vhost-user maximum, 509", async () => {
    expect(await (await negotiated()).getU64('GET_MAX_MEM_SLOTS')).toBe(509n);
  });

  it('without CONFIGURE_MEM_SLOTS negotiated it is refused; a count has no failure form: hang up', async () => {
    await expectDisconnect(await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) }), { type: 'GET_MAX_MEM_SLOTS' });
  });
});

describe('VHOST_USER_ADD_MEM_REG (37)', () => {
  covered.add(Request.ADD_MEM_REG);

  it('maps one more region; its bytes are shared', async () => {
    const client = await negotiated();
    const memory = guestMemory({ guestPhysAddr: 0, size: MiB }, { guestPhysAddr: 16 * MiB, size: MiB });
    for (const { fd, ...region } of memory.describe()) await client.request({ type: 'ADD_MEM_REG', region, fd });
    expect(rig.dataPlane.events).toEqual(['memory:1', 'memory:2']);
    memory.bytes(16 * MiB + 8, 2).set([0x12, 0x34]);
    const added = rig.dataPlane.memory[1];
    expect(added.guestPhysAddr).toBe(16 * MiB);
    expect([...new Uint8Array(added.buffer, added.bufferOffset + 8, 2)]).toEqual([0x12, 0x34]);
  });

  it('a region overlapping one already mapped is refused, its fd is closed and the table is unchanged', async () => {
    const client = await negotiated();
    const memory = guestMemory({ guestPhysAddr: 0, size: 2 * MiB });
    const [{ fd, ...region }] = memory.describe() as [ReturnType<FrontendMemory['describe']>[number]];
    await client.request({ type: 'ADD_MEM_REG', region, fd });
    const before = openFds();
    const overlapping = {
      ...region,
      guestPhysAddr: BigInt(MiB),
      userspaceAddr: region.userspaceAddr + 0x1000_0000n,
      memorySize: BigInt(MiB),
    };
    await expectFailureAck(client, { type: 'ADD_MEM_REG', region: overlapping, fd }, /overlap/);
    await fdsBackTo(before, 'the refused region fd to be closed');
    expect(rig.dataPlane.memory).toHaveLength(1);
  });

  it('an exact repeat of a mapped region (QEMU 7.2 sends one per net queue pair) is acked; its fd closed, the table unchanged', async () => {
    const client = await negotiated();
    const memory = guestMemory({ guestPhysAddr: 0, size: MiB });
    const [{ fd, ...region }] = memory.describe() as [ReturnType<FrontendMemory['describe']>[number]];
    await client.request({ type: 'ADD_MEM_REG', region, fd });
    const before = openFds();
    await client.request({ type: 'ADD_MEM_REG', region, fd });
    await fdsBackTo(before, 'the repeated region fd to be closed');
    expect(rig.dataPlane.events).toEqual(['memory:1']);
    expect(rig.dataPlane.memory).toHaveLength(1);
    // Not a repeat: the same guest range at another user address overlaps, and is refused.
    const moved = { ...region, userspaceAddr: region.userspaceAddr + 0x1000_0000n };
    await expectFailureAck(client, { type: 'ADD_MEM_REG', region: moved, fd }, /overlap/);
  });

  it('without CONFIGURE_MEM_SLOTS negotiated it is refused', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) });
    const [{ fd, ...region }] = guestMemory().describe() as [ReturnType<FrontendMemory['describe']>[number]];
    await expectFailureAck(client, { type: 'ADD_MEM_REG', region, fd }, /protocol feature 15/);
  });
});

describe('VHOST_USER_REM_MEM_REG (38)', () => {
  covered.add(Request.REM_MEM_REG);

  it('unmaps the region with that guest address, size and user address (the mmap offset is ignored)', async () => {
    const client = await negotiated();
    const memory = guestMemory({ guestPhysAddr: 0, size: MiB }, { guestPhysAddr: 16 * MiB, size: MiB });
    const regions = memory.describe();
    for (const { fd, ...region } of regions) await client.request({ type: 'ADD_MEM_REG', region, fd });
    const { fd: _fd, ...first } = regions[0];
    await client.request({ type: 'REM_MEM_REG', region: { ...first, mmapOffset: 12345n }, fd: -1 });
    expect(rig.dataPlane.memory.map((r) => r.guestPhysAddr)).toEqual([16 * MiB]);
  });

  it('an fd sent along (older QEMUs did) is closed without being used', async () => {
    const client = await negotiated();
    const [{ fd, ...region }] = guestMemory().describe() as [ReturnType<FrontendMemory['describe']>[number]];
    await client.request({ type: 'ADD_MEM_REG', region, fd });
    const before = openFds();
    await client.request({ type: 'REM_MEM_REG', region, fd });
    await fdsBackTo(before, 'the REM_MEM_REG fd to be closed');
    expect(rig.dataPlane.memory).toHaveLength(0);
  });

  it('a region that is not mapped is refused', async () => {
    const client = await negotiated();
    const region = { guestPhysAddr: 0n, memorySize: BigInt(MiB), userspaceAddr: 0x7f00_0000_0000n, mmapOffset: 0n };
    await expectFailureAck(client, { type: 'REM_MEM_REG', region, fd: -1 }, /no region/);
  });
});

describe('VHOST_USER_SET_STATUS (39) and VHOST_USER_GET_STATUS (40)', () => {
  covered.add(Request.SET_STATUS);
  covered.add(Request.GET_STATUS);

  it('the device status round-trips', async () => {
    const client = await negotiated();
    expect(await client.getU64('GET_STATUS')).toBe(0n);
    for (const status of [0x01n, 0x03n, 0x0bn, 0x0fn]) {
      await client.request({ type: 'SET_STATUS', status });
      expect(await client.getU64('GET_STATUS')).toBe(status);
    }
  });

  it('a status that does not fit the virtio status byte is refused and changes nothing', async () => {
    const client = await negotiated();
    await client.request({ type: 'SET_STATUS', status: 0x0bn });
    client.sendRaw(encodeMessage(Request.SET_STATUS, NEED_REPLY, encodeU64(0x100n)));
    expect((await nextReply(client, Request.SET_STATUS)).reply).toEqual({ type: 'u64', value: 1n });
    expect(await client.getU64('GET_STATUS')).toBe(0x0bn);
  });

  it('without STATUS negotiated: SET_STATUS gets a failure ack; GET_STATUS, whose status has no failure form, a hang-up', async () => {
    const client = await negotiated({ protocol: bit(ProtocolFeature.REPLY_ACK) });
    await expectFailureAck(client, { type: 'SET_STATUS', status: 1n }, /protocol feature 16/);
    await expectDisconnect(client, { type: 'GET_STATUS' });
  });
});

describe('disconnects', () => {
  it('a front-end that leaves with rings running: the data plane is reset and every fd is released', async () => {
    const { client } = await runningRing();
    client.close();
    await until(() => rig.dataPlane.events.includes('reset'), 2000, 'the data plane reset');
    expect(rig.dataPlane.running.size).toBe(0);
    expect(rig.dataPlane.memory).toHaveLength(0);
    // afterEach checks the fds and that the next front-end is served.
  });
});

describe('a session closed while a request is still in the data plane', () => {
  /** A daemon of its own whose data plane can hold a call open while the session is closed. */
  async function gatedRig() {
    const before = openFds();
    const dataPlane = new GatedDataPlane();
    const socketPath = `${rig.dir}/gated.sock`;
    const daemon = new VhostUserDaemon(testBlkDevice(1), { socketPath, dataPlane });
    await daemon.start();
    const client = await VhostUserClient.connect(socketPath, { replyTimeoutMs: REPLY_TIMEOUT_MS });
    const memory = new FrontendMemory([{ guestPhysAddr: 0, size: MiB }]);
    const fds = [native.eventfdCreate(0), native.eventfdCreate(0)];
    await client.setProtocolFeatures(LIBRARY_PROTOCOL_FEATURES);
    await client.setFeatures(offeredFeatures());
    await client.request({ type: 'SET_MEM_TABLE', regions: memory.describe() });
    await describeRing(client, memory, 0);
    await client.request({ type: 'SET_VRING_ENABLE', index: 0, num: 1 });
    return {
      dataPlane,
      daemon,
      client,
      fds,
      before,
      /** Close the session while the held call is pending, then let the call finish. */
      async closeWhileHeld() {
        await until(() => dataPlane.held !== undefined, 2000, 'the call to reach the data plane');
        const closing = daemon.currentSession!.close();
        dataPlane.release();
        await closing;
      },
      async cleanUp() {
        await daemon.stop();
        client.close();
        memory.close();
        closeAll(fds);
      },
    };
  }

  it('a ring whose start was under way is not left running after the reset', async () => {
    const gated = await gatedRig();
    gated.dataPlane.hold = 'start';
    sendNeedReply(gated.client, { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: gated.fds[0] });
    await gated.closeWhileHeld();
    expect(gated.dataPlane.events.slice(-2)).toEqual(['start:0', 'reset']);
    expect(gated.dataPlane.running.size).toBe(0);
    await gated.cleanUp();
    await fdsBackTo(gated.before, 'every fd of the gated session to be closed');
  });

  it("a kick fd that was replacing a running ring's is closed, not leaked", async () => {
    const gated = await gatedRig();
    await gated.client.request({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: gated.fds[0] });
    gated.dataPlane.hold = 'stop';
    sendNeedReply(gated.client, { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: gated.fds[1] });
    await gated.closeWhileHeld();
    expect(gated.dataPlane.running.size).toBe(0);
    await gated.cleanUp();
    await fdsBackTo(gated.before, 'every fd of the gated session to be closed');
  });
});

describe('coverage', () => {
  it('every request id 1–43 has a test above', () => {
    expect([...covered].sort((a, b) => a - b)).toEqual([...requestSpecs.keys()].sort((a, b) => a - b));
    expect(covered.size).toBe(43);
  });
});

// ---- wire helpers ----------------------------------------------------------------------------------

function encodeU64(value: bigint): Uint8Array {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value, true);
  return bytes;
}

function encodeState(index: number, num: number): Uint8Array {
  const bytes = new Uint8Array(8);
  const view = new DataView(bytes.buffer);
  view.setUint32(0, index, true);
  view.setUint32(4, num, true);
  return bytes;
}
