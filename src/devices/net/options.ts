// What the control thread tells the net handler in each worker (plain data: it crosses into
// worker threads through workerData), and the shared counters both sides read.

/** Where frames go. `tap` is given as `tap:NAME` on the command line. */
export type NetBackendName = 'loopback' | 'sink' | 'source' | 'tap' | 'switch';
/**
 * used.idx publishes within a pass (QueueHandler.publishEvery): once per 32 frames, the burst
 * DPDK's virtio PMD and testpmd work in and at most what DPDK's vhost library publishes per call.
 * Each publish is a sequentially consistent store (xchg) to the line the front-end polls; every 8
 * (the worker's default, tuned for blk) cost the sink: in alternating runs of testpmd txonly at
 * 64 B against our sink, 32 won 7 of 8 pairs (medians 14.6 against 12.7 Mpps over five pairs);
 * loopback and source showed no difference beyond this machine's noise.
 */
export const NET_PUBLISH_EVERY = 32;

export const NET_BACKENDS: readonly NetBackendName[] = ['loopback', 'sink', 'source', 'tap', 'switch'];

export interface NetHandlerOptions {
  backend: NetBackendName;
  /** Int32 slots (NegotiatedSlot) written by the device at SET_FEATURES, read by workers per frame. */
  negotiated: SharedArrayBuffer;
  /** Float64 counters, NET_STAT_SLOTS per queue (NetStat), written only by the queue's worker. */
  stats: SharedArrayBuffer;
  queuePairs: number;
  /** Largest Ethernet frame accepted on TX (MTU + Ethernet header + one VLAN tag), bytes. */
  maxFrameBytes: number;
  /** source: bytes per generated frame (Ethernet header onwards, no FCS). */
  frameBytes: number;
  /** source: destination MAC of generated frames (the guest's own, so it accepts them). */
  mac: number[];
  /** tap: one fd per queue pair (the same tap, IFF_MULTI_QUEUE when more than one), owned by the control thread. */
  tapFds: number[];
}

/** Int32 slots of NetHandlerOptions.negotiated. */
export const NegotiatedSlot = {
  /** virtio-net header length on both queues: 10 or 12. */
  headerBytes: 0,
  /** 1 when MRG_RXBUF was negotiated (a frame may span RX chains). */
  mergeableRxBuffers: 1,
  /**
   * Largest TX frame accepted now (Ethernet header onwards): the offered MTU + 18 until the
   * front-end lowers it with NET_SET_MTU, back to the offer at reset. 0 (never set): the offer,
   * NetHandlerOptions.maxFrameBytes.
   */
  maxFrameBytes: 2,
  /** Offload bits (offload.ts Offload) the guest acked; 0 when the back-end offers none. */
  offloads: 3,
  SLOTS: 4,
} as const;

/**
 * Per-queue net counters. On a TX queue: frames taken from the guest and frames refused. On an
 * RX queue: frames given to the guest and frames that found no room. A counter belongs to the
 * queue the frame was on when it was counted.
 */
export const NetStat = {
  /** Frames passed on (TX: accepted from the guest; RX: written into guest buffers). */
  packets: 0,
  /** Their Ethernet bytes (virtio-net headers excluded). */
  bytes: 1,
  /** Frames dropped for any reason (the sum of the reasons below). */
  drops: 2,
  /** RX: no guest buffer (or not enough of them) when the frame arrived. */
  noBuffer: 3,
  /** TX: frame above MTU + headers. RX without MRG_RXBUF: frame larger than the buffer offered. */
  tooBig: 4,
  /**
   * TX: chain with a device-writable descriptor or shorter than the header, a header asking for
   * an offload that was not negotiated, or whose csum_start/csum_offset/hdr_len/gso_size do not
   * fit the frame (loopback, switch), or a frame under 14 bytes.
   */
  badChain: 5,
  /** RX buffers handed back unused: device-readable descriptors, or shorter than the header. */
  badBuffers: 6,
  /**
   * tap: frames the tap refused (TX write error, e.g. the link is down) or that came from it
   * asking for an offload the guest did not negotiate (RX), and failed reads.
   */
  backendErrors: 7,
  /**
   * RX (loopback, switch): a GSO frame for a guest that did not ack the matching GUEST_TSO4/6
   * (or GUEST_ECN) that could not be segmented (not TCP as gso_type says): dropped.
   */
  gsoRefused: 8,
  /** RX (loopback, switch): GSO frames cut into TCP segments in software for a guest without GUEST_TSO. */
  gsoSegmented: 9,
} as const;
export const NET_STAT_SLOTS = 10;

export type NetQueueStats = { -readonly [K in keyof typeof NetStat]: number } & { queue: number };

export function createNetStatsBuffer(queues: number): SharedArrayBuffer {
  return new SharedArrayBuffer(Math.max(1, queues) * NET_STAT_SLOTS * 8);
}

/** A snapshot of one queue's net counters (allocates: for the control thread). */
export function readNetStats(buffer: SharedArrayBuffer, queue: number): NetQueueStats {
  const view = new Float64Array(buffer, queue * NET_STAT_SLOTS * 8, NET_STAT_SLOTS);
  const stats = { queue } as NetQueueStats;
  for (const [name, slot] of Object.entries(NetStat)) stats[name as keyof typeof NetStat] = view[slot]!;
  return stats;
}
