// The generic back-end assembly: ports start in order, each with its own data plane and daemon;
// a failure part-way stops what started (last first) and frees what each port and the ports
// together hold; stop does the same once, and the counters stay readable after it.
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { startAssembly, type AssemblyOptions } from '../../dist/control/assembly.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { createLogger, setLogLevel } from '../../dist/log.js';

let dir: string;
beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), 'vut-assembly-'));
  setLogLevel('error');
});
afterEach(() => rmSync(dir, { recursive: true, force: true }));

function options(
  ports: number,
  events: string[],
  socketOf = (p: number) => join(dir, `p${p}.sock`),
): AssemblyOptions<EchoDevice> {
  return {
    ports,
    makePort: (p) => ({
      device: new EchoDevice(2),
      handler: EchoDevice.handler(),
      socketPath: socketOf(p),
      name: `port${p}`,
      release: () => events.push(`release ${p}`),
    }),
    workers: { cpus: [0], poll: 'interrupt', idleBudgetUs: 50 },
    client: false,
    release: () => events.push('release shared'),
    log: createLogger('assembly-test'),
  };
}

describe('startAssembly', () => {
  it('starts one plane and daemon per port, and stop frees every port (last first), then what they share', async () => {
    const events: string[] = [];
    const assembly = await startAssembly(options(2, events));
    expect(assembly.ports.map((port) => port.socketPath)).toEqual([join(dir, 'p0.sock'), join(dir, 'p1.sock')]);
    expect(existsSync(join(dir, 'p0.sock')) && existsSync(join(dir, 'p1.sock'))).toBe(true);
    expect(assembly.planeStats().map((queues) => queues.length)).toEqual([2, 2]);
    expect(events).toEqual([]);
    const waited = assembly.wait();
    await Promise.all([assembly.stop(), assembly.stop()]);
    await expect(waited).resolves.toBeUndefined();
    expect(events).toEqual(['release 1', 'release 0', 'release shared']);
    expect(existsSync(join(dir, 'p0.sock')) || existsSync(join(dir, 'p1.sock'))).toBe(false);
    expect(assembly.planeStats()).toHaveLength(2);
  });

  it('a port that cannot listen stops the ports already started and frees everything', async () => {
    const events: string[] = [];
    // Not a socket: the daemon refuses to bind over it and must leave it in place.
    writeFileSync(join(dir, 'p1.sock'), 'not a socket');
    await expect(startAssembly(options(2, events))).rejects.toThrow();
    expect(events).toEqual(['release 1', 'release 0', 'release shared']);
    expect(existsSync(join(dir, 'p0.sock'))).toBe(false);
    expect(existsSync(join(dir, 'p1.sock'))).toBe(true);
  });

  it('a port that cannot be built stops the ports already started; its own parts are its own to free', async () => {
    const events: string[] = [];
    const opts = options(2, events);
    const makePort = opts.makePort;
    opts.makePort = (p) => {
      if (p === 1) throw new Error('no port 1');
      return makePort(p);
    };
    await expect(startAssembly(opts)).rejects.toThrow('no port 1');
    expect(events).toEqual(['release 0', 'release shared']);
    expect(existsSync(join(dir, 'p0.sock'))).toBe(false);
  });
});
