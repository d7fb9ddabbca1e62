// The handler table on its own: rows run against a fake SessionContext, without a socket or a
// daemon, which is what the narrow context is for. The protocol-level behaviour (acks, failure
// replies, fds) is covered request by request in session.test.ts.
import { fstatSync } from 'node:fs';
import { afterEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { closeAll } from '../../dist/control/connection.js';
import { SessionError } from '../../dist/control/errors.js';
import {
  newVring,
  requestHandler,
  type DeviceView,
  type RequestFds,
  type RingAddresses,
  type SessionContext,
  type VringState,
} from '../../dist/control/handlers.js';
import type { MappedRegion } from '../../dist/control/memory-table.js';
import { inflightQueueBytes } from '../../dist/dataplane/inflight.js';
import type { DeviceRequest } from '../../dist/control/backend.js';
import type { FrontendRequest } from '../../dist/control/codec/index.js';

/** Records what a row asks of the session. */
class FakeSession implements SessionContext {
  readonly calls: string[] = [];
  readonly rings: VringState[] = [newVring(), newVring()];
  readonly offeredFeatures = 0b1011n;
  readonly offeredProtocolFeatures = 0n;
  features = 0n;
  memoryRegions: readonly MappedRegion[] = [];
  status = 0;

  constructor(readonly device: DeviceView) {}

  vring(index: number): VringState {
    const ring = this.rings[index];
    if (!ring) throw new SessionError(`queue index ${index} out of range`);
    return ring;
  }
  startRingIfReady(index: number): Promise<void> {
    this.calls.push(`start:${index}`);
    return Promise.resolve();
  }
  stopRing(index: number): Promise<number> {
    this.calls.push(`stop:${index}`);
    this.vring(index).running = false;
    return Promise.resolve(this.vring(index).lastAvailIdx);
  }
  checkRingAddresses(index: number, _ring: RingAddresses): void {
    this.calls.push(`check:${index}`);
  }
  updateNotifyFds(index: number): Promise<void> {
    this.calls.push(`notify:${index}:${this.vring(index).callFd}`);
    return Promise.resolve();
  }
  signalCall(index: number): void {
    this.calls.push(`signal:${index}`);
  }
  installMemory(regions: MappedRegion[]): Promise<void> {
    this.calls.push(`memory:${regions.length}`);
    return Promise.resolve();
  }
  setOwner(): void {
    this.calls.push('owner');
  }
  resetOwner(): Promise<void> {
    this.calls.push('reset-owner');
    return Promise.resolve();
  }
  resetDevice(): Promise<void> {
    this.calls.push('reset-device');
    return Promise.resolve();
  }
  acceptFeatures(features: bigint): void {
    this.calls.push(`features:${features}`);
  }
  acceptProtocolFeatures(features: bigint): void {
    this.calls.push(`protocol:${features}`);
  }
  setStatus(status: number): void {
    this.calls.push(`status:${status}`);
  }
  newInflightFd(numQueues: number, queueSize: number): { fd: number; mmapSize: number } {
    this.calls.push(`inflight-new:${numQueues}x${queueSize}`);
    return { fd: 99, mmapSize: 4096 };
  }
  installInflight(region: { numQueues: number; queueSize: number } | undefined): void {
    this.calls.push(region ? `inflight:${region.numQueues}x${region.queueSize}` : 'inflight:none');
  }
  setBackendChannel(fd: number): void {
    this.calls.push(`backend:${fd}`);
  }
  setLogFd(fd: number): void {
    this.calls.push(`log:${fd}`);
  }
  setLogBase(mmapSize: bigint, mmapOffset: bigint, fd: number): Promise<void> {
    this.calls.push(`log-base:${mmapSize}:${mmapOffset}:${fd}`);
    return Promise.resolve();
  }
  checkFeaturesLoggable(features: bigint): void {
    if (features & 0b1000n && this.logTooSmall) throw new SessionError('log too small');
  }
  logTooSmall = false;
  updateDirtyLog(): Promise<void> {
    this.calls.push('dirty-log');
    return Promise.resolve();
  }
  updateRingLog(index: number): Promise<void> {
    this.calls.push(`ring-log:${index}:${this.vring(index).logGuestAddr}`);
    return Promise.resolve();
  }
}

const device: DeviceView = { numQueues: 2, maxQueueSize: 256 };
const noFds: RequestFds = {
  take: () => {
    throw new SessionError('expected file descriptor is missing');
  },
};
/** Fds the test still owns after the row ran. */
const openedFds: number[] = [];

afterEach(() => closeAll(openedFds.splice(0)));

/** fstat opens nothing, so unlike listing /proc/self/fd it cannot reuse the number it asks about. */
function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

/** Runs the row for `request` the way the session does. */
function run(session: SessionContext, request: FrontendRequest, fds: RequestFds = noFds) {
  const row = requestHandler(request.type);
  if (!row) throw new Error(`no row for ${request.type}`);
  return row.handle(session, request, fds);
}

async function refusal(action: () => unknown): Promise<SessionError> {
  try {
    await action();
  } catch (error) {
    expect(error).toBeInstanceOf(SessionError);
    return error as SessionError;
  }
  throw new Error('the row did not refuse');
}

describe('request handler rows against a fake session', () => {
  it('SET_FEATURES refuses bits that were never offered and records nothing; an offered subset is accepted', async () => {
    const session = new FakeSession(device);
    expect((await refusal(() => run(session, { type: 'SET_FEATURES', features: 0b0100n }))).message).toMatch(
      /never offered: 0x4/,
    );
    expect(session.calls).toEqual([]);
    await run(session, { type: 'SET_FEATURES', features: 0b0011n });
    // The data plane's logging follows the acked features before the request is answered.
    expect(session.calls).toEqual(['features:3', 'dirty-log']);
    // A log that cannot cover guest memory: LOG_ALL (here bit 3) is refused before anything is recorded.
    session.logTooSmall = true;
    await refusal(() => run(session, { type: 'SET_FEATURES', features: 0b1000n }));
    expect(session.calls).toEqual(['features:3', 'dirty-log']);
  });

  it('SET_VRING_ADDR on a running ring only switches used-ring logging; moving it is refused', async () => {
    const session = new FakeSession(device);
    const ring = session.rings[0];
    Object.assign(ring, { size: 64, descUserAddr: 0x1000, availUserAddr: 0x2000, usedUserAddr: 0x3000, running: true });
    const addr = {
      type: 'SET_VRING_ADDR',
      index: 0,
      descUserAddr: 0x1000n,
      availUserAddr: 0x2000n,
      usedUserAddr: 0x3000n,
    } as const;
    await run(session, { ...addr, flags: 1, logGuestAddr: 0x9000n });
    await run(session, { ...addr, flags: 0, logGuestAddr: 0x9000n });
    expect(session.calls).toEqual(['ring-log:0:36864', 'ring-log:0:-1']);
    await refusal(() => run(session, { ...addr, usedUserAddr: 0x4000n, flags: 1, logGuestAddr: 0x9000n }));
    expect(ring.usedUserAddr).toBe(0x3000);
    expect(ring.logGuestAddr).toBe(-1);
  });

  it('SET_LOG_BASE hands size, offset and fd to the session and answers 0 (QEMU waits for that reply)', async () => {
    const session = new FakeSession(device);
    const fds: RequestFds = { take: () => 42 };
    expect(await run(session, { type: 'SET_LOG_BASE', mmapSize: 4096n, mmapOffset: 8192n, fd: 42 }, fds)).toEqual({
      type: 'u64',
      value: 0n,
    });
    expect(session.calls).toEqual(['log-base:4096:8192:42']);
  });

  it('GET_INFLIGHT_FD checks num_queues and queue_size against the device before creating a region', async () => {
    const session = new FakeSession(device);
    for (const [numQueues, queueSize] of [
      [0, 64],
      [3, 64],
      [1, 0],
      [1, 512],
    ]) {
      expect((await refusal(() => run(session, { type: 'GET_INFLIGHT_FD', numQueues, queueSize }))).message).toMatch(
        /GET_INFLIGHT_FD: (num_queues|queue_size)/,
      );
    }
    expect(session.calls).toEqual([]);
    expect(await run(session, { type: 'GET_INFLIGHT_FD', numQueues: 2, queueSize: 256 })).toEqual({
      type: 'inflight',
      mmapSize: 4096n,
      mmapOffset: 0n,
      numQueues: 2,
      queueSize: 256,
      fd: 99,
    });
    expect(session.calls).toEqual(['inflight-new:2x256']);
  });

  it('SET_INFLIGHT_FD maps a region that fits its file; mmap_size 0 turns tracking off; the fd is always closed', async () => {
    const session = new FakeSession(device);
    const bytes = 2 * inflightQueueBytes(128);
    const fdsOf = (fd: number): RequestFds => ({ take: () => fd });
    const good = native.memfdCreate('inflight-test', bytes);
    await run(
      session,
      { type: 'SET_INFLIGHT_FD', mmapSize: BigInt(bytes), mmapOffset: 0n, numQueues: 2, queueSize: 128, fd: good },
      fdsOf(good),
    );
    expect(isOpen(good)).toBe(false);
    const short = native.memfdCreate('inflight-test', bytes - 64);
    expect(
      (
        await refusal(() =>
          run(
            session,
            { type: 'SET_INFLIGHT_FD', mmapSize: BigInt(bytes), mmapOffset: 0n, numQueues: 2, queueSize: 128, fd: short },
            fdsOf(short),
          ),
        )
      ).message,
    ).toMatch(/exceeds its file/);
    expect(isOpen(short)).toBe(false);
    const off = native.eventfdCreate(0);
    await run(
      session,
      { type: 'SET_INFLIGHT_FD', mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 128, fd: off },
      fdsOf(off),
    );
    expect(isOpen(off)).toBe(false);
    expect(session.calls).toEqual(['inflight:2x128', 'inflight:none']);
  });

  it("SET_VRING_NUM takes powers of two up to the device's maximum, and never on a running ring", async () => {
    const session = new FakeSession(device);
    for (const num of [0, 3, 512]) {
      expect((await refusal(() => run(session, { type: 'SET_VRING_NUM', index: 1, num }))).message).toMatch(
        /power of two between 1 and 256/,
      );
    }
    await run(session, { type: 'SET_VRING_NUM', index: 1, num: 256 });
    expect(session.rings[1].size).toBe(256);
    session.rings[1].running = true;
    await refusal(() => run(session, { type: 'SET_VRING_NUM', index: 1, num: 64 }));
    expect(session.rings[1].size).toBe(256);
    await refusal(() => run(session, { type: 'SET_VRING_NUM', index: 2, num: 64 }));
  });

  it('SET_VRING_CALL keeps the new fd, hands it to the data plane, closes the old one, then signals the new one once', async () => {
    const session = new FakeSession(device);
    const [previous, next] = [native.eventfdCreate(0), native.eventfdCreate(0)];
    openedFds.push(next);
    session.rings[0].callFd = previous;
    await run(session, { type: 'SET_VRING_CALL', index: 0, noFd: false, fd: next }, { take: () => next });
    expect(session.rings[0].callFd).toBe(next);
    expect(session.calls).toEqual([`notify:0:${next}`, 'signal:0']);
    expect(isOpen(previous)).toBe(false);
    expect(isOpen(next)).toBe(true);
  });

  it('SET_VRING_KICK on a running ring stops it, swaps the fd and starts it again', async () => {
    const session = new FakeSession(device);
    const kick = native.eventfdCreate(0);
    openedFds.push(kick);
    session.rings[0].running = true;
    await run(session, { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: kick }, { take: () => kick });
    expect(session.calls).toEqual(['stop:0', 'start:0']);
    expect(session.rings[0]).toMatchObject({ kickFd: kick, kicked: true, enabled: true });
  });

  it("NET_SET_MTU and SEND_RARP call the device's hook with the payload, the device as `this`", async () => {
    const seen: DeviceRequest[] = [];
    const hooked = {
      ...device,
      handleRequest(this: unknown, request: DeviceRequest) {
        expect(this).toBe(hooked);
        seen.push(request);
        return true;
      },
    };
    const session = new FakeSession(hooked);
    await run(session, { type: 'NET_SET_MTU', mtu: 1500n });
    await run(session, { type: 'SEND_RARP', mac: Uint8Array.of(2, 0, 0, 0, 0, 9) });
    expect(seen).toEqual([
      { type: 'NET_SET_MTU', mtu: 1500 },
      { type: 'SEND_RARP', mac: Uint8Array.of(2, 0, 0, 0, 0, 9) },
    ]);
  });

  it('a device hook that throws is a refusal that keeps the device error as its cause', async () => {
    const cause = new Error('no such MTU');
    const session = new FakeSession({
      ...device,
      handleRequest: () => {
        throw cause;
      },
    });
    const error = await refusal(() => run(session, { type: 'NET_SET_MTU', mtu: 20n }));
    expect(error.message).toBe('NET_SET_MTU: the device refused it: no such MTU');
    expect(error.refusal).toBe(true);
    expect(error.cause).toBe(cause);
  });

  it('requests the back-end does not implement have no row', () => {
    for (const type of ['SET_VRING_ENDIAN', 'VRING_KICK', 'IOTLB_MSG', 'POSTCOPY_LISTEN', 'POSTCOPY_ADVISE'] as const) {
      expect(requestHandler(type), type).toBeUndefined();
    }
    expect(requestHandler('GET_VRING_BASE')).toBeDefined();
  });
});
