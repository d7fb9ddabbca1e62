// Live-socket fuzzing: the session fuzzer's mutated message sequences, sent with real fds over a
// Unix socket to a real vhost-user-blk daemon process (workers, memory engine). Each case is
// one connection. When the stream frames into whole messages, a GET_QUEUE_NUM follows it, and
// the daemon must answer it or hang up within a bound (otherwise: a hang). Between cases and at
// the end a clean front-end must be served: negotiate, write, read back. The daemon dying, an
// error-level log line, or a failed health check is a finding.
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { HEADER_SIZE, decodeHeader, encodeRequest } from '../control/codec/index.js';
import { VhostUserConnection, closeAll } from '../control/connection.js';
import { native } from '../native.js';
import { BlkFrontend } from './blk-frontend.js';
import type { SessionCase, SessionFuzzer } from './session-fuzz.js';

export const BLK_BIN = fileURLToPath(new URL('../../bin/vhost-user-blk', import.meta.url));

/** How long the daemon may take to answer the closing GET_QUEUE_NUM or hang up. */
const ANSWER_TIMEOUT_MS = 5000;
const SENTINEL = encodeRequest({ type: 'GET_QUEUE_NUM' }, false).bytes;
const SENTINEL_ID = new DataView(SENTINEL.buffer, SENTINEL.byteOffset).getUint32(0, true);

/** A vhost-user-blk daemon in a child process, with its error-level log lines kept. */
export class DaemonProcess {
  readonly socketPath: string;
  readonly child: ChildProcess;
  private readonly dir: string;
  private log = '';
  readonly errors: string[] = [];
  exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;

  /** `extraArgs` go to vhost-user-blk, `nodeArgs` to node (V8 flags). */
  constructor(extraArgs: string[] = [], nodeArgs: string[] = []) {
    this.dir = mkdtempSync(join(tmpdir(), 'vut-daemon-'));
    this.socketPath = join(this.dir, 'blk.sock');
    this.child = spawn(
      process.execPath,
      [...nodeArgs, BLK_BIN, '--socket', this.socketPath, '--engine', 'memory', '--size', '16M', '--queues', '2', ...extraArgs],
      { stdio: ['ignore', 'ignore', 'pipe'], env: { ...process.env, VHOST_USER_LOG: 'warn' } },
    );
    this.child.stderr!.setEncoding('utf8').on('data', (text: string) => {
      this.log += text;
      let newline: number;
      while ((newline = this.log.indexOf('\n')) >= 0) {
        const line = this.log.slice(0, newline);
        this.log = this.log.slice(newline + 1);
        // Refusals are warnings; an error is a broken back-end, anything not JSON a crash trace.
        // A ring the front-end filled with garbage breaks its queue, logged as an error by design.
        if (line.includes('"msg":"virtqueue broken by the driver"')) continue;
        if (line.includes('"level":"error"') || !line.startsWith('{')) this.errors.push(line.slice(0, 2000));
      }
    });
    this.child.once('exit', (code, signal) => (this.exit = { code, signal }));
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get alive(): boolean {
    return this.exit === undefined;
  }

  async ready(timeoutMs = 20_000): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (!existsSync(this.socketPath)) {
      if (!this.alive || Date.now() > deadline) throw new Error(`the daemon did not start: ${this.errors.join('\n')}`);
      await sleep(20);
    }
  }

  /**
   * Resident set (kB; with its anonymous part and its shared-memory part, i.e. touched pages of
   * mapped guest memory) and open fds, from /proc.
   */
  sample(): { rssKb: number; anonKb: number; shmemKb: number; fds: number } {
    const status = readFileSync(`/proc/${this.pid}/status`, 'utf8');
    const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+)`).exec(status)?.[1] ?? -1);
    return {
      rssKb: field('VmRSS'),
      anonKb: field('RssAnon'),
      shmemKb: field('RssShmem'),
      fds: readdirSync(`/proc/${this.pid}/fd`).length,
    };
  }

  async stop(): Promise<void> {
    if (this.alive) {
      const exited = new Promise((resolve) => this.child.once('exit', resolve));
      this.child.kill('SIGTERM');
      await Promise.race([exited, sleep(5000)]);
      if (this.alive) this.child.kill('SIGKILL');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

export interface SocketCaseResult {
  messages: number;
  finding?: string;
}

export class SocketFuzzer {
  constructor(
    private readonly sessions: SessionFuzzer,
    readonly daemon: DaemonProcess,
  ) {}

  /** Sends one case over a fresh connection and waits for the daemon to be done with it. */
  async run(c: SessionCase): Promise<SocketCaseResult> {
    if (!this.daemon.alive) return { messages: 0, finding: this.deathNote() };
    let fd: number;
    try {
      fd = native.socketConnect(this.daemon.socketPath);
    } catch (error) {
      return { messages: 0, finding: `cannot connect: ${(error as Error).message}` };
    }
    let answered = false;
    let closed = false;
    let wake: () => void = () => undefined;
    const connection = new VhostUserConnection(fd, {
      onMessage: (header, _payload, fds) => {
        closeAll(fds);
        if (header.request === SENTINEL_ID) answered = true;
        wake();
      },
      onClose: () => {
        closed = true;
        wake();
      },
    });
    const ours: number[] = [];
    let messages = 0;
    try {
      let whole = true;
      let total = 0;
      const stream: Uint8Array[] = [];
      for (const m of c.messages) {
        const fds = m.fds.map((kind) => this.sessions.openFd(kind, ours));
        connection.send(m.bytes, fds);
        stream.push(m.bytes);
        total += m.bytes.length;
      }
      // Frame the stream as the daemon will, to know whether a trailing request can be read.
      const bytes = new Uint8Array(total);
      let offset = 0;
      for (const part of stream) {
        bytes.set(part, offset);
        offset += part.length;
      }
      let position = 0;
      while (position < total) {
        if (position + HEADER_SIZE > total) {
          whole = false;
          break;
        }
        try {
          const header = decodeHeader(bytes, position);
          position += HEADER_SIZE + header.size;
          messages++;
        } catch {
          whole = false;
          break;
        }
      }
      if (position > total) whole = false;
      if (!whole) return { messages };
      connection.send(SENTINEL);
      const deadline = Date.now() + ANSWER_TIMEOUT_MS;
      while (!answered && !closed) {
        const left = deadline - Date.now();
        if (left <= 0) {
          return { messages, finding: `no answer and no hang-up within ${ANSWER_TIMEOUT_MS} ms after a well-framed stream` };
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(resolve, left);
          wake = () => {
            clearTimeout(timer);
            resolve();
          };
        });
      }
      return { messages: messages + 1 };
    } finally {
      connection.close();
      closeAll(ours);
    }
  }

  /** A clean front-end is served: negotiates, writes and reads back within the bound. */
  async healthCheck(sector = 0): Promise<string | undefined> {
    if (!this.daemon.alive) return this.deathNote();
    let frontend: BlkFrontend | undefined;
    try {
      frontend = await BlkFrontend.connect(this.daemon.socketPath);
      await frontend.roundTrip(sector);
      return undefined;
    } catch (error) {
      return `a clean front-end was not served: ${(error as Error).message}`;
    } finally {
      frontend?.close();
    }
  }

  deathNote(): string {
    const exit = this.daemon.exit;
    return `the daemon died (code ${exit?.code}, signal ${exit?.signal}): ${this.daemon.errors.slice(-5).join('\n')}`;
  }
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
