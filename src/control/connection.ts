// A vhost-user message stream over one Unix socket fd, driven by the control thread's event loop.
// Frames bytes into (header, payload, fds) messages and writes messages with their fds; knows
// nothing about what a message means. Used by the back-end session, the back-end request
// channel, and the front-end library alike.
//
// Ownership: the connection owns its socket fd and closes it exactly once in close(). Fds that
// arrive with a message are handed to onMessage and become the receiver's; fds of a message
// that never completes (peer closed mid-message, framing error) are closed here.
import { native, type FdWatcher } from '../native.js';
import { HEADER_SIZE, MAX_FDS, decodeHeader, type MessageHeader } from './codec/index.js';

export type MessageHandler = (header: MessageHeader, payload: Uint8Array, fds: number[]) => void | Promise<void>;

export interface ConnectionEvents {
  onMessage: MessageHandler;
  /** Called once when the connection is gone: `error` is undefined for an orderly peer close or local close(). */
  onClose: (error?: Error) => void;
}

/** Messages handled per readiness callback, so one chatty peer cannot starve the loop. */
const MESSAGES_PER_WAKEUP = 64;

export class VhostUserConnection {
  readonly fd: number;
  private readonly watcher: FdWatcher;
  private readonly headerBytes = new Uint8Array(HEADER_SIZE);
  private payloadBytes = new Uint8Array(0);
  private header: MessageHeader | undefined;
  private received = 0;
  private pendingFds: number[] = [];
  private readonly outbox: { bytes: Uint8Array; fds: number[] }[] = [];
  private busy = false;
  private closed = false;
  private wantWrite = false;

  constructor(
    fd: number,
    private readonly events: ConnectionEvents,
  ) {
    this.fd = fd;
    this.watcher = new native.FdWatcher(fd, (status, readable, writable) => this.onReady(status, readable, writable));
    this.watcher.start(true, false);
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Queue a message; fds travel with its first byte. Never blocks; returns false once closed. */
  send(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.closed) return false;
    this.outbox.push({ bytes, fds: [...fds] });
    this.flush();
    return !this.closed;
  }

  /** Close the socket and every fd of an unfinished message. Idempotent. */
  close(error?: Error): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    closeAll(this.pendingFds);
    this.pendingFds = [];
    this.outbox.length = 0;
    try {
      native.close(this.fd);
    } catch {
      // Already gone: nothing left to release.
    }
    this.events.onClose(error);
  }

  private onReady(status: number, readable: boolean, writable: boolean): void {
    if (this.closed) return;
    if (status < 0) {
      this.close(new Error(`socket poll failed (status ${status})`));
      return;
    }
    if (writable) this.flush();
    if (readable && !this.busy) this.readMessages();
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
      if (sent < next.bytes.length) {
        // The fds went with the first byte; the rest of the message follows without them.
        next.bytes = next.bytes.subarray(sent);
        next.fds = [];
        break;
      }
      this.outbox.shift();
    }
    const needWrite = this.outbox.length > 0;
    if (needWrite !== this.wantWrite && !this.closed) {
      this.wantWrite = needWrite;
      this.watcher.start(!this.busy, needWrite);
    }
  }

  private readMessages(): void {
    for (let handled = 0; handled < MESSAGES_PER_WAKEUP && !this.closed && !this.busy;) {
      const complete = this.readSome();
      if (complete === undefined) return; // would block, or closed
      if (!complete) continue;
      handled++;
      const header = this.header!;
      const payload = this.payloadBytes;
      const fds = this.pendingFds;
      this.header = undefined;
      this.received = 0;
      this.pendingFds = [];
      this.payloadBytes = new Uint8Array(0);
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
      if (result.bytes < 0) return undefined;
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
      // Requests are handled strictly in order: stop reading until this one is answered.
      this.busy = true;
      this.watcher.start(false, this.wantWrite);
      outcome.then(
        () => this.resume(),
        (error) => this.close(asError(error, 'message handler failed')),
      );
    }
  }

  private resume(): void {
    this.busy = false;
    if (this.closed) return;
    this.watcher.start(true, this.wantWrite);
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
