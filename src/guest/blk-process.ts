// Starts the vhost-user-blk CLI as a child process and waits until it listens: for the
// benchmarks (which compare it with other back-ends under the same pinning) and the guest tests.
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const BIN = fileURLToPath(new URL('../../bin/vhost-user-blk', import.meta.url));

export interface SpawnedBackend {
  socket: string;
  pid: number;
  /** What the back-end logged on stderr so far. */
  log(): string;
  /** SIGTERM, then resolves with the exit code. */
  stop(): Promise<number | null>;
  /** SIGKILL (a crash, for restart tests), then resolves once the process is gone. */
  kill(): Promise<void>;
}

/** Runs `vhost-user-blk --socket SOCKET ...args`, under `taskset -c CPUS` when given. */
export async function spawnBlkBackend(
  socket: string,
  args: string[],
  options: { taskset?: string; startTimeoutMs?: number } = {},
): Promise<SpawnedBackend> {
  const argv = [BIN, '--socket', socket, ...args];
  const child = options.taskset
    ? spawn('taskset', ['-c', options.taskset, process.execPath, ...argv], { stdio: ['ignore', 'ignore', 'pipe'] })
    : spawn(process.execPath, argv, { stdio: ['ignore', 'ignore', 'pipe'] });
  let log = '';
  child.stderr.setEncoding('utf8').on('data', (text: string) => (log += text));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  const deadline = Date.now() + (options.startTimeoutMs ?? 15_000);
  while (!existsSync(socket)) {
    if (child.exitCode !== null || Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`vhost-user-blk did not listen on ${socket}:\n${log}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  return {
    socket,
    pid: child.pid!,
    log: () => log,
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      return exited;
    },
    kill: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      await exited;
    },
  };
}
