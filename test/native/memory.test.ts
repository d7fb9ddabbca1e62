// memfd and mmap as SharedArrayBuffer, shared with worker threads.
import { readFileSync } from 'node:fs';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { thrown } from './preamble.js';

const GiB = 2 ** 30;
const mapped = (name: string) => readFileSync('/proc/self/maps', 'utf8').includes(`memfd:${name}`);

describe('memfdCreate and mmapShared', () => {
  it('two mappings of one memfd see the same bytes', () => {
    const fd = native.memfdCreate('ring-two-maps', 1 << 20);
    const first = native.mmapShared(fd, 1 << 20, 0, true);
    const second = native.mmapShared(fd, 4096, 4096, true);
    native.close(fd); // the mappings outlive the fd
    expect(first).toBeInstanceOf(SharedArrayBuffer);
    expect(first.byteLength).toBe(1 << 20);
    new Uint8Array(first).set([1, 2, 3], 4096);
    expect([...new Uint8Array(second, 0, 3)]).toEqual([1, 2, 3]);
    new Uint32Array(second)[1] = 0xdeadbeef;
    expect(new DataView(first).getUint32(4100, true)).toBe(0xdeadbeef);
  });

  it('maps read-only when asked', () => {
    const fd = native.memfdCreate('ring-read-only', 4096);
    const writable = native.mmapShared(fd, 4096, 0, true);
    const readOnly = native.mmapShared(fd, 4096, 0, false);
    native.close(fd);
    new Uint8Array(writable)[10] = 42;
    expect(new Uint8Array(readOnly)[10]).toBe(42);
  });

  it('maps a sparse 5 GiB region and reaches its last bytes', () => {
    const size = 5 * GiB;
    const fd = native.memfdCreate('ring-5g', size);
    const region = native.mmapShared(fd, size, 0, true);
    const tail = native.mmapShared(fd, 4096, size - 4096, true);
    native.close(fd);
    expect(region.byteLength).toBe(size);
    new Uint8Array(region, size - 16, 16).fill(0xab);
    new DataView(region).setUint32(4.5 * GiB, 0x01020304, true);
    expect(new Uint8Array(tail)[4095]).toBe(0xab);
    expect(new Uint8Array(tail)[4079]).toBe(0);
    expect(new DataView(region).getUint32(4.5 * GiB, true)).toBe(0x01020304);
  });

  it('shares the mapping with a worker thread', async () => {
    const fd = native.memfdCreate('ring-worker', 4096);
    const region = native.mmapShared(fd, 4096, 0, true);
    native.close(fd);
    const words = new Int32Array(region);
    words[1] = 1234; // the worker answers with this value + 1
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       const words = new Int32Array(workerData.region);
       Atomics.store(words, 2, Atomics.load(words, 1) + 1);
       Atomics.store(words, 0, 1);
       Atomics.notify(words, 0);`,
      { eval: true, workerData: { region } },
    );
    const exited = new Promise((done, fail) => worker.on('exit', done).on('error', fail));
    expect(Atomics.wait(words, 0, 0, 10_000)).not.toBe('timed-out');
    expect(Atomics.load(words, 2)).toBe(1235);
    expect(await exited).toBe(0);
  });

  it('unmaps when the last buffer is collected', async () => {
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    const fd = native.memfdCreate('ring-unmap', 4096);
    (() => native.mmapShared(fd, 4096, 0, true))();
    native.close(fd);
    expect(mapped('ring-unmap')).toBe(true);
    for (let i = 0; i < 100 && mapped('ring-unmap'); i++) {
      gc();
      await new Promise((done) => setTimeout(done, 10));
    }
    expect(mapped('ring-unmap')).toBe(false);
  });

  it('rejects bad arguments', () => {
    const fd = native.memfdCreate('ring-bad-args', 8192);
    expect(thrown(() => native.mmapShared(fd, 0, 0, true))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.mmapShared(fd, 4096, -4096, true))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.mmapShared(fd, 4096, 0, 1 as never))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.mmapShared(fd, 4096, 100, true))).toMatchObject({ code: 'EINVAL', syscall: 'mmap' });
    expect(thrown(() => native.memfdCreate('x', -1))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.memfdCreate(5 as never, 1))).toBeInstanceOf(TypeError);
    native.close(fd);
    expect(thrown(() => native.mmapShared(fd, 4096, 0, true))).toMatchObject({ code: 'EBADF' });
  });
});
