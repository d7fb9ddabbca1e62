// npm run soak -- [--minutes N] [--sample-seconds S]
//
// Front-end churn against a vhost-user-blk daemon (soak.ts) for N minutes (default 10), sampling
// the daemon's RSS and open fds every S seconds (default 10). Prints the curve and exits 1 if the
// end is more than 10 % above the value after the first minute, or anything else failed.
import { parseArgs } from 'node:util';
import { runSoak } from './soak.js';

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      minutes: { type: 'string', default: '10' },
      'sample-seconds': { type: 'string', default: '10' },
    },
  });
  const minutes = Number(values.minutes);
  const sampleSeconds = Number(values['sample-seconds']);
  if (!(minutes > 0) || !(sampleSeconds > 0)) throw new Error('--minutes and --sample-seconds must be positive');
  console.log(`soak: ${minutes} min of front-end churn against vhost-user-blk, sampling every ${sampleSeconds} s`);
  console.log('   time    RSS (kB)  anon (kB) guest mem (kB)   fds   front-ends');
  const result = await runSoak({
    durationMs: minutes * 60_000,
    sampleEveryMs: sampleSeconds * 1000,
    onSample: (s) =>
      console.log(
        `${String(s.seconds).padStart(6)} s ${String(s.rssKb).padStart(10)} ${String(s.anonKb).padStart(10)} ` +
          `${String(s.shmemKb).padStart(14)} ${String(s.fds).padStart(5)} ${String(s.rounds).padStart(12)}`,
      ),
  });
  console.log(
    `${result.rounds} front-ends (${result.killedMidIo} left with I/O in flight); ` +
      `median ${result.baseline.from}-${result.baseline.to} s: RSS ${result.baseline.rssKb} kB, ${result.baseline.fds} fds; ` +
      `median ${result.end.from}-${result.end.to} s: RSS ${result.end.rssKb} kB, ${result.end.fds} fds`,
  );
  const served = result.servedAfterKillMs;
  console.log(
    `next front-end after one left mid-I/O: connected, negotiated and ring running in ` +
      `p50 ${served.p50.toFixed(1)} ms, p99 ${served.p99.toFixed(1)} ms, max ${served.max.toFixed(1)} ms (${served.count} front-ends)`,
  );
  for (const failure of result.failures) console.log(`FAIL ${failure}`);
  console.log(result.failures.length === 0 ? 'soak passed' : 'soak failed');
  return result.failures.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (error: unknown) => {
    console.error(error);
    process.exit(2);
  },
);
