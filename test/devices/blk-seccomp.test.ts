// The io_uring fallback for real: the vhost-user-blk CLI under a seccomp filter that refuses
// io_uring_setup with EPERM (as Docker's default profile does; fixtures/no-io-uring.c, built
// here with the system C compiler) serves its disk with the threads engine and says why.
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, ftruncateSync, mkdtempSync, openSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { BlkGuest, S, mismatch, pattern } from './blk-rig.js';

const MiB = 1 << 20;
const FIXTURE = fileURLToPath(new URL('./fixtures/no-io-uring.c', import.meta.url));
const BIN = fileURLToPath(new URL('../../bin/vhost-user-blk', import.meta.url));

let dir: string;
let wrapper: string;

beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-blk-seccomp-'));
  wrapper = join(dir, 'no-io-uring');
  execFileSync('cc', ['-O2', '-Wall', '-o', wrapper, FIXTURE]);
});

afterAll(() => rmSync(dir, { recursive: true, force: true }));

/** Runs `node ARGS` under the filter; resolves with its stdout. */
function underFilter(args: string[]): string {
  return execFileSync(wrapper, [process.execPath, ...args], { encoding: 'utf8' });
}

describe('under a seccomp filter that refuses io_uring_setup', () => {
  it('the kernel really refuses a ring there, with EPERM', () => {
    const probe = `import { native } from ${JSON.stringify(new URL('../../dist/native.js', import.meta.url).href)};
      try { new native.Uring(1).close(); console.log('allowed'); } catch (error) { console.log(error.code); }`;
    expect(underFilter(['--input-type=module', '-e', probe]).trim()).toBe('EPERM');
  });

  it('vhost-user-blk --disk (engine auto) serves the disk with the threads engine and logs why', async () => {
    const image = join(dir, 'disk.img');
    const fd = openSync(image, 'w');
    ftruncateSync(fd, 16 * MiB);
    closeSync(fd);
    const socket = join(dir, 'blk.sock');
    const child: ChildProcess = spawn(
      wrapper,
      [process.execPath, BIN, '--socket', socket, '--disk', image, '--cpus', '1', '--poll', 'interrupt'],
      {
        stdio: ['ignore', 'ignore', 'pipe'],
      },
    );
    let log = '';
    child.stderr!.setEncoding('utf8').on('data', (text: string) => (log += text));
    const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
    let guest: BlkGuest | undefined;
    try {
      for (let waited = 0; !existsSync(socket); waited += 50) {
        if (child.exitCode !== null || waited > 15_000) throw new Error(`vhost-user-blk did not listen:\n${log}`);
        await new Promise((resolve) => setTimeout(resolve, 50));
      }
      const memory = FrontendMemory.simple(16 * MiB);
      const device = await FrontendDevice.connect({ socketPath: socket, memory, queues: 1, queueSize: 128, indirectEntries: 16 });
      guest = new BlkGuest(device, memory, true);
      const data = pattern(128 * 1024, 41);
      expect((await guest.write(256, data)).status).toBe(S.OK);
      expect(mismatch((await guest.read(256, data.length)).data, data)).toBe(-1);
      expect((await guest.simple(4)).status).toBe(S.OK); // FLUSH
    } finally {
      guest?.close();
      if (child.exitCode === null) child.kill('SIGTERM');
    }
    expect(await exited, log).toBe(0);
    const lines = log
      .split('\n')
      .filter(Boolean)
      .map((line) => JSON.parse(line) as { level: string; msg: string; errno?: string; engine?: string });
    const fallback = lines.filter((line) => line.msg.includes('io_uring is not available'));
    expect(fallback, log).toHaveLength(1);
    expect(fallback[0]).toMatchObject({ level: 'warn', errno: 'EPERM', engine: 'threads' });
    expect(lines.find((line) => line.msg === 'serving')?.engine).toBe('threads');
    const onDisk = new Uint8Array(128 * 1024);
    const check = openSync(image, 'r');
    readSync(check, onDisk, 0, onDisk.length, 256 * 512);
    closeSync(check);
    expect(mismatch(onDisk, pattern(128 * 1024, 41))).toBe(-1);
  });
});
