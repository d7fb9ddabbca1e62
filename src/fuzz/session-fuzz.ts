// In-process session fuzzing: mutated sequences of front-end messages, framed the way a
// VhostUserConnection frames a byte stream, fed to a real VhostUserSession (real codec, handler
// table, memory mapping, a real virtio-blk device) through a stand-in transport, with a data
// plane that checks what the session hands it. No socket, so it runs at millions of messages
// per minute.
//
// A finding is anything a hostile front-end must not be able to cause:
// - a request failing with anything but a refusal (the session logs "request handler failed"
//   and would drop the front-end as a broken back-end), or any error-level log line;
// - a reply that does not decode, a second reply to one request, a reply to a request that
//   expects none, no reply to one that always replies while the connection stays up;
// - the data plane asked something it cannot do safely: a memory table GuestMemory refuses, a
//   ring that cannot be built in the mapped memory, a queue started twice or stopped while not
//   running, a kick/call/err fd that is closed or not an eventfd;
// - an fd handed to the session still open once the session has closed (a leak);
// - a case that never finishes (a hang; the runner's watchdog reports it).
import { execFileSync } from 'node:child_process';
import { mkdtempSync, openSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataPlane } from '../control/backend.js';
import { MAX_FDS, decodeHeader, decodeReply, HEADER_SIZE, requestSpecs, type MessageHeader } from '../control/codec/index.js';
import { HeaderFlag } from '../control/protocol.js';
import { VhostUserSession } from '../control/session.js';
import { BlkDevice } from '../devices/blk/device.js';
import type { Logger } from '../log.js';
import { FileSeal, native } from '../native.js';
import { Random } from './random.js';
import {
  FD_KINDS,
  QUEUES,
  REGION_BYTES,
  buildTemplates,
  copyMessage,
  mutateMessage,
  type FdKind,
  type FuzzMessage,
  type SessionCase,
} from './session-messages.js';
import {
  CheckingDataPlane,
  FakeTransport,
  describeFd,
  isOpen,
  quietLogger,
  recordingLogger,
  safeClose,
} from './session-stand-ins.js';

export {
  deserializeCase,
  serializeCase,
  type FdKind,
  type FuzzMessage,
  type SerializedCase,
  type SessionCase,
} from './session-messages.js';
export { CheckingDataPlane } from './session-stand-ins.js';
export { FD_KINDS } from './session-messages.js';

export interface CaseResult {
  /** Messages the session was handed (framed from the stream). */
  messages: number;
  /** What went wrong, if anything. */
  finding?: string;
  /** What the case exercised: request names with their outcome (for the corpus's novelty test). */
  signature: string[];
}

// ---- the target ----------------------------------------------------------------------------------

export class SessionFuzzer {
  readonly device: BlkDevice;
  private readonly dir: string;
  private readonly fifoPath: string;
  /** Every request a case can contain, well formed (the property test draws from these). */
  readonly templates: readonly FuzzMessage[];
  private readonly blocks: ((random: Random) => FuzzMessage[])[];
  /** Cases to mutate besides freshly generated ones (the corpus). */
  readonly bases: SessionCase[] = [];

  constructor() {
    this.device = new BlkDevice({
      capacityBytes: 64 << 20,
      numQueues: QUEUES,
      maxQueueSize: 1024,
      readOnly: false,
      supportsDiscard: true,
      supportsFlush: true,
    });
    this.dir = mkdtempSync(join(tmpdir(), 'vut-fuzz-'));
    // A FIFO opened read-write is a blocking pipe with both ends in one fd: the hostile kick or
    // call fd that would block a write once 64 KiB are unread.
    this.fifoPath = join(this.dir, 'pipe');
    execFileSync('mkfifo', [this.fifoPath]);
    const probe = this.newSession({ requireSealedMemory: false, messages: [] }, quietLogger(), new CheckingDataPlane([]));
    const features = probe.session.offeredFeatures;
    const protocolFeatures = probe.session.offeredProtocolFeatures;
    void probe.session.close();
    const t = buildTemplates(features, protocolFeatures);
    this.templates = t.all;
    this.blocks = t.blocks;
  }

  dispose(): void {
    rmSync(this.dir, { recursive: true, force: true });
  }

  /** A new case: a script of protocol blocks, then up to a few mutation rounds. */
  generate(random: Random): SessionCase {
    let messages: FuzzMessage[];
    if (this.bases.length > 0 && random.chance(0.3)) {
      messages = this.bases[random.int(this.bases.length)].messages.map(copyMessage);
    } else {
      messages = [];
      if (random.chance(0.85)) messages.push(...this.blocks[0](random));
      const blocks = 1 + random.int(10);
      for (let i = 0; i < blocks; i++) messages.push(...this.blocks[1 + random.int(this.blocks.length - 1)](random));
    }
    const rounds = random.chance(0.15) ? 0 : 1 + random.int(4);
    for (let round = 0; round < rounds; round++) this.mutateSequence(random, messages);
    return { messages, requireSealedMemory: random.chance(0.2) };
  }

  private mutateSequence(random: Random, messages: FuzzMessage[]): void {
    const at = random.int(messages.length + 1);
    switch (random.int(8)) {
      case 0:
      case 1:
      case 2:
        if (messages.length > 0) messages[at % messages.length] = mutateMessage(random, messages[at % messages.length]);
        break;
      case 3: // drop one
        if (messages.length > 0) messages.splice(at % messages.length, 1);
        break;
      case 4: // repeat one
        if (messages.length > 0) messages.splice(at, 0, copyMessage(messages[at % messages.length]));
        break;
      case 5: // insert any template (out of order, unsupported, ...)
        messages.splice(at, 0, copyMessage(random.pick(this.templates)));
        break;
      case 6: {
        // swap two
        if (messages.length > 1) {
          const other = random.int(messages.length);
          const i = at % messages.length;
          [messages[i], messages[other]] = [messages[other], messages[i]];
        }
        break;
      }
      case 7: // another fd kind for one fd
        if (messages.length > 0) {
          const message = messages[at % messages.length];
          if (message.fds.length > 0) message.fds[random.int(message.fds.length)] = random.pick(FD_KINDS);
        }
        break;
    }
  }

  /** Runs one case to its end; every fd it opened is closed again. */
  async run(c: SessionCase): Promise<CaseResult> {
    const findings: string[] = [];
    const signature: string[] = [];
    const logger = recordingLogger(findings, signature);
    const dataPlane = new CheckingDataPlane(findings);
    const { session, transport } = this.newSession(c, logger, dataPlane);
    // The byte stream and where each message's fds ride (with its first byte, as sendmsg sends them).
    let total = 0;
    for (const m of c.messages) total += m.bytes.length;
    const stream = new Uint8Array(total);
    const fdsAt: { offset: number; fds: number[] }[] = [];
    const ours: number[] = [];
    const handed: number[] = [];
    let offset = 0;
    try {
      for (const m of c.messages) {
        stream.set(m.bytes, offset);
        if (m.fds.length > 0) fdsAt.push({ offset, fds: m.fds.map((kind) => this.openFd(kind, ours)) });
        offset += m.bytes.length;
      }
      let framed = 0;
      let position = 0;
      let nextFds = 0;
      while (!transport.isClosed && position + HEADER_SIZE <= total) {
        let header: MessageHeader;
        try {
          header = decodeHeader(stream, position);
        } catch (error) {
          transport.close(error as Error); // the connection cannot re-synchronise either
          break;
        }
        const end = position + HEADER_SIZE + header.size;
        if (end > total) break; // cut short: the connection would wait, then time out
        const fds: number[] = [];
        while (nextFds < fdsAt.length && fdsAt[nextFds].offset < end) fds.push(...fdsAt[nextFds++].fds);
        if (fds.length > MAX_FDS) {
          transport.close(new Error('too many fds'));
          break;
        }
        for (const fd of fds) handed.push(fd);
        const payload = stream.slice(position + HEADER_SIZE, end);
        position = end;
        framed++;
        const before = transport.replies.length;
        const outcome = transport.events.onMessage(header, payload, fds);
        if (outcome instanceof Promise) await outcome;
        this.checkReplies(header, transport, before, findings);
        signature.push(`${requestSpecs.get(header.request)?.name ?? 'unknown'}:${transport.outcomeSince(before)}`);
      }
      await session.close();
      if (!transport.closedWith) findings.push('the session closed without closing its transport');
      // Every fd the session was handed must be closed by now (none of ours were opened since).
      for (const fd of handed) {
        if (isOpen(fd)) {
          findings.push(`fd ${fd} (${describeFd(fd)}) handed to the session is still open after it closed`);
          safeClose(fd);
        }
      }
      return { messages: framed, finding: findings.length > 0 ? findings.join('; ') : undefined, signature };
    } finally {
      // Fds never handed over (cut-short messages) and the far ends of socket pairs.
      const handedSet = new Set(handed);
      for (const fd of ours) if (!handedSet.has(fd)) safeClose(fd);
      for (const reply of transport.replies) for (const fd of reply.fds) safeClose(fd);
    }
  }

  private checkReplies(header: MessageHeader, transport: FakeTransport, before: number, findings: string[]): void {
    const spec = requestSpecs.get(header.request);
    const name = spec?.name ?? `request ${header.request}`;
    const count = transport.replies.length - before;
    if (count > 1) findings.push(`${name}: ${count} replies to one request`);
    for (let i = before; i < transport.replies.length; i++) {
      const reply = transport.replies[i];
      try {
        const replyHeader = decodeHeader(reply.bytes);
        if (replyHeader.request !== header.request) findings.push(`${name}: reply carries request ${replyHeader.request}`);
        decodeReply(replyHeader, reply.bytes.subarray(HEADER_SIZE), header.request, reply.fds);
      } catch (error) {
        findings.push(`${name}: reply does not decode: ${(error as Error).message}`);
      }
    }
    if (transport.isClosed) return;
    const needReply = (header.flags & HeaderFlag.NEED_REPLY) !== 0;
    if (spec?.replies === 'always' && count === 0) findings.push(`${name}: no reply, yet the connection stays up`);
    if (spec?.replies !== 'always' && !needReply && count > 0) findings.push(`${name}: a reply nobody asked for`);
  }

  private newSession(
    c: SessionCase,
    logger: Logger,
    dataPlane: DataPlane,
  ): { session: VhostUserSession; transport: FakeTransport } {
    let transport: FakeTransport | undefined;
    const session = new VhostUserSession(-1, this.device, dataPlane, {
      logger,
      requireSealedMemory: c.requireSealedMemory,
      transport: (events) => (transport = new FakeTransport(events)),
    });
    return { session, transport: transport! };
  }

  /** Opens an fd of `kind` and records it (and a socket pair's far end) in `ours`. */
  openFd(kind: FdKind, ours: number[]): number {
    let fd: number;
    switch (kind) {
      case 'eventfd':
        fd = native.eventfdCreate(0);
        break;
      case 'blocking-eventfd':
        fd = native.eventfdCreate(0, true);
        break;
      case 'memfd':
      case 'sealed-memfd':
        fd = native.memfdCreate('fuzz', REGION_BYTES);
        if (kind === 'sealed-memfd') native.addFileSeals(fd, FileSeal.SHRINK | FileSeal.GROW);
        break;
      case 'fifo':
        fd = openSync(this.fifoPath, 'r+');
        break;
      case 'devnull':
        fd = openSync('/dev/null', 'r+');
        break;
      case 'socket': {
        const [a, b] = native.socketPair();
        ours.push(b);
        fd = a;
        break;
      }
    }
    ours.push(fd);
    return fd;
  }
}
