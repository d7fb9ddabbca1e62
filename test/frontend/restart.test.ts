// A back-end killed (SIGKILL) with completions out of order, restarted, and the front-end
// library reconnecting the way QEMU does with `reconnect=`: it keeps the in-flight region it got
// once (GET_INFLIGHT_FD) and hands it back after the reconnect (SET_INFLIGHT_FD). The back-end
// runs in a child process (the echo device with in-flight tracking, parking every second request
// so that the kill leaves completed and pending requests interleaved). Every request must
// complete exactly once, with its data; without tracking the same kill loses and repeats some.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { FrontendDevice, type FrontendQueue } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';

const DIST = pathToFileURL(join(import.meta.dirname, '../../dist/')).href;
const TIMEOUT_MS = 10_000;
const QUEUE_SIZE = 64;
const REQUEST_BYTES = 16;
const IN = 0x100000; // readable buffers (the token written in)
const OUT = 0x200000; // writable buffers (the echo)

/** The back-end process: echo device + in-flight tracking, on the worker data plane. */
const BACKEND_SCRIPT = `
import { VhostUserDaemon } from '${DIST}control/daemon.js';
import { WorkerDataPlane } from '${DIST}dataplane/pool.js';
import { EchoDevice } from '${DIST}devices/echo/device.js';
const [socketPath, holdEvery, mode, queues] = process.argv.slice(2);
const echo = new EchoDevice(Number(queues), 256);
const device = { name: 'echo', numQueues: echo.numQueues, maxQueueSize: echo.maxQueueSize, features: echo.features, protocolFeatures: 1n << 12n };
const plane = await WorkerDataPlane.start({ cpus: [-1], queueCount: echo.numQueues, handler: EchoDevice.handler({ holdEvery: Number(holdEvery) }), mode });
const daemon = new VhostUserDaemon(device, { socketPath, dataPlane: plane });
await daemon.start();
process.stdout.write('ready\\n');
`;

interface Backend {
  child: ChildProcess;
  /** JSON log lines so far. */
  logs: Array<Record<string, unknown>>;
}

let dir = '';
const children: ChildProcess[] = [];
const devices: FrontendDevice[] = [];
const memories: FrontendMemory[] = [];

afterEach(() => {
  for (const device of devices.splice(0)) device.close();
  for (const memory of memories.splice(0)) memory.close();
  for (const child of children.splice(0)) child.kill('SIGKILL');
  if (dir) rmSync(dir, { recursive: true, force: true });
  dir = '';
});

async function startBackend(socketPath: string, holdEvery: number, mode: string, queues: number): Promise<Backend> {
  const script = join(dir, 'backend.mjs');
  writeFileSync(script, BACKEND_SCRIPT);
  const child = spawn(process.execPath, [script, socketPath, String(holdEvery), mode, String(queues)], {
    env: { ...process.env, VHOST_USER_LOG: 'info' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const logs: Array<Record<string, unknown>> = [];
  let stderr = '';
  child.stderr.on('data', (chunk: Buffer) => {
    stderr += chunk.toString();
    let newline: number;
    while ((newline = stderr.indexOf('\n')) >= 0) {
      const line = stderr.slice(0, newline);
      stderr = stderr.slice(newline + 1);
      try {
        logs.push(JSON.parse(line) as Record<string, unknown>);
      } catch {
        logs.push({ msg: line });
      }
    }
  });
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`back-end did not start: ${JSON.stringify(logs)}`)), TIMEOUT_MS);
    child.stdout.on('data', (chunk: Buffer) => {
      if (chunk.toString().includes('ready')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => reject(new Error(`back-end exited with ${code}: ${JSON.stringify(logs)}`)));
  });
  return { child, logs };
}

async function kill(backend: Backend): Promise<void> {
  const exited = new Promise((resolve) => backend.child.once('exit', resolve));
  backend.child.kill('SIGKILL');
  await exited;
}

/** Posts request `token` on `queue`: REQUEST_BYTES readable (the token repeated), as many writable. */
function post(memory: FrontendMemory, queue: FrontendQueue, token: number): void {
  const slot = token % 1024;
  const input = memory.bytes(IN + slot * REQUEST_BYTES, REQUEST_BYTES);
  new DataView(input.buffer, input.byteOffset, REQUEST_BYTES).setFloat64(0, token, true);
  new DataView(input.buffer, input.byteOffset, REQUEST_BYTES).setFloat64(8, -token, true);
  memory.bytes(OUT + slot * REQUEST_BYTES, REQUEST_BYTES).fill(0xee);
  queue.driver.beginChain();
  queue.driver.addSegment(IN + slot * REQUEST_BYTES, REQUEST_BYTES, false);
  queue.driver.addSegment(OUT + slot * REQUEST_BYTES, REQUEST_BYTES, true);
  queue.driver.endChain(token);
}

/** Reaps until `until` says enough (or the deadline passes); every reaped token is recorded in `seen`. */
async function reap(
  memory: FrontendMemory,
  queues: FrontendQueue[],
  seen: Map<number, number>,
  until: () => boolean,
): Promise<void> {
  const tokens = new Float64Array(QUEUE_SIZE);
  const lens = new Uint32Array(QUEUE_SIZE);
  const deadline = Date.now() + TIMEOUT_MS;
  for (;;) {
    for (const queue of queues) {
      const count = queue.driver.reapUsed(tokens, lens);
      for (let i = 0; i < count; i++) {
        const token = tokens[i];
        seen.set(token, (seen.get(token) ?? 0) + 1);
        // The echo ran: the writable buffer holds what the readable one held.
        const output = memory.bytes(OUT + (token % 1024) * REQUEST_BYTES, REQUEST_BYTES);
        const view = new DataView(output.buffer, output.byteOffset, REQUEST_BYTES);
        expect(lens[i], `request ${token}: used.len`).toBe(REQUEST_BYTES);
        expect([view.getFloat64(0, true), view.getFloat64(8, true)], `request ${token}: echoed data`).toEqual([token, -token]);
      }
    }
    if (until()) return;
    if (Date.now() > deadline) throw new Error(`timed out; reaped ${[...seen.keys()].sort((a, b) => a - b).join(',')}`);
    await new Promise((resolve) => setTimeout(resolve, 2));
  }
}

async function scenario(options: { inflight: boolean; mode: string; queues: number }) {
  dir = mkdtempSync(join(tmpdir(), 'vut-restart-'));
  const socketPath = join(dir, 'echo.sock');
  const memory = new FrontendMemory([{ guestPhysAddr: 0, size: 4 << 20 }]);
  memories.push(memory);
  let backend = await startBackend(socketPath, 2, options.mode, options.queues);
  const device = await FrontendDevice.connect({
    socketPath,
    memory,
    queues: options.queues,
    queueSize: QUEUE_SIZE,
    inflight: options.inflight,
    replyTimeoutMs: TIMEOUT_MS,
  });
  devices.push(device);
  const seen = new Map<number, number>();
  const perQueue = 16;
  // Tokens: queue q gets q * 1000 + i.
  for (const queue of device.queues) {
    for (let i = 0; i < perQueue; i++) post(memory, queue, queue.index * 1000 + i);
    queue.publishAndKick();
  }
  // Every second request is parked by the back-end: half complete, interleaved with the rest.
  await reap(memory, device.queues, seen, () => seen.size === (options.queues * perQueue) / 2);
  await new Promise((resolve) => setTimeout(resolve, 20)); // nothing more comes
  expect(seen.size).toBe((options.queues * perQueue) / 2);

  await kill(backend);
  backend = await startBackend(socketPath, 0, options.mode, options.queues);
  await device.reconnect({ connectTimeoutMs: TIMEOUT_MS });
  if (!options.inflight) return { device, seen, expected: [], backend, memory };
  // New requests after the restart go through too.
  for (const queue of device.queues) {
    for (let i = perQueue; i < perQueue + 4; i++) post(memory, queue, queue.index * 1000 + i);
    queue.publishAndKick();
  }
  const expected: number[] = [];
  for (let q = 0; q < options.queues; q++) for (let i = 0; i < perQueue + 4; i++) expected.push(q * 1000 + i);
  return { device, seen, expected, backend, memory };
}

describe('back-end restart with out-of-order completions (front-end library, child back-end)', () => {
  for (const [mode, queues] of [
    ['busy', 1],
    ['interrupt', 2],
  ] as const) {
    it(`with in-flight tracking every request completes exactly once, with its data (${mode}, ${queues} queue${queues > 1 ? 's' : ''})`, async () => {
      const { device, seen, expected, backend } = await scenario({ inflight: true, mode, queues });
      expect(device.inflight, 'the region kept across the reconnect').toBeDefined();
      await reap(device.memory, device.queues, seen, () => seen.size === expected.length);
      await new Promise((resolve) => setTimeout(resolve, 50));
      await reap(device.memory, device.queues, seen, () => true);
      for (const queue of device.queues)
        expect(queue.driver.broken, `queue ${queue.index}: ${queue.driver.brokenReason}`).toBe(false);
      expect([...seen.keys()].sort((a, b) => a - b)).toEqual(expected);
      for (const [token, count] of seen) expect(count, `request ${token}`).toBe(1);
      // The restarted back-end resubmitted exactly the parked half of the first 16 per queue.
      const recovered = backend.logs.filter((line) => line.msg === 'queue recovered from the in-flight region');
      expect(recovered.map((line) => line.resubmitted)).toEqual(Array.from({ length: queues }, () => 8));
    });
  }

  it('without tracking, resuming at used->idx runs completed requests again and never completes others', async () => {
    const { device, seen } = await scenario({ inflight: false, mode: 'busy', queues: 1 });
    expect(device.inflight).toBeUndefined();
    // 8 of the first 16 completed (the even ones); the back-end resumes at used->idx = 8 and
    // fetches requests 8..15 again: 8 (already completed) comes back a second time, which the
    // driver refuses (its head is no longer in flight); 1, 3, 5, 7 are never fetched again.
    const driver = device.queues[0].driver;
    await reap(device.memory, device.queues, seen, () => driver.broken);
    expect(driver.brokenReason).toMatch(/not in flight/);
    for (const token of [1, 3, 5, 7]) expect(seen.has(token), `request ${token}`).toBe(false);
  });
});
