// One front-end connection: the vhost-user state machine of the back-end side.
//
// Every request goes through the same path, readable top to bottom:
//   codec (bytes + fds → typed request, validated) → handler table (handlers.ts: one function
//   per request, with per-request properties checked first) → reply policy (always-reply
//   requests answer once; others answer NEED_REPLY with an ack when REPLY_ACK was acked).
// The session holds the state (SessionState, which handlers see as a SessionContext) and runs
// that path; the table holds the behaviour. Fds that arrive with a request belong to the
// session; whatever a handler does not keep is closed when the request is done, including on
// errors.
import { createLogger, type Logger } from '../log.js';
import { native } from '../native.js';
import type { DataPlane, VhostUserDevice, VringConfig } from './backend.js';
import {
  decodeRequest,
  type RequestSpec,
  encodeBackendRequest,
  encodeReply,
  requestSpecs,
  type BackendReply,
  type MessageHeader,
} from './codec/index.js';
import { HangUpError, VhostUserConnection, closeAll, type ConnectionEvents, type ConnectionLimits } from './connection.js';
import { DaemonError, MemoryTableError, SessionError, VhostUserError } from './errors.js';
import {
  newVring,
  requestHandler,
  type RequestFds,
  type RingAddresses,
  type SessionContext,
  type VringState,
} from './handlers.js';
import { checkNoOverlap, findUserspaceRange, mapDirtyLog, type MappedRegion } from './memory-table.js';
import { createInflightFd, inflightSlice, type InflightRegion } from './inflight-region.js';
import {
  HeaderFlag,
  ProtocolFeature,
  Request,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_RING_PACKED,
  bit,
  hasFeature,
} from './protocol.js';
import { requiredLogBytes, type DirtyLogArea } from '../dataplane/dirty-log.js';

export { SessionError };

/** Protocol features the library implements for every device. */
const LIBRARY_PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.BACKEND_REQ) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS) |
  bit(ProtocolFeature.RESET_DEVICE) |
  bit(ProtocolFeature.STATUS);

/** The fds of one request; a handler takes the ones it keeps, the rest are closed afterwards. */
class RequestFdList implements RequestFds {
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

/**
 * Replies one front-end may leave unread before the session stops reading its requests. A
 * front-end that waits for each reply never has more than one queued (the largest is a few
 * KiB); a front-end that never reads costs this much plus the kernel's socket buffers.
 */
export const DEFAULT_MAX_QUEUED_REPLY_BYTES = 64 << 10;
/** How long a request that started arriving may take to finish. */
export const DEFAULT_PARTIAL_MESSAGE_TIMEOUT_MS = 5000;
/**
 * How long a front-end may stay silent after connecting. QEMU, DPDK and the front-end library
 * send GET_FEATURES at once; a front-end that sends nothing only holds the ones waiting behind it.
 */
export const DEFAULT_FIRST_MESSAGE_TIMEOUT_MS = 10_000;

/** What the session needs of its connection (a VhostUserConnection, or an in-process stand-in). */
export type SessionTransport = Pick<VhostUserConnection, 'send' | 'close' | 'isClosed' | 'queuedBytes'>;

export interface SessionOptions {
  logger?: Logger;
  /**
   * Builds the connection instead of a VhostUserConnection on the fd (which is then unused): the
   * in-process fuzzer (src/fuzz) feeds messages through a stand-in, at millions per minute.
   */
  transport?: (events: ConnectionEvents, limits: ConnectionLimits) => SessionTransport;
  onClosed?: (error?: Error) => void;
  /** Stop reading requests while this many reply bytes wait unread (default 64 KiB). */
  maxQueuedReplyBytes?: number;
  /** Drop a front-end that sends part of a message and stops for this long (default 5000 ms). */
  partialMessageTimeoutMs?: number;
  /** Drop a front-end whose first message is not complete this long after it connected (default 10000 ms). */
  firstMessageTimeoutMs?: number;
  /**
   * Refuse memory regions whose fd is not sealed against shrinking (F_SEAL_SHRINK). Without
   * the seal such regions are accepted with a warning: a front-end that truncates the file
   * afterwards makes the daemon die of SIGBUS on the next touch of a vanished page.
   */
  requireSealedMemory?: boolean;
  /**
   * Give up on a queue drain (GET_VRING_BASE waiting for in-flight requests) after this long:
   * the front-end is disconnected, as if the back-end had gone, and its in-flight requests are
   * abandoned. Default: wait as long as it takes, which the spec needs for correctness.
   */
  drainTimeoutMs?: number;
}

/** A drain that outlived drainTimeoutMs (code VU_ERR_DAEMON): not a refusal, the connection is dropped. */
export class DrainTimeoutError extends DaemonError {}

export class VhostUserSession {
  private readonly log: Logger;
  private readonly connection: SessionTransport;
  private readonly state: SessionState;
  private closing: Promise<void> | undefined;
  /** The request being handled (the connection hands over one at a time), if any. */
  private inFlight: Promise<void> | undefined;
  /** Its name while it is being handled, for the log when the front-end leaves meanwhile. */
  private inFlightName: string | undefined;

  constructor(
    fd: number,
    device: VhostUserDevice,
    dataPlane: DataPlane,
    private readonly options: SessionOptions = {},
  ) {
    this.log = options.logger ?? createLogger('session');
    this.state = new SessionState(device, dataPlane, this.log, options);
    const events: ConnectionEvents = {
      onMessage: (header, payload, fds) => {
        const handling = this.onMessage(header, payload, fds);
        this.inFlight = handling;
        return handling;
      },
      onClose: (error) => void this.shutdown(error),
    };
    const limits: ConnectionLimits = {
      maxQueuedBytes: options.maxQueuedReplyBytes ?? DEFAULT_MAX_QUEUED_REPLY_BYTES,
      partialMessageTimeoutMs: options.partialMessageTimeoutMs ?? DEFAULT_PARTIAL_MESSAGE_TIMEOUT_MS,
      firstMessageTimeoutMs: options.firstMessageTimeoutMs ?? DEFAULT_FIRST_MESSAGE_TIMEOUT_MS,
    };
    this.connection = options.transport ? options.transport(events, limits) : new VhostUserConnection(fd, events, limits);
  }

  /** Reply bytes queued for a front-end that has not read them yet. */
  get queuedReplyBytes(): number {
    return this.connection.queuedBytes;
  }

  /** Virtio features this back-end offers: the device's plus the vhost-user bit. */
  get offeredFeatures(): bigint {
    return this.state.offeredFeatures;
  }

  get offeredProtocolFeatures(): bigint {
    return this.state.offeredProtocolFeatures;
  }

  get features(): bigint {
    return this.state.features;
  }

  get protocolFeatures(): bigint {
    return this.state.protocolFeatures;
  }

  get memoryRegions(): readonly MappedRegion[] {
    return this.state.memoryRegions;
  }

  /** Tell the front-end the config space changed (BACKEND_REQ channel, CONFIG_CHANGE_MSG). */
  notifyConfigChange(): boolean {
    return this.state.notifyConfigChange();
  }

  /** Disconnect and release everything. Resolves when the data plane has let go. */
  close(): Promise<void> {
    this.connection.close();
    return this.shutdown();
  }

  private async onMessage(header: MessageHeader, payload: Uint8Array, rawFds: number[]): Promise<void> {
    const fds = new RequestFdList(rawFds);
    const spec = requestSpecs.get(header.request);
    const name = spec?.name ?? `request ${header.request}`;
    const needReply = (header.flags & HeaderFlag.NEED_REPLY) !== 0;
    // REPLY_ACK as it was before this request: a SET_PROTOCOL_FEATURES that clears it is still
    // acked, or a front-end waiting for that ack would hang (QEMU's storage daemon acks it too).
    const replyAckBefore = this.state.hasProtocolFeature(ProtocolFeature.REPLY_ACK);
    try {
      // A malformed request throws a ProtocolError, a refusal: answered like any other.
      const request = decodeRequest(header, payload, rawFds);
      const row = requestHandler(request.type);
      if (!row) throw new SessionError(`${name} is not supported by this back-end`);
      const feature = row.needsProtocolFeature ?? spec?.protocolFeature;
      if (feature !== undefined && !this.state.hasProtocolFeature(feature)) {
        const offered = hasFeature(this.state.offeredProtocolFeatures, feature);
        throw new SessionError(
          offered
            ? `${name} needs protocol feature ${feature}, which was not negotiated`
            : `${name} is not supported by this back-end (it needs protocol feature ${feature}, which is not offered)`,
        );
      }
      this.log.debug('request', { request: name, flags: header.flags, fds: rawFds.length });
      this.inFlightName = name;
      const reply = await row.handle(this.state, request, fds);
      if (this.connection.isClosed) return;
      if (spec?.replies === 'always') {
        if (reply === undefined) throw new Error(`handler for ${name} produced no reply`);
        const encoded = encodeReply(header.request, reply);
        this.connection.send(encoded.bytes, encoded.fds);
      } else if (this.ackExpected(needReply, replyAckBefore)) {
        this.sendAck(header.request, 0n);
      }
    } catch (error) {
      this.answerFailure(header, name, this.ackExpected(needReply, replyAckBefore), spec, error);
    } finally {
      this.inFlightName = undefined;
      fds.closeRest();
    }
  }

  /** NEED_REPLY is answered when REPLY_ACK was acked before the request or is acked after it. */
  private ackExpected(needReply: boolean, replyAckBefore: boolean): boolean {
    return needReply && (replyAckBefore || this.state.hasProtocolFeature(ProtocolFeature.REPLY_ACK));
  }

  /**
   * A refused request: logged, then answered the way the front-end expects. Requests that always
   * reply get their failure form (e.g. an empty GET_CONFIG payload); if there is none the
   * connection is dropped, because a front-end waiting for a reply would otherwise hang.
   * Anything that is not a refusal is a broken back-end: the connection is dropped.
   */
  private answerFailure(
    header: MessageHeader,
    name: string,
    ackExpected: boolean,
    spec: RequestSpec | undefined,
    error: unknown,
  ): void {
    if (!(error instanceof VhostUserError && error.refusal)) {
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
    } else if (ackExpected) {
      this.sendAck(header.request, 1n);
    }
  }

  private sendAck(request: number, value: bigint): void {
    const encoded = encodeReply(request, { type: 'u64', value });
    this.connection.send(encoded.bytes, encoded.fds);
  }

  private shutdown(error?: Error): Promise<void> {
    if (!this.closing) {
      if (this.inFlightName !== undefined && error instanceof HangUpError) {
        // Typically a drain (GET_VRING_BASE) waiting for in-flight requests: the socket is
        // closed now, the request runs to its end, then everything is released.
        this.log.warn('front-end left while a request was in progress; resetting once it finishes', {
          request: this.inFlightName,
          error,
        });
      }
      this.closing = (async () => {
        // A request still in the data plane (a ring starting or draining) finishes first:
        // resetting under it would let it start a ring after the reset, or store an fd
        // after the fds were closed. onMessage never rejects.
        await this.inFlight;
        await this.state.release();
        this.options.onClosed?.(error);
      })();
    }
    return this.closing;
  }
}

/**
 * The state of one connection, and what the handler table may do with it (SessionContext).
 * Not exported: the session's public surface is VhostUserSession.
 */
class SessionState implements SessionContext {
  private owned = false;
  private ackedFeatures = 0n;
  private ackedProtocolFeatures = 0n;
  private statusByte = 0;
  private regions: MappedRegion[] = [];
  private readonly vrings: VringState[];
  private backendChannel: VhostUserConnection | undefined;
  private logFd = -1;
  /** The in-flight region (SET_INFLIGHT_FD), if the front-end shares one. */
  private inflight: InflightRegion | undefined;
  /** A drain outlived drainTimeoutMs: release() abandons rather than waits for the device. */
  private drainTimedOut = false;
  /** Our copy of the fd the last GET_INFLIGHT_FD reply carried, until SET_INFLIGHT_FD. */
  private createdInflightFd = -1;
  /** The dirty log of the last SET_LOG_BASE, and the one the data plane marks (null: not logging). */
  private logArea: DirtyLogArea | null = null;
  private activeLog: DirtyLogArea | null = null;

  constructor(
    readonly device: VhostUserDevice,
    private readonly dataPlane: DataPlane,
    private readonly log: Logger,
    private readonly policy: Pick<SessionOptions, 'requireSealedMemory' | 'drainTimeoutMs'>,
  ) {
    this.vrings = Array.from({ length: device.numQueues }, () => newVring());
  }

  /** Dirty-page logging is the library's, for every device, when the data plane can do it. */
  private get canLog(): boolean {
    return typeof this.dataPlane.setDirtyLog === 'function';
  }

  get offeredFeatures(): bigint {
    const log = this.canLog ? bit(VHOST_F_LOG_ALL) : 0n;
    return this.device.features | bit(VHOST_USER_F_PROTOCOL_FEATURES) | log;
  }

  get offeredProtocolFeatures(): bigint {
    let features = LIBRARY_PROTOCOL_FEATURES | (this.device.protocolFeatures ?? 0n);
    if (this.device.getConfig) features |= bit(ProtocolFeature.CONFIG);
    if (this.canLog) features |= bit(ProtocolFeature.LOG_SHMFD);
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

  get status(): number {
    return this.statusByte;
  }

  hasProtocolFeature(feature: number): boolean {
    return hasFeature(this.ackedProtocolFeatures, feature);
  }

  notifyConfigChange(): boolean {
    // The spec ties CONFIG_CHANGE_MSG to the CONFIG protocol feature (back-end message types).
    if (!this.hasProtocolFeature(ProtocolFeature.CONFIG)) return false;
    if (!this.backendChannel || this.backendChannel.isClosed) return false;
    const message = encodeBackendRequest({ type: 'CONFIG_CHANGE_MSG' }, false);
    return this.backendChannel.send(message.bytes, message.fds);
  }

  // ---- rings ----------------------------------------------------------------------------------

  vring(index: number): VringState {
    const vring = this.vrings[index];
    if (vring === undefined) {
      throw new SessionError(`queue index ${index} out of range (device has ${this.vrings.length} queues)`);
    }
    return vring;
  }

  async startRingIfReady(index: number): Promise<void> {
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
      logGuestAddr: vring.logGuestAddr,
    };
    if (this.inflight && this.hasProtocolFeature(ProtocolFeature.INFLIGHT_SHMFD)) {
      const slice = inflightSlice(this.inflight, index);
      if (!slice) {
        this.log.warn('queue has no part in the in-flight region; running it untracked', {
          queue: index,
          regionQueues: this.inflight.numQueues,
        });
      } else if (vring.size > this.inflight.queueSize) {
        throw new SessionError(
          `queue ${index}: ring size ${vring.size} exceeds the in-flight region's queue_size ${this.inflight.queueSize}`,
        );
      } else {
        config.inflight = slice;
      }
    }
    await this.dataPlane.startQueue(config);
    vring.running = true;
    this.log.info('queue started', { queue: index, size: vring.size, kick: vring.kickFd >= 0 ? 'eventfd' : 'poll' });
  }

  async stopRing(index: number): Promise<number> {
    const vring = this.vring(index);
    if (vring.running) {
      const timeoutMs = this.policy.drainTimeoutMs;
      const stopped = await within(this.dataPlane.stopQueue(index), timeoutMs);
      if (stopped === TIMED_OUT) {
        // The ring stays marked running: release() abandons it in the data plane.
        this.drainTimedOut = true;
        throw new DrainTimeoutError(
          `queue ${index}: in-flight requests did not finish within the drain timeout (${timeoutMs} ms); ` +
            'disconnecting the front-end and abandoning them',
        );
      }
      vring.lastAvailIdx = stopped;
      vring.running = false;
      this.log.info('queue stopped', { queue: index, lastAvailIdx: vring.lastAvailIdx });
    }
    vring.kicked = false;
    return vring.lastAvailIdx;
  }

  checkRingAddresses(index: number, ring: RingAddresses): void {
    if (this.regions.length === 0) throw new SessionError(`queue ${index}: no memory table to place the ring in`);
    const parts: [string, number, number][] = hasFeature(this.ackedFeatures, VIRTIO_F_RING_PACKED)
      ? [
          ['descriptor ring', ring.descUserAddr, 16 * ring.size],
          ['driver event area', ring.availUserAddr, 4],
          ['device event area', ring.usedUserAddr, 4],
        ]
      : [
          ['descriptor table', ring.descUserAddr, 16 * ring.size],
          ['available ring', ring.availUserAddr, 6 + 2 * ring.size],
          ['used ring', ring.usedUserAddr, 6 + 8 * ring.size],
        ];
    for (const [what, address, length] of parts) {
      if (!findUserspaceRange(this.regions, address, length)) {
        throw new SessionError(`queue ${index}: ${what} at 0x${address.toString(16)} (+${length}) is outside guest memory`);
      }
    }
  }

  async updateNotifyFds(index: number): Promise<void> {
    const vring = this.vring(index);
    if (vring.running) await this.dataPlane.setNotifyFds(index, vring.callFd, vring.errFd);
  }

  signalCall(index: number): void {
    const callFd = this.vring(index).callFd;
    if (callFd < 0) return;
    try {
      native.eventfdWrite(callFd, 1);
    } catch (error) {
      // Not an eventfd, or its counter is full: the front-end's problem, not a reason to fail.
      this.log.warn('cannot signal the new call fd', { queue: index, error });
    }
  }

  // ---- memory ---------------------------------------------------------------------------------

  async installMemory(next: MappedRegion[]): Promise<void> {
    checkNoOverlap(next);
    // While logging, a table the log cannot cover would lose dirty pages (QEMU grows the log first).
    if (this.activeLog !== null) this.checkLogCovers(this.activeLog, next, 'SET_MEM_TABLE');
    // Only the regions this request adds: REM_MEM_REG or a repeated table does not warn again.
    const unsealed = next.filter((region) => !region.sealedAgainstShrink && !this.regions.includes(region));
    if (unsealed.length > 0) {
      const where = unsealed.map((region) => `0x${region.guestPhysAddr.toString(16)}`).join(', ');
      if (this.policy.requireSealedMemory) {
        throw new MemoryTableError(
          `${unsealed.length} memory region(s) at guest address ${where} not sealed against shrinking (F_SEAL_SHRINK), ` +
            'and sealed memory is required',
        );
      }
      this.log.warn('memory regions not sealed against shrinking: a front-end that truncates them kills the daemon (SIGBUS)', {
        regions: unsealed.length,
        guestPhysAddr: where,
      });
    }
    await this.dataPlane.setMemory(next);
    this.regions = next;
    this.log.info('memory table', {
      regions: next.length,
      bytes: next.reduce((sum, region) => sum + region.size, 0),
    });
  }

  // ---- dirty log (live migration) -------------------------------------------------------------

  async setLogBase(mmapSize: bigint, mmapOffset: bigint, fd: number): Promise<void> {
    const area = mapDirtyLog(mmapSize, mmapOffset, fd);
    this.checkLogCovers(area, this.regions, 'SET_LOG_BASE');
    this.logArea = area;
    this.log.info('dirty log mapped', { bytes: area.size, coversGuestBytes: area.size * 8 * 4096 });
    await this.updateDirtyLog();
  }

  checkFeaturesLoggable(features: bigint): void {
    if (hasFeature(features, VHOST_F_LOG_ALL) && this.logArea !== null) {
      this.checkLogCovers(this.logArea, this.regions, 'SET_FEATURES with VHOST_F_LOG_ALL');
    }
  }

  async updateDirtyLog(): Promise<void> {
    const want = hasFeature(this.ackedFeatures, VHOST_F_LOG_ALL) ? this.logArea : null;
    if (want === this.activeLog) return;
    await this.dataPlane.setDirtyLog?.(want);
    this.activeLog = want;
    this.log.info(want ? 'dirty logging started' : 'dirty logging stopped');
  }

  async updateRingLog(index: number): Promise<void> {
    const vring = this.vring(index);
    if (vring.running) await this.dataPlane.setRingLog?.(index, vring.logGuestAddr);
  }

  /** A log that cannot cover the memory table would drop marks: refused with what it lacks. */
  private checkLogCovers(area: DirtyLogArea, regions: readonly MappedRegion[], what: string): void {
    const end = regions.reduce((max, region) => Math.max(max, region.guestPhysAddr + region.size), 0);
    const needed = requiredLogBytes(end);
    if (area.size < needed) {
      throw new SessionError(
        `${what}: the dirty log has ${area.size} bytes but guest memory up to 0x${end.toString(16)} needs ${needed} ` +
          '(one bit per 4 KiB page)',
      );
    }
  }

  // ---- ownership, features, status ------------------------------------------------------------

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
    return this.resetDevice();
  }

  async resetDevice(): Promise<void> {
    for (let index = 0; index < this.vrings.length; index++) {
      await this.stopRing(index);
      closeVringFds(this.vrings[index]);
      this.vrings[index] = newVring();
    }
    this.ackedFeatures = 0n;
    this.statusByte = 0;
    // A reset device starts over: QEMU asks for a new region (GET_INFLIGHT_FD) after one.
    this.inflight = undefined;
    await this.updateDirtyLog();
    this.device.reset?.();
  }

  acceptFeatures(features: bigint): void {
    try {
      this.device.setFeatures?.(features);
    } catch (error) {
      // The device interface says "throw to refuse": a refusal, not a broken back-end.
      throw new SessionError(`SET_FEATURES: the device refused 0x${features.toString(16)}: ${(error as Error).message}`);
    }
    this.ackedFeatures = features;
    // Without VHOST_USER_F_PROTOCOL_FEATURES rings are enabled from the start (spec: "Ring states").
    if (!hasFeature(features, VHOST_USER_F_PROTOCOL_FEATURES)) {
      for (const vring of this.vrings) vring.enabled = true;
    }
  }

  acceptProtocolFeatures(features: bigint): void {
    this.ackedProtocolFeatures = features;
  }

  setStatus(status: number): void {
    this.statusByte = status & 0xff;
    this.device.setStatus?.(this.statusByte);
  }

  // ---- side channels --------------------------------------------------------------------------

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

  newInflightFd(numQueues: number, queueSize: number): { fd: number; mmapSize: number } {
    this.closeCreatedInflightFd();
    let created: { fd: number; mmapSize: number };
    try {
      created = createInflightFd(numQueues, queueSize);
    } catch (error) {
      throw new SessionError(`GET_INFLIGHT_FD: cannot create the region: ${(error as Error).message}`);
    }
    this.createdInflightFd = created.fd;
    return created;
  }

  installInflight(region: InflightRegion | undefined): void {
    const running = this.vrings.findIndex((vring) => vring.running);
    if (running >= 0) throw new SessionError(`SET_INFLIGHT_FD: queue ${running} is running; stop the rings first`);
    if (region && !region.sealedAgainstShrink) {
      if (this.policy.requireSealedMemory) {
        throw new MemoryTableError(
          'SET_INFLIGHT_FD: the region is not sealed against shrinking (F_SEAL_SHRINK), and sealed memory is required',
        );
      }
      this.log.warn('in-flight region not sealed against shrinking: a front-end that truncates it kills the daemon (SIGBUS)');
    }
    // The front-end has the fd we created (it is sending it back): our copy is done with.
    this.closeCreatedInflightFd();
    this.inflight = region;
    if (region) this.log.info('in-flight region', { queues: region.numQueues, queueSize: region.queueSize });
  }

  private closeCreatedInflightFd(): void {
    if (this.createdInflightFd >= 0) closeAll([this.createdInflightFd]);
    this.createdInflightFd = -1;
  }

  setLogFd(fd: number): void {
    if (this.logFd >= 0) closeAll([this.logFd]);
    this.logFd = fd;
  }

  /**
   * Stops every ring. With drainTimeoutMs, a hung device costs the next front-end nothing: after
   * a drain that timed out, or a reset that outlives the same bound, the data plane abandons the
   * rings (it drops the device's late completions, so none can land in memory that is no longer
   * the guest's). A data plane that cannot abandon is waited for, however long that takes.
   */
  private async resetDataPlane(): Promise<void> {
    const dataPlane = this.dataPlane;
    if (dataPlane.abandon === undefined) return dataPlane.reset();
    if (this.drainTimedOut) {
      this.drainTimedOut = false;
      this.log.warn('abandoning the rings of a drain that timed out');
      return dataPlane.abandon();
    }
    const reset = dataPlane.reset();
    const timeoutMs = this.policy.drainTimeoutMs;
    if ((await within(reset, timeoutMs)) !== TIMED_OUT) return;
    this.log.warn('data plane reset outlived the drain timeout; abandoning its rings', { timeoutMs });
    await dataPlane.abandon();
    await reset;
  }

  /** The connection is gone: stop the data plane and let go of every fd and mapping. */
  async release(): Promise<void> {
    try {
      await this.resetDataPlane();
    } catch (resetError) {
      this.log.error('data plane reset failed', { error: resetError });
    }
    for (const vring of this.vrings) closeVringFds(vring);
    this.regions = [];
    this.logArea = this.activeLog = null;
    this.backendChannel?.close();
    if (this.logFd >= 0) closeAll([this.logFd]);
    this.logFd = -1;
    this.inflight = undefined;
    this.closeCreatedInflightFd();
    this.device.reset?.();
  }
}

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

const TIMED_OUT = Symbol('timed out');

/** The promise's value, or TIMED_OUT after timeoutMs (undefined: no bound). */
async function within<T>(promise: Promise<T>, timeoutMs: number | undefined): Promise<T | typeof TIMED_OUT> {
  if (timeoutMs === undefined) return promise;
  let timer: NodeJS.Timeout | undefined;
  const expiry = new Promise<typeof TIMED_OUT>((resolve) => (timer = setTimeout(() => resolve(TIMED_OUT), timeoutMs)));
  try {
    return await Promise.race([promise, expiry]);
  } finally {
    clearTimeout(timer);
  }
}

function closeVringFds(vring: VringState): void {
  closeAll([vring.kickFd, vring.callFd, vring.errFd].filter((fd) => fd >= 0));
  vring.kickFd = vring.callFd = vring.errFd = -1;
}
