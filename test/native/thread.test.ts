// Thread affinity and ids: they apply to the calling thread only.
import { resolve } from 'node:path';
import { isMainThread, Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { thrown } from './preamble.js';

const runWorker = (source: string) =>
  new Promise<{ cpus: number[]; tid: number }>((done, fail) => {
    const worker = new Worker(
      `const { parentPort, workerData } = require('node:worker_threads');
       const native = require(workerData.addon);
       ${source}`,
      { eval: true, workerData: { addon: resolve('build/Release/ring.node') } },
    );
    worker.once('message', done).once('error', fail);
  });

describe('affinity', () => {
  it('round-trips set and get', () => {
    const original = native.getAffinity();
    expect(original.length).toBeGreaterThan(0);
    try {
      native.setAffinity([1]);
      expect(native.getAffinity()).toEqual([1]);
      native.setAffinity([0, 1]);
      expect(native.getAffinity()).toEqual([0, 1]);
    } finally {
      native.setAffinity(original);
    }
  });

  it('pins only the calling thread', async () => {
    const original = native.getAffinity();
    const inWorker = await runWorker(`native.setAffinity([0]);
       parentPort.postMessage({ cpus: native.getAffinity(), tid: native.gettid() });`);
    expect(inWorker.cpus).toEqual([0]);
    expect(native.getAffinity()).toEqual(original);
    expect(inWorker.tid).not.toBe(native.gettid());
    if (isMainThread) expect(native.gettid()).toBe(process.pid);
  });

  it('rejects cpu numbers outside the cpu set', () => {
    expect(thrown(() => native.setAffinity([1024]))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.setAffinity([-1]))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.setAffinity(['0' as never]))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.setAffinity(0 as never))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.setAffinity([]))).toMatchObject({ code: 'EINVAL', syscall: 'sched_setaffinity' });
  });
});
