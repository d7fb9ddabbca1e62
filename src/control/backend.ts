// What a device author implements, and what the session asks of the data plane.
// In the spirit of rust-vmm's VhostUserBackend: a device describes itself (features, queues,
// config space) and reacts to a few events; it never sees a socket or a protocol message.
import type { MappedRegion } from './memory-table.js';
import type { QueueStats } from '../dataplane/stats.js';
import type { InflightSlice } from '../dataplane/inflight.js';
import type { DirtyLogArea } from '../dataplane/dirty-log.js';

export interface VhostUserDevice {
  /** Short name for logs, e.g. 'virtio-blk'. */
  readonly name: string;
  /** Number of virtqueues the device exposes (GET_QUEUE_NUM). */
  readonly numQueues: number;
  /** Largest queue size the device accepts (a power of two ≤ 32768). */
  readonly maxQueueSize: number;
  /**
   * Virtio feature bits the device offers (VERSION_1, EVENT_IDX, device bits...). The library
   * adds VHOST_USER_F_PROTOCOL_FEATURES (bit 30) itself.
   */
  readonly features: bigint;
  /**
   * Protocol features the device itself needs beyond the library's own (which are REPLY_ACK,
   * MQ, CONFIG when getConfig exists, BACKEND_REQ, CONFIGURE_MEM_SLOTS, RESET_DEVICE, STATUS).
   */
  readonly protocolFeatures?: bigint;
  /** The front-end acked these features (already checked to be a subset of the offer). Throw to refuse. */
  setFeatures?(features: bigint): void;
  /** Config space bytes [offset, offset+size). Throw RangeError for a range the device has not. */
  getConfig?(offset: number, size: number): Uint8Array;
  /** Write to config space (virtio-blk: the writeback byte). Throw to refuse. */
  setConfig?(offset: number, data: Uint8Array, flags: number): void;
  /** Virtio device status written by the driver (SET_STATUS). */
  setStatus?(status: number): void;
  /** The front-end went away or reset the device: forget per-driver state. */
  reset?(): void;
  /**
   * Serve a device-specific request, the way libvhost-user's process_msg and DPDK's
   * pre_msg_handle let a device take a message the library does not interpret. Resolve true when
   * handled (acked with 0); false, or no hook at all, answers "not supported" (a failure ack).
   * Throw to refuse (a failure ack with the error logged). Each request needs its protocol
   * feature (SEND_RARP: RARP = 2, NET_SET_MTU: MTU = 4) in `protocolFeatures`; the session only
   * calls the hook once the front-end acked it.
   */
  handleRequest?(request: DeviceRequest): boolean | Promise<boolean>;
}

/** Front-end requests a device serves itself through VhostUserDevice.handleRequest. */
export type DeviceRequest =
  /** VHOST_USER_NET_SET_MTU: the MTU the guest driver uses (virtio-net's u16 mtu; larger is refused first). */
  | { type: 'NET_SET_MTU'; mtu: number }
  /** VHOST_USER_SEND_RARP: broadcast a RARP for this MAC (6 bytes), e.g. after live migration. */
  | { type: 'SEND_RARP'; mac: Uint8Array };

/** Everything the session knows about one ring when it hands it to the data plane. */
export interface VringConfig {
  index: number;
  size: number;
  /** Ring addresses as front-end virtual addresses (SET_VRING_ADDR), translated by the data plane. */
  descUserAddr: number;
  availUserAddr: number;
  usedUserAddr: number;
  /** last_avail_idx from SET_VRING_BASE. */
  lastAvailIdx: number;
  /** Kick eventfd, or -1 when the front-end asked for polling (bit 8 of SET_VRING_KICK). */
  kickFd: number;
  /** Call eventfd, or -1 for none (then the back-end never notifies). */
  callFd: number;
  /** Error eventfd, or -1. */
  errFd: number;
  /** Negotiated virtio features (EVENT_IDX, INDIRECT_DESC decide the ring's behaviour). */
  features: bigint;
  /**
   * This ring's part of the in-flight region (SET_INFLIGHT_FD), when the front-end shares one:
   * the data plane records fetches and completions there and recovers from it at start.
   */
  inflight?: InflightSlice;
  /**
   * Where used-ring writes are marked in the dirty log: log_guest_addr of a SET_VRING_ADDR with
   * VHOST_VRING_F_LOG, or -1 (absent) for the used ring's own guest-physical address.
   */
  logGuestAddr?: number;
}

/**
 * The session's handle on whoever processes rings. The session keeps ownership of every fd it
 * passes; the data plane must stop using an fd before the promise of the call that replaced it
 * resolves, because the session closes the old fd right after.
 */
export interface DataPlane {
  /** Install a new memory table; resolves once no ring reads through the previous one. */
  setMemory(regions: readonly MappedRegion[]): Promise<void>;
  /** Start processing a ring (its kick fd arrived and it is enabled). */
  startQueue(config: Readonly<VringConfig>): Promise<void>;
  /** Stop a ring after draining in-flight requests; resolves to last_avail_idx. */
  stopQueue(index: number): Promise<number>;
  /** Replace the call or error fd of a running ring. */
  setNotifyFds(index: number, callFd: number, errFd: number): Promise<void>;
  /** Forget the connection: stop every ring, drop the memory table. */
  reset(): Promise<void>;
  /**
   * Like reset, but rings whose requests are still in the device are written off at once: the
   * device's late completions must never reach guest memory (the old or the next front-end's).
   * Also ends a reset still waiting. Without it, a hung device blocks the next front-end.
   */
  abandon?(): Promise<void>;
  /** Per-queue counters, readable at any time without stopping the rings (if the data plane keeps them). */
  allQueueStats?(): QueueStats[];
  /**
   * Dirty-page logging (live migration): from when the promise resolves, every write into guest
   * memory is marked in `area` (null: logging stops). Switched between batches, like a memory
   * table. A data plane without it cannot migrate: the session then offers neither
   * VHOST_F_LOG_ALL nor LOG_SHMFD.
   */
  setDirtyLog?(area: DirtyLogArea | null): Promise<void>;
  /** A running ring's used-ring log address changed (see VringConfig.logGuestAddr). */
  setRingLog?(index: number, logGuestAddr: number): Promise<void>;
}
