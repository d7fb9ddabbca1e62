// A whole front-end in a few calls: connect, negotiate the way QEMU does, share guest memory,
// set up split (or, asked for, packed) virtqueues with kick/call eventfds, and later stop them. Tests, the benchmark
// tool and fuzzers drive back-ends through this without a VM.
import { native } from '../native.js';
import type { Logger } from '../log.js';
import {
  MAX_MEMORY_REGIONS,
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  bit,
  hasFeature,
} from '../control/protocol.js';
import { VhostUserClient, FrontendError } from './client.js';
import { FrontendMemory, type RegionSpec } from './memory.js';
import { featureHex, protocolFeaturesToAck, virtioFeaturesToAck } from './features.js';
import { indirectTablesBytes, splitRingLayout, type VringDriver } from './vring-driver.js';
import { packedRingLayout } from './packed-vring-driver.js';
import { createRingDriver, type RingDriver } from './ring-driver.js';

export interface FrontendDeviceOptions {
  socketPath: string;
  /** Guest memory: a FrontendMemory to share, or region specs (default: one 64 MiB region). */
  memory?: FrontendMemory | readonly RegionSpec[];
  /**
   * Device-type feature bits (0–23, 50–63) the caller's driver understands, acked when offered
   * beside the transport features the library implements (FRONTEND_VIRTIO_FEATURES). Default: none.
   */
  deviceFeatures?: bigint;
  /**
   * Ask for exactly offer ∩ wantedFeatures instead, implemented or not (e.g. RING_PACKED for a
   * hostile test): the caller then answers for what the back-end does with them.
   */
  wantedFeatures?: bigint;
  /** Protocol features: offer ∩ this (default FRONTEND_PROTOCOL_FEATURES, what the library implements). */
  wantedProtocolFeatures?: bigint;
  /**
   * Drive packed virtqueues (VIRTIO_F_RING_PACKED): acked beside the other features; connecting
   * fails if the back-end does not offer it (QEMU would fall back to split rings silently).
   */
  packed?: boolean;
  /** Queues to set up (default 1; capped by GET_QUEUE_NUM). */
  queues?: number;
  queueSize?: number;
  /** Indirect tables per head, 0 for none (default: 0). Needs INDIRECT_DESC. */
  indirectEntries?: number;
  /** Ask the back-end to poll instead of giving it a kick eventfd (bit 8 of SET_VRING_KICK). */
  noKickFd?: boolean;
  connectTimeoutMs?: number;
  /** Give up on any reply after this long (closes the connection); default: wait forever. */
  replyTimeoutMs?: number;
  logger?: Logger;
  /**
   * In-flight tracking (PROTOCOL_F_INFLIGHT_SHMFD), acked when the back-end offers it: the
   * device asks for the region once (GET_INFLIGHT_FD) and hands it back at every connect and
   * reconnect() (SET_INFLIGHT_FD), as QEMU does, so a restarted back-end resubmits exactly what
   * was in flight. Default false.
   */
  inflight?: boolean;
}

/** The in-flight region a front-end keeps across back-end restarts (until it closes). */
export interface FrontendInflight {
  fd: number;
  mmapSize: bigint;
  mmapOffset: bigint;
  numQueues: number;
  queueSize: number;
}

export class FrontendQueue {
  constructor(
    readonly index: number,
    readonly driver: RingDriver,
    /** Our end of the kick eventfd (-1 when the back-end polls). */
    readonly kickFd: number,
    /** The call eventfd the back-end signals. */
    readonly callFd: number,
    readonly descAddr: number,
    readonly availAddr: number,
    readonly usedAddr: number,
    /** Indirect tables of this queue's driver, if any. */
    readonly indirect?: { tableAddr: number; maxEntries: number },
    /** A packed ring: descAddr is its descriptor ring, avail/usedAddr its driver/device event areas. */
    readonly packed = false,
  ) {}

  /** Publish posted chains and kick the back-end if the ring asks for it (EVENT_IDX aware). */
  publishAndKick(): boolean {
    this.driver.publish();
    if (this.kickFd >= 0 && this.driver.needsKick()) {
      native.eventfdWrite(this.kickFd, 1);
      return true;
    }
    return false;
  }

  /** Consume call notifications; returns how many were pending. */
  readCalls(): number {
    return native.eventfdRead(this.callFd);
  }
}

export class FrontendDevice {
  private closed = false;
  private currentClient: VhostUserClient;
  /** The in-flight region, once the back-end gave one (kept across reconnects). */
  inflight: FrontendInflight | undefined;

  private constructor(
    client: VhostUserClient,
    readonly memory: FrontendMemory,
    private readonly ownsMemory: boolean,
    readonly offeredFeatures: bigint,
    readonly features: bigint,
    readonly offeredProtocolFeatures: bigint,
    readonly protocolFeatures: bigint,
    readonly backendQueues: number,
    readonly queues: FrontendQueue[],
    private readonly options: FrontendDeviceOptions,
  ) {
    this.currentClient = client;
  }

  /** The connection to the back-end (a new one after reconnect()). */
  get client(): VhostUserClient {
    return this.currentClient;
  }

  /**
   * After the back-end went away (killed, restarted): connect again and resume the rings where
   * the guest left them, as QEMU does with `reconnect=`: the same negotiation (the back-end must
   * offer the same features), SET_INFLIGHT_FD with the region kept from the first connect, the
   * memory table, and per ring SET_VRING_BASE = used->idx (split rings), the same addresses and
   * the same kick and call eventfds. With in-flight tracking the back-end resubmits what was in
   * flight; without it, requests completed out of order run again and others are lost.
   */
  async reconnect(options: { connectTimeoutMs?: number } = {}): Promise<void> {
    if (this.closed) throw new FrontendError('reconnect: the device is closed');
    this.currentClient.close();
    const client = await VhostUserClient.connect(this.options.socketPath, {
      timeoutMs: options.connectTimeoutMs ?? this.options.connectTimeoutMs ?? 0,
      replyTimeoutMs: this.options.replyTimeoutMs,
      logger: this.options.logger,
    });
    this.currentClient = client;
    try {
      const offered = await client.getFeatures();
      if (offered !== this.offeredFeatures) {
        throw new FrontendError(
          `reconnect: the back-end now offers features ${featureHex(offered)}, not ${featureHex(this.offeredFeatures)}`,
        );
      }
      if (offered & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
        const offeredProtocol = await client.getProtocolFeatures();
        if ((offeredProtocol & this.protocolFeatures) !== this.protocolFeatures) {
          throw new FrontendError(
            `reconnect: the back-end no longer offers protocol features ${featureHex(this.protocolFeatures)}`,
          );
        }
        await client.setProtocolFeatures(this.protocolFeatures);
      }
      if (this.protocolFeatures & bit(ProtocolFeature.MQ)) await client.getU64('GET_QUEUE_NUM');
      await client.request({ type: 'SET_OWNER' });
      await client.setFeatures(this.features);
      await shareInflight(this, this.protocolFeatures, this.queues.length, this.queues[0]?.driver.size ?? 0);
      await sendMemoryTable(client, this.memory, this.protocolFeatures);
      for (const queue of this.queues) {
        // Split rings resume at used->idx as QEMU does. Packed rings would need the packed in-flight
        // layout, which is not built: refused rather than resumed at a guessed position.
        if (queue.packed) throw new FrontendError('reconnect: packed rings cannot be resumed (no packed in-flight tracking)');
        await startRing(client, this.memory, queue, (queue.driver as VringDriver).deviceUsedIdx, this.features);
      }
    } catch (error) {
      client.close();
      throw error;
    }
  }

  static async connect(options: FrontendDeviceOptions): Promise<FrontendDevice> {
    virtioFeaturesToAck(0n, options); // rejects transport bits in deviceFeatures before connecting
    const client = await VhostUserClient.connect(options.socketPath, {
      timeoutMs: options.connectTimeoutMs ?? 0,
      replyTimeoutMs: options.replyTimeoutMs,
      logger: options.logger,
    });
    let memory: FrontendMemory | undefined;
    const ownsMemory = !(options.memory instanceof FrontendMemory);
    const queues: FrontendQueue[] = [];
    const inflightHolder: { client: VhostUserClient; inflight: FrontendInflight | undefined } = { client, inflight: undefined };
    try {
      memory =
        options.memory instanceof FrontendMemory
          ? options.memory
          : new FrontendMemory(options.memory ?? [{ guestPhysAddr: 0, size: 64 << 20 }]);

      // Negotiation in QEMU's order (vhost_user_backend_init, vhost_dev_start).
      const offered = await client.getFeatures();
      let offeredProtocol = 0n;
      let protocol = 0n;
      if (offered & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
        offeredProtocol = await client.getProtocolFeatures();
        protocol = protocolFeaturesToAck(offeredProtocol, options);
        if (options.inflight) protocol |= offeredProtocol & bit(ProtocolFeature.INFLIGHT_SHMFD);
        await client.setProtocolFeatures(protocol);
      }
      let backendQueues = 1;
      if (protocol & bit(ProtocolFeature.MQ)) backendQueues = Number(await client.getU64('GET_QUEUE_NUM'));
      const queueCount = Math.min(options.queues ?? 1, backendQueues);
      await client.request({ type: 'SET_OWNER' });
      let features = virtioFeaturesToAck(offered, options);
      const packed = options.packed === true;
      if (packed) {
        if (!hasFeature(offered, VIRTIO_F_RING_PACKED)) {
          throw new FrontendError('packed rings were asked for, but the back-end does not offer VIRTIO_F_RING_PACKED');
        }
        features |= bit(VIRTIO_F_RING_PACKED);
      }
      await client.setFeatures(features);
      await shareInflight(inflightHolder, protocol, queueCount, options.queueSize ?? 256);
      await sendMemoryTable(client, memory, protocol);

      const size = options.queueSize ?? 256;
      const layout = packed ? packedAreas(size) : splitRingLayout(size);
      const indirectEntries = features & bit(VIRTIO_F_INDIRECT_DESC) ? (options.indirectEntries ?? 0) : 0;
      for (let index = 0; index < queueCount; index++) {
        const ringAddr = memory.allocate(layout.totalBytes, 4096);
        const indirect =
          indirectEntries > 0
            ? { tableAddr: memory.allocate(indirectTablesBytes(size, indirectEntries), 16), maxEntries: indirectEntries }
            : undefined;
        const driver = createRingDriver({
          packed,
          memory: memory.guest,
          size,
          descAddr: ringAddr + layout.descOffset,
          availAddr: ringAddr + layout.availOffset,
          usedAddr: ringAddr + layout.usedOffset,
          eventIdx: hasFeature(features, VIRTIO_F_EVENT_IDX),
          indirect,
        });
        const kickFd = options.noKickFd ? -1 : native.eventfdCreate(0);
        const callFd = native.eventfdCreate(0);
        queues.push(
          new FrontendQueue(
            index,
            driver,
            kickFd,
            callFd,
            ringAddr + layout.descOffset,
            ringAddr + layout.availOffset,
            ringAddr + layout.usedOffset,
            indirect,
            packed,
          ),
        );
        // Packed: position 0 with wrap counter 1 (bit 15), in both halves as QEMU sends it.
        await startRing(client, memory, queues[index], packed ? 0x8000_8000 : 0, features);
      }
      const device = new FrontendDevice(
        client,
        memory,
        ownsMemory,
        offered,
        features,
        offeredProtocol,
        protocol,
        backendQueues,
        queues,
        options,
      );
      device.inflight = inflightHolder.inflight;
      return device;
    } catch (error) {
      if (inflightHolder.inflight) closeAllFds([inflightHolder.inflight.fd]);
      for (const queue of queues) closeQueueFds(queue);
      client.close();
      if (ownsMemory) memory?.close();
      throw error;
    }
  }

  /** GET_VRING_BASE: stops the ring on the back-end (after it drained) and returns last_avail_idx. */
  stopQueue(index: number): Promise<number> {
    return this.client.getVringBase(index);
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    return this.client.getConfig(offset, size);
  }

  /** Disconnect; the back-end resets and serves its next front-end. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.client.close();
    for (const queue of this.queues) closeQueueFds(queue);
    if (this.inflight) closeAllFds([this.inflight.fd]);
    this.inflight = undefined;
    if (this.ownsMemory) this.memory.close();
  }
}

/**
 * With INFLIGHT_SHMFD acked: GET_INFLIGHT_FD the first time (the region is kept in `holder`),
 * then SET_INFLIGHT_FD with it — vhost_user_blk_start's order, after SET_FEATURES and before
 * the memory table.
 */
async function shareInflight(
  holder: { client: VhostUserClient; inflight: FrontendInflight | undefined },
  protocol: bigint,
  numQueues: number,
  queueSize: number,
): Promise<void> {
  if (!(protocol & bit(ProtocolFeature.INFLIGHT_SHMFD))) return;
  const client = holder.client;
  if (!holder.inflight) {
    const reply = await client.request({ type: 'GET_INFLIGHT_FD', numQueues, queueSize });
    if (!reply || reply.type !== 'inflight') throw new FrontendError('GET_INFLIGHT_FD: unexpected reply', 'GET_INFLIGHT_FD');
    if (reply.mmapSize === 0n) return; // the back-end tracks nothing after all
    holder.inflight = { fd: reply.fd, mmapSize: reply.mmapSize, mmapOffset: reply.mmapOffset, numQueues, queueSize };
  }
  const region = holder.inflight;
  await client.request({ type: 'SET_INFLIGHT_FD', ...region });
}

/** Per ring: NUM, BASE, ADDR, CALL, KICK, ENABLE — QEMU's vhost_virtqueue_start order. */
async function startRing(
  client: VhostUserClient,
  memory: FrontendMemory,
  queue: FrontendQueue,
  base: number,
  features: bigint,
): Promise<void> {
  const index = queue.index;
  await client.request({ type: 'SET_VRING_NUM', index, num: queue.driver.size });
  await client.request({ type: 'SET_VRING_BASE', index, num: base });
  await client.request({
    type: 'SET_VRING_ADDR',
    index,
    flags: 0,
    descUserAddr: BigInt(memory.userspaceAddress(queue.descAddr)),
    usedUserAddr: BigInt(memory.userspaceAddress(queue.usedAddr)),
    availUserAddr: BigInt(memory.userspaceAddress(queue.availAddr)),
    logGuestAddr: 0n,
  });
  await client.request({ type: 'SET_VRING_CALL', index, noFd: false, fd: queue.callFd });
  await client.request({ type: 'SET_VRING_KICK', index, noFd: queue.kickFd < 0, fd: queue.kickFd });
  if (features & bit(VHOST_USER_F_PROTOCOL_FEATURES)) {
    await client.request({ type: 'SET_VRING_ENABLE', index, num: 1 });
  }
}

function closeAllFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Already closed.
    }
  }
}

async function sendMemoryTable(client: VhostUserClient, memory: FrontendMemory, protocol: bigint): Promise<void> {
  const regions = memory.describe();
  if (regions.length <= MAX_MEMORY_REGIONS) {
    await client.request({ type: 'SET_MEM_TABLE', regions });
    return;
  }
  // More regions than one message can carry: add them one by one (CONFIGURE_MEM_SLOTS).
  if (!(protocol & bit(ProtocolFeature.CONFIGURE_MEM_SLOTS))) {
    throw new FrontendError(`${regions.length} memory regions need CONFIGURE_MEM_SLOTS, which the back-end did not offer`);
  }
  for (const region of regions) {
    const { fd, ...description } = region;
    await client.request({ type: 'ADD_MEM_REG', region: description, fd });
  }
}

/** A packed ring's areas under the split layout's names (what SET_VRING_ADDR carries where). */
function packedAreas(size: number): { totalBytes: number; descOffset: number; availOffset: number; usedOffset: number } {
  const layout = packedRingLayout(size);
  return {
    totalBytes: layout.totalBytes,
    descOffset: layout.descOffset,
    availOffset: layout.driverOffset,
    usedOffset: layout.deviceOffset,
  };
}

function closeQueueFds(queue: FrontendQueue): void {
  for (const fd of [queue.kickFd, queue.callFd]) {
    if (fd >= 0) {
      try {
        native.close(fd);
      } catch {
        // Already closed.
      }
    }
  }
}
