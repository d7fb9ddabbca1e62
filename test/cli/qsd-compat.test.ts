// `vhost-user-blk --qsd-compat`: qemu-storage-daemon's arguments mapped onto our daemon. The
// argument mapping is checked as data; one process run serves two exports (inherited fd and
// bound path) the way QEMU's qtests and managers start qemu-storage-daemon.
import { existsSync, mkdtempSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { parseKeyval, parseQsdArgs } from '../../dist/cli/qsd-compat.js';
import { UsageError } from '../../dist/cli/common.js';
import { probePath, run, type Child } from './cli-helpers.js';

describe('argument mapping', () => {
  it("maps QEMU's qtest command line (vhost-user-blk-test.c) export by export", () => {
    const args = parseQsdArgs([
      '--blockdev',
      'driver=file,node-name=disk0,filename=/tmp/qtest.abc',
      '--export',
      'type=vhost-user-blk,id=disk0,addr.type=fd,addr.str=7,node-name=disk0,writable=on,num-queues=8',
      '--blockdev',
      'driver=file,node-name=disk1,filename=/tmp/qtest.def',
      '--export',
      'type=vhost-user-blk,id=disk1,addr.type=fd,addr.str=9,node-name=disk1,writable=on,num-queues=1',
      '--poll',
      'busy',
      '--cpus',
      '0',
      '--interrupt-grace-us',
      '7',
    ]);
    expect(args.backends).toHaveLength(2);
    expect(args.backends[0]).toMatchObject({
      listenFd: 7,
      socketPath: undefined,
      engine: 'auto',
      diskPath: '/tmp/qtest.abc',
      readOnly: false,
      queues: 8,
      poll: 'busy',
      cpus: [0],
      interruptGraceUs: 7,
      direct: false,
      logicalBlockSize: 512,
    });
    expect(args.backends[1]).toMatchObject({ listenFd: 9, diskPath: '/tmp/qtest.def', queues: 1, interruptGraceUs: 7 });
  });

  it('unix addresses, raw over file (by name or inline), JSON values, null-co, and defaults (read-only like QSD)', () => {
    const args = parseQsdArgs([
      '--blockdev=driver=file,node-name=f,filename=/img/a,,b,cache.direct=on,aio=io_uring',
      '--blockdev',
      'driver=raw,node-name=r,file=f',
      '--export',
      'type=vhost-user-blk,id=e0,node-name=r,addr.type=unix,addr.path=/run/a.sock,logical-block-size=4096',
      '--blockdev',
      '{"driver":"raw","node-name":"r2","file":{"driver":"file","filename":"/img/c"},"read-only":true}',
      '--export',
      '{"type":"vhost-user-blk","id":"e1","node-name":"r2","addr":{"type":"unix","path":"/run/c.sock"},"num-queues":2}',
      '--blockdev',
      'driver=null-co,node-name=n,size=8M',
      '--object',
      'iothread,id=io0',
      '--export',
      'type=vhost-user-blk,id=e2,node-name=n,addr.type=unix,addr.path=/run/n.sock,writable=on,iothread=io0',
    ]);
    expect(
      args.backends.map((b) => [
        b.socketPath,
        b.engine,
        b.diskPath,
        b.readOnly,
        b.direct,
        b.queues,
        b.logicalBlockSize,
        b.sizeBytes,
      ]),
    ).toEqual([
      ['/run/a.sock', 'io_uring', '/img/a,b', true, true, 1, 4096, undefined],
      ['/run/c.sock', 'auto', '/img/c', true, false, 2, 512, undefined],
      ['/run/n.sock', 'null', undefined, false, false, 1, 512, 8 << 20],
    ]);
    expect(args.backends[0].poll).toBe('adaptive');
  });

  it('keyval: ",," is a literal comma, a key given twice or without "=" is refused', () => {
    expect([...parseKeyval('a=1,b=x,,y,,,c=', 'test')]).toEqual([
      ['a', '1'],
      ['b', 'x,y,'],
      ['c', ''],
    ]);
    expect(() => parseKeyval('a=1,a=2', 'test')).toThrow(/given twice/);
    expect(() => parseKeyval('a=1,b', 'test')).toThrow(/not key=value/);
    expect([...parseKeyval('iothread,id=x', 'test', 'qom-type')]).toEqual([
      ['qom-type', 'iothread'],
      ['id', 'x'],
    ]);
  });

  const exportFd = 'type=vhost-user-blk,id=e,node-name=d,addr.type=fd,addr.str=3';
  const file = 'driver=file,node-name=d,filename=/x';
  it.each([
    [['--blockdev', file], /no --export given/],
    [['--bogus'], /unknown option --bogus/],
    [['stray'], /unexpected argument "stray"/],
    [['--daemonize', '--blockdev', file, '--export', exportFd], /--daemonize is not supported/],
    [['--monitor', 'chardev=m'], /--monitor is not supported/],
    [['--chardev', 'socket,id=m,path=/x'], /--chardev is not supported/],
    [['-T', 'vhost*'], /--trace is not supported/],
    [['--blockdev', 'driver=qcow2,node-name=d,file=f', '--export', exportFd], /driver=qcow2 is not supported/],
    [['--blockdev', `${file},cache.no-flush=on`, '--export', exportFd], /cache.no-flush=on is not supported/],
    [['--blockdev', `${file},throttle-group=t`, '--export', exportFd], /option throttle-group is not supported/],
    [['--blockdev', file, '--export', exportFd.replace('vhost-user-blk', 'nbd')], /type=nbd is not supported/],
    [['--blockdev', file, '--export', exportFd.replace('node-name=d', 'node-name=zz')], /no --blockdev with node-name=zz/],
    [['--blockdev', file, '--export', exportFd.replace('addr.str=3', 'addr.str=monfd')], /must be an fd number/],
    [['--blockdev', file, '--export', `${exportFd},num-queues=0`], /num-queues must be between 1 and 64/],
    [['--blockdev', `${file},read-only=on`, '--export', `${exportFd},writable=on`], /node d is read-only/],
    [['--blockdev', file, '--export', exportFd, '--export', exportFd.replace('id=e', 'id=e2')], /already exported/],
    [['--blockdev', file, '--export', `${exportFd},writethrough=on`], /writethrough=on is not supported/],
    [
      [
        '--blockdev',
        file,
        '--blockdev',
        file.replace(/d,/, 'd2,'),
        '--export',
        exportFd,
        '--export',
        exportFd.replace('id=e', 'id=e2').replace('node-name=d', 'node-name=d2'),
      ],
      /fd 3 is already used by another export/,
    ],
    [['--blockdev', file, '--export', exportFd, '--poll', 'spin'], /--poll must be/],
    [['--blockdev', file, '--export', exportFd, '--interrupt-grace-us', '1001'], /--interrupt-grace-us/],
    [['--blockdev', file, '--export', '{"type": '], /not valid JSON/],
    [['--object', 'memory-backend-memfd,id=m,size=1G'], /only iothread objects/],
  ])('%j is refused with a usage error', (argv, message) => {
    expect(() => parseQsdArgs(argv)).toThrow(UsageError);
    expect(() => parseQsdArgs(argv)).toThrow(message);
  });
});

describe('one process serving every --export', () => {
  let dir: string;
  const children: Child[] = [];
  const fds: number[] = [];
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'vut-qsdc-'));
  });
  afterEach(async () => {
    for (const child of children.splice(0)) {
      if (child.process.exitCode === null && child.process.signalCode === null) child.process.kill('SIGKILL');
      await child.exited;
    }
    for (const fd of fds.splice(0)) native.close(fd);
    rmSync(dir, { recursive: true, force: true });
  });

  it('serves an inherited-fd export and a path export with their own sizes and queue counts; SIGTERM → exit 0, pid file and our socket removed', async () => {
    const images = [join(dir, 'a.img'), join(dir, 'b.img')];
    writeFileSync(images[0], '');
    truncateSync(images[0], 5 << 20);
    writeFileSync(images[1], '');
    truncateSync(images[1], 7 << 20);
    const inherited = join(dir, 'inherited.sock');
    const bound = join(dir, 'bound.sock');
    const pidfile = join(dir, 'qsd.pid');
    const fd = native.socketListen(inherited, 0o600, 1);
    fds.push(fd);
    const child = run(
      [
        '--qsd-compat',
        '--cpus',
        '0',
        '--poll',
        'interrupt',
        '--pidfile',
        pidfile,
        '--blockdev',
        `driver=file,node-name=disk0,filename=${images[0]}`,
        '--export',
        'type=vhost-user-blk,id=disk0,addr.type=fd,addr.str=3,node-name=disk0,writable=on,num-queues=8',
        '--blockdev',
        `driver=file,node-name=disk1,filename=${images[1]}`,
        '--export',
        `type=vhost-user-blk,id=disk1,addr.type=unix,addr.path=${bound},node-name=disk1,writable=on,num-queues=1`,
      ],
      { extraFds: [fd] },
    );
    children.push(child);
    native.close(fds.pop()!);
    await child.serving(2);
    expect(readFileSync(pidfile, 'utf8')).toBe(`${child.process.pid}\n`);
    expect(await probePath(inherited)).toEqual({ capacityBytes: 5n << 20n, queues: 8n });
    expect(await probePath(bound)).toEqual({ capacityBytes: 7n << 20n, queues: 1n });
    child.process.kill('SIGTERM');
    expect(await child.exited).toEqual({ code: 0, signal: null });
    expect(existsSync(bound)).toBe(false);
    expect(existsSync(pidfile)).toBe(false);
    expect(existsSync(inherited)).toBe(true); // bound by the caller, who removes it
  });

  it('an unknown option exits 2 with the reason and where to look', async () => {
    const child = run(['--qsd-compat', '--nbd-server', 'addr.type=inet']);
    children.push(child);
    expect(await child.exited).toEqual({ code: 2, signal: null });
    expect(child.stderr()).toMatch(/--nbd-server is not supported.*\n.*--qsd-compat --help/);
  });

  it('a missing image is a runtime error before anything starts (exit 1); images are never created', async () => {
    const child = run([
      '--qsd-compat',
      '--cpus',
      '0',
      '--blockdev',
      `driver=file,node-name=b,filename=${join(dir, 'missing.img')}`,
      '--export',
      `type=vhost-user-blk,id=b,addr.type=unix,addr.path=${join(dir, 'b.sock')},node-name=b`,
    ]);
    children.push(child);
    expect(await child.exited).toEqual({ code: 1, signal: null });
    expect(child.stderr()).toMatch(/missing\.img does not exist \(images are not created here\)/);
    expect(existsSync(join(dir, 'missing.img'))).toBe(false);
  });

  it('an export that cannot start (its socket cannot be bound) stops the ones already started: exit 1, no socket left', async () => {
    const image = join(dir, 'a.img');
    writeFileSync(image, '');
    truncateSync(image, 1 << 20);
    const bound = join(dir, 'a.sock');
    const child = run([
      '--qsd-compat',
      '--cpus',
      '0',
      '--blockdev',
      `driver=file,node-name=a,filename=${image}`,
      '--export',
      `type=vhost-user-blk,id=a,addr.type=unix,addr.path=${bound},node-name=a`,
      '--blockdev',
      `driver=null-co,node-name=b`,
      '--export',
      `type=vhost-user-blk,id=b,addr.type=unix,addr.path=${join(dir, 'no-such-dir', 'b.sock')},node-name=b`,
    ]);
    children.push(child);
    expect(await child.exited).toEqual({ code: 1, signal: null });
    expect(child.stderr()).toMatch(/ENOENT.*no-such-dir/);
    expect(child.stderr()).toMatch(/a\.sock[^\n]*"msg":"serving"/); // the first export did start
    expect(existsSync(bound)).toBe(false);
  });
});
