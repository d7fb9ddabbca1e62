// Stand-ins the session fuzzer runs a real VhostUserSession against: its connection (replies
// recorded, closed like the real one), a data plane that checks what the session hands it, and a
// logger that turns error lines into findings and refusals into behaviours.
import { fstatSync, readlinkSync } from 'node:fs';
import type { DataPlane, VringConfig } from '../control/backend.js';
import type { ConnectionEvents } from '../control/connection.js';
import type { MappedRegion } from '../control/memory-table.js';
import type { SessionTransport } from '../control/session.js';
import { GuestMemory } from '../dataplane/memory.js';
import { SplitVirtqueue } from '../dataplane/virtqueue.js';
import type { Logger } from '../log.js';
import { native } from '../native.js';

// ---- stand-ins -----------------------------------------------------------------------------------

/** The session's connection, in process: records replies, closes like the real one. */
export class FakeTransport implements SessionTransport {
  readonly replies: { bytes: Uint8Array; fds: number[] }[] = [];
  closedWith: { error?: Error } | undefined;

  constructor(readonly events: ConnectionEvents) {}

  get isClosed(): boolean {
    return this.closedWith !== undefined;
  }

  get queuedBytes(): number {
    return 0;
  }

  send(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.closedWith) return false;
    this.replies.push({ bytes: bytes.slice(), fds: [...fds] });
    return true;
  }

  close(error?: Error): void {
    if (this.closedWith) return;
    this.closedWith = { error };
    this.events.onClose(error);
  }

  /** How the last request ended, for the signature: closed, replied (how often), or silent. */
  outcomeSince(before: number): string {
    if (this.closedWith) return 'closed';
    const replies = this.replies.length - before;
    return replies > 0 ? `r${replies}` : 'quiet';
  }
}

/**
 * A data plane that builds what the workers would build (GuestMemory, SplitVirtqueue) and
 * checks the session's calls: whatever would throw or misbehave in a worker is a finding here.
 */
export class CheckingDataPlane implements DataPlane {
  private memory: GuestMemory | undefined;
  private readonly queues = new Map<number, SplitVirtqueue>();

  constructor(private readonly findings: string[]) {}

  setMemory(regions: readonly MappedRegion[]): Promise<void> {
    try {
      this.memory = new GuestMemory(regions);
    } catch (error) {
      this.findings.push(`data plane: the memory table cannot be built: ${(error as Error).message}`);
      return Promise.resolve();
    }
    for (const queue of this.queues.values()) queue.setMemory(this.memory);
    return Promise.resolve();
  }

  startQueue(config: Readonly<VringConfig>): Promise<void> {
    if (this.queues.has(config.index)) this.findings.push(`data plane: queue ${config.index} started twice`);
    this.checkFds(config.index, [config.kickFd, config.callFd, config.errFd]);
    if (!this.memory) {
      this.findings.push(`data plane: queue ${config.index} started without a memory table`);
      return Promise.resolve();
    }
    try {
      const queue = new SplitVirtqueue({
        memory: this.memory,
        size: config.size,
        descAddr: config.descUserAddr,
        availAddr: config.availUserAddr,
        usedAddr: config.usedUserAddr,
        addressSpace: 'userspace',
        lastAvailIdx: config.lastAvailIdx,
        indirectDesc: true,
        eventIdx: true,
        index: config.index,
      });
      this.queues.set(config.index, queue);
    } catch (error) {
      this.findings.push(`data plane: queue ${config.index} cannot be built: ${(error as Error).message}`);
    }
    return Promise.resolve();
  }

  stopQueue(index: number): Promise<number> {
    const queue = this.queues.get(index);
    if (!queue) {
      this.findings.push(`data plane: queue ${index} stopped while not running`);
      return Promise.resolve(0);
    }
    this.queues.delete(index);
    return Promise.resolve(queue.lastAvailIdx);
  }

  setNotifyFds(index: number, callFd: number, errFd: number): Promise<void> {
    if (!this.queues.has(index)) this.findings.push(`data plane: notify fds for queue ${index}, which is not running`);
    this.checkFds(index, [callFd, errFd]);
    return Promise.resolve();
  }

  reset(): Promise<void> {
    this.queues.clear();
    this.memory = undefined;
    return Promise.resolve();
  }

  private checkFds(index: number, fds: number[]): void {
    for (const fd of fds) {
      if (fd < 0) continue;
      if (!isOpen(fd)) this.findings.push(`data plane: queue ${index} given fd ${fd}, which is closed`);
      else if (!native.eventfdAdopt(fd))
        this.findings.push(`data plane: queue ${index} given fd ${fd}, not an eventfd (${describeFd(fd)})`);
    }
  }
}

export function recordingLogger(findings: string[], signature: string[]): Logger {
  const logger: Logger = {
    error: (msg, fields) => findings.push(`logged error "${msg}": ${describeFields(fields)}`),
    warn: (msg, fields) => {
      // The refusal's reason, numbers dropped: which distinct checks a case reached.
      if (msg === 'request refused') signature.push(`${normalize(String(fields?.request))}!${normalize(String(fields?.error))}`);
    },
    info: () => undefined,
    debug: () => undefined,
    child: () => logger,
  };
  return logger;
}

export function quietLogger(): Logger {
  const logger: Logger = {
    error: () => undefined,
    warn: () => undefined,
    info: () => undefined,
    debug: () => undefined,
    child: () => logger,
  };
  return logger;
}

function describeFields(fields: Record<string, unknown> | undefined): string {
  if (!fields) return '';
  const error = fields.error;
  const request = typeof fields.request === 'string' ? fields.request : '';
  if (error instanceof Error) return `${request} ${error.name}: ${error.message}\n${error.stack ?? ''}`;
  return JSON.stringify(fields, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
}

function normalize(text: string): string {
  return text.replace(/0x[0-9a-f]+|\d+/gi, '#').slice(0, 80);
}

export function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

export function safeClose(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // Already closed by its new owner.
  }
}

export function describeFd(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '?';
  }
}
