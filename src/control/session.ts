// One front-end connection: the vhost-user state machine of the back-end side.
//
// Every request goes through the same path, readable top to bottom:
//   codec (bytes + fds → typed request, validated) → handler table (one function per request,
//   with per-request properties checked first) → reply policy (always-reply requests answer
//   once; others answer NEED_REPLY with an ack when REPLY_ACK was acked).
// Fds that arrive with a request belong to the session; whatever a handler does not keep is
// closed when the request is done, including on errors.
import { createLogger, type Logger } from '../log.js';
import { native } from '../native.js';
import type { DataPlane, VhostUserDevice, VringConfig } from './backend.js';
import {
  ProtocolError,
  decodeRequest,
  type RequestSpec,
  encodeBackendRequest,
  encodeReply,
  requestSpecs,
  type BackendReply,
  type FrontendRequest,
  type MessageHeader,
} from './codec.js';
import { VhostUserConnection, closeAll } from './connection.js';
import {
  MAX_MEM_SLOTS,
  MemoryTableError,
  checkNoOverlap,
  findUserspaceRange,
  mapRegion,
  type MappedRegion,
} from './memory-table.js';
import { HeaderFlag, MAX_QUEUE_SIZE, ProtocolFeature, Request, VHOST_USER_F_PROTOCOL_FEATURES, bit } from './protocol.js';

/** A request the back-end refuses: answered with a failure ack when the front-end can hear it. */
export class SessionError extends Error {}

/** Protocol features the library implements for every device. */
const LIBRARY_PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.BACKEND_REQ) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.STATUS);

interface VringState {
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
}

/** The fds of one request; a handler takes the ones it keeps, the rest are closed afterwards. */
class RequestFds {
  constructor(private readonly fds: number[]) {}
  take(index = 0): number {
    const fd = this.fds[index];
    if (fd === undefined || fd < 0) throw new SessionError('expected file descriptor is missing');
    this.fds[index] = -1;
    return fd;
  }
  closeRest(): void {
    closeAll(this.fds.filter((fd) => fd >= 0));
  }
}

type Handler = (session: VhostUserSession, request: any, fds: RequestFds) => BackendReply | void | Promise<BackendReply | void>;

interface HandlerSpec {
  handle: Handler;
  /**
   * The request is only legal once this protocol feature was acked. Defaults to the feature the
   * spec ties the request to (the codec's request table).
   */
  needsProtocolFeature?: number;
}

export interface SessionOptions {
  logger?: Logger;
  onClosed?: (error?: Error) => void;
}

export class VhostUserSession {
  private readonly log: Logger;
  private readonly connection: VhostUserConnection;
  private owned = false;
  private ackedFeatures = 0n;
  private ackedProtocolFeatures = 0n;
  private status = 0;
  private regions: MappedRegion[] = [];
  private readonly vrings: VringState[];
  private backendChannel: VhostUserConnection | undefined;
  private logFd = -1;
  private closing: Promise<void> | undefined;
  /** The request being handled (the connection hands over one at a time), if any. */
  private inFlight: Promise<void> | undefined;

  constructor(
    fd: number,
    private readonly device: VhostUserDevice,
    private readonly dataPlane: DataPlane,
    private readonly options: SessionOptions = {},
  ) {
    this.log = options.logger ?? createLogger('session');
    this.vrings = Array.from({ length: device.numQueues }, () => newVring());
    this.connection = new VhostUserConnection(fd, {
      onMessage: (header, payload, fds) => {
        const handling = this.onMessage(header, payload, fds);
        this.inFlight = handling;
        return handling;
      },
      onClose: (error) => void this.shutdown(error),
    });
  }

  /** Virtio features this back-end offers: the device's plus the vhost-user bit. */
  get offeredFeatures(): bigint {
    return this.device.features | bit(VHOST_USER_F_PROTOCOL_FEATURES);
  }

  get offeredProtocolFeatures(): bigint {
    let features = LIBRARY_PROTOCOL_FEATURES | (this.device.protocolFeatures ?? 0n);
    if (this.device.getConfig) features |= bit(ProtocolFeature.CONFIG);
    return features;
  }

  get features(): bigint {
    return this.ackedFeatures;
  }

  get protocolFeatures(): bigint {
    return this.ackedProtocolFeatures;
  }

  get memoryRegions(): readonly MappedRegion[] {
    return this.regions;
  }

  /** Tell the front-end the config space changed (BACKEND_REQ channel, CONFIG_CHANGE_MSG). */
  notifyConfigChange(): boolean {
    // The spec ties CONFIG_CHANGE_MSG to the CONFIG protocol feature (back-end message types).
    if (!this.hasProtocolFeature(ProtocolFeature.CONFIG)) return false;
    if (!this.backendChannel || this.backendChannel.isClosed) return false;
    const message = encodeBackendRequest({ type: 'CONFIG_CHANGE_MSG' }, false);
    return this.backendChannel.send(message.bytes, message.fds);
  }

  /** Disconnect and release everything. Resolves when the data plane has let go. */
  close(): Promise<void> {
    this.connection.close();
    return this.shutdown();
  }

  private hasProtocolFeature(feature: number): boolean {
    return (this.ackedProtocolFeatures & bit(feature)) !== 0n;
  }

  private async onMessage(header: MessageHeader, payload: Uint8Array, rawFds: number[]): Promise<void> {
    const fds = new RequestFds(rawFds);
    const spec = requestSpecs.get(header.request);
    const name = spec?.name ?? `request ${header.request}`;
    const needReply = (header.flags & HeaderFlag.NEED_REPLY) !== 0;
    try {
      let request: FrontendRequest;
      try {
        request = decodeRequest(header, payload, rawFds);
      } catch (error) {
        if (!(error instanceof ProtocolError)) throw error;
        throw new SessionError(error.message);
      }
      const handling = handlers[request.type];
      if (!handling) throw new SessionError(`${name} is not supported by this back-end`);
      const feature = handling.needsProtocolFeature ?? spec?.protocolFeature;
      if (feature !== undefined && !this.hasProtocolFeature(feature)) {
        throw new SessionError(`${name} needs protocol feature ${feature}, which was not negotiated`);
      }
      this.log.debug('request', { request: name, flags: header.flags, fds: rawFds.length });
      const reply = await handling.handle(this, request, fds);
      if (this.connection.isClosed) return;
      if (spec?.replies === 'always') {
        if (reply === undefined) throw new Error(`handler for ${name} produced no reply`);
        const encoded = encodeReply(header.request, reply);
        this.connection.send(encoded.bytes, encoded.fds);
      } else if (needReply && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK)) {
        this.sendAck(header.request, 0n);
      }
    } catch (error) {
      this.answerFailure(header, name, needReply, spec, error);
    } finally {
      fds.closeRest();
    }
  }

  /**
   * A refused request: logged, then answered the way the front-end expects. Requests that always
   * reply get their failure form (e.g. an empty GET_CONFIG payload); if there is none the
   * connection is dropped, because a front-end waiting for a reply would otherwise hang.
   */
  private answerFailure(header: MessageHeader, name: string, needReply: boolean, spec: RequestSpec | undefined, error: unknown): void {
    if (!(error instanceof SessionError) && !(error instanceof MemoryTableError)) {
      this.log.error('request handler failed', { request: name, error });
      this.connection.close(error instanceof Error ? error : new Error(String(error)));
      return;
    }
    this.log.warn('request refused', { request: name, error: error.message });
    if (this.connection.isClosed) return;
    if (spec?.replies === 'always') {
      const failure = failureReply(spec);
      if (failure) {
        const encoded = encodeReply(header.request, failure);
        this.connection.send(encoded.bytes, encoded.fds);
      } else {
        this.connection.close(new Error(`${name} failed and has no failure reply: ${error.message}`));
      }
    } else if (needReply && this.hasProtocolFeature(ProtocolFeature.REPLY_ACK)) {
      this.sendAck(header.request, 1n);
    }
  }

  private sendAck(request: number, value: bigint): void {
    const encoded = encodeReply(request, { type: 'u64', value });
    this.connection.send(encoded.bytes, encoded.fds);
  }

  // ---- state changes used by the handlers ------------------------------------------------

  vring(index: number): VringState {
    const vring = this.vrings[index];
    if (vring === undefined) {
      throw new SessionError(`queue index ${index} out of range (device has ${this.vrings.length} queues)`);
    }
    return vring;
  }

  /** Starts the ring on the data plane once it is kicked and enabled (spec: "Starting and stopping rings"). */
  async maybeStart(index: number): Promise<void> {
    const vring = this.vring(index);
    if (vring.running || !vring.kicked || !vring.enabled) return;
    if (vring.size === 0) throw new SessionError(`queue ${index} started before SET_VRING_NUM`);
    if (!vring.addressesSet) throw new SessionError(`queue ${index} started before SET_VRING_ADDR`);
    this.checkRingAddresses(index, vring);
    const config: VringConfig = {
      index,
      size: vring.size,
      descUserAddr: vring.descUserAddr,
      availUserAddr: vring.availUserAddr,
      usedUserAddr: vring.usedUserAddr,
      lastAvailIdx: vring.lastAvailIdx,
      kickFd: vring.kickFd,
      callFd: vring.callFd,
      errFd: vring.errFd,
      features: this.ackedFeatures,
    };
    await this.dataPlane.startQueue(config);
    vring.running = true;
    this.log.info('queue started', { queue: index, size: vring.size, kick: vring.kickFd >= 0 ? 'eventfd' : 'poll' });
  }

  /** Stops the ring (draining in-flight requests) and records where it stopped. */
  async stopRing(index: number): Promise<number> {
    const vring = this.vring(index);
    if (vring.running) {
      vring.lastAvailIdx = await this.dataPlane.stopQueue(index);
      vring.running = false;
      this.log.info('queue stopped', { queue: index, lastAvailIdx: vring.lastAvailIdx });
    }
    vring.kicked = false;
    return vring.lastAvailIdx;
  }

  /** Ring addresses must lie inside mapped memory before a worker may touch them. */
  checkRingAddresses(index: number, vring: Pick<VringState, 'size' | 'descUserAddr' | 'availUserAddr' | 'usedUserAddr'>): void {
    if (this.regions.length === 0) throw new SessionError(`queue ${index}: no memory table to place the ring in`);
    const parts: [string, number, number][] = [
      ['descriptor table', vring.descUserAddr, 16 * vring.size],
      ['available ring', vring.availUserAddr, 6 + 2 * vring.size],
      ['used ring', vring.usedUserAddr, 6 + 8 * vring.size],
    ];
    for (const [what, address, length] of parts) {
      if (!findUserspaceRange(this.regions, address, length)) {
        throw new SessionError(`queue ${index}: ${what} at 0x${address.toString(16)} (+${length}) is outside guest memory`);
      }
    }
  }

  async installMemory(next: MappedRegion[]): Promise<void> {
    checkNoOverlap(next);
    await this.dataPlane.setMemory(next);
    this.regions = next;
    this.log.info('memory table', {
      regions: next.length,
      bytes: next.reduce((sum, region) => sum + region.size, 0),
    });
  }

  async resetDeviceState(): Promise<void> {
    for (let index = 0; index < this.vrings.length; index++) {
      await this.stopRing(index);
      closeVringFds(this.vrings[index]!);
      this.vrings[index] = newVring();
    }
    this.ackedFeatures = 0n;
    this.status = 0;
    this.device.reset?.();
  }

  private shutdown(error?: Error): Promise<void> {
    if (!this.closing) {
      this.closing = (async () => {
        // A request still in the data plane (a ring starting or draining) finishes first:
        // resetting under it would let it start a ring after the reset, or store an fd
        // after the fds were closed. onMessage never rejects.
        await this.inFlight;
        try {
          await this.dataPlane.reset();
        } catch (resetError) {
          this.log.error('data plane reset failed', { error: resetError });
        }
        for (const vring of this.vrings) closeVringFds(vring);
        this.regions = [];
        this.backendChannel?.close();
        if (this.logFd >= 0) closeAll([this.logFd]);
        this.logFd = -1;
        this.device.reset?.();
        this.options.onClosed?.(error);
      })();
    }
    return this.closing;
  }

  // ---- requests that change session state (called from the handler table) -----------------

  setOwner(): void {
    if (this.owned) throw new SessionError('SET_OWNER: the session already has an owner');
    this.owned = true;
  }

  /**
   * Deprecated in the spec: "It is recommended that back-ends either ignore this message, or use
   * it to disable all rings"; discarding connection state "would lead to bugs". So the rings
   * and the device are reset (as RESET_DEVICE does) but negotiated protocol features stay: no
   * front-end sends SET_PROTOCOL_FEATURES again afterwards.
   */
  resetOwner(): Promise<void> {
    this.owned = false;
    return this.resetDeviceState();
  }

  setFeatures(features: bigint): void {
    const unknown = features & ~this.offeredFeatures;
    if (unknown !== 0n) {
      throw new SessionError(`SET_FEATURES acks features that were never offered: 0x${unknown.toString(16)}`);
    }
    try {
      this.device.setFeatures?.(features);
    } catch (error) {
      // The device interface says "throw to refuse": a refusal, not a broken back-end.
      throw new SessionError(`SET_FEATURES: the device refused 0x${features.toString(16)}: ${(error as Error).message}`);
    }
    this.ackedFeatures = features;
    // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start (spec: "Ring states").
    if ((features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n) {
      for (const vring of this.vrings) vring.enabled = true;
    }
  }

  setProtocolFeatures(features: bigint): void {
    const unknown = features & ~this.offeredProtocolFeatures;
    if (unknown !== 0n) {
      throw new SessionError(`SET_PROTOCOL_FEATURES acks features that were never offered: 0x${unknown.toString(16)}`);
    }
    // Honoured from now on, whether or not GET_PROTOCOL_FEATURES was ever sent: a front-end
    // restored from migration skips it.
    this.ackedProtocolFeatures = features;
  }

  getStatus(): number {
    return this.status;
  }

  setStatus(status: number): void {
    this.status = status & 0xff;
    this.device.setStatus?.(this.status);
  }

  setBackendChannel(fd: number): void {
    this.backendChannel?.close();
    this.backendChannel = new VhostUserConnection(fd, {
      // The front-end only sends replies here (to requests that asked for one); none do yet.
      onMessage: (header, _payload, fds) => {
        closeAll(fds);
        this.log.debug('backend channel message', { request: header.request, flags: header.flags });
      },
      onClose: (error) => {
        if (error) this.log.warn('backend channel closed', { error });
      },
    });
  }

  setLogFd(fd: number): void {
    if (this.logFd >= 0) closeAll([this.logFd]);
    this.logFd = fd;
  }
}

// -------------------------------------------------------------------------------------------
// Handlers. Each does one request; the table row says what must hold before it runs.

const handlers: Partial<Record<FrontendRequest['type'], HandlerSpec>> = {
  GET_FEATURES: { handle: (s) => ({ type: 'u64', value: s.offeredFeatures }) },
  SET_FEATURES: { handle: (s, r) => s.setFeatures(r.features) },
  SET_OWNER: { handle: (s) => s.setOwner() },
  RESET_OWNER: { handle: (s) => s.resetOwner() },
  GET_PROTOCOL_FEATURES: { handle: (s) => ({ type: 'u64', value: s.offeredProtocolFeatures }) },
  SET_PROTOCOL_FEATURES: { handle: (s, r) => s.setProtocolFeatures(r.features) },
  GET_QUEUE_NUM: {
    handle: (s) => ({ type: 'u64', value: BigInt(s['device'].numQueues) }),
  },
  SET_MEM_TABLE: {
    handle: async (s, r, fds) => {
      const next: MappedRegion[] = [];
      for (let i = 0; i < r.regions.length; i++) next.push(mapRegion(r.regions[i], fds.take(i)));
      await s.installMemory(next);
    },
  },
  GET_MAX_MEM_SLOTS: {
    handle: () => ({ type: 'u64', value: BigInt(MAX_MEM_SLOTS) }),
  },
  ADD_MEM_REG: {
    handle: async (s, r, fds) => {
      if (s.memoryRegions.length >= MAX_MEM_SLOTS) throw new SessionError(`ADD_MEM_REG: all ${MAX_MEM_SLOTS} memory slots are in use`);
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
      const max = Math.min(s['device'].maxQueueSize, MAX_QUEUE_SIZE);
      if (r.num === 0 || r.num > max || (r.num & (r.num - 1)) !== 0) {
        throw new SessionError(`SET_VRING_NUM: queue size ${r.num} must be a power of two between 1 and ${max}`);
      }
      vring.size = r.num;
    },
  },
  SET_VRING_ADDR: {
    handle: (s, r) => {
      const vring = s.vring(r.index);
      if (vring.running) throw new SessionError(`SET_VRING_ADDR: queue ${r.index} is running`);
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
    },
  },
  SET_VRING_BASE: {
    handle: (s, r) => {
      const vring = s.vring(r.index);
      if (vring.running) throw new SessionError(`SET_VRING_BASE: queue ${r.index} is running`);
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
      return { type: 'vring-state', index: r.index, num: lastAvailIdx };
    },
  },
  SET_VRING_KICK: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const fd = r.noFd ? -1 : fds.take(0);
      if (vring.running) {
        // A new kick fd for a running ring: restart it with the new fd.
        await s.stopRing(r.index);
      }
      if (vring.kickFd >= 0) closeAll([vring.kickFd]);
      vring.kickFd = fd;
      vring.kicked = true;
      if ((s.features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) === 0n) vring.enabled = true;
      await s.maybeStart(r.index);
    },
  },
  SET_VRING_CALL: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const previous = vring.callFd;
      vring.callFd = r.noFd ? -1 : fds.take(0);
      if (vring.running) await s['dataPlane'].setNotifyFds(r.index, vring.callFd, vring.errFd);
      if (previous >= 0) closeAll([previous]);
      // As libvhost-user does ("in case of I/O hang after reconnecting"): one signal on every new
      // call fd, so an interrupt lost while the front-end swapped fds or reconnected cannot leave
      // the guest waiting. Not only for a running ring: QEMU installs the call fd the guest
      // waits on before it starts the ring (set_guest_notifiers precedes vhost_dev_start), and
      // QEMU's idx qtest waits for exactly that interrupt. A spurious one costs a driver one look
      // at the used ring. Control path only: once per SET_VRING_CALL.
      if (vring.callFd >= 0) signalCall(s, r.index, vring.callFd);
    },
  },
  SET_VRING_ERR: {
    handle: async (s, r, fds) => {
      const vring = s.vring(r.index);
      const previous = vring.errFd;
      vring.errFd = r.noFd ? -1 : fds.take(0);
      if (vring.running) await s['dataPlane'].setNotifyFds(r.index, vring.callFd, vring.errFd);
      if (previous >= 0) closeAll([previous]);
    },
  },
  SET_VRING_ENABLE: {
    handle: async (s, r) => {
      const vring = s.vring(r.index);
      if (r.num > 1) throw new SessionError(`SET_VRING_ENABLE: ${r.num} is neither 0 nor 1`);
      vring.enabled = r.num === 1;
      if (vring.enabled) await s.maybeStart(r.index);
      else if (vring.running) {
        // Disabled but still started: stop processing, keep the ring's fds and position.
        await s.stopRing(r.index);
        vring.kicked = true;
      }
    },
  },
  GET_CONFIG: {
    handle: (s, r) => {
      const device = s['device'];
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
      const device = s['device'];
      if (!device.setConfig) throw new SessionError('SET_CONFIG: the device config space is read-only');
      try {
        device.setConfig(r.offset, r.payload, r.flags);
      } catch (error) {
        throw new SessionError(`SET_CONFIG: ${(error as Error).message}`);
      }
    },
  },
  SET_STATUS: { handle: (s, r) => s.setStatus(Number(r.status & 0xffn)) },
  GET_STATUS: { handle: (s) => ({ type: 'u64', value: BigInt(s.getStatus()) }) },
  SET_BACKEND_REQ_FD: {
    handle: (s, _r, fds) => s.setBackendChannel(fds.take(0)),
  },
  RESET_DEVICE: { handle: (s) => s.resetDeviceState() },
  SET_LOG_BASE: {
    handle: () => {
      throw new SessionError('SET_LOG_BASE: dirty-page logging is not implemented by this back-end');
    },
  },
  SET_LOG_FD: {
    handle: (s, _r, fds) => s.setLogFd(fds.take(0)),
    needsProtocolFeature: ProtocolFeature.LOG_SHMFD,
  },
};

/**
 * Requests whose u64 reply is a status (0 success, non-zero failure), per their spec entries:
 * IOTLB_MSG ("zero ... for success, non-zero otherwise"), POSTCOPY_END and CHECK_DEVICE_STATE
 * ("0 is success"), and SET_LOG_BASE (an acknowledgement). The other u64 replies are values
 * (GET_FEATURES, GET_QUEUE_NUM, GET_STATUS, ...): REPLY_ACK's "non-zero on failure" does not
 * apply to them ("unless the message already has an explicit reply body"), and a 1 would read
 * as a feature set, a queue count or a device status.
 */
const U64_STATUS_REPLIES: ReadonlySet<number> = new Set([
  Request.SET_LOG_BASE,
  Request.IOTLB_MSG,
  Request.POSTCOPY_END,
  Request.CHECK_DEVICE_STATE,
]);

/**
 * The failure form of a request that always replies, where the protocol defines one: a non-zero
 * u64 status, GET_CONFIG's empty payload ("uses zero length of payload to indicate an error"),
 * a device-state refusal, or a shared object without an fd. Values (features, counts, status),
 * fds and mappings have no failure form.
 */
function failureReply(spec: RequestSpec): BackendReply | undefined {
  switch (spec.reply) {
    case 'u64':
      return U64_STATUS_REPLIES.has(spec.id) ? { type: 'u64', value: 1n } : undefined;
    case 'config':
      return { type: 'config-error' };
    case 'device-state':
      return { type: 'device-state', status: 1, fd: -1 };
    case 'shared-object':
      return { type: 'shared-object', fd: -1 };
    default:
      return undefined;
  }
}

/** Writes the call eventfd; a failure (not an eventfd, counter full) is the front-end's problem, not ours. */
function signalCall(session: VhostUserSession, index: number, callFd: number): void {
  try {
    native.eventfdWrite(callFd, 1);
  } catch (error) {
    session['log'].warn('cannot signal the new call fd', { queue: index, error });
  }
}

function newVring(): VringState {
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
  };
}

function closeVringFds(vring: VringState): void {
  closeAll([vring.kickFd, vring.callFd, vring.errFd].filter((fd) => fd >= 0));
  vring.kickFd = vring.callFd = vring.errFd = -1;
}

function toAddress(value: bigint): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) throw new SessionError(`ring address 0x${value.toString(16)} is out of range`);
  return Number(value);
}

