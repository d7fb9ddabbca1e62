// A minimal QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst) for the guest tests:
// one unix socket, the greeting, qmp_capabilities, then commands answered in order. Events
// (lines with "event") are kept in `events` for whoever wants them.
import { createConnection, type Socket } from 'node:net';

export interface QmpEvent {
  event: string;
  data?: unknown;
  timestamp?: { seconds: number; microseconds: number };
}

interface Pending {
  command: string;
  resolve: (value: unknown) => void;
  reject: (error: Error) => void;
}

export class QmpClient {
  readonly events: QmpEvent[] = [];
  private readonly pending: Pending[] = [];
  private buffered = '';
  private closedError: Error | undefined;

  private constructor(private readonly socket: Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (text: string) => this.onData(text));
    socket.on('close', () => this.fail(new Error('QMP connection closed')));
    socket.on('error', (error) => this.fail(error));
  }

  /**
   * Connects to `path` (QEMU `-qmp unix:PATH,server=on,wait=off`), retrying until QEMU listens or
   * `timeoutMs` passes, and enters command mode.
   */
  static async connect(path: string, timeoutMs = 20_000): Promise<QmpClient> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      try {
        const socket = await new Promise<Socket>((resolve, reject) => {
          const s = createConnection(path);
          s.once('connect', () => resolve(s));
          s.once('error', reject);
        });
        const client = new QmpClient(socket);
        // The greeting comes first and is answered like a command: wait for it, then negotiate.
        await new Promise<unknown>((resolve, reject) => client.pending.push({ command: 'greeting', resolve, reject }));
        await client.execute('qmp_capabilities');
        return client;
      } catch (error) {
        if (Date.now() > deadline) throw new Error(`QMP at ${path}: ${(error as Error).message}`);
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
    }
  }

  /** Runs a command; resolves with its "return" value, rejects with its "error". */
  execute<T = unknown>(command: string, args?: Record<string, unknown>): Promise<T> {
    if (this.closedError) return Promise.reject(this.closedError);
    return new Promise<T>((resolve, reject) => {
      this.pending.push({ command, resolve: resolve as (value: unknown) => void, reject });
      this.socket.write(JSON.stringify(args ? { execute: command, arguments: args } : { execute: command }) + '\n');
    });
  }

  close(): void {
    this.socket.destroy();
  }

  private onData(text: string): void {
    this.buffered += text;
    let newline: number;
    while ((newline = this.buffered.indexOf('\n')) >= 0) {
      const line = this.buffered.slice(0, newline).trim();
      this.buffered = this.buffered.slice(newline + 1);
      if (line.length === 0) continue;
      let message: Record<string, unknown>;
      try {
        message = JSON.parse(line) as Record<string, unknown>;
      } catch {
        continue;
      }
      if (typeof message.event === 'string') {
        this.events.push(message as unknown as QmpEvent);
        continue;
      }
      const waiter = this.pending.shift();
      if (!waiter) continue;
      if ('QMP' in message) waiter.resolve(message.QMP);
      else if ('return' in message) waiter.resolve(message.return);
      else {
        const error = message.error as { class?: string; desc?: string } | undefined;
        waiter.reject(new Error(`QMP ${waiter.command}: ${error?.class ?? 'error'}: ${error?.desc ?? line}`));
      }
    }
  }

  private fail(error: Error): void {
    this.closedError ??= error;
    for (const waiter of this.pending.splice(0)) waiter.reject(error);
  }
}
