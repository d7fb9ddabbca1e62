// Real-guest test harness: boots a tiny Linux guest under QEMU (TCG) against a vhost-user back-end
// and returns the guest's machine-readable verdict.
//
//   const image = await ensureGuestImage();            // builds/reuses .cache/guest/<kver>-<hash>/
//   const run = await runGuest({ socketPath, numQueues: 2, job: 'blk', jobArgs: { seed: 7 } });
//   assertGuestOk(run);                                 // throws with the console tail if !ok
//
// The guest side is guest/init.sh (job protocol documented there); the image is built by
// guest/build-initramfs.sh.
import { spawn, execFile, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { accessSync, constants as fsConstants, createWriteStream, existsSync, type WriteStream } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const HERE = dirname(fileURLToPath(import.meta.url));
// Compiled to dist/guest/: the repository root is two levels up; the guest's files live in guest/.
export const REPO_ROOT = join(HERE, '..', '..');
export const BUILD_SCRIPT = join(REPO_ROOT, 'guest', 'build-initramfs.sh');
export const DEFAULT_CACHE_DIR = join(REPO_ROOT, '.cache', 'guest');

// ------------------------------------------------------------------------------------------------
// Guest image

export interface GuestImage {
  /** /boot/vmlinuz-<ver> of the installed Debian kernel. */
  kernel: string;
  /** initramfs.cpio.gz in the cache folder. */
  initrd: string;
  kernelVersion: string;
  /** <kernel version>-<hash of the inputs>: the cache entry. */
  key: string;
}

export interface EnsureGuestImageOptions {
  /** Cache folder (default <repo>/.cache/guest). */
  outDir?: string;
  /** Rebuild even when cached. */
  force?: boolean;
}

const imageCache = new Map<string, Promise<GuestImage>>();

/** Builds (or reuses, cached on disk by kernel version + inputs hash) the guest kernel + initramfs. */
export function ensureGuestImage(options: EnsureGuestImageOptions = {}): Promise<GuestImage> {
  const outDir = options.outDir ?? DEFAULT_CACHE_DIR;
  const cached = imageCache.get(outDir);
  if (cached && !options.force) return cached;
  const p = new Promise<GuestImage>((resolve, reject) => {
    const env = { ...process.env, ...(options.force ? { VUT_FORCE_REBUILD: '1' } : {}) };
    execFile('bash', [BUILD_SCRIPT, outDir], { env, maxBuffer: 4 << 20 }, (err, stdout, stderr) => {
      if (err) {
        reject(new Error(`build-initramfs.sh failed (${err.message.split('\n')[0]}):\n${stderr.trim()}`));
        return;
      }
      const last = stdout.trim().split('\n').pop() ?? '';
      try {
        const image = JSON.parse(last) as GuestImage;
        if (!image.kernel || !image.initrd) throw new Error('manifest lacks kernel/initrd');
        resolve(image);
      } catch (e) {
        reject(new Error(`build-initramfs.sh printed no manifest (${String(e)}): ${stdout}\n${stderr}`));
      }
    });
  });
  imageCache.set(outDir, p);
  p.catch(() => imageCache.delete(outDir));
  return p;
}

// ------------------------------------------------------------------------------------------------
// Guest result

/** Fields every VUT-RESULT line carries. */
export interface GuestResultBase {
  job: string;
  ok: boolean;
  /** Failing step (ok: false only). */
  step?: string;
  /** Failure text (ok: false only). */
  error?: string;
  /** Guest /proc/uptime seconds when the result was printed. */
  uptime_s?: number;
  [key: string]: unknown;
}

/** VUT-RESULT of the `blk` job (ok: true). */
export interface BlkResult extends GuestResultBase {
  job: 'blk';
  dev: string;
  cpus: number;
  sectors: number;
  size_bytes: number;
  logical_block_size: number;
  physical_block_size: number;
  /** Entries in /sys/block/vda/mq = min(num-queues, guest CPUs). */
  queues: number;
  ro: number | null;
  write_cache: string | null;
  discard_max_bytes: number | null;
  discard_granularity: number | null;
  write_zeroes_max_bytes: number | null;
  max_hw_sectors_kb: number | null;
  max_segments: number | null;
  nr_requests: number | null;
  /** /sys/block/vda/serial (GET_ID), null when the device has none. */
  serial: string | null;
  /** Negotiated virtio feature bits, '0'/'1' per bit, bit 0 first. */
  features: string | null;
  data: { offset: number; bytes: number; seed: number; sha256: string; verified: boolean } | null;
  tail: { offset: number; bytes: number; sha256: string; verified: boolean } | null;
  /**
   * feature: VIRTIO_BLK_F_FLUSH negotiated; write_cache: the device's mode at boot;
   * forced_write_back: how the guest switched to write back so fsync sends FLUSH
   * ('cache_type' = virtio config write, 'queue/write_cache' = block layer only) or false;
   * requests: FLUSH requests completed during the flush step.
   */
  flush: {
    feature: boolean;
    write_cache: string;
    forced_write_back: false | 'cache_type' | 'queue/write_cache';
    requests: number;
  };
  discard: 'skipped' | 'unavailable' | 'unsupported' | { offset: number; bytes: number };
  /** Completion interrupts per request virtqueue (MSI-X "virtioN-req.Q", summed over CPUs). */
  vq_interrupts: Array<number | null>;
  /** /sys/block/vda/stat deltas over the job. */
  stat: {
    reads: number;
    read_sectors: number;
    writes: number;
    write_sectors: number;
    discards: number;
    discard_sectors: number;
    flushes: number;
  };
}

/** VUT-RESULT of the `net` job (ok: true). */
export interface NetResult extends GuestResultBase {
  job: 'net';
  /** The guest's interface, its MAC and MTU. */
  if: string;
  mac: string;
  mtu: number;
  /** Negotiated virtio feature bits, '0'/'1' per bit, bit 0 first. */
  features: string;
  /** Echo replies to the guest's 3 pings of the peer. */
  ping_received: number;
  /** What the guest sent to PEER:5001 and received from PEER:5002. */
  tx: { bytes: number; sha256: string };
  rx: { bytes: number; sha256: string };
  /** Echo requests the guest answered (the peer pinging it). */
  in_echos: number;
}

export type GuestResult = GuestResultBase;

export interface GuestRun<R extends GuestResultBase = GuestResult> {
  result: R;
  /** Everything the guest printed on the serial console (plus QEMU's stderr, prefixed "qemu: "). */
  consoleLog: string;
  /** QEMU spawn → VUT-RESULT line. */
  durationMs: number;
  /** QEMU spawn → QEMU exit. */
  exitMs: number;
  /** The QEMU command line (for logs). */
  argv: string[];
}

/** Parses the last `VUT-RESULT {...}` line of a console log (undefined if none). */
export function parseResult(consoleLog: string): GuestResult | undefined {
  const re = /VUT-RESULT (\{.*\})\s*$/gm;
  let found: GuestResult | undefined;
  for (let m = re.exec(consoleLog); m; m = re.exec(consoleLog)) {
    try {
      found = JSON.parse(m[1]) as GuestResult;
    } catch {
      // a kernel message interleaved into the line: keep looking
    }
  }
  return found;
}

/** Last `lines` lines of a log. */
export function tail(log: string, lines = 40): string {
  return log.split('\n').slice(-lines).join('\n');
}

/** Throws (with the failing step and the console tail) unless the guest reported ok. */
export function assertGuestOk<R extends GuestResultBase>(run: GuestRun<R>): R {
  if (!run.result.ok) {
    throw new Error(
      `guest job ${run.result.job} failed at step ${run.result.step ?? '?'}: ${run.result.error ?? '?'}\n` +
        `--- console tail ---\n${tail(run.consoleLog)}`,
    );
  }
  return run.result;
}

// ------------------------------------------------------------------------------------------------
// Pattern (same as init.sh gen_pattern) so the host can check a disk image after the guest ran.

/**
 * The bytes the guest's blk job writes at `offset` (multiple of 4096) for `bytes` (multiple of 4096).
 * 4 KiB block n (absolute on the disk): u32 BE n, u32 BE x0, then base[(k + n*509 % 4096) % 4096]
 * for k = 8..4095; base[i] = x_{i+1} & 255 with x_{j+1} = x_j * 48271 mod (2^31 - 1),
 * x0 = seed mod (2^31 - 2) + 1.
 */
export function makePattern(seed: number, offset: number, bytes: number): Buffer {
  if (offset % 4096 || bytes % 4096) throw new RangeError('offset and bytes must be multiples of 4096');
  const M = 2147483647;
  const x0 = (seed % 2147483646) + 1;
  const base = Buffer.alloc(4096);
  let x = x0;
  for (let i = 0; i < 4096; i++) {
    x = (x * 48271) % M; // < 2^47: exact in a double
    base[i] = x % 256;
  }
  const out = Buffer.alloc(bytes);
  const first = offset / 4096;
  for (let b = 0; b < bytes / 4096; b++) {
    const n = first + b;
    const o = b * 4096;
    out.writeUInt32BE(n >>> 0, o);
    out.writeUInt32BE(x0 >>> 0, o + 4);
    const r = (n * 509) % 4096;
    for (let k = 8; k < 4096; k++) out[o + k] = base[(k + r) % 4096]!;
  }
  return out;
}

export function sha256(buf: Buffer): string {
  return createHash('sha256').update(buf).digest('hex');
}

// ------------------------------------------------------------------------------------------------
// Process hygiene: every QEMU (and helper daemon) runs in its own process group and is killed with
// its group on timeout, error, or when this process exits. With util-linux `setpriv` available the
// child also gets PDEATHSIG=KILL, so even a SIGKILLed test runner leaves nothing behind.

const liveGroups = new Set<number>();
let exitHookInstalled = false;

function killGroup(pid: number, signal: NodeJS.Signals = 'SIGKILL'): void {
  try {
    process.kill(-pid, signal);
  } catch {
    try {
      process.kill(pid, signal);
    } catch {
      // already gone
    }
  }
}

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const pid of liveGroups) killGroup(pid);
  });
}

let setprivPath: string | null | undefined;
function findSetpriv(): string | null {
  if (setprivPath !== undefined) return setprivPath;
  setprivPath = null;
  for (const p of ['/usr/bin/setpriv', '/bin/setpriv']) {
    try {
      accessSync(p, fsConstants.X_OK);
      setprivPath = p;
      break;
    } catch {
      // next
    }
  }
  return setprivPath;
}

/**
 * Spawns `cmd args` in a new process group, tracked for cleanup (killed when this process exits).
 * Returns the child and a kill function (SIGKILL to the whole group).
 */
export function spawnTracked(
  cmd: string,
  args: string[],
  opts: { stdin?: 'pipe' | 'ignore'; env?: NodeJS.ProcessEnv; cwd?: string } = {},
): { child: ChildProcess; kill: () => void; argv: string[] } {
  installExitHook();
  const setpriv = findSetpriv();
  const argv = setpriv ? [setpriv, '--pdeathsig', 'KILL', '--', cmd, ...args] : [cmd, ...args];
  const child = spawn(argv[0], argv.slice(1), {
    detached: true, // own process group
    stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
    env: opts.env ?? process.env,
    cwd: opts.cwd,
  });
  const pid = child.pid;
  if (pid !== undefined) liveGroups.add(pid);
  let exited = false;
  child.once('exit', () => {
    exited = true;
    if (pid !== undefined) {
      // the group may still hold children of the process: sweep it
      killGroup(pid);
      liveGroups.delete(pid);
    }
  });
  const kill = (): void => {
    if (pid !== undefined && !exited) killGroup(pid);
  };
  return { child, kill, argv };
}

// ------------------------------------------------------------------------------------------------
// runGuest

export interface RunGuestOptions {
  /** vhost-user-blk socket (the back-end listens, QEMU connects). Omit for no blk device. */
  socketPath?: string;
  /** vhost-user-blk-pci num-queues (default 1). */
  numQueues?: number;
  /** vhost-user-blk-pci queue-size (QEMU default 128). */
  queueSize?: number;
  /** Extra `-device vhost-user-blk-pci` properties, e.g. 'config-wce=off'. */
  blkDeviceProps?: string[];
  /** Extra `-chardev socket` properties, e.g. 'reconnect=1'. */
  chardevProps?: string[];
  /** A virtio-net-pci on a vhost-user-net socket (the back-end listens, QEMU connects). */
  net?: {
    socketPath: string;
    mac?: string;
    queuePairs?: number;
    /** Extra virtio-net-pci properties, e.g. 'packed=on'. */ deviceProps?: string[];
  };
  /** Guest job (vut.test=...), default 'blk'. */
  job?: string;
  /** More vut.* kernel args: { bytes: 4194304, seed: 7 } → "vut.bytes=4194304 vut.seed=7". */
  jobArgs?: Record<string, string | number | boolean>;
  /** Extra kernel command-line words (appended last). */
  append?: string[];
  /** Kill QEMU and reject after this long (default 120 000 ms). */
  timeoutMs?: number;
  /** Extra QEMU arguments (appended last). */
  qemuArgs?: string[];
  /** Guest vCPUs (default max(1, numQueues): virtio-blk uses min(num-queues, CPUs) queues). */
  cpus?: number;
  /** Guest RAM in MiB (default 512); always a shared memfd backend (vhost-user needs it). */
  memoryMiB?: number;
  /** TCG threading: 'single' (default, one host thread for all vCPUs: cheap on a shared box) or 'multi'. */
  tcgThread?: 'single' | 'multi';
  /** Kernel + initrd (default: await ensureGuestImage()). */
  image?: GuestImage;
  /** QEMU binary (default qemu-system-x86_64, or $VUT_QEMU). */
  qemuBinary?: string;
  /** Also write the console to this file. */
  consoleLogPath?: string;
  /** Live console output (e.g. `process.stdout.write.bind(process.stdout)` when debugging). */
  onConsole?: (text: string) => void;
  /** Abort → kill QEMU, reject. */
  signal?: AbortSignal;
  /** After the VUT-RESULT line, how long to wait for QEMU to exit by itself (default 15 000 ms). */
  exitGraceMs?: number;
}

/** QEMU argv for the options (without the binary). Exported for logging and tests. */
export function qemuArgs(opts: RunGuestOptions & { image: GuestImage }): string[] {
  const numQueues = opts.numQueues ?? 1;
  const cpus = opts.cpus ?? Math.max(1, numQueues);
  const mem = opts.memoryMiB ?? 512;
  const job = opts.job ?? 'blk';
  const kargs = ['console=ttyS0', 'panic=-1', 'quiet', 'loglevel=3', `vut.test=${job}`];
  for (const [k, v] of Object.entries(opts.jobArgs ?? {})) {
    const val = typeof v === 'boolean' ? (v ? '1' : '0') : String(v);
    if (!/^[a-z0-9_]+$/.test(k) || !/^[A-Za-z0-9_.,:/-]*$/.test(val)) {
      throw new Error(`bad guest job argument ${k}=${val}`);
    }
    kargs.push(`vut.${k}=${val}`);
  }
  kargs.push(...(opts.append ?? []));
  const args = [
    '-accel',
    `tcg,thread=${opts.tcgThread ?? 'single'}`,
    '-machine',
    'pc,memory-backend=mem',
    '-m',
    `${mem}M`,
    '-object',
    `memory-backend-memfd,id=mem,size=${mem}M,share=on`,
    '-smp',
    String(cpus),
    '-nodefaults',
    '-display',
    'none',
    '-monitor',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    '-kernel',
    opts.image.kernel,
    '-initrd',
    opts.image.initrd,
    '-append',
    kargs.join(' '),
  ];
  if (opts.socketPath) {
    const chardev = ['socket', 'id=vu0', `path=${opts.socketPath}`, ...(opts.chardevProps ?? [])];
    const dev = ['vhost-user-blk-pci', 'chardev=vu0', `num-queues=${numQueues}`];
    if (opts.queueSize) dev.push(`queue-size=${opts.queueSize}`);
    dev.push(...(opts.blkDeviceProps ?? []));
    args.push('-chardev', chardev.join(','), '-device', dev.join(','));
  }
  if (opts.net) {
    const pairs = opts.net.queuePairs ?? 1;
    const netdev = ['vhost-user', 'id=n0', 'chardev=vn0', ...(pairs > 1 ? [`queues=${pairs}`] : [])];
    // romfile= : no option ROM to load (a -kernel boot never uses it; spares the ipxe-qemu package).
    // vectors=0 : INTx instead of MSI-X. QEMU 7.2 under TCG segfaults in vhost_net_start →
    // msix_set_vector_notifiers when the guest driver starts a vhost-user-net device with MSI-X
    // (seen here with every back-end, before SET_FEATURES is sent).
    const dev = ['virtio-net-pci', 'netdev=n0', `mac=${opts.net.mac ?? '52:54:00:12:34:56'}`, 'romfile=', 'vectors=0'];
    if (pairs > 1) dev.push('mq=on');
    dev.push(...(opts.net.deviceProps ?? []));
    args.push('-chardev', `socket,id=vn0,path=${opts.net.socketPath}`, '-netdev', netdev.join(','), '-device', dev.join(','));
  }
  args.push(...(opts.qemuArgs ?? []));
  return args;
}

/**
 * Boots the guest and resolves with its VUT-RESULT (ok or not) once QEMU has exited.
 * Rejects (after killing QEMU) on timeout, abort, QEMU failing to start/exiting without a result.
 * Never leaves a QEMU behind.
 */
export async function runGuest<R extends GuestResultBase = GuestResult>(options: RunGuestOptions = {}): Promise<GuestRun<R>> {
  const image = options.image ?? (await ensureGuestImage());
  const args = qemuArgs({ ...options, image });
  const bin = options.qemuBinary ?? process.env.VUT_QEMU ?? 'qemu-system-x86_64';
  const timeoutMs = options.timeoutMs ?? 120_000;
  const exitGraceMs = options.exitGraceMs ?? 15_000;
  if (options.signal?.aborted) throw new Error('runGuest aborted before start');

  let logFile: WriteStream | undefined;
  if (options.consoleLogPath) logFile = createWriteStream(options.consoleLogPath);

  const start = performance.now();
  const { child, kill, argv } = spawnTracked(bin, args, { stdin: 'pipe' });
  let consoleLog = '';
  let resultAt: number | undefined;
  let result: GuestResult | undefined;
  let settled = false;

  return new Promise<GuestRun<R>>((resolve, reject) => {
    const timers: NodeJS.Timeout[] = [];
    const cleanup = (): void => {
      for (const t of timers) clearTimeout(t);
      options.signal?.removeEventListener('abort', onAbort);
      logFile?.end();
    };
    const fail = (why: string): void => {
      if (settled) return;
      settled = true;
      kill();
      cleanup();
      const err = new Error(`${why}\n--- qemu: ${argv.join(' ')}\n--- console tail ---\n${tail(consoleLog)}`) as Error & {
        consoleLog?: string;
      };
      err.consoleLog = consoleLog;
      reject(err);
    };
    const onAbort = (): void => fail('runGuest aborted');
    options.signal?.addEventListener('abort', onAbort, { once: true });

    const append = (text: string): void => {
      consoleLog += text;
      logFile?.write(text);
      options.onConsole?.(text);
      if (resultAt === undefined && text.includes('\n') && consoleLog.includes('VUT-RESULT ')) {
        const r = parseResult(consoleLog);
        if (r) {
          result = r;
          resultAt = performance.now();
          // The guest powers off right after; if QEMU lingers, kill it.
          timers.push(setTimeout(kill, exitGraceMs));
        }
      }
    };
    child.stdout!.setEncoding('utf8');
    child.stderr!.setEncoding('utf8');
    child.stdout!.on('data', (d: string) => append(d));
    let stderrBuf = '';
    child.stderr!.on('data', (d: string) => {
      stderrBuf += d;
      const lines = stderrBuf.split('\n');
      stderrBuf = lines.pop()!;
      for (const l of lines) append(`qemu: ${l}\n`);
    });

    timers.push(setTimeout(() => fail(`guest timed out after ${timeoutMs} ms (no VUT-RESULT / QEMU still running)`), timeoutMs));
    child.once('error', (e) => fail(`cannot start ${bin}: ${e.message} (apt-get install -y qemu-system-x86)`));
    child.once('close', (code, sig) => {
      if (stderrBuf) append(`qemu: ${stderrBuf}\n`);
      if (settled) return;
      const exitMs = performance.now() - start;
      if (!result) result = parseResult(consoleLog); // a last line without its newline
      if (!result) {
        const truncated = /VUT-RESULT \{/.test(consoleLog)
          ? ' (a VUT-RESULT line is there but truncated/garbled: interleaved kernel message, or the guest powered off before the console drained)'
          : '';
        fail(`QEMU exited (code ${code}, signal ${sig}) without a VUT-RESULT line${truncated}`);
        return;
      }
      settled = true;
      cleanup();
      resultAt ??= performance.now();
      resolve({
        result: result as R,
        consoleLog,
        durationMs: Math.round(resultAt - start),
        exitMs: Math.round(exitMs),
        argv,
      });
    });
  });
}

// ------------------------------------------------------------------------------------------------
// Tool availability: callers fail with the package to install rather than skip

/** Returns undefined when the guest rig can run, else the reason (naming the package to install). */
export function guestRigUnavailable(extraTools: Array<[string, string]> = []): string | undefined {
  const tools: Array<[string, string]> = [
    [process.env.VUT_QEMU ?? 'qemu-system-x86_64', 'qemu-system-x86'],
    ['busybox', 'busybox-static'],
    ...extraTools,
  ];
  const path = (process.env.PATH ?? '').split(':').concat(['/usr/sbin', '/sbin']);
  for (const [tool, pkg] of tools) {
    const found = tool.includes('/') ? existsSync(tool) : path.some((d) => d && existsSync(join(d, tool)));
    if (!found) return `${tool} not found (apt-get install -y ${pkg})`;
  }
  return undefined;
}
