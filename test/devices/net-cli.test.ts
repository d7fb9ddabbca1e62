// bin/vhost-user-net as a user runs it: argument checks, and a real process serving a front-end
// (the front-end library in this process) until SIGINT, then printing its counters.
import { afterEach, describe, expect, it } from 'vitest';
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseNetArgs } from '../../dist/cli/vhost-user-net.js';
import { FrontendDevice } from '../../dist/frontend/device.js';
import { FrontendMemory } from '../../dist/frontend/memory.js';
import { NetGuest, ethernetFrame, sameBytes } from './net-rig.js';

const BIN = new URL('../../bin/vhost-user-net', import.meta.url).pathname;
const children: ChildProcess[] = [];
const dirs: string[] = [];

afterEach(() => {
  for (const child of children.splice(0)) if (child.exitCode === null) child.kill('SIGKILL');
  for (const dir of dirs.splice(0)) rmSync(dir, { recursive: true, force: true });
});

function run(args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 20_000 });
}

describe('vhost-user-net arguments', () => {
  it('prints help and version, and refuses bad usage with exit code 2 and a reason', () => {
    const help = run(['--help']);
    expect(help.status).toBe(0);
    for (const option of [
      '--socket',
      '--backend',
      '--queues',
      '--queue-size',
      '--cpus',
      '--poll',
      '--mac',
      '--mtu',
      '--frame-size',
      '--client',
      '--stats-interval',
      '--verbose',
    ]) {
      expect(help.stdout).toContain(option);
    }
    expect(run(['--version']).stdout).toMatch(/^vhost-user-net \(vhost-user-ts\) \d+\.\d+\.\d+/);
    const cases: [string[], RegExp][] = [
      [[], /--socket PATH is required/],
      [['--socket', 's', '--backend', 'bogus'], /--backend must be one of/],
      [['--socket', 's', '--backend', 'switch'], /at least two --socket/],
      [['--socket', 's', '--mac', '01:00:5e:00:00:01'], /multicast/],
      [['--socket', 's', '--mac', 'zz'], /not a MAC address/],
      [['--socket', 's', '--mtu', '20'], /--mtu must be between/],
      [['--socket', 's', '--queue-size', '300'], /power of two/],
      [['--socket', 's', '--backend', 'source', '--frame-size', '2000'], /--frame-size must be between/],
      [['--socket', 's', '--frame-size', '100'], /only applies to --backend source/],
      [['--socket', 's', '--socket', 's'], /different path/],
      [['--socket', 's', '--poll', 'sometimes'], /--poll must be/],
      [['--socket', 's', '--backend', 'tap:'], /tap name has 1 to 15 bytes/],
      [['--socket', 's', '--backend', 'tap:a-name-far-too-long'], /tap name has 1 to 15 bytes/],
      [['--socket', 's', '--backend', 'tap:a/b'], /not a valid interface name/],
      [['--socket', 'a', '--socket', 'b', '--backend', 'tap:vut0'], /serves one port/],
    ];
    for (const [args, message] of cases) {
      const result = run(args);
      expect(result.status, args.join(' ')).toBe(2);
      expect(result.stderr, args.join(' ')).toMatch(message);
    }
  });

  it('parses repeated sockets, queue pairs, MAC and MTU', () => {
    const parsed = parseNetArgs([
      '--socket',
      'a',
      '--socket',
      'b',
      '--queues',
      '2',
      '--mac',
      '02:00:00:00:00:0a',
      '--mtu',
      '9000',
      '--backend',
      'source',
      '--frame-size',
      '1518',
      '--poll',
      'busy',
      '--cpus',
      '0-1',
    ]);
    expect(parsed.backend).toMatchObject({
      socketPaths: ['a', 'b'],
      queuePairs: 2,
      mtu: 9000,
      backend: 'source',
      frameBytes: 1518,
      poll: 'busy',
      cpus: [0, 1],
    });
    expect(Array.from(parsed.backend.mac)).toEqual([2, 0, 0, 0, 0, 10]);
    expect(parseNetArgs(['--socket', 'a', '--backend', 'tap:vut0']).backend).toMatchObject({ backend: 'tap', tapName: 'vut0' });
  });
});

describe('vhost-user-net process', () => {
  it('starts with just --socket and --backend loopback, serves a front-end, and prints counters at SIGINT', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vut-net-cli-'));
    dirs.push(dir);
    const socketPath = join(dir, 'net.sock');
    const child = spawn(process.execPath, [BIN, '--socket', socketPath, '--backend', 'loopback', '--poll', 'interrupt'], {
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    children.push(child);
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const memory = FrontendMemory.simple(16 << 20);
    const device = await FrontendDevice.connect({ socketPath, memory, queues: 2, connectTimeoutMs: 15_000 });
    const guest = new NetGuest(device, memory);
    let probes = 0;
    try {
      guest.postRx(8, 2048);
      // The RX buffers are popped when the worker sees their kick: probe until one frame comes back.
      const probe = ethernetFrame(64, 100);
      for (;;) {
        probes++;
        guest.send(probe);
        try {
          const [echo] = await guest.receive(1, 0, 200);
          expect(sameBytes(echo.frame, probe)).toBe(true);
          break;
        } catch (error) {
          if (probes >= 50) throw error;
        }
      }
      const frames = [ethernetFrame(60, 1), ethernetFrame(1514, 2), ethernetFrame(333, 3)];
      for (const frame of frames) guest.send(frame);
      const received = await guest.receive(frames.length);
      received.forEach((got, i) => expect(sameBytes(got.frame, frames[i])).toBe(true));
    } finally {
      guest.close();
    }
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    expect(existsSync(socketPath)).toBe(false);
    const lines = stdout.trim().split('\n');
    expect(lines[0]).toMatch(/port\s+queue\s+dir\s+packets\s+bytes\s+drops/);
    const bytes = 60 + 1514 + 333;
    // Probes that arrived before the RX buffers were popped were dropped (counted, no buffer).
    expect(lines[1].trim().split(/\s+/).slice(0, 7)).toEqual([
      '0',
      '0',
      'rx',
      '4',
      String(bytes + 64),
      String(probes - 1),
      String(probes - 1),
    ]);
    expect(lines[2].trim().split(/\s+/).slice(0, 6)).toEqual([
      '0',
      '1',
      'tx',
      String(probes + 3),
      String(bytes + 64 * probes),
      '0',
    ]);
  });

  it('serves one port per --socket (each its own MAC and counters); frames never cross ports', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vut-net-cli-'));
    dirs.push(dir);
    const sockets = [join(dir, 'a.sock'), join(dir, 'b.sock')];
    const child = spawn(
      process.execPath,
      [BIN, '--socket', sockets[0], '--socket', sockets[1], '--mac', '02:00:00:00:00:10', '--poll', 'interrupt'],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
      },
    );
    children.push(child);
    let stdout = '';
    child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
    const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
    const echoes: number[] = [];
    for (const [p, socketPath] of sockets.entries()) {
      const memory = FrontendMemory.simple(16 << 20);
      const device = await FrontendDevice.connect({ socketPath, memory, queues: 2, connectTimeoutMs: 15_000 });
      const guest = new NetGuest(device, memory);
      try {
        const config = await device.getConfig(0, 6);
        expect(Array.from(config)).toEqual([2, 0, 0, 0, 0, 0x10 + p]);
        guest.postRx(4, 2048);
        const frame = ethernetFrame(100 + p, p);
        for (let sent = 1; ; sent++) {
          guest.send(frame);
          try {
            const [echo] = await guest.receive(1, 0, 200);
            expect(sameBytes(echo.frame, frame)).toBe(true);
            echoes.push(sent);
            break;
          } catch (error) {
            if (sent >= 50) throw error;
          }
        }
      } finally {
        guest.close();
      }
    }
    child.kill('SIGINT');
    expect(await exited).toBe(0);
    const rows = stdout
      .trim()
      .split('\n')
      .slice(1)
      .map((line) => line.trim().split(/\s+/));
    expect(rows.map((r) => r.slice(0, 5))).toEqual([
      ['0', '0', 'rx', '1', '100'],
      ['0', '1', 'tx', String(echoes[0]), String(100 * echoes[0])],
      ['1', '0', 'rx', '1', '101'],
      ['1', '1', 'tx', String(echoes[1]), String(101 * echoes[1])],
    ]);
  });
});
