// Plain-data description of a front-end load, handed to a load worker thread. The control
// connection stays on the thread that negotiated (FrontendDevice); the load worker only needs
// guest memory (SharedArrayBuffers), ring addresses and eventfd numbers, which are process-wide.
import type { MemoryRegion } from '../dataplane/memory.js';

export interface LoadQueue {
  index: number;
  size: number;
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  kickFd: number;
  callFd: number;
  eventIdx: boolean;
  /** A packed ring (avail/usedAddr are its driver/device event areas). */
  packed: boolean;
  indirect?: { tableAddr: number; maxEntries: number };
  /** Guest memory reserved for this queue's request buffers: [bufferAddr, bufferAddr + bufferBytes). */
  bufferAddr: number;
  bufferBytes: number;
  /** This queue's own workload and depth instead of the spec's (net loopback: RX and TX differ). */
  workload?: Workload;
  queueDepth?: number;
}

/** Each request carries `bytes` to the echo device in `segments` descriptors and gets them back. */
export interface EchoWorkload {
  kind: 'echo';
  bytes: number;
  segments: number;
  /** Put the chain in an indirect table (needs INDIRECT_DESC). */
  indirect: boolean;
  /** Check every reply against what was sent. */
  verify: boolean;
}

export type BlkPattern = 'read' | 'write' | 'randread' | 'randwrite' | 'randrw';

/** virtio-blk requests: header, data, status. */
export interface BlkWorkload {
  kind: 'blk';
  pattern: BlkPattern;
  /** Bytes per request (a multiple of 512). */
  blockSize: number;
  /** Disk size in bytes (GET_CONFIG capacity × 512); offsets stay below it. */
  capacityBytes: number;
  /** randrw: share of reads (0..1). */
  readShare: number;
  /** Seed for the offset generator (runs are repeatable). */
  seed: number;
}

/**
 * virtio-net frames on one queue: `tx` posts frames (virtio-net header + frame, device-readable),
 * `rx` posts empty buffers for the device to fill. With `stamp`, a TX frame carries the time it
 * was posted and an RX frame's time is read back from it (loopback round trips).
 */
export interface NetWorkload {
  kind: 'net';
  role: 'tx' | 'rx';
  /** Ethernet bytes per TX frame (header excluded). */
  frameBytes: number;
  /** virtio-net header length negotiated (10 or 12). */
  headerBytes: number;
  /** RX: bytes per buffer (header included). */
  rxBufferBytes: number;
  /** The TX template (Ethernet header onwards); the stamp is written over it. */
  frame: Uint8Array;
  /** TX: write the post time at NET_STAMP_OFFSET; RX: time each frame from it. */
  stamp: boolean;
  /** Record latencies (TX: post to completion; RX with stamp: round trip). */
  record: boolean;
}

/** Where a stamped frame carries its post time (float64 ms, performance.now() of the load thread). */
export const NET_STAMP_OFFSET = 42;

export type Workload = EchoWorkload | BlkWorkload | NetWorkload;

export interface LoadSpec {
  regions: MemoryRegion[];
  queues: LoadQueue[];
  workload: Workload;
  /** Requests in flight per queue (closed loop), or the cap on them (open loop). */
  queueDepth: number;
  /** Stop after this many requests per queue (0 = use seconds). */
  requestsPerQueue: number;
  /** Measured duration (after warm-up) when requestsPerQueue is 0. */
  seconds: number;
  warmupSeconds: number;
  /**
   * Open loop: issue at this many requests per second in all (0 = closed loop). Net RX queues
   * are not paced: their buffers are offered whenever free.
   */
  rate: number;
  /** How to wait for completions: spin on the used rings, or sleep on the call eventfds. */
  wait: 'spin' | 'event';
  /** CPU to pin the load thread to (-1: leave it). */
  cpu: number;
  /**
   * Shared progress area (Float64Array): [0] requests completed so far (all queues), [1] set to 1
   * by the owner to stop early, [2] set by the worker when the measured phase starts.
   */
  progress: SharedArrayBuffer;
  /**
   * Complete requests in the load thread itself (LoopbackDevice) instead of waiting for a
   * back-end: the generator's own ceiling. virtio-blk only, one region at address 0.
   */
  loopback?: boolean;
}

export const Progress = { COMPLETED: 0, STOP: 1, MEASURING: 2, SLOTS: 4 } as const;

export interface LoadResult {
  requests: number;
  bytes: number;
  seconds: number;
  /** Latency histogram (ns) as plain data: see Histogram. */
  histogram: { counts: Float64Array; count: number; min: number; max: number; sum: number };
  /** CPU time of the load thread itself, from /proc. */
  cpuSeconds: number;
  kicks: number;
  /** Echo verification failures, or blk requests that completed with a non-OK status. */
  errors: number;
  /** The first error, described. */
  firstError: string;
  /** Requests still in flight after the end-of-run drain: the back-end stalled or lost them. */
  inFlightAtEnd: number;
  /** Per queue over the window: requests completed and their bytes (net: frames, RX frames with data only). */
  queues: { index: number; requests: number; bytes: number }[];
}
