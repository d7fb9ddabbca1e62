// The control-plane face of vhost-user-net: features, config space (mac, status,
// max_virtqueue_pairs, mtu) and queue layout. Frames are moved by the worker-side handler
// (handler.ts); handlerSpec() describes it, queueToWorker() keeps each RX/TX pair on one worker.
//
// Offloads (offload.ts). CSUM/GUEST_CSUM, TSO4/TSO6 and ECN (HOST and GUEST) are offered only
// with options.offloads: the tap back-end carries the header both ways (IFF_VNET_HDR, and
// TUNSETOFFLOAD set from what the guest acked through onOffloads); loopback and the switch pass
// the TX header to the receiving RX chain, or complete the checksum in software for a receiver
// without GUEST_CSUM (csum.ts) and cut a GSO frame into TCP segments for one without GUEST_TSO
// (segment.ts). sink and source offer none (no receiver for the header).
//
// IN_ORDER (virtio 1.2 §2.7.9): offered for every back-end; the data plane guarantees it (the
// worker pushes used entries in pop order, worker.ts), so the handlers may complete in any order.
// DPDK virtio-user then runs its in-order Rx/Tx paths against us, as against DPDK's vhost PMD.
// (blk never offers it: io_uring completes out of order and a held-back completion would stall
// the ones behind it.)
//
// What QEMU does with these bits (PROTOCOL-NOTES): it handles MAC and STATUS itself and passes
// the guest only what we offer; DPDK virtio-user adds MAC and STATUS as its own.
//
// Device requests (handleRequest, the session's device hook). NET_SET_MTU (PROTOCOL_F_NET_MTU):
// QEMU sends its host_mtu when the guest acked VIRTIO_NET_F_MTU; we accept 68 up to the MTU we
// offered and drop TX frames above it from then on (until the device is reset). SEND_RARP
// (PROTOCOL_F_RARP, offered only when the back-end can send a frame of its own: the switch and
// tap):
// QEMU sends it after a migration when the guest cannot announce itself; GUEST_ANNOUNCE is
// offered so that a guest can (QEMU then asks the guest driver, through its control queue).
import type { DeviceRequest, VhostUserDevice } from '../../control/backend.js';
import {
  ProtocolFeature,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../control/protocol.js';
import type { HandlerSpec } from '../../dataplane/device-api.js';
import { SOURCE_MIN_FRAME } from './frame.js';
import { OFFLOAD_FEATURES, offloadsOf } from './offload.js';
import {
  NegotiatedSlot,
  createNetStatsBuffer,
  readNetStats,
  type NetBackendName,
  type NetHandlerOptions,
  type NetQueueStats,
} from './options.js';
import {
  ETH_HEADER_BYTES,
  NET_CONFIG_SIZE,
  NetFeature,
  VLAN_TAG_BYTES,
  encodeNetConfig,
  formatMac,
  netHeaderBytes,
} from './virtio-net.js';

export interface NetDeviceOptions {
  /** Queue pairs (RX + TX each); more than 1 offers MQ. */
  queuePairs: number;
  maxQueueSize: number;
  /** Six bytes; the guest's address (config space). */
  mac: Uint8Array;
  /** Offered through VIRTIO_NET_F_MTU; frames above it plus headers are dropped on TX. */
  mtu: number;
  /**
   * Called with the virtio-net header length (10 or 12) whenever the negotiated features change
   * it: a tap back-end sets its own header size to match (TUNSETVNETHDRSZ).
   */
  onHeaderBytes?: (bytes: number) => void;
  /**
   * SEND_RARP: broadcast a RARP for this (unicast) MAC out of the back-end. Without it the device
   * does not offer PROTOCOL_F_RARP.
   */
  sendRarp?: (mac: Uint8Array) => void;
  /** The back-end carries virtio-net header offloads (tap, loopback, switch): offer OFFLOAD_FEATURES. */
  offloads?: boolean;
  /** Called with the acked Offload bits whenever they change (tap: TUNSETOFFLOAD). */
  onOffloads?: (offloads: number) => void;
}

/** Segments a net request may span: Linux sends at most MAX_SKB_FRAGS + 2 (19) per frame. */
const MAX_SEGMENTS = 64;
/** 68 is the IPv4 minimum MTU (RFC 791); 65535 is what the 16-bit config field holds. */
export const MIN_MTU = 68;
export const MAX_MTU = 65535;

export class NetDevice implements VhostUserDevice {
  readonly name = 'virtio-net';
  readonly numQueues: number;
  readonly maxQueueSize: number;
  readonly features: bigint;
  readonly protocolFeatures: bigint;
  /** Header length and MRG_RXBUF as negotiated, for the workers (NegotiatedSlot). */
  readonly negotiated = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
  /** Per-queue net counters (NetStat), written by the workers. */
  readonly stats: SharedArrayBuffer;
  private readonly negotiatedView = new Int32Array(this.negotiated);
  private readonly config: Uint8Array;

  constructor(readonly options: NetDeviceOptions) {
    const { queuePairs, maxQueueSize, mac, mtu } = options;
    // 128 pairs (256 queues) is far below the spec's 0x8000 and what QEMU allows per device.
    if (!Number.isInteger(queuePairs) || queuePairs < 1 || queuePairs > 128) {
      throw new RangeError(`queue pairs must be between 1 and 128, got ${queuePairs}`);
    }
    if (
      !Number.isInteger(maxQueueSize) ||
      maxQueueSize < 2 ||
      maxQueueSize > 32768 ||
      (maxQueueSize & (maxQueueSize - 1)) !== 0
    ) {
      throw new RangeError(`queue size must be a power of two between 2 and 32768, got ${maxQueueSize}`);
    }
    if (mac.length !== 6) throw new RangeError('a MAC address has 6 bytes');
    if ((mac[0] & 1) !== 0) throw new RangeError('the MAC address is a multicast one (lowest bit of the first byte set)');
    if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > MAX_MTU)
      throw new RangeError(`MTU must be between ${MIN_MTU} and ${MAX_MTU}, got ${mtu}`);
    this.numQueues = 2 * queuePairs;
    this.maxQueueSize = maxQueueSize;
    this.stats = createNetStatsBuffer(this.numQueues);
    let features =
      bit(VIRTIO_F_VERSION_1) |
      bit(VIRTIO_F_EVENT_IDX) |
      bit(VIRTIO_F_INDIRECT_DESC) |
      bit(VIRTIO_F_RING_PACKED) |
      bit(VIRTIO_F_IN_ORDER) |
      bit(NetFeature.MRG_RXBUF) |
      bit(NetFeature.MTU) |
      bit(NetFeature.MAC) |
      bit(NetFeature.STATUS) |
      bit(NetFeature.GUEST_ANNOUNCE);
    if (queuePairs > 1) features |= bit(NetFeature.MQ);
    if (options.offloads) features |= OFFLOAD_FEATURES;
    this.features = features;
    this.protocolFeatures = bit(ProtocolFeature.MTU) | (options.sendRarp ? bit(ProtocolFeature.RARP) : 0n);
    this.config = encodeNetConfig({ mac, linkUp: true, maxVirtqueuePairs: queuePairs, mtu });
    this.setNegotiated(0n);
    Atomics.store(this.negotiatedView, NegotiatedSlot.maxFrameBytes, this.maxFrameBytes);
  }

  get queuePairs(): number {
    return this.options.queuePairs;
  }

  /** Largest TX frame accepted: MTU plus the Ethernet header and one VLAN tag. */
  get maxFrameBytes(): number {
    return this.options.mtu + ETH_HEADER_BYTES + VLAN_TAG_BYTES;
  }

  /** WorkerDataPlaneOptions.maxSegments. */
  get maxSegments(): number {
    return Math.min(MAX_SEGMENTS, this.maxQueueSize);
  }

  /** WorkerDataPlaneOptions.queueToWorker: pair k (queues 2k, 2k+1) on worker k mod n. */
  static queueToWorker(this: void, queue: number, workers: number): number {
    return (queue >>> 1) % workers;
  }

  /** The worker-side handler with the given back-end (tap: one tap fd per queue pair). */
  handlerSpec(backend: NetBackendName, frameBytes = 64, tapFds: number[] = []): HandlerSpec {
    if (backend === 'switch') throw new Error('the switch back-end has its own handler (SwitchFabric.handlerSpec)');
    if (backend === 'source' && (frameBytes < SOURCE_MIN_FRAME || frameBytes > this.maxFrameBytes)) {
      throw new RangeError(
        `frame size must be between ${SOURCE_MIN_FRAME} and ${this.maxFrameBytes} bytes (MTU ${this.options.mtu}), got ${frameBytes}`,
      );
    }
    const options: NetHandlerOptions = {
      backend,
      negotiated: this.negotiated,
      stats: this.stats,
      queuePairs: this.options.queuePairs,
      maxFrameBytes: this.maxFrameBytes,
      frameBytes,
      mac: Array.from(this.options.mac),
      tapFds,
    };
    return { module: new URL('./handler.js', import.meta.url).href, options };
  }

  /** A snapshot of every queue's net counters. */
  netStats(): NetQueueStats[] {
    return Array.from({ length: this.numQueues }, (_, q) => readNetStats(this.stats, q));
  }

  setFeatures(features: bigint): void {
    this.setNegotiated(features);
  }

  getConfig(offset: number, size: number): Uint8Array {
    if (offset + size > NET_CONFIG_SIZE) {
      throw new RangeError(`config range [${offset}, ${offset + size}) is beyond the ${NET_CONFIG_SIZE}-byte virtio-net config`);
    }
    return this.config.slice(offset, offset + size);
  }

  reset(): void {
    this.setNegotiated(0n);
    Atomics.store(this.negotiatedView, NegotiatedSlot.maxFrameBytes, this.maxFrameBytes);
  }

  /** The MTU TX frames are held to now (NET_SET_MTU lowers it until reset). */
  get currentMtu(): number {
    return Atomics.load(this.negotiatedView, NegotiatedSlot.maxFrameBytes) - ETH_HEADER_BYTES - VLAN_TAG_BYTES;
  }

  handleRequest(request: DeviceRequest): boolean {
    switch (request.type) {
      case 'NET_SET_MTU': {
        const { mtu } = request;
        if (!Number.isInteger(mtu) || mtu < MIN_MTU || mtu > this.options.mtu) {
          throw new RangeError(`MTU ${mtu} is outside ${MIN_MTU}..${this.options.mtu} (the MTU this device offers)`);
        }
        Atomics.store(this.negotiatedView, NegotiatedSlot.maxFrameBytes, mtu + ETH_HEADER_BYTES + VLAN_TAG_BYTES);
        return true;
      }
      case 'SEND_RARP': {
        const send = this.options.sendRarp;
        if (!send) return false;
        const { mac } = request;
        if (mac.length !== 6 || (mac[0] & 1) !== 0 || mac.every((b) => b === 0)) {
          throw new RangeError(`${formatMac(mac)} is not a unicast MAC address`);
        }
        send(mac);
        return true;
      }
      default:
        return false;
    }
  }

  private setNegotiated(features: bigint): void {
    const version1 = (features & bit(VIRTIO_F_VERSION_1)) !== 0n;
    const mergeable = (features & bit(NetFeature.MRG_RXBUF)) !== 0n;
    const headerBytes = netHeaderBytes(version1, mergeable);
    const changed = Atomics.exchange(this.negotiatedView, NegotiatedSlot.headerBytes, headerBytes) !== headerBytes;
    if (changed) this.options.onHeaderBytes?.(headerBytes);
    Atomics.store(this.negotiatedView, NegotiatedSlot.mergeableRxBuffers, mergeable ? 1 : 0);
    const offloads = this.options.offloads ? offloadsOf(features) : 0;
    if (Atomics.exchange(this.negotiatedView, NegotiatedSlot.offloads, offloads) !== offloads) {
      this.options.onOffloads?.(offloads);
    }
  }

  /** The Offload bits the guest acked (offload.ts). */
  get offloads(): number {
    return Atomics.load(this.negotiatedView, NegotiatedSlot.offloads);
  }
}
