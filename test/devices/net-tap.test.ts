// The tap back-end without a VM: our back-end (startNetBackend, in this process) creates a tap,
// the test moves it into a network namespace of its own and gives it an address there, and a
// "guest" on the front-end library talks to the namespace's kernel through it: ARP and ICMP
// echo from the guest are answered by the namespace, the namespace's own ARP requests reach the
// guest, and frames wait in the tap while the guest has no RX buffer. Needs root (netns, tun).
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { execFileSync, spawn } from 'node:child_process';
import { PerformanceObserver, performance } from 'node:perf_hooks';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startNetBackend, type NetBackend } from '../../dist/devices/net/backend.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { FRONTEND_PROTOCOL_FEATURES } from '../../dist/frontend/features.js';
import { ProtocolFeature } from '../../dist/control/protocol.js';
import { ipv4HeaderChecksum } from '../../dist/devices/net/frame.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';
import type { PollMode } from '../../dist/dataplane/commands.js';
import { FdEvent, type WorkerQueue } from '../../dist/dataplane/device-api.js';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { createQueueHandler } from '../../dist/devices/net/handler.js';
import { NET_STAT_SLOTS, NegotiatedSlot, NetStat, createNetStatsBuffer } from '../../dist/devices/net/options.js';
import { native } from '../../dist/native.js';
import { MAC, NET_GUEST_FEATURES, NetGuest, oneSegmentRequest, type Received } from './net-rig.js';

const NS = `vut-tap-${process.pid}`;
const NS_IP = [10, 77, 0, 1];
const GUEST_IP = [10, 77, 0, 2];
const BROADCAST = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff];

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

/** A ping from the namespace to an address nobody has: it fails, after sending ARP requests. */
function pingNobody(waitSeconds: number): void {
  try {
    execFileSync('ip', ['netns', 'exec', NS, 'busybox', 'ping', '-c', '1', '-W', String(waitSeconds), '10.77.0.9'], {
      stdio: 'ignore',
    });
  } catch {
    // no reply: expected
  }
}

function linkExists(name: string, ns?: string): boolean {
  try {
    ip(...(ns ? ['-n', ns] : []), 'link', 'show', 'dev', name);
    return true;
  } catch {
    return false;
  }
}

/** The tap's counters as the namespace's kernel sees them (its RX = frames our guest sent). */
function tapCounters(name: string): { rxPackets: number; txPackets: number } {
  const info = JSON.parse(ip('-n', NS, '-s', '-j', 'link', 'show', 'dev', name)) as {
    stats64: { rx: { packets: number }; tx: { packets: number } };
  }[];
  return { rxPackets: info[0].stats64.rx.packets, txPackets: info[0].stats64.tx.packets };
}

function arpRequest(senderIp: number[], targetIp: number[]): Uint8Array {
  const frame = new Uint8Array(42);
  frame.set(BROADCAST, 0);
  frame.set(MAC, 6);
  frame.set([0x08, 0x06, 0, 1, 0x08, 0x00, 6, 4, 0, 1], 12); // ARP, Ethernet/IPv4, request
  frame.set(MAC, 22);
  frame.set(senderIp, 28);
  frame.set(targetIp, 38);
  return frame;
}

function icmpEcho(dstMac: Uint8Array, id: number, sequence: number, payloadBytes: number): Uint8Array {
  const frame = new Uint8Array(14 + 20 + 8 + payloadBytes);
  const view = new DataView(frame.buffer);
  frame.set(dstMac, 0);
  frame.set(MAC, 6);
  view.setUint16(12, 0x0800);
  frame[14] = 0x45;
  view.setUint16(16, 20 + 8 + payloadBytes);
  frame[22] = 64;
  frame[23] = 1; // ICMP
  frame.set(GUEST_IP, 26);
  frame.set(NS_IP, 30);
  view.setUint16(24, ipv4HeaderChecksum(frame, 14));
  const icmp = 34;
  frame[icmp] = 8; // echo request
  view.setUint16(icmp + 4, id);
  view.setUint16(icmp + 6, sequence);
  for (let i = 0; i < payloadBytes; i++) frame[icmp + 8 + i] = (i * 7 + sequence) & 0xff;
  view.setUint16(icmp + 2, internetChecksum(frame, icmp, frame.length));
  return frame;
}

function internetChecksum(bytes: Uint8Array, from: number, to: number): number {
  let sum = 0;
  for (let i = from; i < to; i += 2) sum += (bytes[i] << 8) | (i + 1 < to ? bytes[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}

const isArp = (r: Received, op: number) => r.frame[12] === 0x08 && r.frame[13] === 0x06 && r.frame[21] === op;

/** Receives until `match` holds for one frame (other traffic, e.g. IPv6 noise, is skipped). */
async function receiveMatching(guest: NetGuest, match: (r: Received) => boolean, timeoutMs = 10_000): Promise<Received> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const [frame] = await guest.receive(1, 0, Math.max(1, deadline - Date.now()));
    if (match(frame)) return frame;
  }
}

let dir = '';
let backend: NetBackend | undefined;
let guest: NetGuest | undefined;

beforeAll(() => {
  ip('netns', 'add', NS);
  ip('-n', NS, 'link', 'set', 'lo', 'up');
  dir = mkdtempSync(join(tmpdir(), 'vut-net-tap-'));
});

afterEach(async () => {
  guest?.close();
  guest = undefined;
  await backend?.stop();
  backend = undefined;
});

afterAll(() => {
  ip('netns', 'del', NS);
  rmSync(dir, { recursive: true, force: true });
});

async function startTap(name: string, mode: PollMode, options: { mtu?: number; queuePairs?: number } = {}): Promise<NetBackend> {
  backend = await startNetBackend({
    socketPaths: [join(dir, `${name}.sock`)],
    client: false,
    backend: 'tap',
    tapName: name,
    queuePairs: options.queuePairs ?? 1,
    queueSize: 256,
    cpus: [1],
    poll: mode,
    idleBudgetUs: 50,
    mac: MAC,
    mtu: options.mtu ?? 1500,
    frameBytes: 64,
  });
  return backend;
}

async function connectGuest(socketPath: string, mergeable = true, queuePairs = 1, extraFeatures = 0n): Promise<NetGuest> {
  const memory = FrontendMemory.simple(32 << 20);
  const features = (mergeable ? NET_GUEST_FEATURES : NET_GUEST_FEATURES & ~(1n << BigInt(NetFeature.MRG_RXBUF))) | extraFeatures;
  const device = await FrontendDevice.connect({
    socketPath,
    memory,
    queues: 2 * queuePairs,
    queueSize: 256,
    deviceFeatures: features,
  });
  guest = new NetGuest(device, memory);
  return guest;
}

/** Moves our tap into the namespace and gives it NS_IP/24. */
function plugIntoNamespace(name: string): void {
  ip('link', 'set', 'dev', name, 'netns', NS);
  ip('-n', NS, 'addr', 'add', `${NS_IP.join('.')}/24`, 'dev', name);
  ip('-n', NS, 'link', 'set', 'dev', name, 'up');
}

describe('vhost-user-net tap back-end in a network namespace', () => {
  for (const [mode, mergeable] of [
    ['interrupt', true],
    ['busy', false],
    ['adaptive', true],
  ] as [PollMode, boolean][]) {
    it(`${mode} mode${mergeable ? '' : ', no MRG_RXBUF'}: ARP and ping from the guest are answered by the namespace`, async () => {
      const name = `vt${process.pid % 100000}${mode[0]}`;
      const net = await startTap(name, mode);
      expect(net.ports[0].tap?.created).toBe(true);
      plugIntoNamespace(name);
      const g = await connectGuest(net.ports[0].socketPath, mergeable);
      expect(g.mergeable).toBe(mergeable);
      g.postRx(64, 2048);
      const before = tapCounters(name);

      g.send(arpRequest(GUEST_IP, NS_IP));
      const reply = await receiveMatching(g, (r) => isArp(r, 2));
      expect(Array.from(reply.frame.subarray(0, 6))).toEqual(Array.from(MAC)); // to us
      expect(Array.from(reply.frame.subarray(28, 32))).toEqual(NS_IP); // "10.77.0.1 is at ..."
      expect(reply.numBuffers).toBe(1);
      expect(reply.header[0]).toBe(0); // flags cleared: no GUEST_CSUM
      const nsMac = reply.frame.slice(6, 12);

      for (let sequence = 1; sequence <= 5; sequence++) {
        const request = icmpEcho(nsMac, 0x4242, sequence, 1000);
        g.send(request);
        const echo = await receiveMatching(g, (r) => r.frame[23] === 1 && r.frame[34] === 0);
        expect(echo.frame.length).toBe(request.length);
        expect((echo.frame[40] << 8) | echo.frame[41]).toBe(sequence);
        expect(Buffer.from(echo.frame.subarray(42)).equals(Buffer.from(request.subarray(42)))).toBe(true);
        expect(internetChecksum(echo.frame, 34, echo.frame.length)).toBe(0);
      }
      const after = tapCounters(name);
      expect(after.rxPackets - before.rxPackets).toBeGreaterThanOrEqual(6);

      // The namespace asks for a neighbour: its ARP requests reach the guest.
      pingNobody(1);
      const who = await receiveMatching(g, (r) => isArp(r, 1) && r.frame[41] === 9);
      expect(Array.from(who.frame.subarray(0, 6))).toEqual(BROADCAST);

      const stats = net.queueStats();
      const [rx, tx] = [stats.find((s) => s.queue === 0)!, stats.find((s) => s.queue === 1)!];
      expect(tx.packets).toBeGreaterThanOrEqual(6);
      expect(tx.drops).toBe(0);
      expect(rx.packets).toBeGreaterThanOrEqual(7);
      expect(rx.backendErrors).toBe(0);
    });
  }

  it('leaves frames in the tap while the guest has no RX buffer, without spinning, and delivers them once buffers come', async () => {
    const name = `vt${process.pid % 100000}q`;
    const net = await startTap(name, 'interrupt');
    plugIntoNamespace(name);
    const g = await connectGuest(net.ports[0].socketPath);
    // Three ARP requests from the namespace, queued in the tap (no RX buffer yet).
    pingNobody(1);
    const plane = net.ports[0].plane;
    const passesBefore = plane.queueStats(0).idlePasses + plane.queueStats(0).busyPasses;
    await new Promise((resolve) => setTimeout(resolve, 300));
    const passes = plane.queueStats(0).idlePasses + plane.queueStats(0).busyPasses - passesBefore;
    // A worker spinning on the readable tap would make millions of passes in 300 ms.
    expect(passes).toBeLessThan(200);
    expect(net.queueStats().find((s) => s.queue === 0)!.packets).toBe(0);
    g.postRx(16, 2048);
    const who = await receiveMatching(g, (r) => isArp(r, 1) && r.frame[41] === 9);
    expect(Array.from(who.frame.subarray(28, 32))).toEqual(NS_IP);
    expect(net.queueStats().find((s) => s.queue === 0)!.drops).toBe(0);
  });

  it('with MRG_RXBUF, spreads a frame over several small RX buffers and sets num_buffers', async () => {
    const name = `vt${process.pid % 100000}m`;
    const net = await startTap(name, 'busy');
    plugIntoNamespace(name);
    const g = await connectGuest(net.ports[0].socketPath);
    g.postRx(64, 512, { split: 2 });
    g.send(arpRequest(GUEST_IP, NS_IP));
    const reply = await receiveMatching(g, (r) => isArp(r, 2));
    const request = icmpEcho(reply.frame.slice(6, 12), 7, 1, 1400);
    g.send(request);
    const echo = await receiveMatching(g, (r) => r.frame[23] === 1 && r.frame[34] === 0);
    // 12 + 1442 bytes in 512-byte buffers: three of them.
    expect(echo.numBuffers).toBe(3);
    expect(echo.frame.length).toBe(request.length);
    expect(Buffer.from(echo.frame.subarray(42)).equals(Buffer.from(request.subarray(42)))).toBe(true);
  });

  it('serves 2 queue pairs on one multi-queue tap (one fd per pair)', async () => {
    const name = `vt${process.pid % 100000}2`;
    const net = await startTap(name, 'adaptive', { queuePairs: 2 });
    expect(net.ports[0].tap?.fds).toHaveLength(2);
    expect(ip('-d', 'link', 'show', 'dev', name)).toMatch(/multi_queue/);
    plugIntoNamespace(name);
    const g = await connectGuest(net.ports[0].socketPath, true, 2);
    g.postRx(32, 2048, { pair: 0 });
    g.postRx(32, 2048, { pair: 1 });
    // One request from each pair's TX; the kernel picks the tap queue (hence our pair) of each reply.
    for (const pair of [0, 1]) {
      await g.waitTx([g.send(arpRequest(GUEST_IP, NS_IP), { pair })], pair);
    }
    const stats = await waitFor(() => {
      const all = net.queueStats();
      return all[1].packets === 1 && all[3].packets === 1 && all[0].packets + all[2].packets >= 2 ? all : undefined;
    });
    expect(stats.reduce((sum, s) => sum + s.drops, 0)).toBe(0);
    let replies = 0;
    for (const pair of [0, 1]) {
      g.reapRx(pair);
      replies += g.takeRxEntries().filter((e) => e.len > 12).length;
    }
    expect(replies).toBeGreaterThanOrEqual(2);
  });

  it('counts TX frames the tap refuses (link down) as drops and keeps serving', async () => {
    const name = `vt${process.pid % 100000}d`;
    const net = await startTap(name, 'interrupt');
    const g = await connectGuest(net.ports[0].socketPath);
    const tokens = [g.send(arpRequest(GUEST_IP, NS_IP)), g.send(arpRequest(GUEST_IP, NS_IP))];
    expect(await g.waitTx(tokens)).toEqual([0, 0]);
    const tx = await waitFor(() => net.queueStats().find((s) => s.queue === 1 && s.packets + s.drops === 2));
    // The kernel answers EIO while the tap is down.
    expect(tx).toMatchObject({ packets: 0, drops: 2, backendErrors: 2, badChain: 0, tooBig: 0 });
    plugIntoNamespace(name);
    expect(await g.waitTx([g.send(arpRequest(GUEST_IP, NS_IP))])).toEqual([0]);
    const served = await waitFor(() => net.queueStats().find((s) => s.queue === 1 && s.packets === 1));
    expect(served.drops).toBe(2);
  });

  it('offers checksum/TSO offloads; a NEEDS_CSUM frame goes through only when the guest acked CSUM', async () => {
    const name = `vt${process.pid % 100000}o`;
    const net = await startTap(name, 'interrupt');
    plugIntoNamespace(name);
    for (const feature of [NetFeature.CSUM, NetFeature.GUEST_CSUM, NetFeature.HOST_TSO4, NetFeature.GUEST_TSO6]) {
      expect(net.ports[0].device.features & (1n << BigInt(feature)), `bit ${feature}`).not.toBe(0n);
    }
    /** An echo request whose ICMP checksum is left to the tap: field 0, csum_start 34, offset 2. */
    const partial = (dstMac: Uint8Array, sequence: number) => {
      const frame = icmpEcho(dstMac, 9, sequence, 200);
      frame[36] = 0;
      frame[37] = 0;
      const header = new Uint8Array(10);
      header[0] = 1; // NEEDS_CSUM
      header[6] = 34;
      header[8] = 2;
      return { frame, header };
    };
    const isEchoReply = (r: Received) => r.frame[23] === 1 && r.frame[34] === 0;

    // Without CSUM acked: dropped and counted, never written to the tap.
    let g = await connectGuest(net.ports[0].socketPath);
    g.postRx(16, 2048);
    g.send(arpRequest(GUEST_IP, NS_IP));
    const nsMac = (await receiveMatching(g, (r) => isArp(r, 2))).frame.slice(6, 12);
    const refused = partial(nsMac, 1);
    expect(await g.waitTx([g.send(refused.frame, { header: refused.header })])).toEqual([0]);
    const tx = await waitFor(() => net.queueStats().find((s) => s.queue === 1 && s.badChain === 1));
    expect(tx.packets).toBe(1); // the ARP only
    expect(net.ports[0].device.offloads).toBe(0);
    g.close();

    // With CSUM (and GUEST_CSUM) acked: the tap finishes the checksum and the namespace answers.
    g = await connectGuest(
      net.ports[0].socketPath,
      true,
      1,
      (1n << BigInt(NetFeature.CSUM)) | (1n << BigInt(NetFeature.GUEST_CSUM)),
    );
    expect(net.ports[0].device.offloads).not.toBe(0);
    g.postRx(16, 2048);
    const sent = partial(nsMac, 2);
    g.send(sent.frame, { header: sent.header });
    const echo = await receiveMatching(g, isEchoReply);
    expect(Array.from(echo.frame.subarray(26, 30))).toEqual(NS_IP);
    expect(Buffer.from(echo.frame.subarray(42)).equals(Buffer.from(sent.frame.subarray(42)))).toBe(true);
  });

  it('SEND_RARP (PROTOCOL_F_RARP offered) writes one RARP announcement into the tap, seen in the namespace', async () => {
    const name = `vt${process.pid % 100000}r`;
    const net = await startTap(name, 'interrupt');
    plugIntoNamespace(name);
    const memory = FrontendMemory.simple(32 << 20);
    const device = await FrontendDevice.connect({
      socketPath: net.ports[0].socketPath,
      memory,
      queues: 2,
      queueSize: 256,
      deviceFeatures: NET_GUEST_FEATURES,
      wantedProtocolFeatures: FRONTEND_PROTOCOL_FEATURES | (1n << BigInt(ProtocolFeature.RARP)),
    });
    guest = new NetGuest(device, memory);
    expect(device.offeredProtocolFeatures & (1n << BigInt(ProtocolFeature.RARP))).not.toBe(0n);
    // A packet socket in the namespace, bound to the tap, for RARP frames only.
    const capture = spawn(
      'ip',
      [
        'netns',
        'exec',
        NS,
        'python3',
        '-c',
        [
          'import select, socket, sys',
          's = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x8035))',
          's.bind((sys.argv[1], 0))',
          "print('ready', flush=True)",
          'r, _, _ = select.select([s], [], [], 10)',
          "print(s.recv(2048).hex() if r else 'timeout', flush=True)",
        ].join('\n'),
        name,
      ],
      { stdio: ['ignore', 'pipe', 'inherit'] },
    );
    const lines: string[] = [];
    let waiting: (() => void) | null = null;
    capture.stdout.setEncoding('utf8').on('data', (chunk: string) => {
      lines.push(...chunk.split('\n').filter((l) => l !== ''));
      waiting?.();
    });
    const nextLine = async (): Promise<string> => {
      while (lines.length === 0) await new Promise<void>((resolve) => (waiting = resolve));
      return lines.shift()!;
    };
    try {
      expect(await nextLine()).toBe('ready');
      const moved = Uint8Array.of(0x52, 0x54, 0, 0xab, 0xcd, 0xef);
      await device.client.request({ type: 'SEND_RARP', mac: moved });
      const frame = Buffer.from(await nextLine(), 'hex');
      expect(frame.length).toBe(60);
      expect(Array.from(frame.subarray(0, 6))).toEqual(BROADCAST);
      expect(Array.from(frame.subarray(6, 12))).toEqual(Array.from(moved));
      expect(frame.readUInt16BE(12)).toBe(0x8035); // RARP
      expect(frame.readUInt16BE(20)).toBe(3); // reverse request
      expect(Array.from(frame.subarray(22, 28))).toEqual(Array.from(moved)); // sender hardware address
      expect(Array.from(frame.subarray(32, 38))).toEqual(Array.from(moved)); // target hardware address
      // A multicast MAC is refused (the device checks it), and nothing reaches the tap.
      await expect(device.client.request({ type: 'SEND_RARP', mac: Uint8Array.of(1, 0, 0x5e, 0, 0, 1) })).rejects.toThrow();
    } finally {
      capture.kill();
    }
  });

  it('drops (and counts) frames larger than the RX buffers the guest offers', async () => {
    const name = `vt${process.pid % 100000}b`;
    const net = await startTap(name, 'interrupt', { mtu: 9000 });
    plugIntoNamespace(name);
    // A tap we create gets the device's MTU.
    expect((JSON.parse(ip('-n', NS, '-j', 'link', 'show', 'dev', name)) as { mtu: number }[])[0].mtu).toBe(9000);
    const g = await connectGuest(net.ports[0].socketPath, false);
    g.postRx(8, 1024); // too small for a 1400-byte ping; ARP fits
    g.send(arpRequest(GUEST_IP, NS_IP));
    const reply = await receiveMatching(g, (r) => isArp(r, 2));
    g.send(icmpEcho(reply.frame.slice(6, 12), 1, 1, 1400));
    const rx = await waitFor(
      () => net.queueStats().find((s) => s.queue === 0 && s.tooBig > 0),
      3000,
      () => JSON.stringify({ stats: net.queueStats(), link: ip('-n', NS, '-s', 'link', 'show', 'dev', name) }),
    );
    expect(rx.drops).toBeGreaterThanOrEqual(1);
    g.reapRx();
    const entries = g.takeRxEntries();
    expect(entries.some((e) => e.len === 0)).toBe(true); // the cut frame's buffer came back empty
  });

  it('attaches to a tap that exists and leaves it at exit; removes the one it created', async () => {
    const existing = `vt${process.pid % 100000}e`;
    ip('tuntap', 'add', 'dev', existing, 'mode', 'tap', 'vnet_hdr');
    try {
      const net = await startTap(existing, 'interrupt');
      expect(net.ports[0].tap?.created).toBe(false);
      await net.stop();
      backend = undefined;
      expect(linkExists(existing)).toBe(true);
    } finally {
      ip('tuntap', 'del', 'dev', existing, 'mode', 'tap');
    }
    const fresh = `vt${process.pid % 100000}f`;
    const net = await startTap(fresh, 'interrupt');
    expect(net.ports[0].tap?.created).toBe(true);
    expect(linkExists(fresh)).toBe(true);
    await net.stop();
    backend = undefined;
    expect(linkExists(fresh)).toBe(false);
  });
});

async function waitFor<T>(probe: () => T | undefined, timeoutMs = 10_000, describe = () => ''): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = probe();
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`condition never held ${describe()}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('tap hot path (handler in-process, no rings)', () => {
  it('moves 200k ping round trips through a real tap without a garbage collection', async () => {
    const MiB = 1 << 20;
    const HEADER = 12;
    const PAYLOAD = 56;
    const FRAME = 14 + 20 + 8 + PAYLOAD;
    const TX_BATCH = 32;
    const RX_BUFFERS = 256;
    const name = `vt${process.pid % 100000}g`;
    const opened = native.tapOpen(name, false, HEADER);
    try {
      plugIntoNamespace(name);
      const tapMac = Uint8Array.from(
        (JSON.parse(ip('-n', NS, '-j', 'link', 'show', 'dev', name)) as { address: string }[])[0].address.split(':'),
        (b) => parseInt(b, 16),
      );
      // No ARP in the loop: the namespace knows the guest's MAC.
      const macText = Array.from(MAC, (b) => b.toString(16).padStart(2, '0')).join(':');
      ip('-n', NS, 'neigh', 'replace', GUEST_IP.join('.'), 'lladdr', macText, 'dev', name);

      const buffer = new SharedArrayBuffer(16 * MiB);
      const bytes = new Uint8Array(buffer);
      const memory = new GuestMemory([
        { guestPhysAddr: 0, size: 16 * MiB, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
      ]);
      const negotiated = new SharedArrayBuffer(NegotiatedSlot.SLOTS * 4);
      new Int32Array(negotiated)[NegotiatedSlot.headerBytes] = HEADER;
      new Int32Array(negotiated)[NegotiatedSlot.mergeableRxBuffers] = 1;
      const statsBuffer = createNetStatsBuffer(2);
      const handler = await createQueueHandler(
        {
          backend: 'tap',
          negotiated,
          stats: statsBuffer,
          queuePairs: 1,
          maxFrameBytes: 1518,
          frameBytes: 64,
          mac: Array.from(MAC),
          tapFds: [opened.fd],
        },
        { worker: 0, queueCount: 2, log: () => {}, watchFd: () => {}, unwatchFd: () => {} },
      );
      const rx = Array.from({ length: RX_BUFFERS }, (_, i) => oneSegmentRequest(memory, MiB + i * 2048, 2048, true, i));
      const tx = Array.from({ length: TX_BATCH }, (_, i) => {
        bytes.set(icmpEcho(tapMac, 0x77, i, PAYLOAD), i * 256 + HEADER);
        return oneSegmentRequest(memory, i * 256, HEADER + FRAME, false, i);
      });
      const returned: (VirtqRequest | null)[] = new Array<VirtqRequest | null>(RX_BUFFERS).fill(null);
      let returnedHead = 0;
      let returnedCount = 0;
      let replies = 0;
      let mismatches = 0;
      let txDone = 0;
      const rxQueue: WorkerQueue = {
        index: 0,
        memory,
        stopping: false,
        complete(r: VirtqRequest, len: number) {
          const at = r.segWindowOffset[0] + HEADER;
          // An echo reply of ours: same length, ICMP type 0, our id.
          if (len === HEADER + FRAME && bytes[at + 23] === 1 && bytes[at + 34] === 0 && bytes[at + 39] === 0x77) replies++;
          else if (len === 0 || bytes[at + 12] !== 0x86) mismatches++; // IPv6 noise is fine, anything else is not
          returned[(returnedHead + returnedCount) % RX_BUFFERS] = r;
          returnedCount++;
        },
      };
      const txQueue: WorkerQueue = {
        index: 1,
        memory,
        stopping: false,
        complete() {
          txDone++;
        },
      };
      for (const r of rx) handler.handle(rxQueue, r);
      handler.flush();

      let sent = 0;
      const run = (target: number): boolean => {
        const deadline = performance.now() + 20_000;
        for (let spins = 0; replies < target; spins++) {
          if (sent - replies <= RX_BUFFERS / 2 && sent < target) {
            for (let i = 0; i < TX_BATCH; i++) handler.handle(txQueue, tx[i]);
            sent += TX_BATCH;
          }
          handler.flush();
          handler.onFdReady!(0, FdEvent.READABLE);
          while (returnedCount > 0) {
            const r = returned[returnedHead]!;
            returned[returnedHead] = null;
            returnedHead = (returnedHead + 1) % RX_BUFFERS;
            returnedCount--;
            handler.handle(rxQueue, r);
          }
          if ((spins & 1023) === 1023 && performance.now() > deadline) return false;
        }
        return true;
      };
      expect(run(4096)).toBe(true); // warm up: optimized code, settled shapes

      const gcStarts: number[] = [];
      const observer = new PerformanceObserver((list) => {
        for (const entry of list.getEntries()) gcStarts.push(entry.startTime);
      });
      observer.observe({ entryTypes: ['gc'] });
      await new Promise((resolve) => setTimeout(resolve, 20));
      const start = performance.now();
      const done = run(4096 + 200_000);
      const end = performance.now();
      await new Promise((resolve) => setTimeout(resolve, 50));
      observer.disconnect();

      expect(done).toBe(true);
      expect(replies).toBeGreaterThanOrEqual(4096 + 200_000);
      expect(txDone).toBe(sent);
      expect(mismatches).toBe(0);
      const stats = new Float64Array(statsBuffer);
      expect(stats[NET_STAT_SLOTS + NetStat.packets]).toBe(sent);
      expect(stats[NetStat.drops] + stats[NET_STAT_SLOTS + NetStat.drops]).toBe(0);
      expect(gcStarts.filter((t) => t >= start && t <= end)).toEqual([]);
      handler.close();
    } finally {
      native.close(opened.fd);
    }
  });
});
