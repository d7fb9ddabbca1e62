// The threads engine's dispatcher: a worker thread whose event loop runs free (unlike the
// polling worker that started it), so it can own a piscina pool. It runs one lane task per pool
// thread (thread-task.ts), which the polling worker then feeds directly through shared memory;
// when the ring closes the lanes return, and the dispatcher ends the pool and exits (closing
// the completion eventfd if the ring could not: see ThreadPoolRing.close). A lane task that fails marks the pool FAILED, so the poller
// stops waiting for completions that cannot come.
import { parentPort, workerData } from 'node:worker_threads';
import { Piscina } from 'piscina';
import { native } from '../../native.js';
import { Control, PoolState, type DispatcherInit, type LaneTask, type RingShared } from './thread-ring-layout.js';

const init = workerData as DispatcherInit;
const control = new Int32Array(init.control);
const shared: RingShared = {
  control: init.control,
  lanes: init.lanes,
  cq: init.cq,
  cqEntries: init.cqEntries,
  completionFd: init.completionFd,
};
const pool = new Piscina<LaneTask, number>({
  filename: new URL('./thread-task.js', import.meta.url).href,
  minThreads: init.threads,
  maxThreads: init.threads,
  idleTimeout: Number.MAX_SAFE_INTEGER,
  concurrentTasksPerWorker: 1,
  workerData: shared,
});

function failed(): void {
  Atomics.store(control, Control.STATE, PoolState.FAILED);
  Atomics.notify(control, Control.DONE);
}

async function main(): Promise<void> {
  const lanes = init.regionPorts.map((regionPort, lane) =>
    pool.run({ lane, regionPort }, { transferList: [regionPort] }).catch(failed),
  );
  parentPort!.postMessage('ready');
  await Promise.all(lanes);
  await pool.destroy();
  if (Atomics.load(control, Control.FD_CLOSED) === 0) native.close(init.completionFd);
}

process.on('uncaughtException', failed);
main().catch(failed);
