// Child processes the benchmarks run (fio, dd, SPDK's scripts), shared by bench:blk and bench:tuning.
import { execFile } from 'node:child_process';

/** Runs `cmd` and resolves to its stdout; rejects with its stderr when it fails. */
export function run(cmd: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) =>
    execFile(cmd, args, { maxBuffer: 64 << 20 }, (error, stdout, stderr) =>
      error ? reject(new Error(`${cmd} failed: ${stderr || error.message}`)) : resolve(stdout),
    ),
  );
}

/** Writes `sizeMb` MiB of real data (not a sparse file: reading holes would flatter every back-end). */
export async function fillImage(image: string, sizeMb: number): Promise<void> {
  await run('fio', [
    '--name=fill',
    `--filename=${image}`,
    '--rw=write',
    '--bs=1M',
    `--size=${sizeMb}M`,
    '--ioengine=io_uring',
    '--direct=1',
    '--output-format=terse',
  ]);
}
