// A pool task of the threads engine (runs in a piscina thread, where blocking is allowed): one
// batch of records through native blockIo, then its completions into the ring the polling
// worker reads (thread-ring-layout.ts) and one write of its completion eventfd.
import { workerData } from 'piscina';
import { native } from '../../native.js';
import { publishCompletions, type BlockIoTask, type TaskInit } from './thread-ring-layout.js';

const init = workerData as TaskInit;
const control = new Int32Array(init.control);
const cq = new Int32Array(init.cq);
/** Reused across tasks; grows to the largest batch. */
let results = new Int32Array(64);

export default function blockIoTask(task: BlockIoTask): number {
  if (results.length < task.count) results = new Int32Array(Math.max(task.count, 2 * results.length));
  native.blockIo(task.regions, task.sqes, task.iovecs, task.count, results);
  publishCompletions(control, cq, init.cqEntries, task.sqes, results, task.count, init.completionFd, native.eventfdWrite);
  return task.count;
}
