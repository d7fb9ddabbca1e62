// Mutation fuzzing of every codec decoder: valid messages of every kind, with bits flipped,
// bytes overwritten, fields set to edge values, payloads truncated or extended, fds added or
// dropped. A decoder may accept or refuse, but it must refuse with ProtocolError and nothing else
// (no RangeError from a read past the end, no TypeError), must not modify the fds array it is
// given (it is frozen here, so a write would throw), and
// whatever it accepts must re-encode to a message that decodes to the same value.
// Deterministic: a seeded PRNG, so a failure names a case that reproduces.
import { describe, expect, it } from 'vitest';
import {
  HEADER_SIZE,
  ProtocolError,
  decodeBackendRequest,
  decodeFrontendReply,
  decodeHeader,
  decodeReply,
  decodeRequest,
  encodeBackendRequest,
  encodeFrontendReply,
  encodeReply,
  encodeRequest,
  type BackendReply,
  type BackendRequest,
  type EncodedMessage,
  type FrontendReply,
  type FrontendRequest,
  type MessageHeader,
} from '../../dist/control/codec/index.js';
import { BackendRequestId, Request } from '../../dist/control/protocol.js';

const CASES = 20_000;
const SEED = 0x5eed_cafe;

/** mulberry32: small, fast, good enough to spread mutations. */
function prng(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const fd = (n: number) => 100 + n;
const GiB = 1n << 30n;
const uuid = Uint8Array.from({ length: 16 }, (_, i) => 255 - i);
const region = (guestPhysAddr: bigint, memorySize: bigint, userspaceAddr: bigint, mmapOffset = 0n) => ({
  guestPhysAddr,
  memorySize,
  userspaceAddr,
  mmapOffset,
});

const requests: FrontendRequest[] = [
  { type: 'GET_FEATURES' },
  { type: 'SET_FEATURES', features: 0x1_7000_0000n },
  { type: 'SET_OWNER' },
  { type: 'RESET_OWNER' },
  {
    type: 'SET_MEM_TABLE',
    regions: [
      { ...region(0n, 2n * GiB, 0x7f00_0000_0000n), fd: fd(0) },
      { ...region(4n * GiB, GiB, 0x7f10_0000_0000n, 2n * GiB), fd: fd(1) },
    ],
  },
  { type: 'SET_MEM_TABLE', regions: [] },
  { type: 'SET_LOG_BASE', mmapSize: 0x1000n, mmapOffset: 0n, fd: fd(0) },
  { type: 'SET_LOG_FD', fd: fd(0) },
  { type: 'SET_VRING_NUM', index: 0, num: 256 },
  {
    type: 'SET_VRING_ADDR',
    index: 1,
    flags: 1,
    descUserAddr: 0x1000n,
    usedUserAddr: 0x3000n,
    availUserAddr: 0x2000n,
    logGuestAddr: 0x5000n,
  },
  { type: 'SET_VRING_BASE', index: 0, num: 17 },
  { type: 'GET_VRING_BASE', index: 0 },
  { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: fd(0) },
  { type: 'SET_VRING_CALL', index: 1, noFd: true, fd: -1 },
  { type: 'SET_VRING_ERR', index: 2, noFd: false, fd: fd(0) },
  { type: 'GET_PROTOCOL_FEATURES' },
  { type: 'SET_PROTOCOL_FEATURES', features: 0xa0bn },
  { type: 'GET_QUEUE_NUM' },
  { type: 'SET_VRING_ENABLE', index: 0, num: 1 },
  { type: 'SEND_RARP', mac: Uint8Array.of(2, 0, 0, 0, 0, 1) },
  { type: 'NET_SET_MTU', mtu: 1500n },
  { type: 'SET_BACKEND_REQ_FD', fd: fd(0) },
  { type: 'IOTLB_MSG', iova: 0x1000n, size: 0x1000n, userAddr: 0x7f00_0000_0000n, perm: 3, iotlbType: 2 },
  { type: 'SET_VRING_ENDIAN', index: 0, num: 0 },
  { type: 'GET_CONFIG', offset: 0, size: 16, flags: 0 },
  { type: 'SET_CONFIG', offset: 8, size: 4, flags: 1, payload: Uint8Array.of(1, 2, 3, 4) },
  { type: 'CREATE_CRYPTO_SESSION', payload: new Uint8Array(40) },
  { type: 'CLOSE_CRYPTO_SESSION', sessionId: 3n },
  { type: 'POSTCOPY_ADVISE' },
  { type: 'POSTCOPY_LISTEN' },
  { type: 'POSTCOPY_END' },
  { type: 'GET_INFLIGHT_FD', numQueues: 1, queueSize: 256 },
  { type: 'SET_INFLIGHT_FD', mmapSize: 0x2000n, mmapOffset: 0n, numQueues: 1, queueSize: 256, fd: fd(0) },
  { type: 'GPU_SET_SOCKET', fd: fd(0) },
  { type: 'RESET_DEVICE' },
  { type: 'VRING_KICK', index: 0 },
  { type: 'GET_MAX_MEM_SLOTS' },
  { type: 'ADD_MEM_REG', region: region(8n * GiB, GiB, 0x7f20_0000_0000n), fd: fd(0) },
  { type: 'REM_MEM_REG', region: region(8n * GiB, GiB, 0x7f20_0000_0000n), fd: -1 },
  { type: 'SET_STATUS', status: 7n },
  { type: 'GET_STATUS' },
  { type: 'GET_SHARED_OBJECT', uuid },
  { type: 'SET_DEVICE_STATE_FD', direction: 0, phase: 0, fd: fd(0) },
  { type: 'CHECK_DEVICE_STATE' },
];

const replies: [number, BackendReply][] = [
  [Request.GET_FEATURES, { type: 'u64', value: 0x1_4000_0000n }],
  [Request.SET_VRING_NUM, { type: 'u64', value: 0n }],
  [Request.SET_LOG_BASE, { type: 'u64', value: 0n }],
  [Request.GET_VRING_BASE, { type: 'vring-state', index: 0, num: 9 }],
  [Request.GET_CONFIG, { type: 'config', offset: 0, size: 8, flags: 0, payload: new Uint8Array(8).fill(3) }],
  [Request.GET_CONFIG, { type: 'config-error' }],
  [Request.GET_INFLIGHT_FD, { type: 'inflight', mmapSize: 0x1000n, mmapOffset: 0n, numQueues: 1, queueSize: 64, fd: fd(0) }],
  [Request.SET_MEM_TABLE, { type: 'memory-table', regions: [region(0n, GiB, 0x1_0000_0000n)] }],
  [Request.ADD_MEM_REG, { type: 'memory-region', region: region(0n, GiB, 0x1_0000_0000n) }],
  [Request.POSTCOPY_ADVISE, { type: 'userfault-fd', fd: fd(0) }],
  [Request.CREATE_CRYPTO_SESSION, { type: 'crypto-session', payload: new Uint8Array(24).fill(9) }],
  [Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: fd(0) }],
  [Request.GET_SHARED_OBJECT, { type: 'shared-object', fd: fd(0) }],
];

const backendRequests: BackendRequest[] = [
  { type: 'IOTLB_MSG', iova: 0x1000n, size: 0n, userAddr: 0n, perm: 1, iotlbType: 1 },
  { type: 'CONFIG_CHANGE_MSG' },
  { type: 'VRING_HOST_NOTIFIER_MSG', index: 1, noFd: false, size: 4096n, offset: 0n, fd: fd(0) },
  { type: 'VRING_CALL', index: 0 },
  { type: 'VRING_ERR', index: 1 },
  { type: 'SHARED_OBJECT_ADD', uuid },
  { type: 'SHARED_OBJECT_REMOVE', uuid },
  { type: 'SHARED_OBJECT_LOOKUP', uuid },
];

const frontendReplies: [number, FrontendReply][] = [
  [BackendRequestId.CONFIG_CHANGE_MSG, { type: 'u64', value: 0n }],
  [BackendRequestId.SHARED_OBJECT_LOOKUP, { type: 'shared-object', value: 0n, fd: fd(0) }],
];

/** A decoder under test, plus the encoder that must reproduce whatever it accepts. */
interface Target {
  kind: string;
  message: EncodedMessage;
  decode(header: MessageHeader, payload: Uint8Array, fds: readonly number[]): unknown;
  reencode(value: unknown, header: MessageHeader): EncodedMessage;
}

const corpus: Target[] = [
  ...requests.map((request, i): Target => ({
    kind: `request ${request.type}`,
    message: encodeRequest(request, i % 2 === 0),
    decode: (h, p, f) => decodeRequest(h, p, f),
    reencode: (value, header) => encodeRequest(value as FrontendRequest, (header.flags & 8) !== 0),
  })),
  ...replies.map(([id, reply]): Target => ({
    kind: `reply ${id} ${reply.type}`,
    message: encodeReply(id, reply),
    decode: (h, p, f) => decodeReply(h, p, id, f),
    reencode: (value) => encodeReply(id, value as BackendReply),
  })),
  ...backendRequests.map((request): Target => ({
    kind: `backend request ${request.type}`,
    message: encodeBackendRequest(request, true),
    decode: (h, p, f) => decodeBackendRequest(h, p, f),
    reencode: (value, header) => encodeBackendRequest(value as BackendRequest, (header.flags & 8) !== 0),
  })),
  ...frontendReplies.map(([id, reply]): Target => ({
    kind: `frontend reply ${id} ${reply.type}`,
    message: encodeFrontendReply(id, reply),
    decode: (h, p, f) => decodeFrontendReply(h, p, id, f),
    reencode: (value) => encodeFrontendReply(id, value as FrontendReply),
  })),
];

const INTERESTING_U32 = [
  0, 1, 2, 7, 8, 9, 12, 16, 24, 32, 40, 0xff, 0x100, 0x101, 0xffff, 0x1_0000, 0x7fff_ffff, 0x8000_0000, 0xffff_ffff,
];

function mutate(random: () => number, bytes: Uint8Array, fds: number[]): { bytes: Uint8Array; fds: number[] } {
  let out = bytes.slice();
  const outFds = [...fds];
  const pick = (n: number) => Math.floor(random() * n);
  const rounds = 1 + pick(3);
  for (let round = 0; round < rounds; round++) {
    const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
    switch (pick(8)) {
      case 0: // flip one bit anywhere, header included
        if (out.length > 0) out[pick(out.length)] ^= 1 << pick(8);
        break;
      case 1: // overwrite one byte
        if (out.length > 0) out[pick(out.length)] = pick(256);
        break;
      case 2: // a payload u32 field set to an edge value
        if (out.length >= HEADER_SIZE + 4)
          view.setUint32(
            HEADER_SIZE + 4 * pick((out.length - HEADER_SIZE) >> 2),
            INTERESTING_U32[pick(INTERESTING_U32.length)],
            true,
          );
        break;
      case 3: // a payload u64 field set to all ones or a high bit
        if (out.length >= HEADER_SIZE + 8)
          view.setBigUint64(
            HEADER_SIZE + 8 * pick((out.length - HEADER_SIZE) >> 3),
            pick(2) ? 0xffff_ffff_ffff_ffffn : 1n << BigInt(pick(64)),
            true,
          );
        break;
      case 4: // truncate (possibly into the header)
        out = out.slice(0, pick(out.length + 1));
        break;
      case 5: {
        // extend with random bytes
        const longer = new Uint8Array(out.length + 1 + pick(24));
        longer.set(out);
        for (let i = out.length; i < longer.length; i++) longer[i] = pick(256);
        out = longer;
        break;
      }
      case 6: // another request id, flags value
        if (out.length >= 8)
          view.setUint32(pick(2) * 4, pick(2) ? pick(50) : INTERESTING_U32[pick(INTERESTING_U32.length)], true);
        break;
      case 7: // add or drop an fd
        if (pick(2) && outFds.length > 0) outFds.splice(pick(outFds.length), 1);
        else outFds.push(fd(20 + pick(10)));
        break;
    }
  }
  // Most of the time keep the header's size field honest, so the payload decoders are reached
  // instead of every case stopping at the length check.
  if (out.length >= HEADER_SIZE && random() < 0.7) new DataView(out.buffer).setUint32(8, out.length - HEADER_SIZE, true);
  return { bytes: out, fds: outFds };
}

/** The payload at an arbitrary offset of a larger buffer, as a transport's receive buffer may hold it. */
function placed(random: () => number, payload: Uint8Array): Uint8Array {
  if (random() < 0.5) return payload;
  const shift = 1 + Math.floor(random() * 7);
  const buffer = new Uint8Array(payload.length + shift + 3).fill(0xa5);
  buffer.set(payload, shift);
  return buffer.subarray(shift, shift + payload.length);
}

describe('codec under mutation', () => {
  it(`${CASES} mutated messages: a value or a ProtocolError, never anything else`, () => {
    const random = prng(SEED);
    const outcomes = new Map<string, { accepted: number; refused: number }>();
    const failures: string[] = [];
    for (let n = 0; n < CASES && failures.length < 5; n++) {
      const target = corpus[n % corpus.length];
      const { bytes, fds } = mutate(random, target.message.bytes, target.message.fds);
      const frozenFds = Object.freeze([...fds]);
      const tally = outcomes.get(target.kind) ?? { accepted: 0, refused: 0 };
      outcomes.set(target.kind, tally);
      const where = `case ${n} (${target.kind}): bytes ${Buffer.from(bytes).toString('hex')} fds [${fds.join(',')}]`;
      let header: MessageHeader;
      let value: unknown;
      try {
        header = decodeHeader(bytes);
        value = target.decode(header, placed(random, bytes.subarray(HEADER_SIZE, HEADER_SIZE + header.size)), frozenFds);
      } catch (error) {
        if (error instanceof ProtocolError) tally.refused++;
        else failures.push(`${where}: threw ${String(error)}`);
        continue;
      }
      tally.accepted++;
      // Accepted means well-formed: the canonical encoding decodes to the same value.
      try {
        const again = target.reencode(value, header);
        const againHeader = decodeHeader(again.bytes);
        expect(target.decode(againHeader, again.bytes.subarray(HEADER_SIZE), again.fds)).toEqual(value);
      } catch (error) {
        failures.push(`${where}: accepted ${String(error)}`);
      }
    }
    expect(failures).toEqual([]);
    // The mutations must reach both outcomes for every decoder, or this test proves little.
    for (const [kind, tally] of outcomes) {
      expect(tally.refused, `${kind} never refused`).toBeGreaterThan(0);
      expect(tally.accepted, `${kind} never accepted`).toBeGreaterThan(0);
    }
    expect(outcomes.size).toBe(new Set(corpus.map((t) => t.kind)).size);
  });
});
