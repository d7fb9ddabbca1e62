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
import { fstatSync, mkdtempSync, openSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DataPlane, VringConfig } from '../control/backend.js';
import {
  HEADER_SIZE,
  MAX_FDS,
  decodeHeader,
  decodeReply,
  encodeRequest,
  requestSpecs,
  type FrontendRequest,
  type MessageHeader,
} from '../control/codec/index.js';
import type { ConnectionEvents } from '../control/connection.js';
import type { MappedRegion } from '../control/memory-table.js';
import { HeaderFlag, bit, VHOST_USER_F_PROTOCOL_FEATURES } from '../control/protocol.js';
import { VhostUserSession, type SessionTransport } from '../control/session.js';
import { GuestMemory } from '../dataplane/memory.js';
import { SplitVirtqueue } from '../dataplane/virtqueue.js';
import { BlkDevice } from '../devices/blk/device.js';
import type { Logger } from '../log.js';
import { FileSeal, native } from '../native.js';
import { INTERESTING_U32, Random } from './random.js';

/** What kind of fd travels with a message; opened fresh for every case. */
export type FdKind = 'eventfd' | 'blocking-eventfd' | 'memfd' | 'sealed-memfd' | 'fifo' | 'devnull' | 'socket';
const FD_KINDS: readonly FdKind[] = ['eventfd', 'blocking-eventfd', 'memfd', 'sealed-memfd', 'fifo', 'devnull', 'socket'];

export interface FuzzMessage {
  bytes: Uint8Array;
  fds: FdKind[];
}

export interface SessionCase {
  messages: FuzzMessage[];
  requireSealedMemory: boolean;
}

export interface CaseResult {
  /** Messages the session was handed (framed from the stream). */
  messages: number;
  /** What went wrong, if anything. */
  finding?: string;
  /** What the case exercised: request names with their outcome (for the corpus's novelty test). */
  signature: string[];
}

/** Guest memory of the templates: two 64 KiB regions, each its own memfd. */
const REGION_BYTES = 0x1_0000;
const UADDR = 0x7f00_0000_0000n;
const REGION_B_GPA = 0x10_0000n;
const REGION_B_UADDR = 0x7f00_0010_0000n;
const RING_SIZE = 64;
const QUEUES = 2;

// ---- serialisation (corpus files and reproducers) ------------------------------------------------

export interface SerializedCase {
  requireSealedMemory: boolean;
  messages: { hex: string; fds: FdKind[] }[];
}

export function serializeCase(c: SessionCase): SerializedCase {
  return {
    requireSealedMemory: c.requireSealedMemory,
    messages: c.messages.map((m) => ({ hex: Buffer.from(m.bytes).toString('hex'), fds: [...m.fds] })),
  };
}

export function deserializeCase(s: SerializedCase): SessionCase {
  return {
    requireSealedMemory: s.requireSealedMemory === true,
    messages: s.messages.map((m) => ({
      bytes: Uint8Array.from(Buffer.from(m.hex, 'hex')),
      fds: m.fds.filter((kind) => FD_KINDS.includes(kind)),
    })),
  };
}

// ---- the target ----------------------------------------------------------------------------------

export class SessionFuzzer {
  readonly device: BlkDevice;
  private readonly dir: string;
  private readonly fifoPath: string;
  private readonly templates: FuzzMessage[];
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

// ---- templates -----------------------------------------------------------------------------------

function buildTemplates(
  features: bigint,
  protocolFeatures: bigint,
): { all: FuzzMessage[]; blocks: ((random: Random) => FuzzMessage[])[] } {
  const msg = (request: FrontendRequest, fds: FdKind[] = [], needReply = false): FuzzMessage => ({
    bytes: encodeRequest(request, needReply).bytes,
    fds,
  });
  const regionA = { guestPhysAddr: 0n, memorySize: BigInt(REGION_BYTES), userspaceAddr: UADDR, mmapOffset: 0n };
  const regionB = {
    guestPhysAddr: REGION_B_GPA,
    memorySize: BigInt(REGION_BYTES),
    userspaceAddr: REGION_B_UADDR,
    mmapOffset: 0n,
  };
  const ring = (q: number, r: Random): FuzzMessage[] => {
    const base = UADDR + BigInt(q * 0x4000);
    const reply = () => r.chance(0.5);
    return [
      msg({ type: 'SET_VRING_NUM', index: q, num: RING_SIZE }, [], reply()),
      msg(
        {
          type: 'SET_VRING_ADDR',
          index: q,
          flags: 0,
          descUserAddr: base,
          availUserAddr: base + 0x1000n,
          usedUserAddr: base + 0x2000n,
          logGuestAddr: 0n,
        },
        [],
        reply(),
      ),
      msg({ type: 'SET_VRING_BASE', index: q, num: r.chance(0.8) ? 0 : r.pick(INTERESTING_U32) & 0xffff }, [], reply()),
      msg({ type: 'SET_VRING_CALL', index: q, noFd: false, fd: 0 }, ['eventfd'], reply()),
      ...(r.chance(0.3) ? [msg({ type: 'SET_VRING_ERR', index: q, noFd: false, fd: 0 }, ['eventfd'], reply())] : []),
      r.chance(0.85)
        ? msg({ type: 'SET_VRING_KICK', index: q, noFd: false, fd: 0 }, ['eventfd'], reply())
        : msg({ type: 'SET_VRING_KICK', index: q, noFd: true, fd: -1 }, [], reply()),
      msg({ type: 'SET_VRING_ENABLE', index: q, num: 1 }, [], reply()),
    ];
  };
  const acked = features;
  const blocks: ((random: Random) => FuzzMessage[])[] = [
    // 0: the handshake every front-end starts with
    (r) => [
      msg({ type: 'GET_FEATURES' }),
      msg({ type: 'GET_PROTOCOL_FEATURES' }),
      msg({ type: 'SET_PROTOCOL_FEATURES', features: r.chance(0.9) ? protocolFeatures : r64(r.u32()) }, [], r.chance(0.5)),
      msg({ type: 'SET_OWNER' }, [], r.chance(0.5)),
      msg(
        { type: 'SET_FEATURES', features: r.chance(0.8) ? acked : acked & ~bit(VHOST_USER_F_PROTOCOL_FEATURES) },
        [],
        r.chance(0.5),
      ),
      msg({ type: 'GET_QUEUE_NUM' }),
    ],
    (r) => [
      r.chance(0.7)
        ? msg({ type: 'SET_MEM_TABLE', regions: [{ ...regionA, fd: 0 }] }, ['sealed-memfd'], r.chance(0.5))
        : msg(
            {
              type: 'SET_MEM_TABLE',
              regions: [
                { ...regionA, fd: 0 },
                { ...regionB, fd: 1 },
              ],
            },
            ['memfd', 'sealed-memfd'],
            r.chance(0.5),
          ),
    ],
    (r) => ring(r.int(QUEUES), r),
    (r) => ring(r.int(QUEUES + 1), r),
    (r) => [msg({ type: 'GET_VRING_BASE', index: r.int(QUEUES + 1) })],
    (r) => [
      msg({ type: 'GET_CONFIG', offset: r.chance(0.8) ? 0 : r.pick(INTERESTING_U32), size: r.pick([8, 16, 60, 256]), flags: 0 }),
      msg(
        { type: 'SET_CONFIG', offset: r.pick([0, 20, 32, 0xff]), size: 1, flags: r.int(2), payload: Uint8Array.of(r.int(2)) },
        [],
        r.chance(0.5),
      ),
    ],
    (r) => [
      msg({ type: 'SET_STATUS', status: r64(r.pick([0, 1, 3, 7, 15, 0x40, 0x80, 0xff])) }, [], r.chance(0.5)),
      msg({ type: 'GET_STATUS' }),
    ],
    (r) => [
      msg({ type: 'GET_MAX_MEM_SLOTS' }),
      msg({ type: 'ADD_MEM_REG', region: regionB, fd: 0 }, [r.chance(0.5) ? 'memfd' : 'sealed-memfd'], r.chance(0.5)),
      ...(r.chance(0.5)
        ? [msg({ type: 'REM_MEM_REG', region: r.chance(0.5) ? regionB : regionA, fd: -1 }, [], r.chance(0.5))]
        : []),
    ],
    (r) => [msg({ type: 'RESET_DEVICE' }, [], r.chance(0.5))],
    (r) => [msg({ type: 'SET_BACKEND_REQ_FD', fd: 0 }, ['socket'], r.chance(0.5))],
    (r) => [msg({ type: 'SET_VRING_ENABLE', index: r.int(QUEUES), num: r.int(2) }, [], r.chance(0.5))],
  ];
  const all: FuzzMessage[] = [
    msg({ type: 'GET_FEATURES' }),
    msg({ type: 'SET_FEATURES', features: acked }, [], true),
    msg({ type: 'SET_OWNER' }),
    msg({ type: 'RESET_OWNER' }),
    msg({ type: 'SET_MEM_TABLE', regions: [{ ...regionA, fd: 0 }] }, ['memfd'], true),
    msg({ type: 'SET_MEM_TABLE', regions: [] }),
    msg({ type: 'SET_LOG_BASE', mmapSize: 0x1000n, mmapOffset: 0n, fd: 0 }, ['memfd']),
    msg({ type: 'SET_LOG_FD', fd: 0 }, ['eventfd']),
    msg({ type: 'SET_VRING_NUM', index: 0, num: RING_SIZE }),
    msg({ type: 'SET_VRING_BASE', index: 1, num: 17 }),
    msg({ type: 'GET_VRING_BASE', index: 0 }),
    msg({ type: 'SET_VRING_KICK', index: 0, noFd: false, fd: 0 }, ['fifo']),
    msg({ type: 'SET_VRING_CALL', index: 0, noFd: false, fd: 0 }, ['blocking-eventfd'], true),
    msg({ type: 'SET_VRING_CALL', index: 1, noFd: true, fd: -1 }),
    msg({ type: 'SET_VRING_ERR', index: 0, noFd: false, fd: 0 }, ['devnull']),
    msg({ type: 'GET_PROTOCOL_FEATURES' }),
    msg({ type: 'SET_PROTOCOL_FEATURES', features: 0n }, [], true),
    msg({ type: 'GET_QUEUE_NUM' }),
    msg({ type: 'SET_VRING_ENABLE', index: 0, num: 1 }),
    msg({ type: 'SEND_RARP', mac: Uint8Array.of(2, 0, 0, 0, 0, 1) }, [], true),
    msg({ type: 'NET_SET_MTU', mtu: 1500n }, [], true),
    msg({ type: 'IOTLB_MSG', iova: 0x1000n, size: 0x1000n, userAddr: UADDR, perm: 3, iotlbType: 2 }),
    msg({ type: 'SET_VRING_ENDIAN', index: 0, num: 0 }, [], true),
    msg({ type: 'CREATE_CRYPTO_SESSION', payload: new Uint8Array(40) }),
    msg({ type: 'CLOSE_CRYPTO_SESSION', sessionId: 3n }),
    msg({ type: 'POSTCOPY_ADVISE' }),
    msg({ type: 'POSTCOPY_LISTEN' }, [], true),
    msg({ type: 'POSTCOPY_END' }),
    msg({ type: 'GET_INFLIGHT_FD', numQueues: QUEUES, queueSize: RING_SIZE }),
    msg(
      { type: 'SET_INFLIGHT_FD', mmapSize: 0x1000n, mmapOffset: 0n, numQueues: QUEUES, queueSize: RING_SIZE, fd: 0 },
      ['memfd'],
      true,
    ),
    msg({ type: 'GPU_SET_SOCKET', fd: 0 }, ['socket'], true),
    msg({ type: 'VRING_KICK', index: 0 }, [], true),
    msg({ type: 'GET_SHARED_OBJECT', uuid: new Uint8Array(16) }),
    msg({ type: 'SET_DEVICE_STATE_FD', direction: 0, phase: 0, fd: 0 }, ['eventfd']),
    msg({ type: 'CHECK_DEVICE_STATE' }),
  ];
  const random = new Random(1);
  for (const block of blocks) all.push(...block(random));
  return { all, blocks };
}

function r64(value: number): bigint {
  return BigInt(value);
}

// ---- byte-level mutation -------------------------------------------------------------------------

function copyMessage(m: FuzzMessage): FuzzMessage {
  return { bytes: m.bytes.slice(), fds: [...m.fds] };
}

/** Bit flips, edge values in payload fields, other request ids and flags, truncation, growth. */
export function mutateMessage(random: Random, m: FuzzMessage): FuzzMessage {
  let out = m.bytes.slice();
  const fds = [...m.fds];
  const rounds = 1 + random.int(3);
  for (let round = 0; round < rounds; round++) {
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    switch (random.int(9)) {
      case 0:
        if (out.length > 0) out[random.int(out.length)] ^= 1 << random.int(8);
        break;
      case 1:
        if (out.length > 0) out[random.int(out.length)] = random.int(256);
        break;
      case 2:
        if (out.length >= HEADER_SIZE + 4)
          view.setUint32(HEADER_SIZE + 4 * random.int((out.length - HEADER_SIZE) >> 2), random.pick(INTERESTING_U32), true);
        break;
      case 3:
        if (out.length >= HEADER_SIZE + 8)
          view.setBigUint64(
            HEADER_SIZE + 8 * random.int((out.length - HEADER_SIZE) >> 3),
            random.chance(0.5) ? 0xffff_ffff_ffff_ffffn : 1n << BigInt(random.int(64)),
            true,
          );
        break;
      case 4:
        out = out.slice(0, random.int(out.length + 1));
        break;
      case 5: {
        const longer = new Uint8Array(out.length + 1 + random.int(24));
        longer.set(out);
        for (let i = out.length; i < longer.length; i++) longer[i] = random.int(256);
        out = longer;
        break;
      }
      case 6: // another request id (mostly a real one)
        if (out.length >= 4) view.setUint32(0, random.chance(0.8) ? random.int(50) : random.pick(INTERESTING_U32), true);
        break;
      case 7: // header flags: NEED_REPLY, REPLY, unknown bits, version
        if (out.length >= 8)
          view.setUint32(4, random.chance(0.7) ? 1 | (random.int(2) << 3) : random.pick(INTERESTING_U32), true);
        break;
      case 8:
        if (fds.length > 0 && random.chance(0.5)) fds.splice(random.int(fds.length), 1);
        else fds.push(random.pick(FD_KINDS));
        break;
    }
  }
  // Mostly keep the header's size honest, so the payload decoders and handlers are reached.
  if (out.length >= HEADER_SIZE && random.chance(0.7)) new DataView(out.buffer).setUint32(8, out.length - HEADER_SIZE, true);
  return { bytes: out, fds };
}

// ---- stand-ins -----------------------------------------------------------------------------------

/** The session's connection, in process: records replies, closes like the real one. */
class FakeTransport implements SessionTransport {
  readonly replies: { bytes: Uint8Array; fds: number[] }[] = [];
  closedWith: { error?: Error } | undefined;

  constructor(readonly events: ConnectionEvents) {}

  get isClosed(): boolean {
    return this.closedWith !== undefined;
  }

  get queuedBytes(): number {
    return 0;
  }

  send(bytes: Uint8Array, fds: readonly number[] = []): boolean {
    if (this.closedWith) return false;
    this.replies.push({ bytes: bytes.slice(), fds: [...fds] });
    return true;
  }

  close(error?: Error): void {
    if (this.closedWith) return;
    this.closedWith = { error };
    this.events.onClose(error);
  }

  /** How the last request ended, for the signature: closed, replied (how often), or silent. */
  outcomeSince(before: number): string {
    if (this.closedWith) return 'closed';
    const replies = this.replies.length - before;
    return replies > 0 ? `r${replies}` : 'quiet';
  }
}

/**
 * A data plane that builds what the workers would build (GuestMemory, SplitVirtqueue) and
 * checks the session's calls: whatever would throw or misbehave in a worker is a finding here.
 */
export class CheckingDataPlane implements DataPlane {
  private memory: GuestMemory | undefined;
  private readonly queues = new Map<number, SplitVirtqueue>();

  constructor(private readonly findings: string[]) {}

  setMemory(regions: readonly MappedRegion[]): Promise<void> {
    try {
      this.memory = new GuestMemory(regions);
    } catch (error) {
      this.findings.push(`data plane: the memory table cannot be built: ${(error as Error).message}`);
      return Promise.resolve();
    }
    for (const queue of this.queues.values()) queue.setMemory(this.memory);
    return Promise.resolve();
  }

  startQueue(config: Readonly<VringConfig>): Promise<void> {
    if (this.queues.has(config.index)) this.findings.push(`data plane: queue ${config.index} started twice`);
    this.checkFds(config.index, [config.kickFd, config.callFd, config.errFd]);
    if (!this.memory) {
      this.findings.push(`data plane: queue ${config.index} started without a memory table`);
      return Promise.resolve();
    }
    try {
      const queue = new SplitVirtqueue({
        memory: this.memory,
        size: config.size,
        descAddr: config.descUserAddr,
        availAddr: config.availUserAddr,
        usedAddr: config.usedUserAddr,
        addressSpace: 'userspace',
        lastAvailIdx: config.lastAvailIdx,
        indirectDesc: true,
        eventIdx: true,
        index: config.index,
      });
      this.queues.set(config.index, queue);
    } catch (error) {
      this.findings.push(`data plane: queue ${config.index} cannot be built: ${(error as Error).message}`);
    }
    return Promise.resolve();
  }

  stopQueue(index: number): Promise<number> {
    const queue = this.queues.get(index);
    if (!queue) {
      this.findings.push(`data plane: queue ${index} stopped while not running`);
      return Promise.resolve(0);
    }
    this.queues.delete(index);
    return Promise.resolve(queue.lastAvailIdx);
  }

  setNotifyFds(index: number, callFd: number, errFd: number): Promise<void> {
    if (!this.queues.has(index)) this.findings.push(`data plane: notify fds for queue ${index}, which is not running`);
    this.checkFds(index, [callFd, errFd]);
    return Promise.resolve();
  }

  reset(): Promise<void> {
    this.queues.clear();
    this.memory = undefined;
    return Promise.resolve();
  }

  private checkFds(index: number, fds: number[]): void {
    for (const fd of fds) {
      if (fd < 0) continue;
      if (!isOpen(fd)) this.findings.push(`data plane: queue ${index} given fd ${fd}, which is closed`);
      else if (!native.eventfdAdopt(fd))
        this.findings.push(`data plane: queue ${index} given fd ${fd}, not an eventfd (${describeFd(fd)})`);
    }
  }
}

function recordingLogger(findings: string[], signature: string[]): Logger {
  const logger: Logger = {
    error: (msg, fields) => findings.push(`logged error "${msg}": ${describeFields(fields)}`),
    warn: (msg, fields) => {
      // The refusal's reason, numbers dropped: which distinct checks a case reached.
      if (msg === 'request refused') signature.push(`${normalize(String(fields?.request))}!${normalize(String(fields?.error))}`);
    },
    info: () => undefined,
    debug: () => undefined,
    child: () => logger,
  };
  return logger;
}

function quietLogger(): Logger {
  const logger: Logger = {
    error: () => undefined,
    warn: () => undefined,
    info: () => undefined,
    debug: () => undefined,
    child: () => logger,
  };
  return logger;
}

function describeFields(fields: Record<string, unknown> | undefined): string {
  if (!fields) return '';
  const error = fields.error;
  const request = typeof fields.request === 'string' ? fields.request : '';
  if (error instanceof Error) return `${request} ${error.name}: ${error.message}\n${error.stack ?? ''}`;
  return JSON.stringify(fields, (_key, value: unknown) => (typeof value === 'bigint' ? value.toString() : value));
}

function normalize(text: string): string {
  return text.replace(/0x[0-9a-f]+|\d+/gi, '#').slice(0, 80);
}

function isOpen(fd: number): boolean {
  try {
    fstatSync(fd);
    return true;
  } catch {
    return false;
  }
}

function safeClose(fd: number): void {
  try {
    native.close(fd);
  } catch {
    // Already closed by its new owner.
  }
}

function describeFd(fd: number): string {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    return '?';
  }
}
