// Shared fixtures for control-plane tests: a data plane that records what the session asks of
// it (the session is under test, not the workers), a small device, and a daemon on a temp socket.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataPlane, VhostUserDevice, VringConfig } from '../../dist/control/backend.js';
import type { MappedRegion } from '../../dist/control/memory-table.js';
import { VhostUserDaemon } from '../../dist/control/daemon.js';
import { BlkDevice } from '../../dist/devices/blk/device.js';

export class RecordingDataPlane implements DataPlane {
  readonly events: string[] = [];
  readonly running = new Map<number, VringConfig>();
  memory: readonly MappedRegion[] = [];
  /** What stopQueue reports for a queue (as if the worker had consumed that many requests). */
  stopIndex = new Map<number, number>();

  async setMemory(regions: readonly MappedRegion[]): Promise<void> {
    this.memory = regions;
    this.events.push(`memory:${regions.length}`);
  }
  async startQueue(config: Readonly<VringConfig>): Promise<void> {
    this.running.set(config.index, { ...config });
    this.events.push(`start:${config.index}`);
  }
  async stopQueue(index: number): Promise<number> {
    const config = this.running.get(index);
    this.running.delete(index);
    this.events.push(`stop:${index}`);
    return this.stopIndex.get(index) ?? config?.lastAvailIdx ?? 0;
  }
  async setNotifyFds(index: number, callFd: number, errFd: number): Promise<void> {
    const config = this.running.get(index);
    if (config) this.running.set(index, { ...config, callFd, errFd });
    this.events.push(`notify:${index}`);
  }
  async reset(): Promise<void> {
    this.running.clear();
    this.memory = [];
    this.events.push('reset');
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
