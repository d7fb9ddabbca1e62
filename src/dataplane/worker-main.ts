// Thread entry of a data-plane worker (started by pool.ts): pin the thread, build the worker
// from workerData, and run its loop until a shutdown command. The loop is DataPlaneWorker.
import { parentPort, workerData, type MessagePort } from 'node:worker_threads';
import { native } from '../native.js';
import type { WorkerInit, WorkerMessage } from './commands.js';
import { DataPlaneWorker } from './worker.js';

const init = workerData as WorkerInit;
const port = parentPort as MessagePort;

try {
  if (init.cpu >= 0) native.setAffinity([init.cpu]);
  const worker = await DataPlaneWorker.create(init, port);
  worker.run();
} catch (error) {
  const message: WorkerMessage = {
    kind: 'log',
    level: 'error',
    msg: 'worker failed',
    fields: { worker: init.worker, error: error instanceof Error ? error.message : String(error) },
  };
  port.postMessage(message);
  throw error;
} finally {
  port.close();
}
