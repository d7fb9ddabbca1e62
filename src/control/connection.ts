// A vhost-user message stream over one Unix socket fd, driven by the control thread's event loop.
// Frames bytes into (header, payload, fds) messages and writes messages with their fds; knows
// nothing about what a message means. Used by the back-end session, the back-end request
// channel, and the front-end library alike.
//
// Ownership: the connection owns its socket fd and closes it exactly once in close(). Fds that
// arrive with a message are handed to onMessage and become the receiver's; fds of a message
// that never completes (peer closed mid-message, framing error) are closed here.
import { constants } from 'node:os';
import { native, type FdWatcher } from '../native.js';
import { HEADER_SIZE, MAX_FDS, decodeHeader, type MessageHeader } from './codec/index.js';

export type MessageHandler = (header: MessageHeader, payload: Uint8Array, fds: number[]) => void | Promise<void>;

export interface ConnectionEvents {
  onMessage: MessageHandler;
  /** Called once when the connection is gone: `error` is undefined for an orderly peer close or local close(). */
  onClose: (error?: Error) => void;
}

/** Bounds on what one peer can make this side hold; each is off unless given. */
export interface ConnectionLimits {
  /**
   * Stop reading while this many bytes wait in the outbox (the peer sends requests but does not
   * read the replies), and read again once it has taken half of them. Without it a peer that
   * never reads grows the outbox without limit.
   */
  maxQueuedBytes?: number;
  /**
   * A message that started arriving must be complete within this many milliseconds, or the
   * connection is closed: a peer that sends half a message and stops would otherwise hold
   * this side (and, in a daemon serving one front-end at a time, everyone behind it) forever.
   */
  partialMessageTimeoutMs?: number;
  /**
   * The peer's first message must be complete within this many milliseconds of connecting, or
   * the connection is closed: a peer that connects and sends nothing at all never starts a
   * partial message, yet in a daemon serving one front-end at a time it holds everyone behind it.
   */
  firstMessageTimeoutMs?: number;
}

const { errno } = constants;

/**
 * The peer hung up where reading would not show it: while a handler ran or its replies were
 * backed up (reading paused), or by closing with replies unread (a reset).
 */
export class HangUpError extends Error {
  override readonly name = 'HangUpError';
}

/** Messages handled per readiness callback, so one chatty peer cannot starve the loop. */
const MESSAGES_PER_WAKEUP = 64;

/** What the watcher is asked for, as bits: cheaper to compare than to restart the poll. */
const WATCH_READABLE = 1;
const WATCH_WRITABLE = 2;

export class VhostUserConnection {
  readonly fd: number;
  private readonly watcher: FdWatcher;
  private readonly headerBytes = new Uint8Array(HEADER_SIZE);
  private payloadBytes = new Uint8Array(0);
  private header: MessageHeader | undefined;
  private received = 0;
  private pendingFds: number[] = [];
  private readonly outbox: { bytes: Uint8Array; fds: number[] }[] = [];
  private outboxBytes = 0;
  /** The outbox passed maxQueuedBytes: not reading until it is down to half. */
  private backedUp = false;
  /** A handler's promise is pending: later messages wait (requests are handled in order). */
  private busy = false;
  private closed = false;
  /** The watcher's current interest (WATCH_* bits); hang-up is always watched. */
  private watching = -1;
  /** Messages this readiness callback may still hand over. */
  private budget = 0;
  private readonly maxQueuedBytes: number;
  private readonly partialTimeoutMs: number;
  /** When the unfinished message first stalled (performance.now()), or 0 when none is unfinished. */
  private partialSince = 0;
  private partialTimer: NodeJS.Timeout | undefined;
  /** Pending until the first message is complete (only with firstMessageTimeoutMs). */
  private firstMessageTimer: NodeJS.Timeout | undefined;

  constructor(
    fd: number,
    private readonly events: ConnectionEvents,
    limits: ConnectionLimits = {},
  ) {
    this.fd = fd;
    this.maxQueuedBytes = limits.maxQueuedBytes ?? Infinity;
    this.partialTimeoutMs = limits.partialMessageTimeoutMs ?? Infinity;
    this.watcher = new native.FdWatcher(fd, (status, readable, writable, hangup) =>
      this.onReady(status, readable, writable, hangup),
    );
    this.updateWatch();
    const firstMessageMs = limits.firstMessageTimeoutMs ?? Infinity;
    if (firstMessageMs !== Infinity) {
      this.firstMessageTimer = setTimeout(() => {
        this.firstMessageTimer = undefined;
        this.close(new Error(`peer sent no complete message within ${firstMessageMs} ms of connecting`));
      }, firstMessageMs);
      // A connection's watcher keeps the loop alive; this timer alone must not.
      this.firstMessageTimer.unref();
    }
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Bytes of queued messages the peer has not taken yet. */
  get queuedBytes(): number {
    return this.outboxBytes;
  }

  /** Queue a message; fds travel with its first byte. Never blocks; returns false once closed. */
  send(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.closed) return false;
    this.outbox.push({ bytes, fds: [...fds] });
    this.outboxBytes += bytes.length;
    this.flush();
    return !this.closed;
  }

  /** Close the socket and every fd of an unfinished message. Idempotent. */
  close(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    if (this.partialTimer) clearTimeout(this.partialTimer);
    this.partialTimer = undefined;
    if (this.firstMessageTimer) clearTimeout(this.firstMessageTimer);
    this.firstMessageTimer = undefined;
    closeAll(this.pendingFds);
    this.pendingFds = [];
    this.outbox.length = 0;
    this.outboxBytes = 0;
    try {
      native.close(this.fd);
    } catch {
      // Already gone: nothing left to release.
    }
    this.events.onClose(error);
  }

  private onReady(status: number, readable: boolean, writable: boolean, hangup: boolean): void {
    if (this.closed) return;
    if (status < 0) {
      this.close(this.pollError(status));
      return;
    }
    if (writable) this.flush();
    if (this.closed) return;
    const reading = !this.busy && !this.backedUp;
    if (hangup && !reading) {
      // Not reading, so end of stream would go unseen until the handler finishes or the peer
      // drains its replies, which it never will now. Nothing the peer sent can be answered.
      this.close(this.hangUpError());
      return;
    }
    if (!readable) return;
    if (!reading) {
      // busy was set without touching the watcher (most handlers finish within the same
      // callback); now that the level-triggered poll fires, stop asking for readable.
      this.updateWatch();
      return;
    }
    this.budget = MESSAGES_PER_WAKEUP;
    this.readMessages();
  }

  private hangUpError(): HangUpError {
    return new HangUpError(
      this.busy ? 'peer hung up while its request was being handled' : 'peer hung up without reading its replies',
    );
  }

  /** A poll error: a peer that closed with our bytes unread (reset) is a hang-up, not a fault. */
  private pollError(status: number): Error {
    let pending = 0;
    try {
      pending = native.socketError(this.fd);
    } catch {
      // No socket error to read: report the poll status alone.
    }
    if (pending === errno.ECONNRESET || pending === errno.EPIPE) return this.hangUpError();
    return new Error(`socket poll failed (status ${status}${pending !== 0 ? `, socket error ${pending}` : ''})`);
  }

  /** Asks the watcher for what the connection needs now, if that changed. */
  private updateWatch(): void {
    if (this.closed) return;
    const readable = !this.busy && !this.backedUp;
    const writable = this.outbox.length > 0;
    const watching = (readable ? WATCH_READABLE : 0) | (writable ? WATCH_WRITABLE : 0);
    if (watching === this.watching) return;
    this.watching = watching;
    this.watcher.start(readable, writable, true);
  }

  private flush(): void {
    while (this.outbox.length > 0 && !this.closed) {
      const next = this.outbox[0];
      let sent: number;
      try {
        sent = native.sendMsg(this.fd, next.bytes, next.fds);
      } catch (error) {
        this.close(asError(error, 'send failed'));
        return;
      }
      if (sent < 0) break;
      this.outboxBytes -= sent;
      if (sent < next.bytes.length) {
        // The fds went with the first byte; the rest of the message follows without them.
        next.bytes = next.bytes.subarray(sent);
        next.fds = [];
        break;
      }
      this.outbox.shift();
    }
    if (this.closed) return;
    // Hysteresis: pause at the bound, resume at half of it, so a peer reading slowly does not
    // flip the watcher on every reply.
    if (this.backedUp) this.backedUp = this.outboxBytes > this.maxQueuedBytes / 2;
    else this.backedUp = this.outboxBytes >= this.maxQueuedBytes;
    this.updateWatch();
  }

  private readMessages(): void {
    while (this.budget > 0 && !this.closed && !this.busy && !this.backedUp) {
      const complete = this.readSome();
      if (complete === undefined) return; // would block, or closed
      if (!complete) continue;
      this.budget--;
      const header = this.header!;
      const payload = this.payloadBytes;
      const fds = this.pendingFds;
      this.header = undefined;
      this.received = 0;
      this.pendingFds = [];
      this.payloadBytes = new Uint8Array(0);
      this.partialSince = 0;
      if (this.firstMessageTimer) {
        clearTimeout(this.firstMessageTimer);
        this.firstMessageTimer = undefined;
      }
      this.dispatch(header, payload, fds);
    }
  }

  /** One recvmsg towards the current message: true = message complete, false = progress, undefined = stop. */
  private readSome(): boolean | undefined {
    const inHeader = this.header === undefined;
    const target = inHeader ? this.headerBytes : this.payloadBytes;
    const want = target.length - this.received;
    if (want > 0) {
      let result;
      try {
        result = native.recvMsg(this.fd, target, this.received, want, MAX_FDS);
      } catch (error) {
        this.close(asError(error, 'receive failed'));
        return undefined;
      }
      for (const fd of result.fds) this.pendingFds.push(fd);
      if (result.truncated || this.pendingFds.length > MAX_FDS) {
        this.close(new Error(`peer sent more than ${MAX_FDS} file descriptors with one message`));
        return undefined;
      }
      if (result.bytes === 0) {
        const midMessage = this.received > 0 || !inHeader;
        this.close(midMessage ? new Error('peer closed the socket in the middle of a message') : undefined);
        return undefined;
      }
      if (result.bytes < 0) {
        if (this.received > 0 || !inHeader) this.notePartial();
        return undefined;
      }
      this.received += result.bytes;
      if (this.received < target.length) return false;
    }
    if (inHeader) {
      let header: MessageHeader;
      try {
        header = decodeHeader(this.headerBytes);
      } catch (error) {
        // The payload size cannot be trusted, so the stream cannot be re-synchronised.
        this.close(asError(error, 'bad message header'));
        return undefined;
      }
      this.header = header;
      this.received = 0;
      this.payloadBytes = new Uint8Array(header.size);
      return header.size === 0;
    }
    return true;
  }

  /**
   * The socket ran dry in the middle of a message: start its clock (once per message; more bytes
   * do not restart it, so a peer trickling a byte at a time is bounded too). One timer at most,
   * and none for messages that arrive whole.
   */
  private notePartial(): void {
    if (this.partialSince !== 0 || this.partialTimeoutMs === Infinity) return;
    this.partialSince = performance.now();
    if (this.partialTimer === undefined) this.checkPartialIn(this.partialTimeoutMs);
  }

  private checkPartialIn(delayMs: number): void {
    this.partialTimer = setTimeout(() => this.checkPartial(), delayMs);
    // A connection's watcher keeps the loop alive; this timer alone must not.
    this.partialTimer.unref();
  }

  private checkPartial(): void {
    this.partialTimer = undefined;
    if (this.closed || this.partialSince === 0) return;
    const waited = performance.now() - this.partialSince;
    if (waited < this.partialTimeoutMs) {
      // That message completed and a later one stalled: give the later one its full time.
      this.checkPartialIn(this.partialTimeoutMs - waited);
      return;
    }
    const part =
      this.header === undefined
        ? `${this.received} of ${HEADER_SIZE} header bytes`
        : `${HEADER_SIZE} header bytes and ${this.received} of ${this.header.size} payload bytes (request ${this.header.request})`;
    this.close(new Error(`peer sent ${part} and nothing more for ${this.partialTimeoutMs} ms`));
  }

  private dispatch(header: MessageHeader, payload: Uint8Array, fds: number[]): void {
    let outcome: void | Promise<void>;
    try {
      outcome = this.events.onMessage(header, payload, fds);
    } catch (error) {
      this.close(asError(error, 'message handler failed'));
      return;
    }
    if (outcome instanceof Promise) {
      // The handler may already have closed the connection (before its first await); then
      // there is nothing left to pause, and the watcher is gone.
      if (this.closed) return;
      // Requests are handled strictly in order: stop reading until this one is answered. The
      // watcher is left as it is (see onReady): hang-up stays watched meanwhile.
      this.busy = true;
      outcome.then(
        () => this.resume(),
        (error) => this.close(asError(error, 'message handler failed')),
      );
    }
  }

  private resume(): void {
    this.busy = false;
    if (this.closed) return;
    this.updateWatch();
    // Within this wakeup's budget; past it the level-triggered poll calls back on the next pass.
    this.readMessages();
  }
}

export function closeAll(fds: readonly number[]): void {
  for (const fd of fds) {
    try {
      native.close(fd);
    } catch {
      // Closing is best effort for fds we are discarding.
    }
  }
}

function asError(error: unknown, context: string): Error {
  if (error instanceof Error) return error;
  return new Error(`${context}: ${String(error)}`);
}
