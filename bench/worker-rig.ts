// An in-process DataPlaneWorker for micro-benchmarks (busy mode, unpinned, stepped by the caller):
// the WorkerInit, the command round trip (post, bump the mailbox, step until the reply) and a
// split-ring start command. Benches compile against ../dist and cannot import test/ (whose
// worker-init.ts does the same for the tests).
import { MessageChannel, receiveMessageOnPort } from 'node:worker_threads';
import { DataPlaneWorker } from '../dist/dataplane/worker.js';
import { Mailbox, type QueueStart, type WorkerCommand, type WorkerInit } from '../dist/dataplane/commands.js';
import type { CreateQueueHandler } from '../dist/dataplane/device-api.js';
import { createStatsBuffer } from '../dist/dataplane/stats.js';
import { native } from '../dist/native.js';

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
export type BenchCommand = DistributiveOmit<WorkerCommand, 'id'>;

export async function inProcessWorker(options: {
  handlerOptions: unknown;
  createHandler: CreateQueueHandler;
  queueCount: number;
  maxSegments: number;
}) {
  const { port1: control, port2: workerPort } = new MessageChannel();
  const mailboxBuffer = new SharedArrayBuffer(Mailbox.SLOTS * 4);
  const mailbox = new Int32Array(mailboxBuffer);
  const init: WorkerInit = {
    worker: 0,
    cpu: -1,
    mailbox: mailboxBuffer,
    mailboxFd: native.eventfdCreate(0),
    stats: createStatsBuffer(options.queueCount),
    mode: 'busy',
    idleBudgetUs: 0,
    handlerModule: 'unused',
    handlerOptions: options.handlerOptions,
    queueCount: options.queueCount,
    maxSegments: options.maxSegments,
  };
  const worker = await DataPlaneWorker.create(init, workerPort, { createHandler: options.createHandler });
  let nextId = 1;
  /** Posts `c` and steps the worker until it answers (throws if it does not within 100 steps). */
  const command = (c: BenchCommand): void => {
    const id = nextId++;
    control.postMessage({ ...c, id });
    Atomics.add(mailbox, Mailbox.SEQ, 1);
    for (let i = 0; i < 100; i++) {
      worker.step();
      const received = receiveMessageOnPort(control);
      if (received && (received.message as { kind: string; id?: number }).id === id) return;
    }
    throw new Error(`command ${c.op} not answered`);
  };
  return { worker, init, command };
}

/** A split ring's start command: rings at guest-physical `rings`, mapped at userBase; no fds. */
export function splitQueueStart(
  index: number,
  size: number,
  userBase: number,
  rings: { descAddr: number; availAddr: number; usedAddr: number },
  features: { indirectDesc: boolean; inOrder: boolean },
): QueueStart {
  return {
    index,
    size,
    descUserAddr: userBase + rings.descAddr,
    availUserAddr: userBase + rings.availAddr,
    usedUserAddr: userBase + rings.usedAddr,
    lastAvailIdx: 0,
    kickFd: -1,
    callFd: -1,
    errFd: -1,
    eventIdx: true,
    packed: false,
    ...features,
  };
}
