// VhostUserDaemon: owns the socket, serves one front-end at a time, and after a disconnect
// resets every piece of per-connection state before serving the next one.
import { lstatSync, unlinkSync } from 'node:fs';
import { native, type FdWatcher } from '../native.js';
import { createLogger, type Logger } from '../log.js';
import type { DataPlane, VhostUserDevice } from './backend.js';
import type { QueueStats } from '../dataplane/stats.js';
import { VhostUserSession } from './session.js';
import { DaemonError } from './errors.js';

export interface DaemonOptions {
  /** Unix socket path to listen on (or connect to, with `client`). Not with `listenFd`. */
  socketPath?: string;
  /**
   * An inherited, already listening Unix socket to serve instead of binding `socketPath`
   * (systemd socket activation, a manager's `addr.type=fd`). The daemon closes its fd on stop
   * but never removes the socket file: whoever bound it owns it (systemd removes it with the
   * .socket unit; a manager that bound it cleans up after itself).
   */
  listenFd?: number;
  /** Connect to a front-end that listens (QEMU `server=on`) instead of listening. */
  client?: boolean;
  /** Permissions of the listening socket; owner-only by default. */
  socketMode?: number;
  /** Client mode: delay between connection attempts. */
  retryIntervalMs?: number;
  /** Client mode: give up after this long without a front-end (0 = never). */
  connectTimeoutMs?: number;
  /**
   * Front-ends that may wait to be served while one is (the listen backlog; default 256, the
   * kernel caps it at net.core.somaxconn). Beyond it a non-blocking connect fails with EAGAIN.
   */
  listenBacklog?: number;
  /** Stop reading a front-end's requests while this many reply bytes wait unread (default 64 KiB). */
  maxQueuedReplyBytes?: number;
  /**
   * Drop a front-end that sends part of a message and then nothing for this long (default
   * 5000 ms), so that the front-ends waiting behind it are served.
   */
  partialMessageTimeoutMs?: number;
  /**
   * Drop a front-end that connects and sends no complete message for this long (default
   * 10000 ms): it would hold the front-ends waiting behind it without ever starting a message.
   */
  firstMessageTimeoutMs?: number;
  /** Refuse memory regions not sealed against shrinking (default: accept them with a warning). */
  requireSealedMemory?: boolean;
  /**
   * Disconnect a front-end whose GET_VRING_BASE drain takes longer than this (a hung backing
   * device), abandoning its in-flight requests, and serve the next one. Default: no bound.
   */
  drainTimeoutMs?: number;
  /** Processes the rings; owned by the daemon, reset between connections. */
  dataPlane: DataPlane;
  logger?: Logger;
}

export { DaemonError };

/** The daemon's bounds and policies a command line sets (each optional: the defaults apply). */
export type DaemonLimits = Pick<
  DaemonOptions,
  | 'listenBacklog'
  | 'maxQueuedReplyBytes'
  | 'partialMessageTimeoutMs'
  | 'firstMessageTimeoutMs'
  | 'requireSealedMemory'
  | 'drainTimeoutMs'
>;

/**
 * Room for a burst of front-ends connecting at once (200 at once were measured): waiting in the
 * backlog costs the daemon nothing, while a refusal is an EAGAIN the front-end must handle.
 */
export const DEFAULT_LISTEN_BACKLOG = 256;

export class VhostUserDaemon {
  private readonly log: Logger;
  private listenFd = -1;
  /** The socket file at socketPath is ours (we bound it): only then may stop() unlink it. */
  private ownsSocketFile = false;
  private listenWatcher: FdWatcher | undefined;
  private session: VhostUserSession | undefined;
  private retryTimer: NodeJS.Timeout | undefined;
  private stopped = false;
  private started = false;
  private connectionsServed = 0;
  private readonly done: Promise<void>;
  private resolveDone!: () => void;
  private rejectDone!: (error: Error) => void;

  constructor(
    readonly device: VhostUserDevice,
    private readonly options: DaemonOptions,
  ) {
    this.log = options.logger ?? createLogger('daemon');
    this.done = new Promise((resolve, reject) => {
      this.resolveDone = resolve;
      this.rejectDone = reject;
    });
    // wait() may never be called; an unobserved rejection must not crash the process.
    this.done.catch(() => undefined);
  }

  /** Front-end connections handled so far (including the current one). */
  get connections(): number {
    return this.connectionsServed;
  }

  /** Per-queue statistics of the data plane (requests, bytes, kicks, calls, poll passes, sleep). */
  queueStats(): QueueStats[] {
    return this.options.dataPlane.allQueueStats?.() ?? [];
  }

  /** The session of the connected front-end, if any. */
  get currentSession(): VhostUserSession | undefined {
    return this.session;
  }

  /** Listen (or start connecting). Resolves once the socket is ready, not when a front-end arrives. */
  // eslint-disable-next-line @typescript-eslint/require-await -- async so that a refusal is a rejection, like every other failure of start()
  async start(): Promise<void> {
    if (this.started) throw new DaemonError('daemon already started');
    this.started = true;
    const { socketPath, listenFd, client } = this.options;
    if ((socketPath === undefined) === (listenFd === undefined)) {
      throw new DaemonError('give either a socket path or an inherited listening fd, not both or neither');
    }
    if (client) {
      if (socketPath === undefined) throw new DaemonError('client mode connects to a socket path, it cannot use an inherited fd');
      this.scheduleConnect(Date.now(), 0);
      return;
    }
    let where: string;
    if (listenFd !== undefined) {
      try {
        where = native.socketAdopt(listenFd) || `fd ${listenFd}`;
      } catch (error) {
        throw new DaemonError(`fd ${listenFd} is not a listening Unix stream socket: ${(error as Error).message}`);
      }
      this.listenFd = listenFd;
    } else {
      removeStaleSocket(socketPath!);
      this.listenFd = native.socketListen(socketPath!, this.options.socketMode ?? 0o600, this.backlog);
      this.ownsSocketFile = true;
      where = socketPath!;
    }
    this.listenWatcher = new native.FdWatcher(this.listenFd, (status) => {
      if (status < 0) this.fail(new DaemonError(`listening socket failed (status ${status})`));
      else this.acceptOne();
    });
    this.listenWatcher.start(true, false);
    this.log.info('listening', {
      socket: where,
      inherited: listenFd !== undefined,
      // An inherited socket keeps the backlog its owner chose.
      backlog: listenFd === undefined ? this.backlog : undefined,
      device: this.device.name,
    });
  }

  private get backlog(): number {
    return this.options.listenBacklog ?? DEFAULT_LISTEN_BACKLOG;
  }

  /** Disconnect the front-end, close the socket, release the data plane. Idempotent. */
  async stop(): Promise<void> {
    await this.shutdown();
  }

  private async shutdown(failure?: Error): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    if (this.retryTimer) clearTimeout(this.retryTimer);
    this.closeListener();
    const session = this.session;
    this.session = undefined;
    if (session) await session.close();
    await this.options.dataPlane.reset();
    // Never unlink a path we did not bind: after a refused start it is another daemon's live
    // socket, or a file that is not a socket at all.
    if (this.ownsSocketFile) {
      this.ownsSocketFile = false;
      try {
        unlinkSync(this.options.socketPath!);
      } catch {
        // Already removed by someone else.
      }
    }
    this.log.info('stopped', { connections: this.connectionsServed });
    if (failure) this.rejectDone(failure);
    else this.resolveDone();
  }

  /** Resolves when the daemon stops; rejects if it cannot go on (e.g. client mode timed out). */
  wait(): Promise<void> {
    return this.done;
  }

  private acceptOne(): void {
    if (this.session || this.stopped) return;
    let fd: number;
    try {
      fd = native.socketAccept(this.listenFd);
    } catch (error) {
      this.log.warn('accept failed', { error });
      return;
    }
    if (fd < 0) return;
    // One front-end at a time: others wait in the backlog until this one leaves.
    this.listenWatcher?.stop();
    this.serve(fd);
  }

  private serve(fd: number): void {
    this.connectionsServed++;
    const connectionId = this.connectionsServed;
    this.log.info('front-end connected', { connection: connectionId });
    this.session = new VhostUserSession(fd, this.device, this.options.dataPlane, {
      logger: this.log.child(`conn${connectionId}`),
      onClosed: (error) => this.onSessionClosed(connectionId, error),
      maxQueuedReplyBytes: this.options.maxQueuedReplyBytes,
      partialMessageTimeoutMs: this.options.partialMessageTimeoutMs,
      firstMessageTimeoutMs: this.options.firstMessageTimeoutMs,
      requireSealedMemory: this.options.requireSealedMemory,
      drainTimeoutMs: this.options.drainTimeoutMs,
    });
  }

  private onSessionClosed(connectionId: number, error?: Error): void {
    if (error) this.log.warn('front-end disconnected', { connection: connectionId, error });
    else this.log.info('front-end disconnected', { connection: connectionId });
    this.session = undefined;
    if (this.stopped) return;
    if (this.options.client) {
      this.scheduleConnect(Date.now(), this.options.retryIntervalMs ?? 100);
    } else {
      this.listenWatcher?.start(true, false);
      // A front-end may already be waiting in the backlog; the poll fires for it.
    }
  }

  private scheduleConnect(since: number, delayMs: number): void {
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      if (this.stopped || this.session) return;
      try {
        // Never a blocking connect on the event loop: a front-end whose backlog is full is
        // tried again later, like one that is not listening yet.
        const fd = native.socketTryConnect(this.options.socketPath!);
        if (fd < 0) throw new Error(`the front-end's listen backlog is full`);
        this.serve(fd);
      } catch (error) {
        const timeout = this.options.connectTimeoutMs ?? 0;
        if (timeout > 0 && Date.now() - since > timeout) {
          this.fail(
            new DaemonError(
              `no front-end listening on ${this.options.socketPath} after ${timeout} ms: ${(error as Error).message}`,
            ),
          );
          return;
        }
        this.log.debug('front-end not reachable yet', { socket: this.options.socketPath, error });
        this.scheduleConnect(since, this.options.retryIntervalMs ?? 100);
      }
    }, delayMs);
  }

  private closeListener(): void {
    this.listenWatcher?.close();
    this.listenWatcher = undefined;
    if (this.listenFd >= 0) {
      native.close(this.listenFd);
      this.listenFd = -1;
    }
  }

  private fail(error: Error): void {
    this.log.error('daemon failed', { error });
    void this.shutdown(error);
  }
}

/** A socket file left by a daemon that died is replaced; a live one or any other file is not. */
function removeStaleSocket(path: string): void {
  let isSocket: boolean;
  try {
    isSocket = lstatSync(path).isSocket();
  } catch {
    return; // Nothing there.
  }
  if (!isSocket) throw new DaemonError(`${path} exists and is not a socket; refusing to replace it`);
  let fd = -1;
  try {
    // Non-blocking: a live daemon whose backlog is full answers EAGAIN at once, where a
    // blocking connect would wait until it accepts someone (or forever).
    fd = native.socketTryConnect(path);
  } catch (error) {
    // Only "connection refused" proves nobody listens; anything else (no permission, ...) may
    // hide a live daemon, whose socket must not be pulled from under it.
    if ((error as { code?: string }).code !== 'ECONNREFUSED') {
      throw new DaemonError(`cannot tell whether ${path} is in use (${(error as Error).message}); remove it if it is stale`);
    }
    unlinkSync(path); // Nobody listens: stale.
    return;
  }
  if (fd < 0) throw new DaemonError(`another process is already listening on ${path} (its backlog is full)`);
  native.close(fd);
  throw new DaemonError(`another process is already listening on ${path}`);
}
