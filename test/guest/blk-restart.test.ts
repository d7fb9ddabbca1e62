// A QEMU 7.2 guest (TCG) on our vhost-user-blk with `-chardev socket,...,reconnect=1` and several
// concurrent writers (guest job `restart`: each round every writer writes its own region with a
// new pattern, O_DIRECT + fsync, reads it back and compares), while the host SIGKILLs the
// back-end shortly after a round's I/O started and starts a new one on the same socket and
// rig.image. QEMU keeps the in-flight region across the restarts (GET_INFLIGHT_FD once,
// SET_INFLIGHT_FD after each reconnect) and the new back-end resubmits what was in flight. The
// guest verifies every round; the host compares the rig.image with the last round's patterns.
//
// Quick variant here (3 kills, busy with 1 queue and interrupt with 2); the long one is
// `npm run test:restart:long` (VUT_RESTART_LONG=1: every poll mode × 1 and 2 queues, 20 kills
// each unless VUT_RESTART_KILLS says otherwise).
import { rmSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { spawnBlkBackend, type SpawnedBackend } from '../../dist/guest/blk-process.js';
import { assertGuestOk, makePattern, runGuest, type GuestResultBase } from '../../dist/guest/qemu.js';
import { readFileRange, useGuestRig } from './rig.js';

const MiB = 1 << 20;
const DISK_BYTES = 64 * MiB;
const WRITERS = 4;
const WRITER_BYTES = 256 << 10;
const OFFSET = MiB;
const SEED = 11;
const LONG = process.env.VUT_RESTART_LONG === '1';
const KILLS = Number(process.env.VUT_RESTART_KILLS ?? (LONG ? 20 : 3));
/** A kill lands this long (uniformly, ms) after a round's I/O started: within the writes. */
const KILL_DELAY_MS: [number, number] = [1, 60];

interface RestartResult extends GuestResultBase {
  job: 'restart';
  queues: number;
  writers: number;
  rounds: number;
  bytes: number;
  offset: number;
  seed: number;
}

const rig = useGuestRig('vut-blk-restart-');

/** The `resubmitted` counts a back-end logged when its queues recovered from the in-flight region. */
function recoveries(log: string): number[] {
  const counts: number[] = [];
  for (const line of log.split('\n')) {
    if (!line.includes('queue recovered from the in-flight region')) continue;
    counts.push(Number((JSON.parse(line) as { resubmitted?: number }).resubmitted ?? NaN));
  }
  return counts;
}

const variants: Array<['busy' | 'interrupt' | 'adaptive', number]> = LONG
  ? [
      ['busy', 1],
      ['busy', 2],
      ['interrupt', 1],
      ['interrupt', 2],
      ['adaptive', 1],
      ['adaptive', 2],
    ]
  : [
      ['busy', 1],
      ['interrupt', 2],
    ];

describe.each(variants)(
  'a QEMU guest with concurrent writers while vhost-user-blk (%s, %i queue(s)) is killed and restarted',
  (mode, queues) => {
    it(
      `loses, repeats and corrupts nothing across ${KILLS} SIGKILLs mid-I/O`,
      { timeout: 120_000 + KILLS * 15_000 },
      async () => {
        const name = `${mode}-${queues}`;
        const disk = join(rig.dir, `${name}.img`);
        const socket = join(rig.dir, `${name}.sock`);
        const args = ['--disk', disk, '--size', String(DISK_BYTES), '--cpus', '1', '--poll', mode, '--queues', String(queues)];
        let backend: SpawnedBackend = await spawnBlkBackend(socket, args);
        const logs: string[] = [];
        let kills = 0;
        let killsMidIo = 0;
        /** Round whose I/O was running at each kill; -1 once that round verified. */
        let roundAtKill = -1;
        let restarting: Promise<void> | undefined;
        let restartError: unknown;
        let pending = '';
        let seenRounds = 0;

        const killAndRestart = async (round: number): Promise<void> => {
          const [low, high] = KILL_DELAY_MS;
          // QEMU reconnects once a second: a round's I/O can start (and stall) before it has
          // reached the last restarted back-end. Kill only one that serves every queue, or the
          // kill tests nothing and that back-end has no recovery to check.
          const servingSince = Date.now();
          while ((backend.log().match(/"msg":"queue started"/g) ?? []).length < queues) {
            if (Date.now() - servingSince > 30_000) throw new Error(`the restarted back-end was not reconnected within 30 s`);
            await new Promise((resolve) => setTimeout(resolve, 50));
          }
          await new Promise((resolve) => setTimeout(resolve, low + Math.random() * (high - low)));
          roundAtKill = round;
          await backend.kill();
          kills++;
          logs.push(backend.log());
          rmSync(socket, { force: true }); // the stale socket: the new back-end must bind it, QEMU retries meanwhile
          backend = await spawnBlkBackend(socket, args);
        };

        const onConsole = (text: string): void => {
          pending += text;
          for (;;) {
            const io = /VUT-STEP round-(\d+)-io/.exec(pending);
            const verified = /VUT-STEP round-(\d+)-verified/.exec(pending);
            const next = [io, verified].filter((m) => m !== null).sort((a, b) => a.index - b.index)[0];
            if (!next) return;
            pending = pending.slice(next.index + next[0].length);
            const round = Number(next[1]);
            if (next === verified) {
              if (roundAtKill === round) killsMidIo++;
              continue;
            }
            seenRounds = round;
            // One kill per round until KILLS; the last round runs on the last back-end undisturbed.
            if (kills < KILLS && !restarting) {
              restarting = killAndRestart(round)
                .catch((error: unknown) => {
                  restartError = error;
                })
                .finally(() => (restarting = undefined));
            }
          }
        };

        let run;
        try {
          run = await runGuest<RestartResult>({
            image: rig.image,
            socketPath: socket,
            numQueues: queues,
            chardevProps: ['reconnect=1'],
            job: 'restart',
            jobArgs: { writers: WRITERS, rounds: KILLS + 1, bytes: WRITER_BYTES, offset: OFFSET, seed: SEED, bs: 65536 },
            consoleLogPath: join(rig.dir, `${name}.console.log`),
            onConsole,
            timeoutMs: 100_000 + KILLS * 12_000,
          });
        } finally {
          await restarting;
          logs.push(backend.log());
          await backend.stop();
        }
        expect(restartError).toBeUndefined();
        const r = assertGuestOk(run);
        expect(r.queues).toBe(queues);
        expect(r.rounds).toBe(KILLS + 1);
        expect(seenRounds).toBe(KILLS + 1);
        expect(kills).toBe(KILLS);
        // Each restarted back-end recovered every queue QEMU started from the region it kept.
        const recovered = logs.slice(1).map(recoveries);
        for (const counts of recovered) expect(counts.length, logs.join('\n---\n')).toBe(queues);
        const resubmitted = recovered.flat().reduce((sum, count) => sum + count, 0);
        // The writes are on the image: the last round's pattern in every writer's region.
        for (let w = 0; w < WRITERS; w++) {
          const offset = OFFSET + w * WRITER_BYTES;
          const expected = makePattern(SEED + r.rounds * WRITERS + w, offset, WRITER_BYTES);
          expect(readFileRange(disk, offset, WRITER_BYTES).equals(expected), `writer ${w}'s region on the rig.image`).toBe(true);
        }
        // Most kills must land inside a round's I/O, or the test would not test restart under I/O.
        expect(killsMidIo, `kills inside a round's I/O (of ${kills})`).toBeGreaterThan(0);
        process.stdout.write(
          `restart ${name}: ${kills} kills (${killsMidIo} during a round's I/O), ${resubmitted} requests resubmitted, ` +
            `guest uptime ${r.uptime_s} s\n`,
        );
      },
    );
  },
);
