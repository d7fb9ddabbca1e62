// qemu-storage-daemon as the reference vhost-user-blk back-end (known-good peer for the guest rig
// and the comparison anchor for benchmarks).
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { spawnTracked } from './qemu.js';

export interface StorageDaemonOptions {
  /** Image file (raw). */
  image: string;
  /** vhost-user socket path the daemon listens on. */
  socketPath: string;
  numQueues?: number;
  writable?: boolean;
  logicalBlockSize?: number;
  /** O_DIRECT on the image (needs a file system that supports it; default off). */
  cacheDirect?: boolean;
  /** 'unmap' passes guest discards to the file (punches holes), 'ignore' drops them (default unmap). */
  discard?: 'unmap' | 'ignore';
  /** Full --blockdev value instead of the file node built from the options above (node-name must be file0). */
  blockdev?: string;
  /**
   * Serve the export from an iothread instead of the main loop; `pollMaxNs` 0 turns its adaptive
   * polling off (pure interrupt), undefined keeps QEMU's default (adaptive polling, 32 µs max).
   */
  iothread?: { pollMaxNs?: number };
  /** Pin the daemon to these CPUs (taskset -c LIST). */
  cpus?: string;
  /** Binary (default qemu-storage-daemon, or $VUT_QSD). */
  binary?: string;
  /** How long to wait for the socket to appear (default 10 000 ms). */
  startTimeoutMs?: number;
}

export interface StorageDaemon {
  pid: number;
  argv: string[];
  /** stdout + stderr so far. */
  log(): string;
  /** SIGTERM, then SIGKILL to the process group after 3 s; resolves when it has exited. */
  stop(): Promise<void>;
}

export async function startStorageDaemon(o: StorageDaemonOptions): Promise<StorageDaemon> {
  const bin = o.binary ?? process.env.VUT_QSD ?? 'qemu-storage-daemon';
  const blockdev = [
    'driver=file',
    'node-name=file0',
    `filename=${o.image}`,
    `cache.direct=${o.cacheDirect ? 'on' : 'off'}`,
    `discard=${o.discard ?? 'unmap'}`,
  ];
  const exp = [
    'type=vhost-user-blk',
    'id=exp0',
    'node-name=file0',
    'addr.type=unix',
    `addr.path=${o.socketPath}`,
    `writable=${o.writable === false ? 'off' : 'on'}`,
    `num-queues=${o.numQueues ?? 1}`,
  ];
  if (o.logicalBlockSize) exp.push(`logical-block-size=${o.logicalBlockSize}`);
  const args = ['--blockdev', o.blockdev ?? blockdev.join(',')];
  if (o.iothread) {
    const object = ['iothread', 'id=iothread0'];
    if (o.iothread.pollMaxNs !== undefined) object.push(`poll-max-ns=${o.iothread.pollMaxNs}`);
    args.push('--object', object.join(','));
    exp.push('iothread=iothread0');
  }
  args.push('--export', exp.join(','));
  const { child, kill, argv } = o.cpus ? spawnTracked('taskset', ['-c', o.cpus, bin, ...args]) : spawnTracked(bin, args);
  let out = '';
  child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
  child.stderr!.setEncoding('utf8').on('data', (d: string) => (out += d));
  let exited = false;
  const exitP = new Promise<void>((res) => child.once('close', () => ((exited = true), res())));
  child.once('error', (e) => (out += `spawn error: ${e.message} (apt-get install -y qemu-utils)\n`));

  const deadline = Date.now() + (o.startTimeoutMs ?? 10_000);
  while (!existsSync(o.socketPath)) {
    if (exited || Date.now() > deadline) {
      kill();
      await exitP;
      throw new Error(`qemu-storage-daemon did not create ${o.socketPath}: ${argv.join(' ')}\n${out}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  return {
    pid: child.pid!,
    argv,
    log: () => out,
    async stop() {
      if (exited) return;
      child.kill('SIGTERM');
      const t = setTimeout(kill, 3000);
      await exitP;
      clearTimeout(t);
      kill(); // sweep the group
    },
  };
}

/** `qemu-img create -f raw FILE SIZE`. */
export function createRawImage(file: string, bytes: number): Promise<void> {
  return new Promise((resolve, reject) => {
    execFile('qemu-img', ['create', '-f', 'raw', file, String(bytes)], (err, _out, stderr) =>
      err ? reject(new Error(`qemu-img create failed (apt-get install -y qemu-utils): ${stderr || err.message}`)) : resolve(),
    );
  });
}
