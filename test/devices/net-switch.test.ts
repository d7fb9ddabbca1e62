// The `switch` back-end through the real assembly (startNetBackend: one daemon and data plane
// per port, one SwitchFabric between them) with a front-end-library guest on each port:
// flooding of unknown, broadcast and multicast destinations, MAC learning, filtering, the
// frame ring dropping and counting when a port stops taking frames, queue pairs on several
// workers, every poll mode, bad TX chains, SEND_RARP (flooded, and learned), NET_SET_MTU.
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { ProtocolFeature } from '../../dist/control/protocol.js';
import { FRONTEND_PROTOCOL_FEATURES } from '../../dist/frontend/features.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { startNetBackend, type NetBackend } from '../../dist/devices/net/backend.js';
import { DEFAULT_SWITCH_RING_BYTES, switchRingBytes } from '../../dist/devices/net/switch-fabric.js';
import { FRAME_RECORD_HEADER_BYTES } from '../../dist/dataplane/frame-ring.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';
import type { PollMode } from '../../dist/dataplane/commands.js';
import { NET_GUEST_FEATURES, NetGuest, sameBytes } from './net-rig.js';
import { offloadHeader, partialTcpChecksum, tcpChecksumValid, tcpFrame } from './net-offload-frames.js';

const BASE_MAC = Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x50);
const BROADCAST = Uint8Array.of(0xff, 0xff, 0xff, 0xff, 0xff, 0xff);
const MULTICAST = Uint8Array.of(0x01, 0x00, 0x5e, 0x00, 0x00, 0x01);
const bit = (n: number) => 1n << BigInt(n);

/** A guest's own address: 02:00:00:00:00:NN (locally administered). */
function guestMac(n: number): Uint8Array {
  return Uint8Array.of(0x02, 0, 0, 0, 0, n);
}

let seed = 1;
function frame(to: Uint8Array, from: Uint8Array, length = 100): Uint8Array {
  const bytes = new Uint8Array(length);
  bytes.set(to, 0);
  bytes.set(from, 6);
  bytes[12] = 0x88;
  bytes[13] = 0xb5;
  const s = seed++;
  for (let i = 14; i < length; i++) bytes[i] = (i * 13 + s * 101) & 0xff;
  return bytes;
}

function zeroHeader(header: Uint8Array): boolean {
  return header.subarray(0, 10).every((b) => b === 0);
}

class SwitchRig {
  readonly guests: NetGuest[] = [];

  constructor(
    readonly dir: string,
    readonly backend: NetBackend,
  ) {}

  static async start(options: { ports: number; mode?: PollMode; queuePairs?: number; cpus?: number[]; mtu?: number }) {
    const dir = mkdtempSync(join(tmpdir(), 'vut-switch-'));
    const backend = await startNetBackend({
      socketPaths: Array.from({ length: options.ports }, (_, p) => join(dir, `port${p}.sock`)),
      client: false,
      backend: 'switch',
      queuePairs: options.queuePairs ?? 1,
      queueSize: 256,
      cpus: options.cpus ?? [1],
      poll: options.mode ?? 'busy',
      idleBudgetUs: 50,
      mac: BASE_MAC,
      mtu: options.mtu ?? 1500,
      frameBytes: 64,
    });
    return new SwitchRig(dir, backend);
  }

  async connect(
    port: number,
    options: { queuePairs?: number; protocol?: bigint; extraFeatures?: bigint } = {},
  ): Promise<NetGuest> {
    const memory = FrontendMemory.simple(32 << 20);
    const device = await FrontendDevice.connect({
      socketPath: this.backend.ports[port].socketPath,
      memory,
      queues: 2 * (options.queuePairs ?? 1),
      queueSize: 256,
      indirectEntries: 8,
      deviceFeatures: NET_GUEST_FEATURES | (options.extraFeatures ?? 0n),
      wantedProtocolFeatures: options.protocol,
    });
    const guest = new NetGuest(device, memory);
    this.guests.push(guest);
    return guest;
  }

  /** Posts RX buffers on `port` and waits until its worker holds them (then its RX queue runs). */
  async offerRx(port: number, guest: NetGuest, count: number, bytes = 2048, pair = 0): Promise<void> {
    const plane = this.backend.ports[port].plane;
    const queue = 2 * pair;
    const before = plane.queueStats(queue).inFlight;
    guest.postRx(count, bytes, { pair });
    const deadline = Date.now() + 10_000;
    while (plane.queueStats(queue).inFlight < before + count) {
      if (Date.now() > deadline) throw new Error(`port ${port} holds ${plane.queueStats(queue).inFlight} RX buffers`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }

  stats(port: number) {
    return this.backend.ports[port].device.netStats();
  }

  async waitStats(port: number, predicate: (stats: ReturnType<SwitchRig['stats']>) => boolean, timeoutMs = 10_000) {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const stats = this.stats(port);
      if (predicate(stats)) return stats;
      if (Date.now() > deadline) throw new Error(`port ${port} statistics never matched: ${JSON.stringify(stats)}`);
      await new Promise((resolve) => setTimeout(resolve, 5));
    }
  }

  async stop(): Promise<void> {
    for (const guest of this.guests.splice(0)) guest.close();
    await this.backend.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }
}

const rigs: SwitchRig[] = [];
afterEach(async () => {
  for (const rig of rigs.splice(0)) await rig.stop();
});

async function start(options: Parameters<typeof SwitchRig.start>[0]): Promise<SwitchRig> {
  const rig = await SwitchRig.start(options);
  rigs.push(rig);
  return rig;
}

/** Three ports, each guest holding `rx` RX buffers; port 0's front-end acks `protocol0`. */
async function threePorts(mode: PollMode = 'busy', rx = 32, protocol0?: bigint) {
  const rig = await start({ ports: 3, mode });
  const guests = [await rig.connect(0, { protocol: protocol0 }), await rig.connect(1), await rig.connect(2)];
  for (const [p, guest] of guests.entries()) await rig.offerRx(p, guest, rx);
  return { rig, guests };
}

/** Lets frames in flight land, then says how many RX entries `guest` got (and forgets them). */
async function settledCount(guest: NetGuest): Promise<number> {
  await new Promise((resolve) => setTimeout(resolve, 100));
  guest.reapRx();
  return guest.takeRxEntries().length;
}

describe('switch: flooding and learning', () => {
  for (const mode of ['busy', 'interrupt', 'adaptive'] as const) {
    it(`floods unknown and broadcast destinations to every other port, then learns (${mode} polling)`, async () => {
      const { rig, guests } = await threePorts(mode);
      const [a, b, c] = guests;
      // A's first frame, to an address nobody has sent from: B and C get it, A does not.
      const unknown = frame(guestMac(2), guestMac(1));
      a.send(unknown);
      for (const guest of [b, c]) {
        const [got] = await guest.receive(1);
        expect(sameBytes(got.frame, unknown)).toBe(true);
        expect(got.numBuffers).toBe(1);
      }
      // B answers A: A's address was learned from its frame, so only A gets it.
      const answer = frame(guestMac(1), guestMac(2));
      b.send(answer);
      const [atA] = await a.receive(1);
      expect(sameBytes(atA.frame, answer)).toBe(true);
      // Now both are known: A → B reaches B only.
      const direct = frame(guestMac(2), guestMac(1), 1514);
      a.send(direct);
      const [atB] = await b.receive(1);
      expect(sameBytes(atB.frame, direct)).toBe(true);
      expect(await settledCount(c)).toBe(0);
      expect(await settledCount(a)).toBe(0);
      // Broadcast from C: A and B.
      const hello = frame(BROADCAST, guestMac(3));
      c.send(hello);
      expect(sameBytes((await a.receive(1))[0].frame, hello)).toBe(true);
      expect(sameBytes((await b.receive(1))[0].frame, hello)).toBe(true);
      expect(await settledCount(c)).toBe(0);
      // Counters: A sent 2 frames (TX queue 1), received 2 (RX queue 0).
      const stats = await rig.waitStats(0, (s) => s[0].packets === 2 && s[1].packets === 2);
      expect(stats[1]).toMatchObject({ packets: 2, bytes: 100 + 1514, drops: 0 });
      const learned = rig.backend.fabric!.macTable.entries(rig.backend.fabric!.now());
      expect(learned.sort((x, y) => x.port - y.port)).toMatchObject([
        { mac: '02:00:00:00:00:01', port: 0 },
        { mac: '02:00:00:00:00:02', port: 1 },
        { mac: '02:00:00:00:00:03', port: 2 },
      ]);
    });
  }

  it('floods multicast even to a learned port, and filters a frame whose destination is behind its own port', async () => {
    const { guests } = await threePorts();
    const [a, b, c] = guests;
    // B and C become known.
    b.send(frame(BROADCAST, guestMac(2)));
    c.send(frame(BROADCAST, guestMac(3)));
    await a.receive(2);
    await b.receive(1);
    await c.receive(1);
    const group = frame(MULTICAST, guestMac(1));
    a.send(group);
    expect(sameBytes((await b.receive(1))[0].frame, group)).toBe(true);
    expect(sameBytes((await c.receive(1))[0].frame, group)).toBe(true);
    // A frame from port 1 for an address learned on port 1 stays there (and goes nowhere else).
    b.send(frame(guestMac(2), guestMac(9)));
    expect(await settledCount(a)).toBe(0);
    expect(await settledCount(b)).toBe(0);
    expect(await settledCount(c)).toBe(0);
  });

  it('a guest that moves to another port is found there once it transmits', async () => {
    const { guests } = await threePorts();
    const [a, b, c] = guests;
    b.send(frame(BROADCAST, guestMac(7))); // 7 lives behind port 1
    await a.receive(1);
    await c.receive(1);
    c.send(frame(BROADCAST, guestMac(7))); // and now behind port 2
    await a.receive(1);
    await b.receive(1);
    const toSeven = frame(guestMac(7), guestMac(1));
    a.send(toSeven);
    expect(sameBytes((await c.receive(1))[0].frame, toSeven)).toBe(true);
    expect(await settledCount(b)).toBe(0);
  });

  it('spreads a frame over several RX chains (num_buffers) at the destination', async () => {
    const rig = await start({ ports: 2 });
    const a = await rig.connect(0);
    const b = await rig.connect(1);
    await rig.offerRx(1, b, 16, 512);
    const big = frame(guestMac(2), guestMac(1), 1514);
    a.send(big, { layout: 'split-header' });
    const [got] = await b.receive(1);
    expect(got.numBuffers).toBe(Math.ceil((1514 + 12) / 512));
    expect(sameBytes(got.frame, big)).toBe(true);
  });
});

describe('switch: life cycle', () => {
  it('starting and stopping a 3-port switch leaves no fd behind (wake eventfds, sockets, workers)', async () => {
    const openFds = () => readdirSync('/proc/self/fd').length;
    const before = openFds();
    const rig = await SwitchRig.start({ ports: 3, mode: 'interrupt' });
    expect(openFds()).toBeGreaterThan(before + 3); // at least one wake eventfd per port
    await rig.stop();
    expect(openFds()).toBe(before);
  });
});

describe('switch: jumbo frames', () => {
  it('carries a frame of the largest MTU (65535 + 18 bytes): the rings grow with the MTU', async () => {
    const rig = await start({ ports: 2, mtu: 65535 });
    const a = await rig.connect(0);
    const b = await rig.connect(1);
    const length = 65535 + 18;
    await rig.offerRx(1, b, Math.ceil((length + 12) / 4096), 4096);
    const jumbo = frame(guestMac(2), guestMac(1), length);
    a.send(jumbo);
    const [got] = await b.receive(1);
    expect(got.numBuffers).toBe(Math.ceil((length + 12) / 4096));
    expect(sameBytes(got.frame, jumbo)).toBe(true);
    expect(switchRingBytes(65535)).toBeGreaterThan(DEFAULT_SWITCH_RING_BYTES);
  });
});

describe('switch: bounded queues', () => {
  it('a port that stops taking frames: its ring fills, the rest is dropped and counted at the sender, order kept', async () => {
    const rig = await start({ ports: 2 });
    const a = await rig.connect(0);
    const b = await rig.connect(1);
    // B's RX queue runs (one buffer), then B stops offering buffers.
    await rig.offerRx(1, b, 1);
    // The ring of a 1500 MTU switch (sized for 8 GSO frames) holds ~690 full-size frames.
    const ringBytes = switchRingBytes(1500);
    const sent = 1000;
    const frames = Array.from({ length: sent }, () => frame(guestMac(2), guestMac(1), 1514));
    for (let at = 0; at < sent; at += 200) {
      // Two bursts: the TX ring has 256 entries.
      const tokens = frames.slice(at, at + 200).map((f) => a.send(f, { kick: false }));
      a.tx().publishAndKick();
      await a.waitTx(tokens);
    }
    const aStats = await rig.waitStats(0, (s) => s[1].packets === sent);
    const dropped = aStats[1].noBuffer;
    expect(aStats[1].drops).toBe(dropped);
    // The ring holds whole records: within one record of its capacity.
    const record = (FRAME_RECORD_HEADER_BYTES + 1514 + 7) & ~7;
    const held = sent - 1 - dropped;
    expect(dropped).toBeGreaterThan(0);
    expect(held).toBeGreaterThanOrEqual(Math.floor(ringBytes / record) - 1);
    expect(held).toBeLessThanOrEqual(Math.floor(ringBytes / record));
    // B takes them all now: the first frame, then what the ring kept, in order (in rounds of at
    // most 200 buffers: the RX ring has 256 entries).
    const received = await b.receive(1);
    while (received.length < sent - dropped) {
      const round = Math.min(200, sent - dropped - received.length);
      b.postRx(round, 2048); // filled at once from the ring
      received.push(...(await b.receive(round)));
    }
    // Order kept: each received frame is a later sent one. Not necessarily a prefix: when the
    // worker moves the first frame into B's buffer after the ring filled, that frees one record
    // for a frame sent after some were dropped.
    let next = 0;
    for (const [i, got] of received.entries()) {
      while (next < sent && !sameBytes(got.frame, frames[next])) next++;
      expect(next < sent, `frame ${i} received is a sent frame, in order`).toBe(true);
      next++;
    }
    expect(await settledCount(b)).toBe(0);
    const bStats = await rig.waitStats(1, (s) => s[0].packets === sent - dropped);
    expect(bStats[0].drops).toBe(0);
  });

  it('frames for a port whose guest runs no RX queue are dropped and counted, not queued', async () => {
    const rig = await start({ ports: 2 });
    const a = await rig.connect(0);
    await rig.connect(1); // connected, but never offers RX buffers
    a.send(frame(BROADCAST, guestMac(1)));
    a.send(frame(guestMac(2), guestMac(1)));
    const stats = await rig.waitStats(0, (s) => s[1].packets === 2);
    expect(stats[1]).toMatchObject({ noBuffer: 2, drops: 2 });
    expect(rig.stats(1)[0].packets).toBe(0);
  });
});

describe('switch: queue pairs on two workers', () => {
  it('delivers on the sender pair when it runs at the destination, else on one that does', async () => {
    const rig = await start({ ports: 2, queuePairs: 2, cpus: [1, 1] });
    const a = await rig.connect(0, { queuePairs: 2 });
    const b = await rig.connect(1, { queuePairs: 2 });
    // B runs only pair 0's RX queue: A's frame on pair 1 (worker 1) crosses to B's worker 0.
    await rig.offerRx(1, b, 8, 2048, 0);
    const first = frame(guestMac(2), guestMac(1));
    a.send(first, { pair: 1 });
    expect(sameBytes((await b.receive(1, 0))[0].frame, first)).toBe(true);
    // Now B's pair 1 runs too: A's pair-1 frames land there, pair-0 frames on pair 0.
    await rig.offerRx(1, b, 8, 2048, 1);
    const onOne = frame(guestMac(2), guestMac(1));
    const onZero = frame(guestMac(2), guestMac(1));
    a.send(onOne, { pair: 1 });
    a.send(onZero, { pair: 0 });
    expect(sameBytes((await b.receive(1, 1))[0].frame, onOne)).toBe(true);
    expect(sameBytes((await b.receive(1, 0))[0].frame, onZero)).toBe(true);
    const stats = await rig.waitStats(1, (s) => s[0].packets === 2 && s[2].packets === 1);
    expect(stats[0].drops + stats[2].drops).toBe(0);
    expect(rig.stats(0)[3]).toMatchObject({ packets: 2, drops: 0 }); // A's TX queue of pair 1
  });
});

describe('switch: offloads', () => {
  it('each port gets what it acked: the header through with GUEST_CSUM/TSO, the checksum finished without, GSO segmented without TSO', async () => {
    const rig = await start({ ports: 3 });
    const all = [
      NetFeature.CSUM,
      NetFeature.GUEST_CSUM,
      NetFeature.HOST_TSO4,
      NetFeature.GUEST_TSO4,
      NetFeature.HOST_TSO6,
      NetFeature.GUEST_TSO6,
    ].reduce((mask, f) => mask | bit(f), 0n);
    for (const f of [NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.HOST_TSO4, NetFeature.GUEST_TSO6, NetFeature.HOST_ECN]) {
      expect(rig.backend.ports[0].device.features & bit(f), `bit ${f}`).not.toBe(0n);
    }
    const a = await rig.connect(0, { extraFeatures: all });
    const b = await rig.connect(1, { extraFeatures: all });
    const c = await rig.connect(2); // no offloads at all
    await rig.offerRx(1, b, 16);
    await rig.offerRx(2, c, 16);
    const toAll = tcpFrame(1200, 8, BROADCAST, guestMac(1));
    partialTcpChecksum(toAll);
    const csumHeader = offloadHeader({ flags: 1, hdrLen: 54, csumStart: 34, csumOffset: 16 });
    a.send(toAll, { header: csumHeader, layout: 'two' });
    const [atB] = await b.receive(1);
    const [atC] = await c.receive(1);
    expect(Array.from(atB.header.subarray(0, 10))).toEqual(Array.from(csumHeader));
    expect(sameBytes(atB.frame, toAll)).toBe(true);
    expect(Array.from(atC.header.subarray(0, 10))).toEqual(new Array(10).fill(0));
    expect(tcpChecksumValid(atC.frame)).toBe(true);
    // A 10,000-byte GSO frame, flooded: B (TSO4) takes it whole over several RX chains, C in
    // 7 TCP segments cut in software.
    const gso = tcpFrame(10_000, 9, BROADCAST, guestMac(1));
    partialTcpChecksum(gso);
    const gsoHeader = offloadHeader({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 });
    a.send(gso, { header: gsoHeader });
    const [bigAtB] = await b.receive(1);
    expect(Array.from(bigAtB.header.subarray(0, 10))).toEqual(Array.from(gsoHeader));
    expect(bigAtB.numBuffers).toBe(Math.ceil((12 + gso.length) / 2048));
    expect(sameBytes(bigAtB.frame, gso)).toBe(true);
    const segments = await c.receive(7);
    for (const s of segments) {
      expect(zeroHeader(s.header)).toBe(true);
      expect(tcpChecksumValid(s.frame)).toBe(true);
    }
    expect(Buffer.concat(segments.map((s) => s.frame.subarray(54))).equals(Buffer.from(gso.subarray(54)))).toBe(true);
    expect(rig.stats(2)[0]).toMatchObject({ packets: 8, drops: 0, gsoSegmented: 1 });
    expect(rig.stats(1)[0]).toMatchObject({ packets: 2, drops: 0 });
    expect(await settledCount(c)).toBe(0);
  });
});

describe('switch: bad TX chains', () => {
  it('drops and counts an offload request not acked, a frame above the MTU and one under an Ethernet header; the next frame passes', async () => {
    const rig = await start({ ports: 2 });
    const a = await rig.connect(0);
    const b = await rig.connect(1);
    await rig.offerRx(1, b, 8);
    // Offload asked: flags = NEEDS_CSUM in the header.
    const queue = a.tx();
    const gpa = a.alloc(12 + 100);
    a.bytes(gpa, 12).fill(0);
    a.bytes(gpa, 1)[0] = 1;
    a.bytes(gpa + 12, 100).set(frame(BROADCAST, guestMac(1)));
    a.post(queue, [{ gpa, len: 112, writable: false }]);
    queue.publishAndKick();
    a.send(frame(BROADCAST, guestMac(1), 1500 + 18 + 1));
    a.send(frame(BROADCAST, guestMac(1)).subarray(0, 13));
    const good = frame(BROADCAST, guestMac(1));
    a.send(good);
    expect(sameBytes((await b.receive(1))[0].frame, good)).toBe(true);
    const stats = await rig.waitStats(0, (s) => s[1].drops === 3);
    expect(stats[1]).toMatchObject({ packets: 1, badChain: 2, tooBig: 1 });
    expect(await settledCount(b)).toBe(0);
  });
});

describe('switch: SEND_RARP and NET_SET_MTU through the device hook', () => {
  const WANTED = FRONTEND_PROTOCOL_FEATURES | bit(ProtocolFeature.RARP) | bit(ProtocolFeature.MTU);

  it('offers RARP, NET_MTU and GUEST_ANNOUNCE; SEND_RARP floods a RARP for the MAC and teaches the switch where it is', async () => {
    const { guests } = await threePorts('busy', 32, WANTED);
    const [a, b, c] = guests; // a: the guest that just migrated in on port 0
    expect(a.device.offeredProtocolFeatures & bit(ProtocolFeature.RARP)).not.toBe(0n);
    expect(a.device.offeredProtocolFeatures & bit(ProtocolFeature.MTU)).not.toBe(0n);
    expect(a.device.offeredFeatures & bit(NetFeature.GUEST_ANNOUNCE)).not.toBe(0n);
    const moved = guestMac(0x42);
    await a.device.client.request({ type: 'SEND_RARP', mac: moved });
    for (const guest of [b, c]) {
      const [got] = await guest.receive(1);
      const f = got.frame;
      expect(f.length).toBe(60);
      expect(Array.from(f.subarray(0, 6))).toEqual(Array.from(BROADCAST));
      expect(Array.from(f.subarray(6, 12))).toEqual(Array.from(moved));
      expect((f[12] << 8) | f[13]).toBe(0x8035); // RARP
      expect((f[20] << 8) | f[21]).toBe(3); // reverse request
      expect(Array.from(f.subarray(22, 28))).toEqual(Array.from(moved)); // sender hardware address
      expect(Array.from(f.subarray(32, 38))).toEqual(Array.from(moved)); // target hardware address
    }
    // C → the moved MAC goes to port 0 only.
    const toMoved = frame(moved, guestMac(3));
    c.send(toMoved);
    expect(sameBytes((await a.receive(1))[0].frame, toMoved)).toBe(true);
    expect(await settledCount(b)).toBe(0);
    // A multicast MAC is refused with a failure ack.
    await expect(a.device.client.request({ type: 'SEND_RARP', mac: MULTICAST })).rejects.toThrow();
  });

  it('NET_SET_MTU: 68 up to the offered MTU accepted and applied to TX; outside refused; the offer is back after a reset', async () => {
    const rig = await start({ ports: 2, mtu: 1500 });
    const a = await rig.connect(0, { protocol: WANTED });
    const b = await rig.connect(1);
    await rig.offerRx(1, b, 8);
    const client = a.device.client;
    await expect(client.request({ type: 'NET_SET_MTU', mtu: 1501n })).rejects.toThrow();
    await expect(client.request({ type: 'NET_SET_MTU', mtu: 67n })).rejects.toThrow();
    await client.request({ type: 'NET_SET_MTU', mtu: 1000n });
    expect(rig.backend.ports[0].device.currentMtu).toBe(1000);
    a.send(frame(BROADCAST, guestMac(1), 1000 + 18 + 1)); // above the new MTU + Ethernet + VLAN
    const fits = frame(BROADCAST, guestMac(1), 1000 + 18);
    a.send(fits);
    expect(sameBytes((await b.receive(1))[0].frame, fits)).toBe(true);
    const stats = await rig.waitStats(0, (s) => s[1].tooBig === 1);
    expect(stats[1].packets).toBe(1);
    // The front-end goes away: the device is reset and offers its own MTU again.
    a.close();
    rig.guests.splice(rig.guests.indexOf(a), 1);
    const deadline = Date.now() + 10_000;
    while (rig.backend.ports[0].device.currentMtu !== 1500 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(rig.backend.ports[0].device.currentMtu).toBe(1500);
  });
});
