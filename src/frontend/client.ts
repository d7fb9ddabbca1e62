// The front-end side of the protocol: a client that drives any vhost-user back-end over its
// socket, the way QEMU or DPDK's virtio-user would. Requests are strictly one at a time (the
// protocol has no request ids), so replies are matched in order.
import { native } from '../native.js';
import { createLogger, type Logger } from '../log.js';
import {
  decodeReply,
  encodeRequest,
  requestSpecs,
  type BackendReply,
  type FrontendRequest,
  type MessageHeader,
} from '../control/codec/index.js';
import { VhostUserConnection, closeAll } from '../control/connection.js';
import { FrontendError } from '../control/errors.js';
import { ProtocolFeature, Request, hasFeature } from '../control/protocol.js';

export { FrontendError };

export interface ClientOptions {
  logger?: Logger;
  /**
   * Give up on a reply after this long (default: wait forever, as QEMU does). The protocol has no
   * request ids, so a late reply could not be told apart from the next one: on timeout the
   * connection is closed and the request rejects.
   */
  replyTimeoutMs?: number;
}

export interface ConnectOptions extends ClientOptions {
  /** Keep retrying a missing or refusing socket for this long (default 0: one attempt). */
  timeoutMs?: number;
  retryIntervalMs?: number;
}

interface PendingReply {
  request: number;
  name: string;
  resolve: (reply: { header: MessageHeader; payload: Uint8Array; fds: number[] }) => void;
  reject: (error: Error) => void;
}

export class VhostUserClient {
  private readonly connection: VhostUserConnection;
  private readonly pending: PendingReply[] = [];
  private queue: Promise<unknown> = Promise.resolve();
  private closedError: Error | undefined;
  private replyAck = false;
  private readonly log: Logger;
  private readonly replyTimeoutMs: number | undefined;
  private readonly closedPromise: Promise<Error | undefined>;
  private resolveClosed!: (error: Error | undefined) => void;

  /** Wraps an already connected socket fd (owned from now on). */
  constructor(fd: number, options: ClientOptions = {}) {
    this.log = options.logger ?? createLogger('frontend');
    this.replyTimeoutMs = options.replyTimeoutMs;
    this.closedPromise = new Promise((resolve) => (this.resolveClosed = resolve));
    this.connection = new VhostUserConnection(fd, {
      onMessage: (header, payload, fds) => this.onReply(header, payload, fds),
      onClose: (error) => this.onClose(error),
    });
  }

  static async connect(socketPath: string, options: ConnectOptions = {}): Promise<VhostUserClient> {
    const deadline = Date.now() + (options.timeoutMs ?? 0);
    for (;;) {
      try {
        return new VhostUserClient(native.socketConnect(socketPath), options);
      } catch (error) {
        if (Date.now() >= deadline) {
          throw new FrontendError(`cannot connect to vhost-user back-end at ${socketPath}: ${(error as Error).message}`);
        }
        await new Promise((resolve) => setTimeout(resolve, options.retryIntervalMs ?? 50));
      }
    }
  }

  get isClosed(): boolean {
    return this.connection.isClosed;
  }

  /** Resolves when the back-end closes the connection (with the reason, if it was an error). */
  closed(): Promise<Error | undefined> {
    return this.closedPromise;
  }

  close(): void {
    this.connection.close();
  }

  /**
   * Ask for an ack on every request that has no reply of its own (REPLY_ACK), so errors surface
   * at the request that caused them. Set automatically by setProtocolFeatures().
   */
  set useReplyAck(enabled: boolean) {
    this.replyAck = enabled;
  }

  /**
   * Send one request and wait for its answer. Requests that always reply resolve to their reply;
   * others resolve to undefined once acked (or at once, without REPLY_ACK). A failure ack
   * (non-zero u64) rejects with FrontendError.
   */
  request(request: FrontendRequest, options: { needReply?: boolean } = {}): Promise<BackendReply | undefined> {
    const run = this.queue.then(() => this.exchange(request, options.needReply ?? this.replyAck));
    this.queue = run.catch(() => undefined);
    return run;
  }

  /** Send raw bytes and fds, bypassing the codec: for hostile-input tests and fuzzing. */
  sendRaw(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    return this.connection.send(bytes, fds);
  }

  /** Wait for the next message the back-end sends (after sendRaw). */
  nextMessage(timeoutMs = 5000): Promise<{ header: MessageHeader; payload: Uint8Array; fds: number[] }> {
    return this.expect(-1, 'raw', timeoutMs);
  }

  private async exchange(request: FrontendRequest, needReply: boolean): Promise<BackendReply | undefined> {
    if (this.closedError || this.connection.isClosed) {
      throw new FrontendError(`connection closed${this.closedError ? `: ${this.closedError.message}` : ''}`, request.type);
    }
    const spec = requestSpecs.get(requestId(request));
    if (!spec) throw new FrontendError(`unknown request ${request.type}`);
    const alwaysReplies = spec.replies === 'always';
    const encoded = encodeRequest(request, needReply && !alwaysReplies);
    const waitForReply = alwaysReplies || needReply;
    const reply = waitForReply ? this.expect(spec.id, spec.name, this.replyTimeoutMs, true) : undefined;
    this.connection.send(encoded.bytes, encoded.fds);
    if (!reply) return undefined;
    const { header, payload, fds } = await reply;
    let decoded: BackendReply;
    try {
      decoded = decodeReply(header, payload, spec.id, fds);
    } catch (error) {
      closeAll(fds);
      throw new FrontendError(`${spec.name}: bad reply: ${(error as Error).message}`, spec.name);
    }
    if (!alwaysReplies) {
      if (decoded.type === 'u64' && decoded.value !== 0n) {
        throw new FrontendError(`${spec.name} failed (back-end replied ${decoded.value})`, spec.name);
      }
      return undefined;
    }
    return decoded;
  }

  /**
   * Wait for the next message. On timeout the entry is dropped; with `closeOnTimeout` the
   * connection is closed too, because a reply arriving later would be taken for the next one.
   */
  private expect(request: number, name: string, timeoutMs?: number, closeOnTimeout = false) {
    return new Promise<{ header: MessageHeader; payload: Uint8Array; fds: number[] }>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      const entry: PendingReply = {
        request,
        name,
        resolve: (value) => {
          if (timer) clearTimeout(timer);
          resolve(value);
        },
        reject: (error) => {
          if (timer) clearTimeout(timer);
          reject(error);
        },
      };
      if (timeoutMs !== undefined) {
        timer = setTimeout(() => {
          const at = this.pending.indexOf(entry);
          if (at >= 0) this.pending.splice(at, 1);
          const error = new FrontendError(`${name}: no message from the back-end within ${timeoutMs} ms`, name);
          reject(error);
          if (closeOnTimeout) this.connection.close(error);
        }, timeoutMs);
      }
      this.pending.push(entry);
    });
  }

  private onReply(header: MessageHeader, payload: Uint8Array, fds: number[]): void {
    const next = this.pending.shift();
    if (!next) {
      closeAll(fds);
      this.connection.close(new FrontendError(`unexpected message ${header.request} from the back-end`));
      return;
    }
    next.resolve({ header, payload, fds });
  }

  private onClose(error?: Error): void {
    this.closedError = error ?? new FrontendError('back-end closed the connection');
    for (const entry of this.pending.splice(0)) entry.reject(new FrontendError(this.closedError.message, entry.name));
    this.resolveClosed(error);
    this.log.debug('connection closed', { error });
  }

  // ---- convenience wrappers ----------------------------------------------------------------

  async getU64(
    type: 'GET_FEATURES' | 'GET_PROTOCOL_FEATURES' | 'GET_QUEUE_NUM' | 'GET_MAX_MEM_SLOTS' | 'GET_STATUS',
  ): Promise<bigint> {
    const reply = await this.request({ type });
    if (!reply || reply.type !== 'u64') throw new FrontendError(`${type}: unexpected reply`, type);
    return reply.value;
  }

  getFeatures(): Promise<bigint> {
    return this.getU64('GET_FEATURES');
  }

  async setFeatures(features: bigint): Promise<void> {
    await this.request({ type: 'SET_FEATURES', features });
  }

  getProtocolFeatures(): Promise<bigint> {
    return this.getU64('GET_PROTOCOL_FEATURES');
  }

  async setProtocolFeatures(features: bigint): Promise<void> {
    await this.request({ type: 'SET_PROTOCOL_FEATURES', features });
    this.replyAck = hasFeature(features, ProtocolFeature.REPLY_ACK);
  }

  async getConfig(offset: number, size: number): Promise<Uint8Array> {
    const reply = await this.request({
      type: 'GET_CONFIG',
      offset,
      size,
      flags: 0,
      payload: new Uint8Array(size),
    } as FrontendRequest);
    if (!reply || reply.type !== 'config') throw new FrontendError('GET_CONFIG: the back-end reported an error', 'GET_CONFIG');
    return reply.payload;
  }

  async getVringBase(index: number): Promise<number> {
    const reply = await this.request({ type: 'GET_VRING_BASE', index, num: 0 } as FrontendRequest);
    if (!reply || reply.type !== 'vring-state') throw new FrontendError('GET_VRING_BASE: unexpected reply', 'GET_VRING_BASE');
    return reply.num;
  }
}

function requestId(request: FrontendRequest): number {
  return Request[request.type];
}
