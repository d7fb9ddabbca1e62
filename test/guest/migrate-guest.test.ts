// Live migration of a running guest on our vhost-user-blk: two QEMU 7.2 (TCG) on this machine,
// each on its own vhost-user-blk process over the same disk rig.image; the destination waits with
// `-incoming unix:PATH`, the source gets QMP `migrate`. Meanwhile the guest (job `migrate` in
// guest/init.sh) keeps re-reading a random region with O_DIRECT into fresh buffers, comparing
// with its reference copy in RAM, and rewriting chunks. A page our back-end wrote but did not
// mark in the dirty log (read data, a status byte, a used-ring entry) reaches the destination
// stale: a mismatch, or a request that never completes. After migration the destination guest
// verifies the whole region, and the host compares the rig.image with the guest's checksum.
//
// The timing is the host's: QEMU is kept iterating (downtime-limit 1 ms, and once it has synced
// the dirty log `rounds` times, max-bandwidth 1 MiB/s, below what the guest dirties: it cannot
// converge)
// until the guest has had a buffer filled by DMA after that point (its pages sent before, with
// other bytes); then the limits are lifted and QEMU stops the VM while the guest holds those
// pages unread. Without dirty logging of the data the destination's copy of the buffer is stale
// and the guest's check after the hold fails.
//
// Quick variant (CI): 32 MiB/s, 2 syncs. `npm run test:migrate:slow` runs the same test with
// max-bandwidth 2 MiB/s and VUT_MIGRATE_ROUNDS (default 12) syncs under I/O first.
import { createHash } from 'node:crypto';
import { closeSync, openSync, readSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { spawnBlkBackend, type SpawnedBackend } from '../../dist/guest/blk-process.js';
import { parseResult, qemuArgs, spawnTracked, tail, type GuestResultBase } from '../../dist/guest/qemu.js';
import { QmpClient } from '../../dist/guest/qmp.js';
import { useGuestRig } from './rig.js';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const REGION_BYTES = MiB;
/** Seconds the second half of each O_DIRECT read waits unread in the guest's dd buffer (init.sh). */
const HOLD_SECONDS = 3;
const SLOW = process.env.VUT_MIGRATE_SLOW === '1';
const variant = SLOW
  ? {
      name: 'slow',
      guestSeconds: 200,
      /** Bytes/s while QEMU iterates; raised to `finalBandwidth` after `rounds` log syncs. */
      bandwidth: 2 * MiB,
      rounds: Number(process.env.VUT_MIGRATE_ROUNDS ?? 12),
      source: 'interrupt',
      destination: 'adaptive',
      timeoutMs: 600_000,
    }
  : {
      name: 'quick',
      guestSeconds: 25,
      bandwidth: 32 * MiB,
      rounds: 2,
      source: 'busy',
      destination: 'adaptive',
      timeoutMs: 180_000,
    };
const HOLD_BANDWIDTH = MiB;
const FINAL_BANDWIDTH = 1024 * MiB;

interface MigrateResult extends GuestResultBase {
  bytes: number;
  rounds: number;
  held_checks: number;
  reads: number;
  writes: number;
  sha256: string;
}

interface MigrationStats {
  status: string;
  'total-time'?: number;
  downtime?: number;
  setup?: number;
  ram?: { transferred: number; 'dirty-sync-count': number; 'dirty-pages-rate'?: number; 'page-size': number; normal: number };
}

const rig = useGuestRig('vut-migrate-');

/** A QEMU with its console collected; resolves `exited` when it is gone. */
function startQemu(args: string[]) {
  const bin = process.env.VUT_QEMU ?? 'qemu-system-x86_64';
  const { child, kill, argv } = spawnTracked(bin, args, { stdin: 'pipe' });
  let console = '';
  child.stdout!.setEncoding('utf8').on('data', (text: string) => (console += text));
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (console += `qemu: ${text}`));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return { kill, argv, exited, console: () => console };
}

async function waitFor(what: string, predicate: () => boolean, timeoutMs: number, context: () => string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}\n${context()}`);
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
}

function sha256OfFile(path: string, bytes: number): string {
  const buffer = Buffer.alloc(bytes);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, buffer, 0, bytes, 0);
  } finally {
    closeSync(fd);
  }
  return createHash('sha256').update(buffer).digest('hex');
}

/** Sums `field` over the back-end's "dirty log done" lines (one per worker and log). */
function dirtyLogTotals(log: string): { logs: number; pagesMarked: number; pagesOutsideLog: number; started: number } {
  let logs = 0;
  let pagesMarked = 0;
  let pagesOutsideLog = 0;
  for (const line of log.split('\n')) {
    if (!line.includes('"dirty log done"')) continue;
    const entry = JSON.parse(line) as { pagesMarked: number; pagesOutsideLog: number };
    logs++;
    pagesMarked += entry.pagesMarked;
    pagesOutsideLog += entry.pagesOutsideLog;
  }
  const started = log.split('\n').filter((line) => line.includes('"dirty logging started"')).length;
  return { logs, pagesMarked, pagesOutsideLog, started };
}

describe(`live migration of a QEMU guest on vhost-user-blk (${variant.name})`, () => {
  it(
    `the guest's O_DIRECT reads and writes stay correct across the migration, and the rig.image matches (source ${variant.source}, destination ${variant.destination} polling)`,
    { timeout: variant.timeoutMs },
    async () => {
      const disk = join(rig.dir, `${variant.name}.img`);
      const backendArgs = (mode: string) => ['--disk', disk, '--size', String(DISK_BYTES), '--cpus', '1', '--poll', mode];
      const backends: SpawnedBackend[] = [];
      const qemus: ReturnType<typeof startQemu>[] = [];
      const clients: QmpClient[] = [];
      const migrationSocket = join(rig.dir, `${variant.name}-migration.sock`);
      let report = '';
      try {
        const sourceBackend = await spawnBlkBackend(join(rig.dir, `${variant.name}-src.sock`), backendArgs(variant.source));
        backends.push(sourceBackend);
        const destinationBackend = await spawnBlkBackend(
          join(rig.dir, `${variant.name}-dst.sock`),
          backendArgs(variant.destination),
        );
        backends.push(destinationBackend);
        const guest = (socketPath: string, qmp: string, extra: string[] = []) =>
          qemuArgs({
            image: rig.image,
            socketPath,
            memoryMiB: 256,
            job: 'migrate',
            jobArgs: { bytes: REGION_BYTES, seconds: variant.guestSeconds, hold: HOLD_SECONDS },
            qemuArgs: ['-qmp', `unix:${qmp},server=on,wait=off`, ...extra],
          });
        const sourceQmpPath = join(rig.dir, `${variant.name}-src.qmp`);
        const destinationQmpPath = join(rig.dir, `${variant.name}-dst.qmp`);
        const source = startQemu(guest(sourceBackend.socket, sourceQmpPath));
        qemus.push(source);
        const destination = startQemu(
          guest(destinationBackend.socket, destinationQmpPath, ['-incoming', `unix:${migrationSocket}`]),
        );
        qemus.push(destination);
        const sourceQmp = await QmpClient.connect(sourceQmpPath);
        clients.push(sourceQmp);
        const destinationQmp = await QmpClient.connect(destinationQmpPath);
        clients.push(destinationQmp);
        const consoles = () =>
          `--- source console ---\n${tail(source.console())}\n--- destination console ---\n${tail(destination.console())}\n` +
          `--- source back-end ---\n${tail(sourceBackend.log(), 15)}\n--- destination back-end ---\n${tail(destinationBackend.log(), 15)}`;

        // The guest is running its loop on the source: migrate it now.
        await waitFor(
          'the guest loop on the source',
          () => source.console().includes('VUT-STEP migrate-loop'),
          120_000,
          consoles,
        );
        await sourceQmp.execute('migrate-set-parameters', { 'max-bandwidth': variant.bandwidth, 'downtime-limit': 1 });
        const started = Date.now();
        await sourceQmp.execute('migrate', { uri: `unix:${migrationSocket}` });
        let stats: MigrationStats = { status: 'setup' };
        /** Guest fills seen when QEMU had synced enough; the next fill ends the migration. */
        let fillsAtRounds = -1;
        let released = false;
        const fills = () => source.console().split('VUT-STEP migrate-filled').length - 1;
        for (;;) {
          stats = await sourceQmp.execute<MigrationStats>('query-migrate');
          if (stats.status === 'completed') break;
          if (stats.status === 'failed' || stats.status === 'cancelled') {
            throw new Error(`migration ${stats.status}: ${JSON.stringify(stats)}\n${consoles()}`);
          }
          if (fillsAtRounds < 0 && (stats.ram?.['dirty-sync-count'] ?? 0) >= variant.rounds) {
            await sourceQmp.execute('migrate-set-parameters', { 'max-bandwidth': HOLD_BANDWIDTH });
            fillsAtRounds = fills();
          }
          if (!released && fillsAtRounds >= 0 && fills() > fillsAtRounds) {
            await sourceQmp.execute('migrate-set-parameters', { 'max-bandwidth': FINAL_BANDWIDTH, 'downtime-limit': 10_000 });
            released = true;
          }
          if (Date.now() - started > variant.timeoutMs / 2) throw new Error(`migration still ${stats.status}\n${consoles()}`);
          await new Promise((resolve) => setTimeout(resolve, 20));
        }
        const migratedAtConsole = destination.console().length;
        // QEMU switched over only when allowed to, after a fill: the check above had something to catch.
        expect(released, 'QEMU converged before the guest had a buffer filled under logging').toBe(true);
        // The source stays paused ("postmigrate"); the destination runs the guest from here on.
        expect((await sourceQmp.execute<{ status: string }>('query-status')).status).toBe('postmigrate');
        expect((await destinationQmp.execute<{ status: string }>('query-status')).status).toBe('running');
        expect(source.console()).not.toContain('VUT-RESULT');
        await sourceQmp.execute('quit').catch(() => undefined);

        await waitFor(
          'the guest result on the destination',
          () => parseResult(destination.console()) !== undefined,
          variant.timeoutMs / 2,
          consoles,
        );
        const result = parseResult(destination.console()) as MigrateResult;
        if (!result.ok) throw new Error(`guest failed at ${result.step}: ${result.error}\n${consoles()}`);
        // The guest kept doing verified I/O on the destination after the switch-over.
        expect(destination.console().slice(migratedAtConsole)).toMatch(/VUT-STEP migrate-tick/);
        expect(result.reads).toBeGreaterThan(0);
        expect(result.writes).toBeGreaterThan(0);
        expect(result.held_checks).toBeGreaterThan(1);
        await destination.exited;
        expect(await destinationBackend.stop()).toBe(0);
        expect(await sourceBackend.stop()).toBe(0);
        // The disk holds what the guest last had in its reference copy.
        expect(sha256OfFile(disk, REGION_BYTES)).toBe(result.sha256);

        // What the back-ends and QEMU saw of the migration.
        const sourceLog = dirtyLogTotals(sourceBackend.log());
        expect(sourceLog.started).toBeGreaterThanOrEqual(1);
        // At least the fill of the whole region the switch-over waited for.
        expect(sourceLog.pagesMarked).toBeGreaterThanOrEqual(REGION_BYTES / 4096);
        expect(sourceLog.pagesOutsideLog).toBe(0);
        const rounds = stats.ram?.['dirty-sync-count'] ?? 0;
        expect(rounds).toBeGreaterThanOrEqual(variant.rounds);
        const seconds = (stats['total-time'] ?? 0) / 1000;
        report =
          `migration (${variant.name}): ${stats['total-time']} ms total, downtime ${stats.downtime} ms, ` +
          `${rounds} dirty-log syncs (dirty-sync-count), ${((stats.ram?.transferred ?? 0) / MiB).toFixed(1)} MiB sent; ` +
          `back-end marked ${sourceLog.pagesMarked} pages (${(sourceLog.pagesMarked / Math.max(seconds, 0.001)).toFixed(0)}/s of migration) ` +
          `in ${sourceLog.started} logging period(s); guest ${result.rounds} rounds, ${result.reads} verified O_DIRECT reads, ${result.held_checks} held-buffer checks, ${result.writes} chunk writes`;
        console.log(report);
      } finally {
        for (const client of clients) client.close();
        for (const qemu of qemus) qemu.kill();
        for (const backend of backends) await backend.stop();
      }
    },
  );
});
