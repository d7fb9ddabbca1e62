// Runs bin/vhost-user-blk as a child process the way managers do (path, inherited fd, systemd
// activation, client mode) and talks to it with the front-end library.
import { spawn, type ChildProcess, type StdioOptions } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { VhostUserClient } from '../../dist/frontend/index.js';

export const BIN = fileURLToPath(new URL('../../bin/vhost-user-blk', import.meta.url));

export interface Child {
  process: ChildProcess;
  /** stderr so far (JSON log lines and error messages). */
  stderr(): string;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Waits until the log shows `count` back-ends serving, or fails with the log. */
  serving(count?: number, timeoutMs?: number): Promise<void>;
}

/** Spawns `node BIN ...args`, or `command` (e.g. a shell that execs it), with the given stdio slots from 3 on. */
export function run(
  args: string[],
  options: { extraFds?: (number | 'ignore')[]; env?: NodeJS.ProcessEnv; shell?: string } = {},
): Child {
  const stdio = ['ignore', 'ignore', 'pipe', ...(options.extraFds ?? [])] as StdioOptions;
  const child = options.shell
    ? spawn('/bin/sh', ['-c', options.shell, 'sh', process.execPath, BIN, ...args], { stdio, env: options.env ?? process.env })
    : spawn(process.execPath, [BIN, ...args], { stdio, env: options.env ?? process.env });
  let log = '';
  child.stderr!.setEncoding('utf8').on('data', (text: string) => (log += text));
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  return {
    process: child,
    stderr: () => log,
    exited,
    async serving(count = 1, timeoutMs = 20_000) {
      const deadline = Date.now() + timeoutMs;
      while ((log.match(/"msg":"serving"/g) ?? []).length < count) {
        if (child.exitCode !== null || child.signalCode !== null || Date.now() > deadline) {
          throw new Error(`vhost-user-blk did not start serving (${count}):\n${log}`);
        }
        await sleep(20);
      }
    },
  };
}

export const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

/** Negotiates just enough to read the disk size (bytes) and the queue count the back-end offers. */
export async function probe(client: VhostUserClient): Promise<{ capacityBytes: bigint; queues: bigint }> {
  try {
    await client.getFeatures();
    await client.setProtocolFeatures(await client.getProtocolFeatures());
    const config = await client.getConfig(0, 8);
    const capacityBytes = new DataView(config.buffer, config.byteOffset, 8).getBigUint64(0, true) * 512n;
    return { capacityBytes, queues: await client.getU64('GET_QUEUE_NUM') };
  } finally {
    client.close();
  }
}

export function probePath(path: string): Promise<{ capacityBytes: bigint; queues: bigint }> {
  return VhostUserClient.connect(path, { timeoutMs: 5000, replyTimeoutMs: 5000 }).then(probe);
}
