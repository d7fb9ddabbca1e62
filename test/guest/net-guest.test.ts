// A real guest on our vhost-user-net with the tap back-end: the test creates a network namespace,
// runs bin/vhost-user-net inside it (so the tap it creates lives there, and all traffic stays
// there), gives the tap's end an address, and boots QEMU 7.2 (TCG) with -netdev vhost-user +
// virtio-net-pci. The guest configures its address, pings the namespace's end, sends 1 MiB over
// TCP to a busybox nc in the namespace and receives 1 MiB from another; both sides compare
// sha256 sums; the namespace pings the guest back. At SIGINT the daemon prints its counters and
// the tap it created is gone.
import { createHash, randomBytes } from 'node:crypto';
import { execFile, execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertGuestOk, runGuest, spawnTracked, type NetResult } from '../../dist/guest/qemu.js';
import { useGuestRig } from './rig.js';

const BIN = new URL('../../bin/vhost-user-net', import.meta.url).pathname;
const MiB = 1 << 20;
const NS = `vut-netg-${process.pid}`;
const TAP = `vg${process.pid % 100000}`;
const HOST_IP = '10.78.0.1';
const GUEST_IP = '10.78.0.2';

function ip(...args: string[]): string {
  return execFileSync('ip', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] });
}

function tapInNamespace(): boolean {
  try {
    ip('-n', NS, 'link', 'show', 'dev', TAP);
    return true;
  } catch {
    return false;
  }
}

async function waitUntil(what: string, condition: () => boolean, timeoutMs: number, context = () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen in ${timeoutMs} ms ${context()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** A busybox nc listening in the namespace; its stdin stays open (nc stops reading the socket at stdin EOF). */
function listen(port: number) {
  const nc = spawnTracked('ip', ['netns', 'exec', NS, 'busybox', 'nc', '-l', '-p', String(port)], { stdin: 'pipe' });
  const hash = createHash('sha256');
  let bytes = 0;
  nc.child.stdout!.on('data', (chunk: Buffer) => {
    hash.update(chunk);
    bytes += chunk.length;
  });
  const exited = new Promise<{ code: number | null; bytes: number; sha256: string }>((resolve) =>
    nc.child.once('exit', (code) => resolve({ code, bytes, sha256: hash.digest('hex') })),
  );
  return { ...nc, exited };
}

const rig = useGuestRig('vut-net-guest-', {
  tools: [['ip', 'iproute2']],
  setUp: () => {
    ip('netns', 'add', NS);
    ip('-n', NS, 'link', 'set', 'lo', 'up');
  },
  tearDown: () => {
    ip('netns', 'del', NS);
  },
});

// Split rings, and packed rings (`packed=on`; QEMU would fall back to split silently if we did not
// offer VIRTIO_F_RING_PACKED, so the negotiated bit 34 is checked).
describe.each([
  ['split', false],
  ['packed', true],
] as const)(
  'a QEMU guest on vhost-user-net --backend tap:NAME (interrupt polling, %s rings), tap in a namespace',
  (_rings, packed) => {
    it('pings the namespace and back, and moves 1 MiB each way over TCP, checksums equal', { timeout: 300_000 }, async () => {
      const socketPath = join(rig.dir, 'net.sock');
      const daemon = spawnTracked('ip', [
        'netns',
        'exec',
        NS,
        process.execPath,
        BIN,
        '--socket',
        socketPath,
        '--backend',
        `tap:${TAP}`,
        '--poll',
        'interrupt',
        '--cpus',
        '1',
      ]);
      let daemonOut = '';
      let daemonErr = '';
      daemon.child.stdout!.on('data', (chunk: Buffer) => (daemonOut += chunk.toString()));
      daemon.child.stderr!.on('data', (chunk: Buffer) => (daemonErr += chunk.toString()));
      const daemonExit = new Promise<number | null>((resolve) => daemon.child.once('exit', (code) => resolve(code)));
      const sink = listen(5001);
      const source = listen(5002);
      const hostData = randomBytes(MiB);
      let hostPing: Promise<{ ok: boolean; output: string }> | undefined;
      try {
        await waitUntil(
          'the daemon creating its tap and socket',
          () => existsSync(socketPath) && tapInNamespace(),
          30_000,
          () => daemonErr,
        );
        ip('-n', NS, 'addr', 'add', `${HOST_IP}/24`, 'dev', TAP);
        ip('-n', NS, 'link', 'set', 'dev', TAP, 'up');
        source.child.stdin!.on('error', () => {}); // EPIPE if nc dies first: the checksums tell
        source.child.stdin!.end(hostData);

        let consoleText = '';
        const run = await runGuest<NetResult>({
          image: rig.image,
          job: 'net',
          net: { socketPath, deviceProps: packed ? ['packed=on'] : [] },
          jobArgs: { ip: `${GUEST_IP}/24`, peer: HOST_IP, bytes: MiB, echos: 3 },
          timeoutMs: 240_000,
          onConsole: (text) => {
            consoleText += text;
            if (hostPing === undefined && consoleText.includes('VUT-STEP net-up')) {
              hostPing = new Promise((resolve) =>
                execFile('ip', ['netns', 'exec', NS, 'busybox', 'ping', '-c', '3', '-W', '5', GUEST_IP], (error, stdout) =>
                  resolve({ ok: error === null, output: stdout }),
                ),
              );
            }
          },
        });
        const result = assertGuestOk(run);
        expect(result.features[32]).toBe('1'); // VERSION_1
        expect(result.features[34]).toBe(packed ? '1' : '0'); // RING_PACKED
        expect(result.features[15]).toBe('1'); // MRG_RXBUF
        // The tap carries the offloads: checksum and TSO on in both directions.
        for (const [bitIndex, name] of [
          [0, 'CSUM'],
          [1, 'GUEST_CSUM'],
          [7, 'GUEST_TSO4'],
          [8, 'GUEST_TSO6'],
          [11, 'HOST_TSO4'],
          [12, 'HOST_TSO6'],
        ] as const) {
          expect(`${name}=${result.features[bitIndex]}`).toBe(`${name}=1`);
        }
        expect(result.mtu).toBe(1500);
        expect(result.ping_received).toBe(3);
        // Guest → namespace.
        const received = await sink.exited;
        expect(received.bytes).toBe(MiB);
        expect(received.sha256).toBe(result.tx.sha256);
        expect(result.tx.bytes).toBe(MiB);
        // Namespace → guest.
        expect(result.rx.bytes).toBe(MiB);
        expect(result.rx.sha256).toBe(createHash('sha256').update(hostData).digest('hex'));
        // The namespace pinged the guest while it worked.
        expect(hostPing).toBeDefined();
        const ping = await hostPing!;
        expect(ping.output).toMatch(/3 packets transmitted, 3 packets received/);
        expect(result.in_echos).toBeGreaterThanOrEqual(3);
        expect(run.durationMs).toBeGreaterThan(0);
      } finally {
        daemon.child.kill('SIGINT');
        sink.kill();
        source.kill();
      }
      expect(await daemonExit).toBe(0);
      // The exit summary: each direction carried at least the 1 MiB. With TSO a frame may hold many
      // segments, so the frame count says little; at least one frame per direction.
      const rows = daemonOut
        .trim()
        .split('\n')
        .slice(1)
        .map((line) => line.trim().split(/\s+/).map(Number));
      const rx = rows.find((row) => row[1] === 0)!;
      const tx = rows.find((row) => row[1] === 1)!;
      console.log(`tap guest (${_rings}): RX ${rx[3]} frames ${rx[4]} bytes, TX ${tx[3]} frames ${tx[4]} bytes`);
      expect(rx[3]).toBeGreaterThan(0);
      expect(tx[3]).toBeGreaterThan(0);
      // TSO at work: frames on average above the largest plain one (MTU + Ethernet header).
      expect(rx[4] / rx[3]).toBeGreaterThan(1514);
      expect(tx[4] / tx[3]).toBeGreaterThan(1514);
      expect(rx[4]).toBeGreaterThan(MiB);
      expect(tx[4]).toBeGreaterThan(MiB);
      // We created the tap, so it went away with us.
      expect(tapInNamespace()).toBe(false);
    });
  },
);
