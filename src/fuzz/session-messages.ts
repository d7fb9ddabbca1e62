// The session fuzzer's material: message templates (a front-end's requests, in the layouts of a
// small guest), protocol scripts made of them, byte-level mutation, and the case format that
// corpus files and reproducers use.
import { HEADER_SIZE, encodeRequest, type FrontendRequest } from '../control/codec/index.js';
import { bit, VHOST_USER_F_PROTOCOL_FEATURES } from '../control/protocol.js';
import { INTERESTING_U32, Random } from './random.js';

/** What kind of fd travels with a message; opened fresh for every case. */
export type FdKind = 'eventfd' | 'blocking-eventfd' | 'memfd' | 'sealed-memfd' | 'fifo' | 'devnull' | 'socket';
export const FD_KINDS: readonly FdKind[] = ['eventfd', 'blocking-eventfd', 'memfd', 'sealed-memfd', 'fifo', 'devnull', 'socket'];

export interface FuzzMessage {
  bytes: Uint8Array;
  fds: FdKind[];
}

export interface SessionCase {
  messages: FuzzMessage[];
  requireSealedMemory: boolean;
}

/** Guest memory of the templates: two 64 KiB regions, each its own memfd. */
export const REGION_BYTES = 0x1_0000;
const UADDR = 0x7f00_0000_0000n;
const REGION_B_GPA = 0x10_0000n;
const REGION_B_UADDR = 0x7f00_0010_0000n;
const RING_SIZE = 64;
export const QUEUES = 2;

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

// ---- templates -----------------------------------------------------------------------------------

export function buildTemplates(
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

export function copyMessage(m: FuzzMessage): FuzzMessage {
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
