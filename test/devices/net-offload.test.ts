// Offload negotiation without a front-end: which features NetDevice offers with and without a
// back-end that carries the header, the Offload bits it hands the workers and the tap, and the
// per-frame header check (flags, gso_type) against them. Then the loopback and switch handlers
// in-process: the header passed through to a receiver that acked the GUEST bits, the checksum
// finished in software for one that did not, GSO refused without GUEST_TSO, hostile numbers.
import { describe, expect, it } from 'vitest';
import { NetDevice } from '../../dist/devices/net/device.js';
import {
  GSO_ECN,
  GSO_TCPV4,
  GSO_TCPV6,
  HDR_F_DATA_VALID,
  HDR_F_NEEDS_CSUM,
  OFFLOAD_FEATURES,
  Offload,
  headerAllowed,
  offloadsOf,
  tunOffloadFlags,
} from '../../dist/devices/net/offload.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat } from '../../dist/devices/net/options.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import type { QueueHandler, WorkerQueue } from '../../dist/dataplane/device-api.js';
import { createQueueHandler as createNetHandler } from '../../dist/devices/net/handler.js';
import { createQueueHandler as createSwitchHandler } from '../../dist/devices/net/switch.js';
import { SwitchFabric } from '../../dist/devices/net/switch-fabric.js';
import { sameBytes } from './net-rig.js';
import {
  offloadHeader,
  partialTcpChecksum,
  tcp6ChecksumValid,
  tcp6Frame,
  tcpChecksumValid,
  tcpFrame,
} from './net-offload-frames.js';

const bit = (n: number) => 1n << BigInt(n);
const MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
const OFFLOAD_BITS = [
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.HOST_TSO4,
  NetFeature.HOST_TSO6,
  NetFeature.HOST_ECN,
];

function device(offloads: boolean, seen: number[] = []): NetDevice {
  return new NetDevice({
    queuePairs: 1,
    maxQueueSize: 256,
    mac: MAC,
    mtu: 1500,
    offloads,
    onOffloads: (bits) => seen.push(bits),
  });
}

const hostCheck = (flags: number, gso: number, offloads: number) =>
  headerAllowed(flags, gso, offloads, Offload.hostCsum, Offload.hostTso4, Offload.hostTso6, Offload.hostEcn, false);

describe('offload features', () => {
  it('are offered only when the back-end carries the header', () => {
    const plain = device(false);
    const tap = device(true);
    for (const feature of OFFLOAD_BITS) {
      expect(plain.features & bit(feature), `bit ${feature} without`).toBe(0n);
      expect(tap.features & bit(feature), `bit ${feature} with`).not.toBe(0n);
    }
    expect(tap.features & ~OFFLOAD_FEATURES).toBe(plain.features);
  });

  it('hand the acked bits to the workers and to onOffloads, and clear them at reset', () => {
    const seen: number[] = [];
    const d = device(true, seen);
    const slots = new Int32Array(d.negotiated);
    d.setFeatures(
      bit(32) | bit(NetFeature.CSUM) | bit(NetFeature.HOST_TSO4) | bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_TSO6),
    );
    const expected = Offload.hostCsum | Offload.hostTso4 | Offload.guestCsum | Offload.guestTso6;
    expect(slots[NegotiatedSlot.offloads]).toBe(expected);
    expect(d.offloads).toBe(expected);
    expect(tunOffloadFlags(expected)).toBe(1 | 4);
    d.reset();
    expect(slots[NegotiatedSlot.offloads]).toBe(0);
    expect(seen).toEqual([expected, 0]);
    // A device that does not offer them ignores a front-end acking them anyway.
    const plainSeen: number[] = [];
    const plain = device(false, plainSeen);
    plain.setFeatures(bit(NetFeature.CSUM) | bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_TSO4));
    expect(plain.offloads).toBe(0);
    expect(plainSeen).toEqual([]);
  });

  it('TSO and ECN count only with their checksum bit (the spec makes them depend on it)', () => {
    expect(offloadsOf(bit(NetFeature.HOST_TSO4) | bit(NetFeature.GUEST_TSO4) | bit(NetFeature.GUEST_ECN))).toBe(0);
    expect(offloadsOf(bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_ECN))).toBe(Offload.guestCsum);
    expect(tunOffloadFlags(Offload.guestTso4 | Offload.guestTso6)).toBe(0);
    const all = offloadsOf(OFFLOAD_FEATURES);
    expect(tunOffloadFlags(all)).toBe(1 | 2 | 4 | 8);
  });
});

describe('header check', () => {
  const all = offloadsOf(OFFLOAD_FEATURES);
  it('takes a plain header always, and offload requests only as acked', () => {
    expect(hostCheck(0, 0, 0)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 0, 0)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 0, Offload.hostCsum)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV4, Offload.hostCsum)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV4, Offload.hostCsum | Offload.hostTso4)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6, Offload.hostCsum | Offload.hostTso4)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, Offload.hostCsum | Offload.hostTso6)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, all)).toBe(true);
  });

  it('refuses GSO without NEEDS_CSUM, UDP/unknown GSO types, unknown flags, DATA_VALID on TX', () => {
    expect(hostCheck(0, GSO_TCPV4, all)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 3, all)).toBe(false); // UDP (UFO): not offered
    expect(hostCheck(HDR_F_NEEDS_CSUM, 5, all)).toBe(false);
    expect(hostCheck(0x80, 0, all)).toBe(false);
    expect(hostCheck(HDR_F_DATA_VALID, 0, all)).toBe(false);
    // RX: DATA_VALID is fine (the handler clears it without GUEST_CSUM).
    expect(
      headerAllowed(HDR_F_DATA_VALID, 0, 0, Offload.guestCsum, Offload.guestTso4, Offload.guestTso6, Offload.guestEcn, true),
    ).toBe(true);
    // RX GSO needs the guest's bits, not the host's.
    const hostOnly = Offload.hostCsum | Offload.hostTso4;
    expect(
      headerAllowed(
        HDR_F_NEEDS_CSUM,
        GSO_TCPV4,
        hostOnly,
        Offload.guestCsum,
        Offload.guestTso4,
        Offload.guestTso6,
        Offload.guestEcn,
        true,
      ),
    ).toBe(false);
  });
});

// ---- loopback and switch handlers in-process (no workers, no rings): what the receiver gets ----

const MiB = 1 << 20;
const HEADER = 12;
const context = { worker: 0, queueCount: 2, log: () => {}, watchFd: () => {}, unwatchFd: () => {} };

/** Guest memory of 8 MiB (one window) and a way to build requests of several segments in it. */
function guestMemory(): { memory: GuestMemory; bytes: Uint8Array } {
  const buffer = new SharedArrayBuffer(8 * MiB);
  const memory = new GuestMemory([{ guestPhysAddr: 0, size: 8 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 }]);
  return { memory, bytes: new Uint8Array(buffer) };
}

function chain(memory: GuestMemory, pieces: [number, number][], writable: boolean, head: number): VirtqRequest {
  const r = new VirtqRequest(pieces.length);
  r.memory = memory;
  r.head = head;
  for (const [i, [offset, length]] of pieces.entries()) {
    r.segWindow[i] = 0;
    r.segWindowOffset[i] = offset;
    r.segLength[i] = length;
  }
  const total = pieces.reduce((n, [, length]) => n + length, 0);
  r.segmentCount = pieces.length;
  r.readableCount = writable ? 0 : pieces.length;
  r.writableCount = writable ? pieces.length : 0;
  r.readableBytes = writable ? 0 : total;
  r.writableBytes = writable ? total : 0;
  return r;
}

/** Writes header + frame at `at` and returns a TX request over it, cut into the pieces given (lengths). */
function txRequest(
  memory: GuestMemory,
  bytes: Uint8Array,
  at: number,
  header: Uint8Array,
  frame: Uint8Array,
  cuts: number[] = [],
) {
  bytes.fill(0, at, at + HEADER);
  bytes.set(header, at);
  bytes.set(frame, at + HEADER);
  const total = HEADER + frame.length;
  const pieces: [number, number][] = [];
  let from = 0;
  for (const cut of [...cuts, total]) {
    pieces.push([at + from, cut - from]);
    from = cut;
  }
  return chain(memory, pieces, false, at);
}

interface Got {
  header: Uint8Array;
  frame: Uint8Array;
}

/** An RX queue that records what completed, and reassembles frames (num_buffers) from RX chains. */
class RxRecorder {
  readonly completed: { request: VirtqRequest; len: number }[] = [];
  readonly queue: WorkerQueue;
  constructor(
    readonly memory: GuestMemory,
    readonly bytes: Uint8Array,
    index = 0,
  ) {
    this.queue = { index, memory, stopping: false, complete: (request, len) => void this.completed.push({ request, len }) };
  }

  /** The written bytes of a completed chain, segment by segment. */
  private written(request: VirtqRequest, len: number): Uint8Array {
    const out = new Uint8Array(len);
    let at = 0;
    for (let s = 0; s < request.segmentCount && at < len; s++) {
      const n = Math.min(request.segLength[s], len - at);
      out.set(this.bytes.subarray(request.segWindowOffset[s], request.segWindowOffset[s] + n), at);
      at += n;
    }
    return out;
  }

  frames(): Got[] {
    const frames: Got[] = [];
    const done = this.completed.splice(0);
    while (done.length > 0) {
      const first = this.written(done[0].request, done[0].len);
      const numBuffers = first[10] | (first[11] << 8);
      const parts = done.splice(0, numBuffers).map((c, i) => (i === 0 ? first : this.written(c.request, c.len)));
      frames.push({ header: first.slice(0, 10), frame: Buffer.concat(parts).subarray(HEADER) });
    }
    return frames;
  }
}

const TX_QUEUE = (memory: GuestMemory): WorkerQueue => ({ index: 1, memory, stopping: false, complete() {} });

function setNegotiated(device: NetDevice, offloads: number): void {
  const slots = new Int32Array(device.negotiated);
  slots[NegotiatedSlot.headerBytes] = HEADER;
  slots[NegotiatedSlot.mergeableRxBuffers] = 1;
  slots[NegotiatedSlot.offloads] = offloads;
}

function stat(device: NetDevice, queue: number, slot: number): number {
  return new Float64Array(device.stats)[queue * NET_STAT_SLOTS + slot];
}

const CSUM_HEADER = offloadHeader({ flags: HDR_F_NEEDS_CSUM, hdrLen: 54, csumStart: 34, csumOffset: 16 });
/** A GSO frame: every field set to something the receiver must see unchanged. */
const GSO_HEADER = offloadHeader({
  flags: HDR_F_NEEDS_CSUM,
  gsoType: GSO_TCPV4,
  hdrLen: 54,
  gsoSize: 1448,
  csumStart: 34,
  csumOffset: 16,
});
const SENDS_ALL = Offload.hostCsum | Offload.hostTso4 | Offload.hostTso6 | Offload.hostEcn;
const TAKES_ALL = Offload.guestCsum | Offload.guestTso4 | Offload.guestTso6 | Offload.guestEcn;

describe('loopback with offloads (handler in-process)', () => {
  async function loopback(offloads: number) {
    const { memory, bytes } = guestMemory();
    const device = new NetDevice({ queuePairs: 1, maxQueueSize: 256, mac: MAC, mtu: 1500, offloads: true });
    setNegotiated(device, offloads);
    const handler: QueueHandler = await createNetHandler(device.handlerSpec('loopback').options, context);
    const rx = new RxRecorder(memory, bytes);
    let next = 4 * MiB;
    /** Offers RX chains of `size` bytes (cut into `pieces` segments). */
    const offer = (count: number, size: number, pieces = 1) => {
      for (let i = 0; i < count; i++) {
        const cut = Math.floor(size / pieces);
        const segments: [number, number][] = Array.from({ length: pieces }, (_, p) => [
          next + p * cut,
          p === pieces - 1 ? size - p * cut : cut,
        ]);
        bytes.fill(0xee, next, next + size);
        handler.handle(rx.queue, chain(memory, segments, true, next));
        next += size + 64;
      }
    };
    let txAt = 0;
    const send = (header: Uint8Array, frame: Uint8Array, cuts: number[] = []) => {
      handler.handle(TX_QUEUE(memory), txRequest(memory, bytes, txAt, header, frame, cuts));
      txAt += HEADER + frame.length + 64;
    };
    return { device, handler, rx, offer, send };
  }

  it('passes every header field through when the guest acked the GUEST bits (num_buffers our own)', async () => {
    const { handler, rx, offer, send } = await loopback(SENDS_ALL | TAKES_ALL);
    offer(8, 2048);
    const small = tcpFrame(100, 1);
    partialTcpChecksum(small);
    send(CSUM_HEADER, small);
    const big = tcpFrame(5000, 2); // above MTU: only as GSO
    partialTcpChecksum(big);
    send(GSO_HEADER, big, [5, 12, 3001]);
    const ecn = offloadHeader({
      flags: HDR_F_NEEDS_CSUM,
      gsoType: GSO_TCPV6 | GSO_ECN,
      hdrLen: 74,
      gsoSize: 1428,
      csumStart: 54,
      csumOffset: 16,
    });
    send(ecn, tcpFrame(3000, 3));
    const got = rx.frames();
    expect(got.map((g) => Array.from(g.header))).toEqual([CSUM_HEADER, GSO_HEADER, ecn].map((h) => Array.from(h)));
    expect(sameBytes(got[0].frame, small)).toBe(true); // the checksum is left to the receiver
    expect(sameBytes(got[1].frame, big)).toBe(true);
    expect(got[2].frame.length).toBe(3054);
    handler.close();
  });

  it('completes the checksum in software without GUEST_CSUM (flags 0), whatever the TX and RX cuts', async () => {
    const { device, handler, rx, offer, send } = await loopback(Offload.hostCsum);
    let checked = 0;
    for (const payload of [0, 1, 333, 1460]) {
      for (const cuts of [[], [5], [HEADER + 35], [HEADER + 51, HEADER + 52]]) {
        for (const rxSplit of [1, 3]) {
          // RX chains of 63 bytes: the frame spans several, the checksum bytes (50, 51) straddle two.
          if (rxSplit === 3) offer(Math.ceil((HEADER + 54 + payload) / 63), 63, 2);
          else offer(1, 2048, rxSplit);
          const frame = tcpFrame(payload, payload + cuts.length);
          partialTcpChecksum(frame);
          send(CSUM_HEADER, frame, cuts);
          const [got] = rx.frames();
          expect(Array.from(got.header), `${payload} bytes, cuts ${cuts.join(',')}`).toEqual(new Array(10).fill(0));
          expect(tcpChecksumValid(got.frame), `${payload} bytes, cuts ${cuts.join(',')}, RX ${rxSplit}`).toBe(true);
          // Only the checksum differs from what was sent.
          expect(sameBytes(got.frame.subarray(0, 50), frame.subarray(0, 50))).toBe(true);
          expect(sameBytes(got.frame.subarray(52), frame.subarray(52))).toBe(true);
          checked++;
        }
      }
    }
    expect(checked).toBe(32);
    expect(stat(device, 0, NetStat.packets)).toBe(32);
    expect(stat(device, 0, NetStat.drops)).toBe(0);
    handler.close();
  });

  it('cuts a GSO frame into TCP segments for a guest without the matching GUEST_TSO; drops one that is not TCP', async () => {
    const { device, handler, rx, offer, send } = await loopback(SENDS_ALL | Offload.guestCsum | Offload.guestTso6);
    offer(16, 2048);
    const gso = tcpFrame(4000, 1);
    partialTcpChecksum(gso);
    send(GSO_HEADER, gso, [5, 700]); // TCPv4: no GUEST_TSO4
    const segments = rx.frames();
    expect(segments.map((g) => g.frame.length)).toEqual([1502, 1502, 54 + 4000 - 2 * 1448]);
    for (const g of segments) {
      expect(Array.from(g.header)).toEqual(new Array(10).fill(0));
      expect(tcpChecksumValid(g.frame)).toBe(true);
    }
    expect(Buffer.concat(segments.map((g) => g.frame.subarray(54))).equals(Buffer.from(gso.subarray(54)))).toBe(true);
    expect(stat(device, 0, NetStat.gsoSegmented)).toBe(1);
    // No GUEST_ECN: segmented too; a TCPV4 frame carrying UDP cannot be: dropped, counted.
    const v6 = tcp6Frame(2500, 2);
    send(offloadHeader({ flags: 1, gsoType: GSO_TCPV6 | GSO_ECN, hdrLen: 74, gsoSize: 1000, csumStart: 54, csumOffset: 16 }), v6);
    expect(rx.frames().map((g) => tcp6ChecksumValid(g.frame))).toEqual([true, true, true]);
    const udp = tcpFrame(3000, 3);
    udp[23] = 17;
    send(GSO_HEADER, udp);
    send(CSUM_HEADER, tcpFrame(10, 3)); // still served
    expect(rx.frames()).toHaveLength(1);
    expect(stat(device, 0, NetStat.gsoSegmented)).toBe(2);
    expect(stat(device, 0, NetStat.gsoRefused)).toBe(1);
    expect(stat(device, 0, NetStat.drops)).toBe(1);
    expect(stat(device, 1, NetStat.packets)).toBe(4); // the sender's frames were taken
    // Fewer RX chains than segments: those that fit arrive, the rest are dropped (no-buffer).
    const left = 16 - 3 - 3 - 1;
    send(GSO_HEADER, tcpFrame(20000, 4)); // 14 segments
    expect(rx.frames()).toHaveLength(left);
    expect(stat(device, 0, NetStat.noBuffer)).toBe(14 - left);
    handler.close();
  });

  it('hostile csum_start/csum_offset, hdr_len, gso_size: counted drops, never a throw, the next frame served', async () => {
    const { device, handler, rx, offer, send } = await loopback(SENDS_ALL | Offload.guestCsum);
    offer(8, 2048);
    const frame = tcpFrame(100, 1);
    const hostile = [
      offloadHeader({ flags: 1, csumStart: 0xffff, csumOffset: 0xffff }),
      offloadHeader({ flags: 1, csumStart: 153, csumOffset: 0 }), // field would end one byte past the frame
      offloadHeader({ flags: 1, csumStart: 34, csumOffset: 120 }),
      offloadHeader({ flags: 1, gsoType: GSO_TCPV4, hdrLen: 155, gsoSize: 100, csumStart: 34, csumOffset: 16 }),
      offloadHeader({ flags: 1, gsoType: GSO_TCPV4, hdrLen: 54, gsoSize: 0, csumStart: 34, csumOffset: 16 }),
      offloadHeader({ flags: 0, gsoType: GSO_TCPV4, hdrLen: 54, gsoSize: 100 }), // GSO without NEEDS_CSUM
      offloadHeader({ flags: HDR_F_DATA_VALID }), // not a TX flag
    ];
    for (const header of hostile) expect(() => send(header, frame)).not.toThrow();
    send(CSUM_HEADER, frame);
    expect(rx.frames()).toHaveLength(1);
    expect(stat(device, 1, NetStat.badChain)).toBe(hostile.length);
    expect(stat(device, 1, NetStat.packets)).toBe(1);
    handler.close();
  });
});

describe('switch with offloads (handlers in-process)', () => {
  const macOf = (p: number) => [0x02, 0, 0, 0, 0, 0x10 + p];

  /** Three ports, each guest with its own acked offloads; port p's RX chains recorded. */
  async function threePorts(offloads: number[]) {
    const { memory, bytes } = guestMemory();
    const fabric = new SwitchFabric(3, 1, 1);
    const devices = offloads.map((bits, p) => {
      const device = new NetDevice({
        queuePairs: 1,
        maxQueueSize: 256,
        mac: Uint8Array.of(0x52, 0x54, 0, 0, 0, p),
        mtu: 1500,
        offloads: true,
      });
      setNegotiated(device, bits);
      return device;
    });
    const handlers: QueueHandler[] = [];
    for (const [p, device] of devices.entries())
      handlers.push(await createSwitchHandler(fabric.handlerSpec(p, device).options, context));
    const rx = devices.map(() => new RxRecorder(memory, bytes));
    let next = 4 * MiB;
    for (const [p, handler] of handlers.entries()) {
      for (let i = 0; i < 8; i++) {
        handler.handle(rx[p].queue, chain(memory, [[next, 2048]], true, next));
        next += 4096;
      }
      handler.poll();
    }
    let txAt = 0;
    const send = (from: number, header: Uint8Array, frame: Uint8Array) => {
      handlers[from].handle(TX_QUEUE(memory), txRequest(memory, bytes, txAt, header, frame));
      txAt += HEADER + frame.length + 64;
      handlers[from].flush();
      for (const h of handlers) h.poll();
    };
    const close = () => {
      for (const h of handlers) h.close();
      fabric.close();
    };
    return { devices, rx, send, close };
  }

  it('floods one NEEDS_CSUM frame: passed through to the port that acked GUEST_CSUM, finished for the one that did not', async () => {
    const { devices, rx, send, close } = await threePorts([SENDS_ALL, TAKES_ALL, 0]);
    try {
      const frame = tcpFrame(777, 5, [0xff, 0xff, 0xff, 0xff, 0xff, 0xff], macOf(0));
      partialTcpChecksum(frame);
      send(0, CSUM_HEADER, frame);
      const [toB] = rx[1].frames();
      const [toC] = rx[2].frames();
      expect(Array.from(toB.header)).toEqual(Array.from(CSUM_HEADER));
      expect(sameBytes(toB.frame, frame)).toBe(true);
      expect(Array.from(toC.header)).toEqual(new Array(10).fill(0));
      expect(tcpChecksumValid(toC.frame)).toBe(true);
      expect(rx[0].frames()).toEqual([]); // never back to the sender
      expect(stat(devices[2], 0, NetStat.drops)).toBe(0);
    } finally {
      close();
    }
  });

  it('floods one GSO frame: the TSO port gets it whole with its header, the other in TCP segments cut in software', async () => {
    const { devices, rx, send, close } = await threePorts([SENDS_ALL, TAKES_ALL, Offload.guestCsum]);
    try {
      const bcast = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
      const frame = tcpFrame(6000, 6, bcast, macOf(0));
      partialTcpChecksum(frame);
      send(0, GSO_HEADER, frame);
      const [toB] = rx[1].frames();
      expect(Array.from(toB.header)).toEqual(Array.from(GSO_HEADER));
      expect(sameBytes(toB.frame, frame)).toBe(true);
      const toC = rx[2].frames();
      expect(toC.map((g) => g.frame.length)).toEqual([1502, 1502, 1502, 1502, 54 + 6000 - 4 * 1448]);
      for (const g of toC) {
        expect(Array.from(g.header)).toEqual(new Array(10).fill(0));
        expect(tcpChecksumValid(g.frame)).toBe(true);
      }
      expect(Buffer.concat(toC.map((g) => g.frame.subarray(54))).equals(Buffer.from(frame.subarray(54)))).toBe(true);
      expect(stat(devices[2], 0, NetStat.gsoSegmented)).toBe(1);
      expect(stat(devices[2], 0, NetStat.packets)).toBe(5);
      expect(stat(devices[2], 0, NetStat.drops)).toBe(0);
      // C holds 3 RX chains now: the next one's first 3 segments arrive, the other 2 are dropped
      // (no-buffer) rather than wait.
      const again = tcpFrame(6000, 7, bcast, macOf(0));
      partialTcpChecksum(again);
      send(0, GSO_HEADER, again);
      expect(rx[2].frames()).toHaveLength(3);
      expect(stat(devices[2], 0, NetStat.noBuffer)).toBe(2);
      // A GSO frame that is not TCP as gso_type says cannot be segmented: dropped, counted.
      const udp = tcpFrame(3000, 8, bcast, macOf(0));
      udp[23] = 17;
      send(0, GSO_HEADER, udp);
      expect(stat(devices[2], 0, NetStat.gsoRefused)).toBe(1);
    } finally {
      close();
    }
  });

  it('refuses hostile headers and offloads the sender did not ack at the sender (bad-chain), above-MTU frames without GSO (too-big)', async () => {
    const { devices, rx, send, close } = await threePorts([Offload.hostCsum, TAKES_ALL, TAKES_ALL]);
    try {
      const bcast = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
      send(0, offloadHeader({ flags: 1, csumStart: 100, csumOffset: 16 }), tcpFrame(50, 1, bcast, macOf(0)));
      send(0, GSO_HEADER, tcpFrame(3000, 2, bcast, macOf(0))); // HOST_TSO4 not acked
      send(0, offloadHeader({}), tcpFrame(3000, 3, bcast, macOf(0))); // above MTU, not GSO
      expect(stat(devices[0], 1, NetStat.badChain)).toBe(2);
      expect(stat(devices[0], 1, NetStat.tooBig)).toBe(1);
      expect(rx[1].frames()).toEqual([]);
      expect(rx[2].frames()).toEqual([]);
    } finally {
      close();
    }
  });
});
