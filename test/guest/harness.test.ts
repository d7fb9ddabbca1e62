// The guest harness itself: pattern, result parsing, QEMU command line, timeout hygiene.
import { execFileSync } from 'node:child_process';
import { describe, expect, it } from 'vitest';
import {
  ensureGuestImage,
  guestRigUnavailable,
  makePattern,
  parseResult,
  qemuArgs,
  runGuest,
  sha256,
} from '../../dist/guest/qemu.js';

describe('guest harness', () => {
  it("guest/init.sh parses under busybox sh, the guest's shell (a broken /init kills every guest job)", () => {
    const script = new URL('../../guest/init.sh', import.meta.url).pathname;
    // sh -n reads without running: a syntax error exits non-zero and execFileSync throws.
    expect(() => execFileSync('busybox', ['sh', '-n', script], { stdio: 'pipe' })).not.toThrow();
    const broken = execFileSync(
      'busybox',
      ['sh', '-c', 'printf "f() {\\n  echo\\n" > /tmp/vut-broken.sh; busybox sh -n /tmp/vut-broken.sh; echo $?'],
      { encoding: 'utf8' },
    );
    expect(broken.trim()).not.toBe('0'); // the check itself can fail
  });

  it('makePattern matches what the guest writes (sha256 printed by a real guest, seed 123)', () => {
    expect(sha256(makePattern(123, 0, 4 << 20))).toBe('2af795779d2a76b1484f271bc31c4b05692efb3c6fa2f90d5d1e859556401852');
    expect(sha256(makePattern(123, (64 << 20) - 4096, 4096))).toBe(
      '79143ebce61a3146d656183cd11ad9f1b8077fc36df745a893cbdcbae5067189',
    );
    const p = makePattern(7, 8192, 8192);
    expect(p.readUInt32BE(0)).toBe(2); // absolute 4 KiB block index
    expect(p.readUInt32BE(4096)).toBe(3);
    expect(p.readUInt32BE(4)).toBe(8); // x0 = seed + 1
    expect(() => makePattern(1, 512, 4096)).toThrow(RangeError);
  });

  it('parseResult takes the last well-formed VUT-RESULT line', () => {
    const log = [
      'VUT-STEP x',
      'VUT-RESULT {"job":"blk","ok":false,"step":"a","error":"e"}',
      'noise VUT-RESULT {broken',
      'VUT-RESULT {"job":"blk","ok":true,"n":1}\r',
      '[    5.1] reboot: Power down',
    ].join('\n');
    expect(parseResult(log)).toEqual({ job: 'blk', ok: true, n: 1 });
    expect(parseResult('nothing here')).toBeUndefined();
  });

  it('qemuArgs: TCG, shared memfd RAM, vhost-user-blk, vut.* kernel args', () => {
    const a = qemuArgs({
      image: { kernel: '/k', initrd: '/i', kernelVersion: 'v', key: 'k' },
      socketPath: '/s.sock',
      numQueues: 2,
      jobArgs: { seed: 9, tail: false },
    });
    const s = a.join(' ');
    expect(s).toContain('-accel tcg,thread=single');
    expect(s).toContain('memory-backend-memfd,id=mem,size=512M,share=on');
    expect(s).toContain('-smp 2');
    expect(s).toContain('-chardev socket,id=vu0,path=/s.sock');
    expect(s).toContain('-device vhost-user-blk-pci,chardev=vu0,num-queues=2');
    expect(a[a.indexOf('-append') + 1]).toContain('vut.test=blk vut.seed=9 vut.tail=0');
    expect(() => qemuArgs({ image: { kernel: '', initrd: '', kernelVersion: '', key: '' }, jobArgs: { x: 'a b' } })).toThrow();
  });

  it('timeout kills QEMU and rejects with the console tail', { timeout: 60_000 }, async () => {
    const unavailable = guestRigUnavailable();
    if (unavailable) throw new Error(unavailable);
    const image = await ensureGuestImage();
    const marker = `vut.marker=t${process.pid}x${Date.now()}`;
    const err = await runGuest({ image, job: 'boot', append: [marker], timeoutMs: 1500 }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err?.message).toMatch(/timed out after 1500 ms/);
    await new Promise((r) => setTimeout(r, 300));
    const ps = execFileSync('ps', ['-eo', 'args'], { encoding: 'utf8' });
    expect(ps).not.toContain(marker);
  });
});
