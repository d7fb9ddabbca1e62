// The control-thread side of the `switch` back-end: everything the ports' workers share, made
// before they start. Each port (socket) has its own data plane with W workers (one guest memory
// table per worker), so a frame from one port to another always crosses threads: an
// "endpoint" is one worker of one port (port p, worker w → endpoint p·W + w) and every
// endpoint has an SPSC frame ring to every endpoint of the other ports, an eventfd that wakes
// it, and a view of the one MAC table. An RX flag per (port, pair) says which RX queues run, so
// a sender picks a destination pair that can take the frame.
//
// SEND_RARP comes to a port's control thread: the RARP is learned in the MAC table here and
// handed to the port's worker 0 through a small inject ring (the control thread is its only
// producer), which floods it as if the guest had sent it.
import { native } from '../../native.js';
import { createFrameRing, FRAME_RECORD_HEADER_BYTES, FrameRingProducer } from '../../dataplane/frame-ring.js';
import type { HandlerSpec } from '../../dataplane/device-api.js';
import { createMacTable, MacTable, macHi, macLo } from './mac-table.js';
import type { NetDevice } from './device.js';
import { ETH_HEADER_BYTES, ETH_MIN_FRAME, VLAN_TAG_BYTES } from './virtio-net.js';
import { GSO_MAX_FRAME_BYTES } from './offload.js';

/** Data bytes of each worker-to-worker ring: ~170 full-size frames or ~3,600 small ones. */
export const DEFAULT_SWITCH_RING_BYTES = 256 * 1024;
/** Largest frames a ring holds at least (jumbo MTUs get larger rings). */
const RING_MIN_LARGEST_FRAMES = 16;

const ETHERTYPE_RARP = 0x8035;
/** GSO frames (64 KiB + headers, with their virtio-net header) a ring holds at least. */
const RING_MIN_GSO_FRAMES = 8;

/**
 * Ring size for an MTU: the default, or a power of two holding 16 of the largest records and
 * 8 of the largest GSO records (the switch offers TSO: a ring of 256 KiB could not take one).
 */
export function switchRingBytes(mtu: number): number {
  const largest = FRAME_RECORD_HEADER_BYTES + 3 + mtu + ETH_HEADER_BYTES + VLAN_TAG_BYTES;
  const largestGso = FRAME_RECORD_HEADER_BYTES + 12 + 3 + GSO_MAX_FRAME_BYTES;
  let bytes = DEFAULT_SWITCH_RING_BYTES;
  while (bytes < RING_MIN_LARGEST_FRAMES * largest || bytes < RING_MIN_GSO_FRAMES * largestGso) bytes *= 2;
  return bytes;
}

/**
 * Writes into `frame` (at least 60 bytes) a RARP request announcing `mac` (RFC 903, as QEMU's
 * and DPDK's announcements): broadcast, sender and target hardware address `mac`, IPs 0.0.0.0.
 */
export function buildRarpFrame(frame: Uint8Array, at: number, mac: Uint8Array): void {
  frame.fill(0, at, at + ETH_MIN_FRAME);
  frame.fill(0xff, at, at + 6);
  frame.set(mac, at + 6);
  frame[at + 12] = ETHERTYPE_RARP >>> 8;
  frame[at + 13] = ETHERTYPE_RARP & 0xff;
  const arp = at + ETH_HEADER_BYTES;
  frame[arp + 1] = 1; // hardware type: Ethernet
  frame[arp + 2] = 0x08; // protocol type: IPv4
  frame[arp + 4] = 6; // hardware address length
  frame[arp + 5] = 4; // protocol address length
  frame[arp + 7] = 3; // opcode: reverse request
  frame.set(mac, arp + 8); // sender hardware address (sender IP 0.0.0.0)
  frame.set(mac, arp + 18); // target hardware address (target IP 0.0.0.0)
}
const INJECT_RING_BYTES = 4096;

/** What the switch handler of one port gets (plain data: it crosses into the workers). */
export interface SwitchHandlerOptions {
  negotiated: SharedArrayBuffer;
  stats: SharedArrayBuffer;
  queuePairs: number;
  /** Largest TX frame offered (MTU + 18); NegotiatedSlot.maxFrameBytes, when set, is the one in force. */
  maxFrameBytes: number;
  port: number;
  ports: number;
  workersPerPort: number;
  /** Ring from endpoint a to endpoint b at a·E + b (E = ports · workersPerPort); null within a port. */
  rings: (SharedArrayBuffer | null)[];
  /** Per port: the control thread's ring into the port's worker 0 (SEND_RARP frames). */
  injectRings: SharedArrayBuffer[];
  /** Per endpoint: the eventfd that wakes it. */
  wakeFds: number[];
  macTable: SharedArrayBuffer;
  /** Int32 per port · queuePairs + pair: 1 while that RX queue runs (written by its worker). */
  rxRunning: SharedArrayBuffer;
  /** Date.now() at which the MAC table's clock (whole seconds) starts. */
  clockOriginMs: number;
}

export class SwitchFabric {
  readonly endpoints: number;
  readonly rings: (SharedArrayBuffer | null)[];
  readonly injectRings: SharedArrayBuffer[];
  readonly wakeFds: number[] = [];
  readonly macTableBuffer = createMacTable();
  readonly macTable = new MacTable(this.macTableBuffer);
  readonly rxRunning: SharedArrayBuffer;
  readonly clockOriginMs = Date.now();
  private readonly injectors: FrameRingProducer[];
  private readonly rarp = new Uint8Array(ETH_MIN_FRAME);
  private closed = false;

  constructor(
    readonly ports: number,
    readonly workersPerPort: number,
    readonly queuePairs: number,
    ringBytes = DEFAULT_SWITCH_RING_BYTES,
  ) {
    if (!Number.isInteger(ports) || ports < 1) throw new RangeError(`a switch needs ports, got ${ports}`);
    this.endpoints = ports * workersPerPort;
    const e = this.endpoints;
    this.rings = new Array<SharedArrayBuffer | null>(e * e).fill(null);
    for (let a = 0; a < e; a++) {
      for (let b = 0; b < e; b++) {
        if (Math.floor(a / workersPerPort) !== Math.floor(b / workersPerPort)) this.rings[a * e + b] = createFrameRing(ringBytes);
      }
    }
    this.injectRings = Array.from({ length: ports }, () => createFrameRing(INJECT_RING_BYTES));
    this.injectors = this.injectRings.map((ring) => new FrameRingProducer(ring));
    this.rxRunning = new SharedArrayBuffer(Math.max(1, ports * queuePairs) * 4);
    try {
      for (let i = 0; i < e; i++) this.wakeFds.push(native.eventfdCreate(0));
    } catch (error) {
      this.close();
      throw error;
    }
  }

  /** Seconds on the MAC table's clock. */
  now(): number {
    return Math.floor((Date.now() - this.clockOriginMs) / 1000);
  }

  /** The worker-side handler of `port` (its device gives the per-port buffers). */
  handlerSpec(port: number, device: NetDevice): HandlerSpec {
    const options: SwitchHandlerOptions = {
      negotiated: device.negotiated,
      stats: device.stats,
      queuePairs: device.queuePairs,
      maxFrameBytes: device.maxFrameBytes,
      port,
      ports: this.ports,
      workersPerPort: this.workersPerPort,
      rings: this.rings,
      injectRings: this.injectRings,
      wakeFds: this.wakeFds,
      macTable: this.macTableBuffer,
      rxRunning: this.rxRunning,
      clockOriginMs: this.clockOriginMs,
    };
    return { module: new URL('./switch.js', import.meta.url).href, options };
  }

  /**
   * SEND_RARP on `port`: learns `mac` there and floods a RARP request for it to the other
   * ports (RFC 903, as QEMU's and DPDK's announcements), through the port's worker 0. Throws
   * when the port's inject ring is full (the worker is not draining it).
   */
  sendRarp(port: number, mac: Uint8Array): void {
    if (this.closed) throw new Error('the switch is stopped');
    this.macTable.learn(macHi(mac, 0), macLo(mac, 0), port, this.now());
    const frame = this.rarp;
    buildRarpFrame(frame, 0, mac);
    const injector = this.injectors[port];
    const offset = injector.reserve(frame.length, 0);
    if (offset < 0) throw new Error(`port ${port}: the switch is not taking announcements (inject ring full)`);
    injector.data.set(frame, offset);
    injector.commit();
    native.eventfdWrite(this.wakeFds[port * this.workersPerPort], 1);
  }

  /** Closes the wake eventfds: after every port's workers stopped. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.wakeFds.splice(0)) native.close(fd);
  }
}
