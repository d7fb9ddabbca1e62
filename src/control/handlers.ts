// The request handler table: one row per front-end request the back-end implements, in the
// manner of DPDK's vhost_message_handlers and rust-vmm's handle_request. The session holds the
// state and runs the generic path (decode, feature check, reply policy, fd cleanup); each row
// holds the behaviour of one request, typed by that request, and sees the session only through
// SessionContext. Adding a request is one row here (and one in the codec's request table).
import { fstatSync } from 'node:fs';
import type { DeviceRequest, VhostUserDevice } from './backend.js';
import type { BackendReply, FrontendRequest, FrontendRequestType } from './codec/index.js';
import { closeAll } from './connection.js';
import { native } from '../native.js';
import { SessionError } from './errors.js';
import { MAX_MEM_SLOTS, mapRegion, type MappedRegion } from './memory-table.js';
import { checkInflightShape, mapInflightFd, type InflightRegion } from './inflight-region.js';
import {
  MAX_QUEUE_SIZE,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_RING_PACKED,
  VringAddrFlag,
  hasFeature,
} from './protocol.js';

/** What the session keeps for one ring between requests. */
export interface VringState {
  size: number;
  descUserAddr: number;
  availUserAddr: number;
  usedUserAddr: number;
  addressesSet: boolean;
  lastAvailIdx: number;
  kickFd: number;
  callFd: number;
  errFd: number;
  /** SET_VRING_KICK arrived (with an fd or "poll"): the ring is started, per the spec. */
  kicked: boolean;
  enabled: boolean;
  /** The data plane is processing it. */
  running: boolean;
  /** log_guest_addr of SET_VRING_ADDR with VHOST_VRING_F_LOG, else -1 (the used ring's own address). */
  logGuestAddr: number;
}

/** A ring as it is before the front-end configures it (and after a reset). */
export function newVring(): VringState {
  return {
    size: 0,
    descUserAddr: 0,
    availUserAddr: 0,
    usedUserAddr: 0,
    addressesSet: false,
    lastAvailIdx: 0,
    kickFd: -1,
    callFd: -1,
    errFd: -1,
    kicked: false,
    enabled: false,
    running: false,
    logGuestAddr: -1,
  };
}

export type RingAddresses = Pick<VringState, 'size' | 'descUserAddr' | 'availUserAddr' | 'usedUserAddr'>;

/** The fds that came with a request; a handler takes the ones it keeps, the rest are closed afterwards. */
export interface RequestFds {
  /** The fd at `index`; throws SessionError when it is missing. */
  take(index?: number): number;
}

/** The parts of the device a request may reach directly; the rest goes through the session. */
export type DeviceView = Readonly<
  Pick<VhostUserDevice, 'numQueues' | 'maxQueueSize' | 'getConfig' | 'setConfig' | 'handleRequest'>
>;

/** What a handler may see and do: the session's state, never its connection or data plane. */
export interface SessionContext {
  readonly device: DeviceView;
  /** Virtio features offered: the device's plus VHOST_USER_F_PROTOCOL_FEATURES. */
  readonly offeredFeatures: bigint;
  readonly offeredProtocolFeatures: bigint;
  /** Virtio features the front-end acked (SET_FEATURES). */
  readonly features: bigint;
  readonly memoryRegions: readonly MappedRegion[];
  /** The virtio device status byte (SET_STATUS / GET_STATUS). */
  readonly status: number;

  /** The state of ring `index`; a SessionError when the device has no such ring. */
  vring(index: number): VringState;
  /** Starts the ring on the data plane once it is kicked and enabled (spec: "Starting and stopping rings"). */
  startRingIfReady(index: number): Promise<void>;
  /** Stops the ring (draining in-flight requests) and resolves to where it stopped. */
  stopRing(index: number): Promise<number>;
  /** Ring addresses must lie inside mapped memory before a worker may touch them. */
  checkRingAddresses(index: number, ring: RingAddresses): void;
  /** Hands a running ring's current call and error fds to the data plane. */
  updateNotifyFds(index: number): Promise<void>;
  /** Writes the ring's call eventfd once (a failure is logged, not thrown). */
  signalCall(index: number): void;
  /** Replaces the memory table once the data plane no longer reads through the old one. */
  installMemory(regions: MappedRegion[]): Promise<void>;

  setOwner(): void;
  /** RESET_OWNER: the rings and the device are reset, negotiated protocol features stay. */
  resetOwner(): Promise<void>;
  /** RESET_DEVICE: stop every ring, forget ring state, acked features and status. */
  resetDevice(): Promise<void>;
  /**
   * Virtio features the handler checked against the offer: the device may still refuse them
   * (SessionError); otherwise they are recorded, and without VHOST_USER_F_PROTOCOL_FEATURES every
   * ring is enabled (spec: "Ring states").
   */
  acceptFeatures(features: bigint): void;
  /** Records protocol features the handler checked. */
  acceptProtocolFeatures(features: bigint): void;
  /** Records the status byte and tells the device. */
  setStatus(status: number): void;
  /** The back-end channel (SET_BACKEND_REQ_FD); replaces any previous one. */
  setBackendChannel(fd: number): void;
  setLogFd(fd: number): void;
  /**
   * GET_INFLIGHT_FD: a new zero-filled in-flight region for this shape. The session keeps the fd
   * (the reply carries it) until SET_INFLIGHT_FD or the end of the connection.
   */
  newInflightFd(numQueues: number, queueSize: number): { fd: number; mmapSize: number };
  /** SET_INFLIGHT_FD: rings take their part of the region when they next start (undefined: no tracking). */
  installInflight(region: InflightRegion | undefined): void;
  /** SET_LOG_BASE: maps the dirty log (closing fd) and starts logging if VHOST_F_LOG_ALL is acked. */
  setLogBase(mmapSize: bigint, mmapOffset: bigint, fd: number): Promise<void>;
  /** Refuses VHOST_F_LOG_ALL in `features` while the mapped log cannot cover guest memory. */
  checkFeaturesLoggable(features: bigint): void;
  /** Starts or stops dirty logging on the data plane to match the acked features and the log. */
  updateDirtyLog(): Promise<void>;
  /** Hands a running ring's new log_guest_addr to the data plane. */
  updateRingLog(index: number): Promise<void>;
}

type RequestOf<T extends FrontendRequestType> = Extract<FrontendRequest, { type: T }>;

/** One row: how to serve requests of type T, and what must hold before it runs. */
export interface RequestHandlerRow<T extends FrontendRequestType> {
  handle(session: SessionContext, request: RequestOf<T>, fds: RequestFds): BackendReply | void | Promise<BackendReply | void>;
  /**
   * The request is only legal once this protocol feature was acked. Defaults to the feature the
   * spec ties the request to (the codec's request table).
   */
  needsProtocolFeature?: number;
}

type RequestHandlerTable = { readonly [T in FrontendRequestType]?: RequestHandlerRow<T> };

/** The row for requests of `type`, if the back-end implements them. */
export function requestHandler<T extends FrontendRequestType>(type: T): RequestHandlerRow<T> | undefined {
  return requestHandlers[type];
}

const requestHandlers: RequestHandlerTable = {
  GET_FEATURES: { handle: (s) => ({ type: 'u64', value: s.offeredFeatures }) },
  SET_FEATURES: {
    handle: async (s, r) => {
      const unknown = r.features & ~s.offeredFeatures;
      if (unknown !== 0n) {
        throw new SessionError(`SET_FEATURES acks features that were never offered: 0x${unknown.toString(16)}`);
      }
      s.checkFeaturesLoggable(r.features);
      s.acceptFeatures(r.features);
      // Migration starts and ends with VHOST_F_LOG_ALL set and cleared here, rings running. The
      // ack (or QEMU's GET_FEATURES barrier) must come after the workers log.
      await s.updateDirtyLog();
    },
  },
  SET_OWNER: { handle: (s) => s.setOwner() },
  RESET_OWNER: { handle: (s) => s.resetOwner() },
  GET_PROTOCOL_FEATURES: { handle: (s) => ({ type: 'u64', value: s.offeredProtocolFeatures }) },
  SET_PROTOCOL_FEATURES: {
    handle: (s, r) => {
      const unknown = r.features & ~s.offeredProtocolFeatures;
      if (unknown !== 0n) {
        throw new SessionError(`SET_PROTOCOL_FEATURES acks features that were never offered: 0x${unknown.toString(16)}`);
      }
      // Honoured from now on, whether or not GET_PROTOCOL_FEATURES was ever sent: a front-end
      // restored from migration skips it.
      s.acceptProtocolFeatures(r.features);
    },
  },
  GET_QUEUE_NUM: { handle: (s) => ({ type: 'u64', value: BigInt(s.device.numQueues) }) },
  SET_MEM_TABLE: {
    handle: async (s, r, fds) => {
      const next: MappedRegion[] = [];
      for (let i = 0; i < r.regions.length; i++) next.push(mapRegion(r.regions[i], fds.take(i)));
      await s.installMemory(next);
    },
  },
  GET_MAX_MEM_SLOTS: { handle: () => ({ type: 'u64', value: BigInt(MAX_MEM_SLOTS) }) },
  ADD_MEM_REG: {
    handle: async (s, r, fds) => {
      // QEMU 7.2 with vhost-user-net queue pairs: each pair is a vhost device with its own copy
      // of the table, and ADD_MEM_REG (unlike SET_MEM_TABLE) is not one of its once-per-back-end
      // requests, so every pair after the first adds the same regions again. An exact repeat is
      // acknowledged and changes nothing.
      const { guestPhysAddr, memorySize, userspaceAddr, mmapOffset } = r.region;
      const repeat = s.memoryRegions.some(
        (m) =>
          BigInt(m.guestPhysAddr) === guestPhysAddr &&
          BigInt(m.size) === memorySize &&
          BigInt(m.userspaceAddr) === userspaceAddr &&
          BigInt(m.mmapOffset) === mmapOffset,
      );
      if (repeat) {
        closeAll([fds.take(0)]);
        return;
      }
      if (s.memoryRegions.length >= MAX_MEM_SLOTS)
        throw new SessionError(`ADD_MEM_REG: all ${MAX_MEM_SLOTS} memory slots are in use`);
      const region = mapRegion(r.region, fds.take(0));
      await s.installMemory([...s.memoryRegions, region]);
    },
  },
  REM_MEM_REG: {
    handle: async (s, r) => {
      // The spec matches a region by its guest address, size and userspace address; an fd
      // that comes along is ignored (closed by the generic path).
      const gpa = Number(r.region.guestPhysAddr);
      const size = Number(r.region.memorySize);
      const uaddr = Number(r.region.userspaceAddr);
      const remaining = s.memoryRegions.filter((m) => !(m.guestPhysAddr === gpa && m.size === size && m.userspaceAddr === uaddr));
      if (remaining.length === s.memoryRegions.length) {
        throw new SessionError(`REM_MEM_REG: no region at guest address 0x${gpa.toString(16)} of size ${size}`);
      }
      await s.installMemory(remaining);
    },
  },
  SET_VRING_NUM: {
    handle: (s, r) => {
      const vring = s.vring(r.index);
      if (vring.running) throw new SessionError(`SET_VRING_NUM: queue ${r.index} is running`);
      const max = Math.min(s.device.maxQueueSize, MAX_QUEUE_SIZE);
      if (r.num === 0 || r.num > max || (r.num & (r.num - 1)) !== 0) {
        throw new SessionError(`SET_VRING_NUM: queue size ${r.num} must be a power of two between 1 and ${max}`);
      }
      vring.size = r.num;
    },
  },
  SET_VRING_ADDR: {
    handle: async (s, r) => {
      const vring = s.vring(r.index);
      const logGuestAddr = (r.flags & VringAddrFlag.LOG) !== 0 ? toAddress(r.logGuestAddr) : -1;
      if (vring.running) {
        // Spec, "Migration": logging of a running ring's used ring is switched with SET_VRING_ADDR
        // and its LOG flag. Moving a running ring is not allowed.
        const same =
          toAddress(r.descUserAddr) === vring.descUserAddr &&
          toAddress(r.usedUserAddr) === vring.usedUserAddr &&
          toAddress(r.availUserAddr) === vring.availUserAddr;
        if (!same) throw new SessionError(`SET_VRING_ADDR: queue ${r.index} is running`);
        vring.logGuestAddr = logGuestAddr;
        await s.updateRingLog(r.index);
        return;
      }
      const addresses = {
        size: vring.size,
        descUserAddr: toAddress(r.descUserAddr),
        usedUserAddr: toAddress(r.usedUserAddr),
        availUserAddr: toAddress(r.availUserAddr),
      };
      // Checked now when possible, so a bad address is refused at the request that carried it
      // (and a refused request changes nothing); checked again at start in case the memory
      // table changes in between.
      if (vring.size > 0 && s.memoryRegions.length > 0) s.checkRingAddresses(r.index, addresses);
      vring.descUserAddr = addresses.descUserAddr;
      vring.usedUserAddr = addresses.usedUserAddr;
      vring.availUserAddr = addresses.availUserAddr;
      vring.addressesSet = true;
      vring.logGuestAddr = logGuestAddr;
    },
  },
  SET_VRING_BASE: {
    handle: (s, r) => {
      const vring = s.vring(r.index);
      if (vring.running) throw new SessionError(`SET_VRING_BASE: queue ${r.index} is running`);
      if (hasFeature(s.features, VIRTIO_F_RING_PACKED)) {
        // Packed (PROTOCOL-NOTES "Packed rings"): bits 0–14 avail position, bit 15 its wrap
        // counter. QEMU puts the used position and wrap in bits 16–31, DPDK zero: the used side
        // restarts equal to the avail side, as DPDK's own back-end does.
        const base = r.num & 0xffff;
        if (vring.size > 0 && (base & 0x7fff) >= vring.size) {
          throw new SessionError(`SET_VRING_BASE: packed ring position ${base & 0x7fff} is beyond queue size ${vring.size}`);
        }
        vring.lastAvailIdx = base;
        return;
      }
      if (r.num > 0xffff) throw new SessionError(`SET_VRING_BASE: index ${r.num} does not fit a split ring's u16`);
      vring.lastAvailIdx = r.num;
    },
  },
  GET_VRING_BASE: {
    handle: async (s, r) => {
      const lastAvailIdx = await s.stopRing(r.index);
      // The ring is stopped: its kick fd is done with (spec), and a restart sends new fds.
      const vring = s.vring(r.index);
      if (vring.kickFd >= 0) closeAll([vring.kickFd]);
      vring.kickFd = -1;
      // Packed: position and wrap counter in both halves (avail and used agree once drained).
      const num = hasFeature(s.features, VIRTIO_F_RING_PACKED) ? (lastAvailIdx | (lastAvailIdx << 16)) >>> 0 : lastAvailIdx;
      return { type: 'vring-state', index: r.index, num };
    },
  },
  SET_VRING_KICK: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const fd = r.noFd ? -1 : notifierFd(fds, 'SET_VRING_KICK');
      if (vring.running) {
        // A new kick fd for a running ring: restart it with the new fd.
        await s.stopRing(r.index);
      }
      if (vring.kickFd >= 0) closeAll([vring.kickFd]);
      vring.kickFd = fd;
      vring.kicked = true;
      if (!hasFeature(s.features, VHOST_USER_F_PROTOCOL_FEATURES)) vring.enabled = true;
      await s.startRingIfReady(r.index);
    },
  },
  SET_VRING_CALL: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const previous = vring.callFd;
      vring.callFd = r.noFd ? -1 : notifierFd(fds, 'SET_VRING_CALL');
      await s.updateNotifyFds(r.index);
      if (previous >= 0) closeAll([previous]);
      // As libvhost-user does ("in case of I/O hang after reconnecting"): one signal on every new
      // call fd, so an interrupt lost while the front-end swapped fds or reconnected cannot leave
      // the guest waiting. Not only for a running ring: QEMU installs the call fd the guest
      // waits on before it starts the ring (set_guest_notifiers precedes vhost_dev_start), and
      // QEMU's idx qtest waits for exactly that interrupt. A spurious one costs a driver one look
      // at the used ring. Control path only: once per SET_VRING_CALL.
      s.signalCall(r.index);
    },
  },
  SET_VRING_ERR: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const previous = vring.errFd;
      vring.errFd = r.noFd ? -1 : notifierFd(fds, 'SET_VRING_ERR');
      await s.updateNotifyFds(r.index);
      if (previous >= 0) closeAll([previous]);
    },
  },
  SET_VRING_ENABLE: {
    handle: async (s, r) => {
      const vring = s.vring(r.index);
      if (r.num > 1) throw new SessionError(`SET_VRING_ENABLE: ${r.num} is neither 0 nor 1`);
      vring.enabled = r.num === 1;
      if (vring.enabled) await s.startRingIfReady(r.index);
      else if (vring.running) {
        // Disabled but still started: stop processing, keep the ring's fds and position.
        await s.stopRing(r.index);
        vring.kicked = true;
      }
    },
  },
  SEND_RARP: { handle: (s, r) => deviceRequest(s, { type: 'SEND_RARP', mac: r.mac }) },
  NET_SET_MTU: {
    handle: (s, r) => {
      // virtio-net's mtu config field is a u16; anything larger is invalid for every device.
      if (r.mtu > 0xffffn) throw new SessionError(`NET_SET_MTU: ${r.mtu} does not fit virtio-net's 16-bit mtu`);
      return deviceRequest(s, { type: 'NET_SET_MTU', mtu: Number(r.mtu) });
    },
  },
  GET_CONFIG: {
    handle: (s, r) => {
      const device = s.device;
      if (!device.getConfig) throw new SessionError('GET_CONFIG: the device has no config space');
      let bytes: Uint8Array;
      try {
        bytes = device.getConfig(r.offset, r.size);
      } catch (error) {
        throw new SessionError(`GET_CONFIG: ${(error as Error).message}`);
      }
      if (bytes.length !== r.size) throw new SessionError(`GET_CONFIG: device returned ${bytes.length} bytes, not ${r.size}`);
      return { type: 'config', offset: r.offset, size: r.size, flags: r.flags, payload: bytes };
    },
  },
  SET_CONFIG: {
    handle: (s, r) => {
      const device = s.device;
      if (!device.setConfig) throw new SessionError('SET_CONFIG: the device config space is read-only');
      try {
        device.setConfig(r.offset, r.payload, r.flags);
      } catch (error) {
        throw new SessionError(`SET_CONFIG: ${(error as Error).message}`);
      }
    },
  },
  GET_INFLIGHT_FD: {
    handle: (s, r) => {
      const { numQueues, queueSize } = r;
      checkInflightShape(
        'GET_INFLIGHT_FD',
        numQueues,
        queueSize,
        s.device.numQueues,
        Math.min(s.device.maxQueueSize, MAX_QUEUE_SIZE),
      );
      const { fd, mmapSize } = s.newInflightFd(numQueues, queueSize);
      return { type: 'inflight', mmapSize: BigInt(mmapSize), mmapOffset: 0n, numQueues, queueSize, fd };
    },
  },
  SET_INFLIGHT_FD: {
    handle: (s, r, fds) => {
      const fd = fds.take(0);
      if (r.mmapSize === 0n) {
        // "No in-flight buffer": the front-end opts out of tracking.
        closeAll([fd]);
        s.installInflight(undefined);
        return;
      }
      s.installInflight(mapInflightFd(r, fd, s.device.numQueues, Math.min(s.device.maxQueueSize, MAX_QUEUE_SIZE)));
    },
  },
  SET_STATUS: { handle: (s, r) => s.setStatus(Number(r.status & 0xffn)) },
  GET_STATUS: { handle: (s) => ({ type: 'u64', value: BigInt(s.status) }) },
  SET_BACKEND_REQ_FD: {
    handle: (s, _r, fds) => {
      const fd = fds.take(0);
      // Only a socket can carry the channel's messages; anything else (a file, a memfd, an
      // eventfd) cannot even be polled, which used to fail the handler and drop the front-end.
      if (!isSocket(fd)) {
        closeAll([fd]);
        throw new SessionError('SET_BACKEND_REQ_FD: the fd is not a socket');
      }
      s.setBackendChannel(fd);
    },
  },
  RESET_DEVICE: { handle: (s) => s.resetDevice() },
  SET_LOG_BASE: {
    // QEMU waits for this reply (request 6, REPLY flag) and ignores its payload: 0 is success.
    handle: async (s, r, fds) => {
      await s.setLogBase(r.mmapSize, r.mmapOffset, fds.take(0));
      return { type: 'u64', value: 0n };
    },
  },
  SET_LOG_FD: {
    handle: (s, _r, fds) => s.setLogFd(fds.take(0)),
    needsProtocolFeature: ProtocolFeature.LOG_SHMFD,
  },
};

/**
 * A device-specific request goes to the device's hook (libvhost-user's process_msg, DPDK's
 * pre_msg_handle). No hook, or a hook that declines, is the same answer as a request the
 * back-end does not implement; a hook that throws refuses the request (a failure ack).
 */
async function deviceRequest(s: SessionContext, request: DeviceRequest): Promise<void> {
  const hook = s.device.handleRequest;
  let handled = false;
  if (hook) {
    try {
      handled = await hook.call(s.device, request);
    } catch (error) {
      throw new SessionError(
        `${request.type}: the device refused it: ${error instanceof Error ? error.message : String(error)}`,
        { cause: error },
      );
    }
  }
  if (handled !== true) throw new SessionError(`${request.type} is not supported by this back-end`);
}

function toAddress(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new SessionError(`ring address 0x${value.toString(16)} is out of range`);
  return Number(value);
}

/**
 * The request's kick, call or error fd, once it is known to be an eventfd and made non-blocking:
 * the data plane writes call fds and reads kick fds on its hot path, where a pipe that fills up,
 * or a blocking eventfd whose counter the front-end pushed to the maximum, would block a worker
 * (or the control thread) forever. A refused fd is closed here.
 */
function notifierFd(fds: RequestFds, request: string): number {
  const fd = fds.take(0);
  let adopted: boolean;
  try {
    adopted = native.eventfdAdopt(fd);
  } catch (error) {
    closeAll([fd]);
    throw new SessionError(`${request}: cannot inspect the fd: ${(error as Error).message}`);
  }
  if (!adopted) {
    closeAll([fd]);
    throw new SessionError(`${request}: the fd is not an eventfd`);
  }
  return fd;
}

function isSocket(fd: number): boolean {
  try {
    return fstatSync(fd).isSocket();
  } catch {
    return false;
  }
}
