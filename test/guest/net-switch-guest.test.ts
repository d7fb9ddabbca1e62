// Two QEMU 7.2 guests (TCG) on one vhost-user-net --backend switch, one port each: guest B
// runs the `net` job (address, ping A, send 1 MiB to A:5001, fetch 1 MiB from A:5002, wait to
// be pinged), guest A the `netserve` job (the other side of each step). Both compare sha256
// sums across the two results; the daemon's exit counters show the frames went through the
// switch, as TSO frames (the switch offers the offloads and passes the header through). Both guests boot at once, to share the boot cost. Once with one queue pair
// (interrupt polling) and once with two (queues=2, mq=on, 2 vCPUs, adaptive polling) where
// guest A also sets host_mtu=1400, so QEMU sends NET_SET_MTU, which must be accepted for its
// vhost device to start at all.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertGuestOk, runGuest, spawnTracked, type GuestResultBase, type NetResult } from '../../dist/guest/qemu.js';
import { useGuestRig } from './rig.js';

const BIN = new URL('../../bin/vhost-user-net', import.meta.url).pathname;
const MiB = 1 << 20;
const A_IP = '10.79.0.1';
const B_IP = '10.79.0.2';
/** What the `netserve` job reports: the same fields as `net`. */
type ServeResult = Pick<NetResult, 'if' | 'mac' | 'mtu' | 'features' | 'ping_received' | 'tx' | 'rx' | 'in_echos'> &
  GuestResultBase;

const rig = useGuestRig('vut-switch-guest-');

async function waitUntil(what: string, condition: () => boolean, timeoutMs: number, context = () => ''): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`${what} did not happen in ${timeoutMs} ms ${context()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

// In the second variant guest B does not take TSO (guest_tso4/6=off): A's TSO frames reach it
// as TCP segments the switch cuts in software, while B's reach A whole.
const variants = [
  { pairs: 1, poll: 'interrupt', cpus: 1, hostMtu: undefined, bTakesTso: true },
  { pairs: 2, poll: 'adaptive', cpus: 2, hostMtu: 1400, bTakesTso: false },
] as const;

describe('two QEMU guests on vhost-user-net --backend switch', () => {
  for (const variant of variants) {
    const name = `${variant.pairs} queue pair${variant.pairs > 1 ? 's' : ''}, ${variant.poll} polling`;
    it(`ping each other and move 1 MiB each way over TCP, checksums equal (${name})`, { timeout: 300_000 }, async () => {
      const sockets = [join(rig.dir, `a-${variant.pairs}.sock`), join(rig.dir, `b-${variant.pairs}.sock`)];
      const daemon = spawnTracked(process.execPath, [
        BIN,
        '--socket',
        sockets[0],
        '--socket',
        sockets[1],
        '--backend',
        'switch',
        '--queues',
        String(variant.pairs),
        '--poll',
        variant.poll,
        '--cpus',
        '1',
      ]);
      let daemonOut = '';
      let daemonErr = '';
      daemon.child.stdout!.on('data', (chunk: Buffer) => (daemonOut += chunk.toString()));
      daemon.child.stderr!.on('data', (chunk: Buffer) => (daemonErr += chunk.toString()));
      const daemonExit = new Promise<number | null>((resolve) => daemon.child.once('exit', (code) => resolve(code)));
      const started = Date.now();
      try {
        await waitUntil(
          'the daemon listening on both sockets',
          () => sockets.every((s) => existsSync(s)),
          30_000,
          () => daemonErr,
        );
        const common = { image: rig.image, timeoutMs: 240_000, cpus: variant.cpus };
        const jobArgs = { bytes: MiB, echos: 3 };
        const [runA, runB] = await Promise.all([
          runGuest<ServeResult>({
            ...common,
            job: 'netserve',
            net: { socketPath: sockets[0], mac: '52:54:00:00:00:0a', queuePairs: variant.pairs },
            jobArgs: { ...jobArgs, ip: `${A_IP}/24`, peer: B_IP },
            qemuArgs: variant.hostMtu ? ['-global', `virtio-net-pci.host_mtu=${variant.hostMtu}`] : [],
          }),
          runGuest<NetResult>({
            ...common,
            job: 'net',
            net: { socketPath: sockets[1], mac: '52:54:00:00:00:0b', queuePairs: variant.pairs },
            jobArgs: { ...jobArgs, ip: `${B_IP}/24`, peer: A_IP },
            qemuArgs: variant.bTakesTso
              ? []
              : ['-global', 'virtio-net-pci.guest_tso4=off', '-global', 'virtio-net-pci.guest_tso6=off'],
          }),
        ]);
        const a = assertGuestOk(runA);
        const b = assertGuestOk(runB);
        expect(a.features[7]).toBe('1'); // GUEST_TSO4
        expect(b.features[7]).toBe(variant.bTakesTso ? '1' : '0');
        for (const result of [a, b]) {
          expect(result.features[32]).toBe('1'); // VERSION_1
          expect(result.features[15]).toBe('1'); // MRG_RXBUF
          expect(result.features[21]).toBe('1'); // GUEST_ANNOUNCE
          expect(result.features[22]).toBe(variant.pairs > 1 ? '1' : '0'); // MQ
          // The switch offers the offloads and QEMU passes them on: Linux acks them.
          for (const feature of [0, 1, 11]) expect(result.features[feature], `feature ${feature}`).toBe('1'); // CSUM, GUEST_CSUM, HOST_TSO4
          expect(result.ping_received).toBe(3);
          expect(result.in_echos).toBeGreaterThanOrEqual(3);
        }
        // host_mtu reached the guest only because QEMU's NET_SET_MTU was accepted.
        expect(a.mtu).toBe(variant.hostMtu ?? 1500);
        // B → A and A → B, 1 MiB each, the same bytes on both sides.
        expect(b.tx.bytes).toBe(MiB);
        expect(a.rx).toEqual(b.tx);
        expect(a.tx.bytes).toBe(MiB);
        expect(b.rx).toEqual(a.tx);
        process.stdout.write(
          `switch guests (${name}): both results after ${Math.max(runA.durationMs, runB.durationMs)} ms, ` +
            `test ${Date.now() - started} ms\n`,
        );
      } finally {
        daemon.child.kill('SIGINT');
      }
      expect(await daemonExit).toBe(0);
      // Exit summary rows: port queue dir packets bytes drops ... Each direction of each port
      // carried the 1 MiB through the switch, in frames averaging above the MTU: Linux sent TSO
      // frames (up to 64 KiB) and the switch passed their headers through to a guest that acked
      // GUEST_TSO4 (without offloads it took ≥ 700 frames of at most 1514 bytes); to a guest that
      // did not, it cut them into segments (gso-segmented on its RX queues).
      const rows = daemonOut
        .trim()
        .split('\n')
        .slice(1)
        .map((line) => line.trim().split(/\s+/));
      process.stdout.write(`${daemonOut}\n`);
      expect(rows.every((row) => row[11] === '0')).toBe(true); // gso-refused: every TSO frame was TCP
      for (const port of [0, 1]) {
        for (const direction of ['rx', 'tx']) {
          const mine = rows.filter((row) => Number(row[0]) === port && row[2] === direction);
          expect(mine.length).toBe(variant.pairs);
          const packets = mine.reduce((sum, row) => sum + Number(row[3]), 0);
          const bytes = mine.reduce((sum, row) => sum + Number(row[4]), 0);
          const segmented = mine.reduce((sum, row) => sum + Number(row[12]), 0);
          expect(packets, `port ${port} ${direction}`).toBeGreaterThan(0);
          expect(bytes, `port ${port} ${direction}`).toBeGreaterThan(MiB);
          if (port === 1 && direction === 'rx' && !variant.bTakesTso) {
            expect(segmented, 'TSO frames cut for B').toBeGreaterThan(0);
            expect(bytes / packets, 'bytes per frame at B').toBeLessThanOrEqual(1514);
          } else {
            expect(segmented, `port ${port} ${direction}: gso-segmented`).toBe(0);
            expect(bytes / packets, `port ${port} ${direction}: bytes per frame`).toBeGreaterThan(1514);
          }
        }
      }
    });
  }
});
