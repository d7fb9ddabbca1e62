// Shared fixtures for control-plane tests: a data plane that records what the session asks of
// it (the session is under test, not the workers), a small device, and a daemon on a temp socket.
import { mkdtempSync, readdirSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataPlane, VhostUserDevice, VringConfig } from '../../dist/control/backend.js';
import type { MappedRegion } from '../../dist/control/memory-table.js';
import type { DirtyLogArea } from '../../dist/dataplane/dirty-log.js';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { BlkDevice } from '../../dist/devices/blk/device.js';
import { ProtocolFeature, bit } from '../../dist/control/protocol.js';
import { setLogSink } from '../../dist/log.js';

/** What the library offers a virtio-blk device: its own set, plus CONFIG for the config space and blk's INFLIGHT_SHMFD. */
export const LIBRARY_PROTOCOL_FEATURES = [
  ProtocolFeature.MQ,
  ProtocolFeature.REPLY_ACK,
  ProtocolFeature.BACKEND_REQ,
  ProtocolFeature.CONFIG,
  ProtocolFeature.RESET_DEVICE,
  ProtocolFeature.CONFIGURE_MEM_SLOTS,
  ProtocolFeature.STATUS,
  ProtocolFeature.INFLIGHT_SHMFD,
  ProtocolFeature.LOG_SHMFD,
].reduce((all, feature) => all | bit(feature), 0n);

export class RecordingDataPlane implements DataPlane {
  readonly events: string[] = [];
  readonly running = new Map<number, VringConfig>();
  memory: readonly MappedRegion[] = [];
  /** What stopQueue reports for a queue (as if the worker had consumed that many requests). */
  stopIndex = new Map<number, number>();

  setMemory(regions: readonly MappedRegion[]): Promise<void> {
    this.memory = regions;
    this.events.push(`memory:${regions.length}`);
    return Promise.resolve();
  }
  startQueue(config: Readonly<VringConfig>): Promise<void> {
    this.running.set(config.index, { ...config });
    this.events.push(`start:${config.index}`);
    return Promise.resolve();
  }
  stopQueue(index: number): Promise<number> {
    const config = this.running.get(index);
    this.running.delete(index);
    this.events.push(`stop:${index}`);
    return Promise.resolve(this.stopIndex.get(index) ?? config?.lastAvailIdx ?? 0);
  }
  setNotifyFds(index: number, callFd: number, errFd: number): Promise<void> {
    const config = this.running.get(index);
    if (config) this.running.set(index, { ...config, callFd, errFd });
    this.events.push(`notify:${index}`);
    return Promise.resolve();
  }
  reset(): Promise<void> {
    this.running.clear();
    this.memory = [];
    this.dirtyLog = null;
    this.events.push('reset');
    return Promise.resolve();
  }
  /** The dirty log the data plane marks (null: not logging). */
  dirtyLog: DirtyLogArea | null = null;
  setDirtyLog(area: DirtyLogArea | null): Promise<void> {
    this.dirtyLog = area;
    this.events.push(area ? `log:${area.size}` : 'log:off');
    return Promise.resolve();
  }
  setRingLog(index: number, logGuestAddr: number): Promise<void> {
    const config = this.running.get(index);
    if (config) this.running.set(index, { ...config, logGuestAddr });
    this.events.push(`ring-log:${index}:${logGuestAddr}`);
    return Promise.resolve();
  }
}

/** A recording data plane that can hold one startQueue or stopQueue call open. */
export class GatedDataPlane extends RecordingDataPlane implements DataPlane {
  hold: 'start' | 'stop' | undefined;
  held: (() => void) | undefined;

  override async startQueue(config: Readonly<VringConfig>): Promise<void> {
    if (this.hold === 'start') await this.gate();
    return super.startQueue(config);
  }

  override async stopQueue(index: number): Promise<number> {
    if (this.hold === 'stop') await this.gate();
    return super.stopQueue(index);
  }

  /** Like the worker data plane: a reset waits for a stop still draining. */
  override async reset(): Promise<void> {
    if (this.pending) await this.pending;
    return super.reset();
  }

  release(): void {
    this.hold = undefined;
    this.held?.();
  }

  protected pending: Promise<void> | undefined;

  private gate(): Promise<void> {
    this.pending = new Promise<void>((resolve) => (this.held = resolve));
    return this.pending;
  }
}

/**
 * A gated data plane that can abandon, like the worker data plane: abandon() writes the held
 * rings off at once (a held stop stays held: the device still has not answered) and lets a
 * waiting reset finish.
 */
export class AbandoningDataPlane extends GatedDataPlane {
  private writeOff: (() => void) | undefined;
  private readonly writtenOff = new Promise<void>((resolve) => (this.writeOff = resolve));

  override async reset(): Promise<void> {
    if (this.pending) await Promise.race([this.pending, this.writtenOff]);
    this.forget('reset');
  }

  abandon(): Promise<void> {
    this.forget('abandon');
    this.writeOff?.();
    return Promise.resolve();
  }

  private forget(event: string): void {
    this.running.clear();
    this.memory = [];
    this.dirtyLog = null;
    this.events.push(event);
  }
}

export function testBlkDevice(queues = 2): BlkDevice {
  return new BlkDevice({
    capacityBytes: 64 << 20,
    numQueues: queues,
    maxQueueSize: 1024,
    readOnly: false,
    supportsDiscard: true,
    supportsFlush: true,
  });
}

export interface TestDaemon {
  daemon: VhostUserDaemon;
  dataPlane: RecordingDataPlane;
  device: VhostUserDevice;
  socketPath: string;
  dir: string;
  stop(): Promise<void>;
}

export async function startTestDaemon(device: VhostUserDevice = testBlkDevice()): Promise<TestDaemon> {
  const dir = mkdtempSync(join(tmpdir(), 'vut-control-'));
  const socketPath = join(dir, 'vhost.sock');
  const dataPlane = new RecordingDataPlane();
  const daemon = new VhostUserDaemon(device, { socketPath, dataPlane });
  await daemon.start();
  return {
    daemon,
    dataPlane,
    device,
    socketPath,
    dir,
    async stop() {
      await daemon.stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Resolves when `predicate` holds, polling the event loop (the daemon runs in this process). */
export async function until(predicate: () => boolean, timeoutMs = 5000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 5));
  }
}

// ---- fd hygiene, logs and raw messages ----------------------------------------------------------

/** Open fds of this process (the daemon under test runs here too). */
export function openFds(): number {
  return readdirSync('/proc/self/fd').length;
}

/** The numbers of this process's open fds. */
export function fdSet(): Set<number> {
  return new Set(readdirSync('/proc/self/fd').map(Number));
}

/** Waits until the process holds exactly `baseline` fds again (leaks fail the wait). */
export async function fdsBackTo(baseline: number, what = 'fds to return to their baseline'): Promise<void> {
  try {
    await until(() => openFds() === baseline, 2000, what);
  } catch {
    throw new Error(`${what}: ${openFds()} open, expected ${baseline} (${[...fdSet()].map(describeFd).join(', ')})`);
  }
}

function describeFd(fd: number): string {
  try {
    return `${fd}=${readlinkSync(`/proc/self/fd/${fd}`)}`;
  } catch {
    return `${fd}=?`;
  }
}

/** Captures the library's log lines (quiet tests, and assertions on why something was refused). */
export function captureLogs(): { lines: string[]; restore(): void } {
  const lines: string[] = [];
  const previous = setLogSink((line) => lines.push(line));
  return { lines, restore: () => void setLogSink(previous) };
}

/** Reads the u64 at `offset` of a little-endian payload. */
export function u64At(payload: Uint8Array, offset = 0): bigint {
  return new DataView(payload.buffer, payload.byteOffset, payload.byteLength).getBigUint64(offset, true);
}

/** A payload of little-endian u32 and u64 fields (numbers are u32, bigints u64). */
export function payloadOf(...fields: (number | bigint)[]): Uint8Array {
  const size = fields.reduce<number>((sum, field) => sum + (typeof field === 'bigint' ? 8 : 4), 0);
  const bytes = new Uint8Array(size);
  const view = new DataView(bytes.buffer);
  let offset = 0;
  for (const field of fields) {
    if (typeof field === 'bigint') {
      view.setBigUint64(offset, field, true);
      offset += 8;
    } else {
      view.setUint32(offset, field, true);
      offset += 4;
    }
  }
  return bytes;
}
