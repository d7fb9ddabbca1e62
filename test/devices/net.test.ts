// virtio-net through the real daemon, worker data plane and a front-end over a socket: features
// and config space, the loopback / sink / source back-ends with and without MRG_RXBUF, frames
// spanning RX chains, drops, every bad-input case of issue 9, stopping rings that hold RX
// buffers, queue pairs on their own worker, and every poll mode.
import { afterEach, describe, expect, it } from 'vitest';
import { setLogSink } from '../../dist/log.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';
import { SOURCE_MAC, SOURCE_SEQUENCE_OFFSET, ipv4HeaderChecksum } from '../../dist/devices/net/frame.js';
import { MAC, NetRig, ethernetFrame, sameBytes, type NetGuest, type NetRigOptions } from './net-rig.js';
import { Offload } from '../../dist/devices/net/offload.js';
import { offloadHeader, partialTcpChecksum, tcpChecksumValid, tcpFrame } from './net-offload-frames.js';

const rigs: NetRig[] = [];
const guests: NetGuest[] = [];

afterEach(async () => {
  for (const guest of guests.splice(0)) guest.close();
  for (const rig of rigs.splice(0)) await rig.stop();
});

const bit = (n: number) => 1n << BigInt(n);
/** Everything offered but RING_PACKED (bit 34): the front-end library drives split rings here. */
const ALL = ~(1n << 34n);

async function start(
  options: NetRigOptions,
  connect: Parameters<NetRig['connect']>[0] = {},
): Promise<{ rig: NetRig; guest: NetGuest }> {
  const rig = await NetRig.start(options);
  rigs.push(rig);
  const guest = await rig.connect(connect);
  guests.push(guest);
  return { rig, guest };
}

function zeroHeader(header: Uint8Array): boolean {
  for (let i = 0; i < 10; i++) if (header[i] !== 0) return false;
  return true;
}

describe('features and config space', () => {
  it.each(['sink', 'source'] as const)('%s offers no checksum/TSO offload (nothing receives the header)', async (backend) => {
    const { guest } = await start({ backend });
    for (const feature of [
      NetFeature.CSUM,
      NetFeature.GUEST_CSUM,
      NetFeature.HOST_TSO4,
      NetFeature.HOST_TSO6,
      NetFeature.GUEST_TSO4,
      NetFeature.GUEST_TSO6,
      NetFeature.HOST_ECN,
      NetFeature.GUEST_ECN,
    ]) {
      expect(guest.device.offeredFeatures & bit(feature), `bit ${feature}`).toBe(0n);
    }
  });

  it('offers VERSION_1, MRG_RXBUF, EVENT_IDX, INDIRECT_DESC, MTU, MAC, STATUS, loopback the offloads; MQ only with several pairs', async () => {
    const { guest } = await start({ backend: 'loopback' });
    const offered = guest.device.offeredFeatures;
    for (const feature of [
      32,
      29,
      28,
      NetFeature.MRG_RXBUF,
      NetFeature.MTU,
      NetFeature.MAC,
      NetFeature.STATUS,
      NetFeature.CSUM,
      NetFeature.GUEST_CSUM,
      NetFeature.HOST_TSO4,
      NetFeature.GUEST_TSO6,
    ]) {
      expect(offered & bit(feature), `bit ${feature}`).not.toBe(0n);
    }
    for (const feature of [NetFeature.MQ, NetFeature.CTRL_VQ]) {
      expect(offered & bit(feature), `bit ${feature}`).toBe(0n);
    }
    const multi = await start({ backend: 'loopback', queuePairs: 3 }, { queuePairs: 3 });
    expect(multi.guest.device.offeredFeatures & bit(NetFeature.MQ)).not.toBe(0n);
    expect(multi.guest.device.backendQueues).toBe(6);
  });

  it('config space holds the MAC, link up, max_virtqueue_pairs and the MTU', async () => {
    const { guest } = await start({ backend: 'loopback', queuePairs: 2, mtu: 9000 });
    const config = await guest.device.getConfig(0, 12);
    expect(Array.from(config.subarray(0, 6))).toEqual(Array.from(MAC));
    const view = new DataView(config.buffer, config.byteOffset, 12);
    expect(view.getUint16(6, true)).toBe(1);
    expect(view.getUint16(8, true)).toBe(2);
    expect(view.getUint16(10, true)).toBe(9000);
    await expect(guest.device.getConfig(8, 8)).rejects.toThrow();
  });
});

describe('loopback', () => {
  it('returns frames byte-exact with MRG_RXBUF, whatever the TX layout', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    expect(guest.mergeable).toBe(true);
    await rig.offerRx(guest, 16, 2048);
    const frames = [60, 64, 1514, 1518, 100, 777].map((length, i) => ethernetFrame(length, i + 1));
    const layouts = ['one', 'two', 'split-header', 'one', 'two', 'split-header'] as const;
    const tokens = frames.map((frame, i) => guest.send(frame, { layout: layouts[i], indirect: i >= 3 }));
    expect(await guest.waitTx(tokens)).toEqual(tokens.map(() => 0));
    const received = await guest.receive(frames.length);
    for (const [i, got] of received.entries()) {
      expect(got.numBuffers).toBe(1);
      expect(zeroHeader(got.header)).toBe(true);
      expect(sameBytes(got.frame, frames[i]), `frame ${i}`).toBe(true);
    }
    const stats = await rig.waitStats((s) => s[0].packets === frames.length);
    const bytes = frames.reduce((sum, f) => sum + f.length, 0);
    expect(stats[1]).toMatchObject({ packets: frames.length, bytes, drops: 0 });
    expect(stats[0]).toMatchObject({ packets: frames.length, bytes, drops: 0 });
  });

  it('spreads a frame over several RX chains (num_buffers), also when a chain has several descriptors', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    await rig.offerRx(guest, 8, 256);
    await rig.offerRx(guest, 8, 300, { split: 3 });
    const big = ethernetFrame(1514, 7);
    guest.send(big);
    const [first] = await guest.receive(1);
    expect(first.numBuffers).toBe(Math.ceil((1514 + 12) / 256));
    expect(sameBytes(first.frame, big)).toBe(true);
    // The next frame starts in the next chain: 2 of 256 left, then the 300-byte split ones.
    const second = ethernetFrame(1400, 8);
    guest.send(second);
    const [again] = await guest.receive(1);
    expect(again.numBuffers).toBe(2 + Math.ceil((1412 - 512) / 300));
    expect(sameBytes(again.frame, second)).toBe(true);
  });

  it('without MRG_RXBUF: one chain per frame, num_buffers 1 (VERSION_1), a frame larger than the buffer is dropped', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { wantedFeatures: ALL & ~bit(NetFeature.MRG_RXBUF) });
    expect(guest.mergeable).toBe(false);
    expect(guest.headerBytes).toBe(12);
    await rig.offerRx(guest, 1, 512);
    guest.send(ethernetFrame(1000, 1));
    await rig.waitStats((s) => s[0].tooBig === 1);
    const frame = ethernetFrame(500, 2);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(got.numBuffers).toBe(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 1, drops: 1, tooBig: 1 });
  });

  it('without VERSION_1 and MRG_RXBUF the header is the 10-byte legacy one', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { wantedFeatures: ALL & ~bit(NetFeature.MRG_RXBUF) & ~bit(32) });
    expect(guest.headerBytes).toBe(10);
    await rig.offerRx(guest, 2, 2048);
    const frame = ethernetFrame(300, 3);
    guest.send(frame, { layout: 'split-header' });
    const [got] = await guest.receive(1);
    expect(got.header.length).toBe(10);
    expect(sameBytes(got.frame, frame)).toBe(true);
  });

  it('drops and counts frames that find no RX buffer, and never queues them', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    const tokens = Array.from({ length: 10 }, (_, i) => guest.send(ethernetFrame(100, i)));
    expect(await guest.waitTx(tokens)).toEqual(tokens.map(() => 0));
    await rig.waitStats((s) => s[0].noBuffer === 10);
    await rig.offerRx(guest, 4, 2048);
    const frame = ethernetFrame(200, 99);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true); // the new frame, not one of the dropped ones
    expect(guest.reapRx()).toBe(0);
    expect(rig.stats(0)).toMatchObject({ packets: 1, drops: 10, noBuffer: 10 });
    expect(rig.stats(1)).toMatchObject({ packets: 11, drops: 0 });
  });

  it('a frame needing more RX chains than are offered is dropped whole; the chains serve the next frame', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    await rig.offerRx(guest, 3, 128);
    guest.send(ethernetFrame(1514, 1));
    await rig.waitStats((s) => s[0].noBuffer === 1);
    expect(guest.reapRx()).toBe(0); // nothing half-written
    const frame = ethernetFrame(300, 2);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(got.numBuffers).toBe(3);
    expect(sameBytes(got.frame, frame)).toBe(true);
  });
});

describe('loopback with offloads acked', () => {
  const CSUM = bit(NetFeature.CSUM);
  const GUEST_CSUM = bit(NetFeature.GUEST_CSUM);
  const TSO = bit(NetFeature.HOST_TSO4) | bit(NetFeature.GUEST_TSO4);

  it('passes the header through with GUEST_CSUM and TSO, with num_buffers for a GSO frame spanning RX chains', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { extraFeatures: CSUM | GUEST_CSUM | TSO });
    expect(rig.device.offloads).toBe(Offload.hostCsum | Offload.hostTso4 | Offload.guestCsum | Offload.guestTso4);
    await rig.offerRx(guest, 16, 2048);
    const small = tcpFrame(200, 1);
    partialTcpChecksum(small);
    const csumHeader = offloadHeader({ flags: 1, hdrLen: 54, csumStart: 34, csumOffset: 16 });
    guest.send(small, { header: csumHeader, layout: 'split-header' });
    const big = tcpFrame(8000, 2); // a GSO frame above the 1500 MTU
    partialTcpChecksum(big);
    const gsoHeader = offloadHeader({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
    guest.send(big, { header: gsoHeader });
    const [first, second] = await guest.receive(2);
    expect(Array.from(first.header.subarray(0, 10))).toEqual(Array.from(csumHeader));
    expect(sameBytes(first.frame, small)).toBe(true);
    expect(Array.from(second.header.subarray(0, 10))).toEqual(Array.from(gsoHeader));
    expect(second.numBuffers).toBe(Math.ceil((12 + big.length) / 2048));
    expect(sameBytes(second.frame, big)).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 2, drops: 0 });
  });

  it('finishes the checksum for a guest that acked CSUM but not GUEST_CSUM, and segments GSO it cannot take', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { extraFeatures: CSUM | bit(NetFeature.HOST_TSO4) });
    await rig.offerRx(guest, 8, 2048);
    const frame = tcpFrame(1001, 3);
    partialTcpChecksum(frame);
    guest.send(frame, { header: offloadHeader({ flags: 1, hdrLen: 54, csumStart: 34, csumOffset: 16 }), layout: 'two' });
    const [got] = await guest.receive(1);
    expect(zeroHeader(got.header)).toBe(true);
    expect(tcpChecksumValid(got.frame)).toBe(true);
    expect(tcpChecksumValid(frame)).toBe(false);
    const gso = tcpFrame(4000, 4);
    guest.send(gso, {
      header: offloadHeader({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 }),
    });
    const segments = await guest.receive(3);
    expect(segments.every((s) => zeroHeader(s.header) && tcpChecksumValid(s.frame))).toBe(true);
    expect(Buffer.concat(segments.map((s) => s.frame.subarray(54))).equals(Buffer.from(gso.subarray(54)))).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 4, drops: 0, gsoSegmented: 1 });
    expect(rig.stats(1)).toMatchObject({ packets: 2, drops: 0 });
  });
});

describe('sink and source', () => {
  it('sink counts and drops every frame; RX buffers stay with the back-end', async () => {
    const { rig, guest } = await start({ backend: 'sink' });
    guest.postRx(8, 2048);
    const frames = Array.from({ length: 50 }, (_, i) => ethernetFrame(60 + i * 29, i));
    const tokens = frames.map((frame) => guest.send(frame, { kick: false }));
    guest.tx().publishAndKick();
    expect(await guest.waitTx(tokens)).toEqual(tokens.map(() => 0));
    const bytes = frames.reduce((sum, f) => sum + f.length, 0);
    const stats = await rig.waitStats((s) => s[1].packets === 50);
    expect(stats[1]).toMatchObject({ packets: 50, bytes, drops: 0 });
    expect(stats[0]).toMatchObject({ packets: 0, drops: 0 });
    expect(guest.reapRx()).toBe(0);
  });

  it.each([
    [64, 2048, true],
    [1514, 2048, true],
    [1514, 512, true],
    [200, 2048, false],
  ])(
    'source fills RX buffers with valid %i-byte frames (buffers of %i, MRG_RXBUF %s)',
    async (frameBytes, bufferBytes, mergeable) => {
      const { rig, guest } = await start(
        { backend: 'source', frameBytes },
        mergeable ? {} : { wantedFeatures: ALL & ~bit(NetFeature.MRG_RXBUF) },
      );
      guest.postRx(32, bufferBytes);
      const perFrame = mergeable ? Math.ceil((frameBytes + guest.headerBytes) / bufferBytes) : 1;
      const count = Math.floor(32 / perFrame);
      const frames = await guest.receive(count);
      const sequences = new Set<number>();
      for (const { frame, numBuffers } of frames) {
        expect(numBuffers).toBe(perFrame);
        expect(frame.length).toBe(frameBytes);
        expect(Array.from(frame.subarray(0, 6))).toEqual(Array.from(MAC));
        expect(Array.from(frame.subarray(6, 12))).toEqual(Array.from(SOURCE_MAC));
        expect((frame[12] << 8) | frame[13]).toBe(0x0800);
        expect((frame[16] << 8) | frame[17]).toBe(frameBytes - 14); // IPv4 total length
        expect((frame[24] << 8) | frame[25]).toBe(ipv4HeaderChecksum(frame, 14));
        sequences.add(new DataView(frame.buffer, frame.byteOffset).getUint32(SOURCE_SEQUENCE_OFFSET, true));
      }
      expect(sequences.size).toBe(count);
      const stats = await rig.waitStats((s) => s[0].packets === count);
      expect(stats[0]).toMatchObject({ packets: count, bytes: count * frameBytes, drops: 0 });
      // More buffers, more frames: the source keeps up with what the guest offers.
      guest.postRx(perFrame * 5, bufferBytes);
      expect((await guest.receive(5)).length).toBe(5);
    },
  );

  it('source fills RX chains split over several descriptors, each holding a whole frame', async () => {
    const { rig, guest } = await start({ backend: 'source', frameBytes: 200 });
    guest.postRx(16, 600, { split: 3 }); // 3 descriptors of 200 bytes: header and frame span all three
    const frames = await guest.receive(16);
    const sequences = new Set<number>();
    for (const { frame, numBuffers } of frames) {
      expect(numBuffers).toBe(1);
      expect(frame.length).toBe(200);
      expect(Array.from(frame.subarray(0, 6))).toEqual(Array.from(MAC));
      expect((frame[24] << 8) | frame[25]).toBe(ipv4HeaderChecksum(frame, 14));
      for (let i = SOURCE_SEQUENCE_OFFSET + 4; i < 200; i++) if (frame[i] !== (i & 0xff)) throw new Error(`payload byte ${i}`);
      sequences.add(new DataView(frame.buffer, frame.byteOffset).getUint32(SOURCE_SEQUENCE_OFFSET, true));
    }
    expect(sequences.size).toBe(16);
    const stats = await rig.waitStats((s) => s[0].packets === 16);
    expect(stats[0]).toMatchObject({ packets: 16, bytes: 16 * 200, drops: 0 });
  });
});

describe('bad input', () => {
  /** Log lines while `run` runs, up to a worker round trip after it (worker logs arrive in order before the reply). */
  async function captureWarnings<T>(rig: NetRig, run: () => Promise<T>): Promise<{ result: T; lines: string[] }> {
    const lines: string[] = [];
    const previous = setLogSink((line) => lines.push(line));
    try {
      const result = await run();
      await rig.plane.setMode(rig.plane.pollMode);
      return { result, lines };
    } finally {
      setLogSink(previous);
    }
  }

  it('a TX frame above MTU + headers is dropped, counted and logged once; the next frame is served', async () => {
    const { rig, guest } = await start({ backend: 'loopback', mtu: 1500 });
    await rig.offerRx(guest, 4, 2048);
    const { lines } = await captureWarnings(rig, async () => {
      const tokens = [guest.send(ethernetFrame(1519, 1)), guest.send(ethernetFrame(4000, 2)), guest.send(ethernetFrame(1519, 3))];
      expect(await guest.waitTx(tokens)).toEqual([0, 0, 0]);
      await rig.waitStats((s) => s[1].tooBig === 3);
    });
    expect(lines.filter((l) => l.includes('above MTU')).length).toBe(1);
    const frame = ethernetFrame(1518, 4); // MTU + Ethernet header + VLAN tag: accepted
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
    expect(rig.stats(1)).toMatchObject({ packets: 1, drops: 3, tooBig: 3 });
  });

  it('a TX chain with a device-writable descriptor, or shorter than the header, is dropped and counted', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    await rig.offerRx(guest, 4, 2048);
    const tx = guest.tx();
    const buffer = guest.alloc(2048);
    const { lines } = await captureWarnings(rig, async () => {
      const writable = guest.post(tx, [
        { gpa: buffer, len: 12, writable: false },
        { gpa: buffer + 64, len: 100, writable: true },
      ]);
      const short = guest.post(tx, [{ gpa: buffer + 256, len: 8, writable: false }]);
      const runt = guest.post(tx, [{ gpa: buffer + 512, len: 12 + 10, writable: false }]);
      tx.publishAndKick();
      expect(await guest.waitTx([writable, short, runt])).toEqual([0, 0, 0]);
      await rig.waitStats((s) => s[1].badChain === 3);
    });
    expect(lines.filter((l) => l.includes('TX chain refused')).length).toBe(1);
    const frame = ethernetFrame(80, 5);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
    expect(rig.stats(1)).toMatchObject({ packets: 1, drops: 3, badChain: 3 });
  });

  it('a TX header asking for a checksum or segmentation offload (offered, not acked) is dropped and counted', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    await rig.offerRx(guest, 4, 2048);
    const tx = guest.tx();
    const tokens = [
      [1, 0], // flags: NEEDS_CSUM
      [0, 1], // gso_type: TCPV4
    ].map(([flags, gsoType]) => {
      const at = guest.alloc(12 + 100);
      const bytes = guest.bytes(at, 12 + 100);
      bytes.fill(0, 0, 12);
      bytes[0] = flags!;
      bytes[1] = gsoType!;
      bytes.set(ethernetFrame(100, 9), 12);
      return guest.post(tx, [{ gpa: at, len: 112, writable: false }]);
    });
    tx.publishAndKick();
    expect(await guest.waitTx(tokens)).toEqual([0, 0]);
    await rig.waitStats((s) => s[1].badChain === 2);
    const frame = ethernetFrame(100, 10);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 1, drops: 0 });
  });

  it('RX chains shorter than the header or with device-readable descriptors are handed back unused', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    const rx = guest.rx();
    const buffer = guest.alloc(4096);
    guest.post(rx, [{ gpa: buffer, len: 8, writable: true }]);
    guest.post(rx, [
      { gpa: buffer + 64, len: 64, writable: false },
      { gpa: buffer + 128, len: 2048, writable: true },
    ]);
    rx.publishAndKick();
    await rig.waitStats((s) => s[0].badBuffers === 2);
    let reaped = 0;
    const deadline = Date.now() + 5000;
    while (reaped < 2 && Date.now() < deadline) {
      reaped += guest.reapRx();
      await new Promise((resolve) => setImmediate(resolve));
    }
    const entries = guest.takeRxEntries();
    expect(entries.map((e) => e.len)).toEqual([0, 0]);
    await rig.offerRx(guest, 1, 2048);
    const frame = ethernetFrame(1000, 6);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 1, badBuffers: 2, drops: 0 });
  });

  it('a queue index beyond the negotiated pairs is refused by the session; the device keeps serving', async () => {
    const { rig, guest } = await start({ backend: 'loopback' });
    await expect(guest.device.client.request({ type: 'SET_VRING_NUM', index: 2, num: 256 })).rejects.toThrow();
    await rig.offerRx(guest, 1, 2048);
    const frame = ethernetFrame(64, 7);
    guest.send(frame);
    const [got] = await guest.receive(1);
    expect(sameBytes(got.frame, frame)).toBe(true);
  });
});

describe.each(['busy', 'interrupt', 'adaptive'] as const)('%s mode', (mode) => {
  it('loops frames back, and GET_VRING_BASE returns although the RX ring holds buffers', async () => {
    const { rig, guest } = await start({ backend: 'loopback', mode });
    await rig.offerRx(guest, 64, 2048);
    for (let round = 0; round < 4; round++) {
      const frames = Array.from({ length: 8 }, (_, i) => ethernetFrame(64 + 100 * i, round * 8 + i));
      const tokens = frames.map((f) => guest.send(f, { kick: false }));
      guest.tx().publishAndKick();
      await guest.waitTx(tokens);
      const received = await guest.receive(frames.length);
      received.forEach((got, i) => expect(sameBytes(got.frame, frames[i])).toBe(true));
    }
    // 32 of 64 RX buffers are still held: stopping returns at once and leaves them with the
    // driver (last_avail_idx steps back over them; nothing is written to the used ring).
    expect(await guest.device.stopQueue(0)).toBe(32);
    expect(guest.reapRx()).toBe(0);
    expect(await guest.device.stopQueue(1)).toBe(32);
    // Restarted from that index, the back-end pops the same 32 buffers again and fills them.
    await restartQueue(guest, 0, 32);
    await restartQueue(guest, 1, 32);
    const frames = Array.from({ length: 32 }, (_, i) => ethernetFrame(60 + i, 100 + i));
    // Give the worker time to pop the RX buffers again before frames arrive.
    await rig.waitStats(() => rig.plane.queueStats(0).inFlight === 32);
    const tokens = frames.map((f) => guest.send(f, { kick: false }));
    guest.tx().publishAndKick();
    await guest.waitTx(tokens);
    const received = await guest.receive(frames.length);
    received.forEach((got, i) => expect(sameBytes(got.frame, frames[i])).toBe(true));
    expect(rig.stats(0).noBuffer).toBe(0);
  });
});

/** Starts queue `index` again after a stop, from avail index `base` (as QEMU resumes a ring). */
async function restartQueue(guest: NetGuest, index: number, base: number): Promise<void> {
  const queue = guest.device.queues[index];
  const client = guest.device.client;
  const memory = guest.memory;
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
  await client.request({ type: 'SET_VRING_KICK', index, noFd: false, fd: queue.kickFd });
  await client.request({ type: 'SET_VRING_ENABLE', index, num: 1 });
}

describe('IN_ORDER (VIRTIO_F_IN_ORDER, bit 35): RX buffers are used in the order they were offered', () => {
  const IN_ORDER = bit(35);

  /**
   * Offers a good buffer, a refused one (8 bytes: shorter than the header) and a good one, and
   * waits until the worker popped them; returns their addresses.
   */
  async function offerGoodBadGood(rig: NetRig, guest: NetGuest): Promise<number[]> {
    const buffers = [guest.alloc(2048), guest.alloc(64), guest.alloc(2048)];
    guest.postRxChain([{ gpa: buffers[0], len: 2048, writable: true }]);
    guest.postRxChain([{ gpa: buffers[1], len: 8, writable: true }]);
    guest.postRxChain([{ gpa: buffers[2], len: 2048, writable: true }]);
    guest.rx().publishAndKick();
    await rig.waitStats((s) => s[0].badBuffers === 1);
    // Held: two (the refused one counts too while it waits behind the first under IN_ORDER).
    const inOrder = (guest.device.features & IN_ORDER) !== 0n;
    await rig.waitStats(() => rig.plane.queueStats(0).inFlight === (inOrder ? 3 : 2));
    return buffers;
  }

  it('is offered by every back-end and negotiated by a driver that asks', async () => {
    for (const backend of ['loopback', 'sink', 'source'] as const) {
      const { guest } = await start({ backend }, { wantedFeatures: ALL });
      expect(guest.device.offeredFeatures & IN_ORDER, backend).toBe(IN_ORDER);
      expect(guest.device.features & IN_ORDER, backend).toBe(IN_ORDER);
    }
  });

  it('a refused RX buffer between held ones is used after the older one, not before', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { wantedFeatures: ALL });
    const [first, bad, last] = await offerGoodBadGood(rig, guest);
    // The refused buffer is done, but the one before it is still held: nothing is used yet.
    expect(guest.reapRx()).toBe(0);
    const frames = [ethernetFrame(100, 1), ethernetFrame(200, 2)];
    guest.send(frames[0]);
    await guest.waitTx([guest.send(frames[1])]);
    await rig.waitStats((s) => s[0].packets === 2);
    for (let reaped = 0, tries = 0; reaped < 3 && tries < 1000; tries++) {
      reaped += guest.reapRx();
      await new Promise((resolve) => setImmediate(resolve));
    }
    const headerBytes = guest.headerBytes;
    expect(guest.takeRxEntries()).toEqual([
      { gpa: first, len: headerBytes + 100 },
      { gpa: bad, len: 0 },
      { gpa: last, len: headerBytes + 200 },
    ]);
    expect(sameBytes(guest.bytes(first + headerBytes, 100), frames[0])).toBe(true);
    expect(sameBytes(guest.bytes(last + headerBytes, 200), frames[1])).toBe(true);
    expect(rig.stats(0)).toMatchObject({ packets: 2, badBuffers: 1, drops: 0 });
  });

  it('without IN_ORDER the refused buffer is used at once, ahead of the held one (what the reorder prevents)', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { wantedFeatures: ALL & ~IN_ORDER });
    const [, bad] = await offerGoodBadGood(rig, guest);
    expect(guest.reapRx()).toBe(1);
    expect(guest.takeRxEntries()).toEqual([{ gpa: bad, len: 0 }]);
  });

  it('GET_VRING_BASE drains: the newest held buffer goes back, the one before the refused buffer is used with 0', async () => {
    const { rig, guest } = await start({ backend: 'loopback' }, { wantedFeatures: ALL });
    const [first, bad] = await offerGoodBadGood(rig, guest);
    expect(guest.reapRx()).toBe(0);
    // The third buffer steps back (the driver keeps it); the first cannot (the refused one was
    // popped after it), so it is used with len 0, then the refused one.
    expect(await guest.device.stopQueue(0)).toBe(2);
    expect(guest.reapRx()).toBe(2);
    expect(guest.takeRxEntries()).toEqual([
      { gpa: first, len: 0 },
      { gpa: bad, len: 0 },
    ]);
    expect(await guest.device.stopQueue(1)).toBe(0);
  });
});

describe('queue pairs', () => {
  it('keeps both queues of a pair on one worker and loops each pair back onto itself', async () => {
    const { rig, guest } = await start(
      { backend: 'loopback', queuePairs: 2, cpus: [1, 1], mode: 'interrupt' },
      { queuePairs: 2 },
    );
    expect([0, 1, 2, 3].map((q) => rig.plane.workerFor(q))).toEqual([0, 0, 1, 1]);
    await rig.offerRx(guest, 4, 2048, { pair: 0 });
    await rig.offerRx(guest, 4, 2048, { pair: 1 });
    const a = ethernetFrame(100, 1);
    const b = ethernetFrame(200, 2);
    guest.send(a, { pair: 0 });
    guest.send(b, { pair: 1 });
    const [onPair1] = await guest.receive(1, 1);
    expect(sameBytes(onPair1.frame, b)).toBe(true);
    const stats = await rig.waitStats((s) => s[0].packets === 1 && s[2].packets === 1);
    expect(stats.map((s) => s.packets)).toEqual([1, 1, 1, 1]);
  });
});
