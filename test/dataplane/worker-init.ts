// The start of every in-process worker test: a message channel, a mailbox with its eventfd, a
// stats area for one queue and the WorkerInit that ties them together (one queue, the echo
// device's module, busy mode, 8 segments per chain). Tests pass what they vary. Then the
// command round trip the control thread makes (post, take the reply, run = both while stepping).
import { MessageChannel, receiveMessageOnPort, type MessagePort } from 'node:worker_threads';
import { Mailbox, type WorkerCommand, type WorkerInit, type WorkerMessage } from '../../dist/dataplane/commands.js';
import type { DataPlaneWorker } from '../../dist/dataplane/worker.js';
import { createStatsBuffer } from '../../dist/dataplane/stats.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { native } from '../../dist/native.js';

export interface InProcessWorkerInit {
  init: WorkerInit;
  /** The test's end of the command channel, and the worker's. */
  control: MessagePort;
  workerPort: MessagePort;
  mailbox: Int32Array;
  /** The mailbox eventfd: the test closes it (after closing the worker). */
  mailboxFd: number;
  stats: SharedArrayBuffer;
}

export function inProcessWorkerInit(overrides: Partial<WorkerInit> = {}): InProcessWorkerInit {
  const { port1: control, port2: workerPort } = new MessageChannel();
  const mailboxBuffer = new SharedArrayBuffer(Mailbox.SLOTS * 4);
  const mailboxFd = native.eventfdCreate(0);
  const stats = createStatsBuffer(1);
  const init: WorkerInit = {
    worker: 0,
    cpu: -1,
    mailbox: mailboxBuffer,
    mailboxFd,
    stats,
    mode: 'busy',
    idleBudgetUs: 0,
    handlerModule: EchoDevice.handler().module,
    handlerOptions: {},
    queueCount: 1,
    maxSegments: 8,
    ...overrides,
  };
  return { init, control, workerPort, mailbox: new Int32Array(mailboxBuffer), mailboxFd, stats };
}

type DistributiveOmit<T, K extends PropertyKey> = T extends unknown ? Omit<T, K> : never;
/** A worker command without its id (post() numbers it). */
export type Command = DistributiveOmit<WorkerCommand, 'id'>;

/** What the command helpers need of a test's rig: the worker, its channel and mailbox, the replies. */
export interface CommandChannel {
  worker: DataPlaneWorker;
  control: MessagePort;
  mailbox: Int32Array;
  mailboxFd: number;
  nextId: number;
  messages: WorkerMessage[];
}

/** Posts a command the way pool.ts does (port, sequence number, eventfd); returns its id. */
export function post(rig: CommandChannel, command: Command): number {
  const id = rig.nextId++;
  rig.control.postMessage({ ...command, id });
  Atomics.add(rig.mailbox, Mailbox.SEQ, 1);
  native.eventfdWrite(rig.mailboxFd, 1);
  return id;
}

/** Moves what the worker sent into rig.messages. */
export function drain(rig: CommandChannel): void {
  for (;;) {
    const received = receiveMessageOnPort(rig.control);
    if (!received) return;
    rig.messages.push(received.message as WorkerMessage);
  }
}

export function takeReply(rig: CommandChannel, id: number): Extract<WorkerMessage, { kind: 'reply' }> | undefined {
  drain(rig);
  const at = rig.messages.findIndex((m) => m.kind === 'reply' && m.id === id);
  return at < 0 ? undefined : (rig.messages.splice(at, 1)[0] as Extract<WorkerMessage, { kind: 'reply' }>);
}

/** Sends a command and steps the worker until its reply (at most maxSteps); throws if refused. */
export function run(rig: CommandChannel, command: Command, maxSteps = 10_000): number | undefined {
  const id = post(rig, command);
  for (let step = 0; step < maxSteps; step++) {
    rig.worker.step();
    const reply = takeReply(rig, id);
    if (reply === undefined) continue;
    if (!reply.ok) throw new Error(reply.error);
    return reply.value;
  }
  throw new Error(`no reply to ${command.op} in ${maxSteps} steps`);
}

/** Closes a test's worker, both ends of its channel, its mailbox eventfd and the other fds given. */
export function closeWorkerRig(
  rig: { worker: DataPlaneWorker; control: MessagePort; workerPort: MessagePort; mailboxFd: number },
  ...fds: number[]
): void {
  rig.worker.close();
  rig.control.close();
  rig.workerPort.close();
  for (const fd of [rig.mailboxFd, ...fds]) native.close(fd);
}
