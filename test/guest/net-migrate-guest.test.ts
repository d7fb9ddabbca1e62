// Live migration of a QEMU 7.2 guest (TCG) on vhost-user-net --backend switch while another guest
// pings it and sends it a TCP stream. One switch daemon, three ports: A (guest 1's source QEMU),
// B (guest 2) and A2 (guest 1's destination QEMU, `-incoming unix:PATH`, same memfd RAM, devices
// and MAC). Guest 2 (job `netmigratepeer` in guest/init.sh) pings guest 1 every 0.2 s, reply
// lines straight on its console, and sends it 4 MiB over TCP paced so that the transfer spans
// the migration; guest 1 (job `netmigrate`) receives it with busybox nc in its own RAM, so the
// receiver and its socket migrate with it. QMP `migrate` on the source once data flows.
//
// Checked: the migration completes; the longest gap between ping replies (guest 2's clock:
// seq × interval + rtt) over the whole run, switch-over included, is under 1 s; the transfer,
// started before the migration and finished after it, arrives whole with guest 2's checksum
// (RX data the back-end wrote while QEMU was copying RAM and did not mark dirty would arrive
// stale: a bad checksum or a stuck TCP stream); and the switch moved guest 1's MAC to port A2.
// Who told the switch: QEMU sends SEND_RARP only when the guest lacks GUEST_ANNOUNCE; with it
// (and CTRL_VQ) QEMU asks the guest to announce itself, and the guest's own gratuitous ARP,
// learned like any TX frame, moves the MAC. The test asserts whichever the guest negotiated
// (daemon log for SEND_RARP; the destination QEMU's virtio_net_handle_announce trace for the
// guest's announce ack). Unicast echo requests to guest 1's MAC reach it after the switch-over
// only through a table entry on A2: the entry on A points at a QEMU that stopped its rings.
// Two variants: the guest's default (GUEST_ANNOUNCE negotiated: the guest announces), and
// `guest_announce=off` on guest 1's virtio-net-pci (QEMU sends SEND_RARP to the switch on A2).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseResult, qemuArgs, spawnTracked, tail, type GuestResultBase } from '../../dist/guest/qemu.js';
import { QmpClient, type QmpEvent } from '../../dist/guest/qmp.js';
import { useGuestRig } from './rig.js';

const BIN = new URL('../../bin/vhost-user-net', import.meta.url).pathname;
const MiB = 1 << 20;
const GUEST1_IP = '10.80.0.1';
const GUEST2_IP = '10.80.0.2';
const GUEST1_MAC = '52:54:00:00:01:01';
const GUEST2_MAC = '52:54:00:00:01:02';
/** Guest 2's ping interval (init.sh job netmigratepeer). */
const PING_INTERVAL_S = 0.2;
const TRANSFER = { bytes: 4 * MiB, chunk: 32 * 1024, pause_ms: 120 };
const MAX_PING_GAP_MS = 1000;
const VIRTIO_NET_F_CTRL_VQ = 17;
const VIRTIO_NET_F_GUEST_ANNOUNCE = 21;
const PORT_A = 0;
const PORT_A2 = 2;

interface MigrationStats {
  status: string;
  'total-time'?: number;
  downtime?: number;
  setup?: number;
  ram?: { transferred: number; 'dirty-sync-count': number; 'page-size': number; normal: number };
}

interface ReceiverResult extends GuestResultBase {
  mac: string;
  features: string;
  rx: { bytes: number; sha256: string };
  in_echos: number;
}

interface SenderResult extends GuestResultBase {
  mac: string;
  features: string;
  tx: { bytes: number; sha256: string };
}

const rig = useGuestRig('vut-net-migrate-');

/** A spawned process whose stdout and stderr are collected; console lines get host arrival times. */
function startCollected(bin: string, args: string[]) {
  const { child, kill, argv } = spawnTracked(bin, args, { stdin: 'pipe' });
  let out = '';
  let partial = '';
  /** Complete stdout lines with the host time (ms) they arrived. */
  const lines: Array<{ at: number; text: string }> = [];
  child.stdout!.setEncoding('utf8').on('data', (text: string) => {
    out += text;
    const at = Date.now();
    const parts = (partial + text).split('\n');
    partial = parts.pop()!;
    for (const line of parts) lines.push({ at, text: line });
  });
  let err = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (err += text));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { child, kill, argv, exited, lines, out: () => out, err: () => err, all: () => `${out}\nstderr:\n${err}` };
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs: number, context: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${context()}`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Host time (ms) of a QMP event's timestamp. */
function eventMs(event: QmpEvent | undefined): number | undefined {
  return event?.timestamp ? event.timestamp.seconds * 1000 + event.timestamp.microseconds / 1000 : undefined;
}

interface PingReply {
  seq: number;
  rttMs: number;
  /** Host arrival time of the console line. */
  at: number;
}

/** busybox ping reply lines: "64 bytes from IP: seq=N ttl=T time=MS ms". */
function pingReplies(lines: Array<{ at: number; text: string }>, from: string): PingReply[] {
  const re = new RegExp(`bytes from ${from.replace(/\./g, '\\.')}: seq=(\\d+) ttl=\\d+ time=([\\d.]+) ms`);
  const replies: PingReply[] = [];
  for (const { at, text } of lines) {
    const m = re.exec(text);
    if (m) replies.push({ seq: Number(m[1]), rttMs: Number(m[2]), at });
  }
  return replies;
}

/**
 * Longest time between two consecutive replies on guest 2's clock: a reply to request `seq`
 * arrives at seq × interval + rtt after the first request (busybox sends on a fixed timer).
 */
function longestGap(replies: PingReply[]): { ms: number; afterSeq: number; beforeSeq: number } {
  let worst = { ms: 0, afterSeq: -1, beforeSeq: -1 };
  for (let i = 1; i < replies.length; i++) {
    const a = replies[i - 1];
    const b = replies[i];
    const ms = (b.seq - a.seq) * PING_INTERVAL_S * 1000 + b.rttMs - a.rttMs;
    if (ms > worst.ms) worst = { ms, afterSeq: a.seq, beforeSeq: b.seq };
  }
  return worst;
}

const variants = [
  { name: 'guest announces', announce: 'guest', deviceProps: [] as string[] },
  { name: 'guest_announce=off: SEND_RARP', announce: 'rarp', deviceProps: ['guest_announce=off'] },
] as const;

describe('live migration of a QEMU guest on vhost-user-net --backend switch', () => {
  for (const variant of variants) {
    it(
      `pings resume within 1 s of the switch-over, a TCP stream across it arrives whole, and the switch moves the MAC (${variant.name})`,
      { timeout: 300_000 },
      async () => {
        const sockets = ['a', 'b', 'a2'].map((name) => join(rig.dir, `${variant.announce}-${name}.sock`));
        const migrationSocket = join(rig.dir, `${variant.announce}-migration.sock`);
        const daemon = startCollected(process.execPath, [
          BIN,
          ...sockets.flatMap((s) => ['--socket', s]),
          '--backend',
          'switch',
          '--poll',
          'interrupt',
          '--cpus',
          '1',
          '--verbose',
        ]);
        const qemus: Array<ReturnType<typeof startCollected>> = [];
        const clients: QmpClient[] = [];
        const qemuBin = process.env.VUT_QEMU ?? 'qemu-system-x86_64';
        try {
          await waitFor('the daemon listening on its sockets', () => sockets.every((s) => existsSync(s)), 30_000, daemon.all);
          const common = { image: rig.image, memoryMiB: 256 };
          const guest1 = (socketPath: string, qmp: string, extra: string[] = []) =>
            qemuArgs({
              ...common,
              net: { socketPath, mac: GUEST1_MAC, deviceProps: [...variant.deviceProps] },
              job: 'netmigrate',
              jobArgs: { ip: `${GUEST1_IP}/24`, bytes: TRANSFER.bytes, echos: 5 },
              qemuArgs: ['-qmp', `unix:${qmp},server=on,wait=off`, ...extra],
            });
          const sourceQmpPath = join(rig.dir, `${variant.announce}-src.qmp`);
          const destinationQmpPath = join(rig.dir, `${variant.announce}-dst.qmp`);
          const source = startCollected(qemuBin, guest1(sockets[0], sourceQmpPath));
          qemus.push(source);
          const peer = startCollected(
            qemuBin,
            qemuArgs({
              ...common,
              net: { socketPath: sockets[1], mac: GUEST2_MAC },
              job: 'netmigratepeer',
              jobArgs: { ip: `${GUEST2_IP}/24`, peer: GUEST1_IP, linger: 4, ...TRANSFER },
            }),
          );
          qemus.push(peer);
          // Guest 1's announce ack (VIRTIO_NET_CTRL_ANNOUNCE_ACK on the control queue) shows in this trace.
          const destination = startCollected(
            qemuBin,
            guest1(sockets[2], destinationQmpPath, [
              '-incoming',
              `unix:${migrationSocket}`,
              '-trace',
              'virtio_net_handle_announce',
              '-trace',
              'virtio_net_announce_notify',
            ]),
          );
          qemus.push(destination);
          const sourceQmp = await QmpClient.connect(sourceQmpPath);
          clients.push(sourceQmp);
          const destinationQmp = await QmpClient.connect(destinationQmpPath);
          clients.push(destinationQmp);
          const context = () =>
            `--- source ---\n${tail(source.all())}\n--- destination ---\n${tail(destination.all())}\n` +
            `--- peer ---\n${tail(peer.all())}\n--- daemon ---\n${tail(daemon.all(), 20)}`;

          // Data flows from guest 2 to guest 1 (a first progress step), and pings are answered.
          await waitFor('the transfer under way', () => peer.out().includes('VUT-STEP netmigratepeer-sent '), 180_000, context);
          expect(pingReplies(peer.lines, GUEST1_IP).length).toBeGreaterThan(0);
          await sourceQmp.execute('migrate-set-parameters', { 'max-bandwidth': 256 * MiB });
          const migrateAt = Date.now();
          await sourceQmp.execute('migrate', { uri: `unix:${migrationSocket}` });
          let stats: MigrationStats = { status: 'setup' };
          for (;;) {
            stats = await sourceQmp.execute<MigrationStats>('query-migrate');
            if (stats.status === 'completed') break;
            if (stats.status === 'failed' || stats.status === 'cancelled') {
              throw new Error(`migration ${stats.status}: ${JSON.stringify(stats)}\n${context()}`);
            }
            if (Date.now() - migrateAt > 120_000) throw new Error(`migration still ${stats.status}\n${context()}`);
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          const completedAt = Date.now();
          expect((await sourceQmp.execute<{ status: string }>('query-status')).status).toBe('postmigrate');
          expect((await destinationQmp.execute<{ status: string }>('query-status')).status).toBe('running');
          // The source VM stopped (STOP) and the destination resumed (RESUME): the switch-over.
          const stoppedAt = eventMs(sourceQmp.events.find((e) => e.event === 'STOP'));
          const resumedAt = eventMs(destinationQmp.events.find((e) => e.event === 'RESUME'));
          await sourceQmp.execute('quit').catch(() => undefined);

          const results = () => [parseResult(destination.out()), parseResult(peer.out())];
          await waitFor("both guests' results", () => results().every((r) => r !== undefined), 180_000, context);
          const receiver = parseResult(destination.out()) as ReceiverResult;
          const sender = parseResult(peer.out()) as SenderResult;
          if (!receiver.ok) throw new Error(`guest 1 failed at ${receiver.step}: ${receiver.error}\n${context()}`);
          if (!sender.ok) throw new Error(`guest 2 failed at ${sender.step}: ${sender.error}\n${context()}`);
          expect(source.out()).not.toContain('VUT-RESULT');

          // The transfer spanned the migration: started before `migrate`, done after the switch-over.
          const sentAll = peer.lines.find((l) => l.text.includes('VUT-STEP netmigratepeer-sent-all'));
          expect(sentAll, 'guest 2 never finished sending').toBeDefined();
          expect(sentAll!.at, 'the transfer ended before the migration completed: slow it down').toBeGreaterThan(completedAt);
          expect(source.out()).not.toContain('netmigrate-received');
          expect(receiver.rx).toEqual(sender.tx);
          expect(receiver.rx.bytes).toBe(TRANSFER.bytes);

          // Pings before and after the switch-over, and no gap of a second or more anywhere.
          const replies = pingReplies(peer.lines, GUEST1_IP);
          const switchOver = stoppedAt ?? migrateAt;
          const before = replies.filter((r) => r.at < switchOver);
          const after = replies.filter((r) => r.at > (resumedAt ?? completedAt));
          expect(before.length).toBeGreaterThan(0);
          expect(after.length).toBeGreaterThan(5);
          const gap = longestGap(replies);
          // The same across the switch-over in host time: replies on either side of STOP/RESUME.
          const lastBefore = before[before.length - 1];
          const firstAfter = replies.find((r) => r.at > (resumedAt ?? completedAt))!;
          const hostGapMs = firstAfter.at - lastBefore.at;
          const overSwitch = longestGap(replies.filter((r) => r.seq >= lastBefore.seq && r.seq <= firstAfter.seq));

          // Who moved the MAC to port A2.
          const features1 = receiver.features;
          const guestAnnounce = features1[VIRTIO_NET_F_GUEST_ANNOUNCE] === '1' && features1[VIRTIO_NET_F_CTRL_VQ] === '1';
          const rarpRequests = daemon
            .err()
            .split('\n')
            .filter((line) => line.includes('"request":"SEND_RARP"'));
          const announceAcks = destination
            .err()
            .split('\n')
            .filter((line) => line.includes('virtio_net_handle_announce'));
          const told = guestAnnounce
            ? `guest announce (GUEST_ANNOUNCE + CTRL_VQ negotiated: ${announceAcks.length} announce ack(s) traced by the destination QEMU, ${rarpRequests.length} SEND_RARP)`
            : `SEND_RARP (${rarpRequests.length} request(s); GUEST_ANNOUNCE not negotiated)`;
          // The variant decides what the guest can negotiate.
          expect(guestAnnounce).toBe(variant.announce === 'guest');
          if (guestAnnounce) {
            expect(announceAcks.length, 'the guest did not acknowledge an announce').toBeGreaterThan(0);
            expect(rarpRequests.length, 'QEMU sends SEND_RARP only without GUEST_ANNOUNCE').toBe(0);
          } else {
            expect(rarpRequests.length).toBeGreaterThan(0);
            expect(rarpRequests.every((line) => line.includes(`port${PORT_A2}`))).toBe(true);
          }

          await destination.exited;
          await peer.exited;
          daemon.child.kill('SIGINT');
          expect(await daemon.exited).toBe(0);
          // Exit rows: port queue rig.dir packets bytes drops ...; A2 carried the traffic after the move.
          const rows = daemon
            .out()
            .trim()
            .split('\n')
            .slice(1)
            .map((line) => line.trim().split(/\s+/));
          const packets = (port: number, direction: string) =>
            rows.filter((row) => Number(row[0]) === port && row[2] === direction).reduce((sum, row) => sum + Number(row[3]), 0);
          for (const direction of ['rx', 'tx']) {
            expect(packets(PORT_A, direction), `port A ${direction}`).toBeGreaterThan(0);
            expect(packets(PORT_A2, direction), `port A2 ${direction}`).toBeGreaterThan(after.length);
          }

          const report =
            `net migration (${variant.name}): ${stats['total-time']} ms total, downtime ${stats.downtime} ms (QEMU), ` +
            `${stats.ram?.['dirty-sync-count']} dirty-log syncs (dirty-sync-count), ${((stats.ram?.transferred ?? 0) / MiB).toFixed(1)} MiB sent; ` +
            `ping gap over the switch-over ${overSwitch.ms.toFixed(0)} ms (guest 2 clock, seq ${overSwitch.afterSeq} → ${overSwitch.beforeSeq}), ` +
            `${hostGapMs} ms between console lines around STOP/RESUME (host clock), longest anywhere ${gap.ms.toFixed(0)} ms; ` +
            `${replies.length} replies; STOP→RESUME ${stoppedAt !== undefined && resumedAt !== undefined ? (resumedAt - stoppedAt).toFixed(0) : '?'} ms; ` +
            `TCP ${receiver.rx.bytes} bytes, sha256 equal; MAC announced by ${told}`;
          console.log(report);
          process.stdout.write(`${daemon.out()}\n`);
          expect(stats.downtime).toBeGreaterThan(0);
          expect(stats.ram?.['dirty-sync-count']).toBeGreaterThanOrEqual(1);
          expect(overSwitch.ms, `ping gap across the switch-over\n${report}`).toBeLessThan(MAX_PING_GAP_MS);
          expect(gap.ms, `longest ping gap\n${report}`).toBeLessThan(MAX_PING_GAP_MS);
        } finally {
          for (const client of clients) client.close();
          for (const qemu of qemus) qemu.kill();
          daemon.child.kill('SIGINT');
          await Promise.race([daemon.exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
          daemon.kill();
        }
      },
    );
  }
});
