// The vhost-user codec against the spec (QEMU docs/interop/vhost-user.rst): every request
// round-trips, every request has hostile variants that are refused with its name in the error,
// replies and back-end channel messages round-trip, and the tolerances real peers need hold.
import { describe, expect, it } from 'vitest';
import {
  HEADER_SIZE,
  MAX_PAYLOAD_SIZE,
  ProtocolError,
  UnknownRequestError,
  backendRequestSpecs,
  decodeBackendRequest,
  decodeFrontendReply,
  decodeHeader,
  decodePostcopyAck,
  decodeReply,
  decodeRequest,
  encodeBackendRequest,
  encodeFrontendReply,
  encodeMessage,
  encodeReply,
  encodeRequest,
  isPowerOfTwo,
  requestSpecs,
  type BackendReply,
  type BackendRequest,
  type FrontendReply,
  type FrontendRequest,
  type RegionDescription,
  type MessageHeader,
} from '../../dist/control/codec/index.js';
import { BackendRequestId, HeaderFlag, Request } from '../../dist/control/protocol.js';

// The codec never touches fds: it counts them and passes them on, so tests use made-up numbers.
const fd = (n: number) => 100 + n;
const region = (guestPhysAddr: bigint, memorySize: bigint, userspaceAddr: bigint, mmapOffset = 0n): RegionDescription => ({
  guestPhysAddr,
  memorySize,
  userspaceAddr,
  mmapOffset,
});
const uuid = Uint8Array.from({ length: 16 }, (_, i) => i * 7);
const GiB = 1n << 30n;
const LE = true;

/** One valid example of every request (several for some), as a front-end would send it. */
const samples: FrontendRequest[] = [
  { type: 'GET_FEATURES' },
  { type: 'SET_FEATURES', features: (1n << 32n) | (1n << 30n) | (1n << 29n) },
  { type: 'SET_OWNER' },
  { type: 'RESET_OWNER' },
  {
    type: 'SET_MEM_TABLE',
    regions: [
      { ...region(0n, 2n * GiB, 0x7f00_0000_0000n), fd: fd(0) },
      // Adjacent to the first in both spaces: touching is not overlapping.
      { ...region(2n * GiB, GiB, 0x7f00_8000_0000n, 2n * GiB), fd: fd(1) },
      { ...region(4n * GiB, 6n * GiB, 0x7e00_0000_0000n, 4096n), fd: fd(2) },
    ],
  },
  { type: 'SET_MEM_TABLE', regions: [] },
  { type: 'SET_LOG_BASE', mmapSize: 0x2_0000n, mmapOffset: 0n, fd: fd(0) },
  { type: 'SET_LOG_FD', fd: fd(0) },
  { type: 'SET_VRING_NUM', index: 1, num: 256 },
  {
    type: 'SET_VRING_ADDR',
    index: 2,
    flags: 1,
    descUserAddr: 0x7f00_0000_1000n,
    usedUserAddr: 0x7f00_0000_3004n,
    availUserAddr: 0x7f00_0000_2002n,
    logGuestAddr: 0x3000n,
  },
  { type: 'SET_VRING_BASE', index: 0, num: 0xffff },
  { type: 'GET_VRING_BASE', index: 3 },
  { type: 'SET_VRING_KICK', index: 0, noFd: false, fd: fd(0) },
  { type: 'SET_VRING_KICK', index: 255, noFd: true, fd: -1 },
  { type: 'SET_VRING_CALL', index: 1, noFd: false, fd: fd(1) },
  { type: 'SET_VRING_ERR', index: 7, noFd: true, fd: -1 },
  { type: 'GET_PROTOCOL_FEATURES' },
  { type: 'SET_PROTOCOL_FEATURES', features: 0b1011_1000_0000_1011n },
  { type: 'GET_QUEUE_NUM' },
  { type: 'SET_VRING_ENABLE', index: 1, num: 1 },
  { type: 'SET_VRING_ENABLE', index: 1, num: 0 },
  { type: 'SEND_RARP', mac: Uint8Array.of(0x52, 0x54, 0x00, 0x12, 0x34, 0x56) },
  { type: 'NET_SET_MTU', mtu: 9000n },
  { type: 'SET_BACKEND_REQ_FD', fd: fd(0) },
  { type: 'IOTLB_MSG', iova: 0x1000n, size: 0x1000n, userAddr: 0x7f00_0000_0000n, perm: 3, iotlbType: 2 },
  { type: 'IOTLB_MSG', iova: 0n, size: 0n, userAddr: 0n, perm: 0, iotlbType: 3 },
  { type: 'SET_VRING_ENDIAN', index: 0, num: 1 },
  { type: 'GET_CONFIG', offset: 0, size: 60, flags: 0 },
  { type: 'SET_CONFIG', offset: 20, size: 1, flags: 0, payload: Uint8Array.of(1) },
  { type: 'SET_CONFIG', offset: 0, size: 256, flags: 1, payload: Uint8Array.from({ length: 256 }, (_, i) => i) },
  { type: 'CREATE_CRYPTO_SESSION', payload: Uint8Array.from({ length: 600 }, (_, i) => i & 0xff) },
  { type: 'CLOSE_CRYPTO_SESSION', sessionId: 42n },
  { type: 'POSTCOPY_ADVISE' },
  { type: 'POSTCOPY_LISTEN' },
  { type: 'POSTCOPY_END' },
  { type: 'GET_INFLIGHT_FD', numQueues: 4, queueSize: 128 },
  { type: 'SET_INFLIGHT_FD', mmapSize: 0x4000n, mmapOffset: 0n, numQueues: 4, queueSize: 128, fd: fd(0) },
  { type: 'GPU_SET_SOCKET', fd: fd(0) },
  { type: 'RESET_DEVICE' },
  { type: 'VRING_KICK', index: 9 },
  { type: 'GET_MAX_MEM_SLOTS' },
  { type: 'ADD_MEM_REG', region: region(0x1_0000_0000n, GiB, 0x7f40_0000_0000n, 0n), fd: fd(0) },
  { type: 'REM_MEM_REG', region: region(0x1_0000_0000n, GiB, 0x7f40_0000_0000n, 0n), fd: -1 },
  { type: 'SET_STATUS', status: 0x0fn },
  { type: 'GET_STATUS' },
  { type: 'GET_SHARED_OBJECT', uuid },
  { type: 'SET_DEVICE_STATE_FD', direction: 1, phase: 0, fd: fd(0) },
  { type: 'CHECK_DEVICE_STATE' },
];

interface Raw {
  header: MessageHeader;
  payload: Uint8Array;
  fds: number[];
}

function encode(request: FrontendRequest, needReply = false): Raw {
  const { bytes, fds } = encodeRequest(request, needReply);
  const header = decodeHeader(bytes);
  return { header, payload: bytes.subarray(HEADER_SIZE), fds };
}

const decode = (raw: Raw) => decodeRequest(raw.header, raw.payload, raw.fds);

/** A valid request with its payload edited (little-endian offsets into the payload). */
function patched(request: FrontendRequest, edit: (view: DataView) => void, fds?: number[]): Raw {
  const raw = encode(request);
  const payload = raw.payload.slice();
  edit(new DataView(payload.buffer));
  return { ...raw, payload, fds: fds ?? raw.fds };
}

/** A valid request whose payload is replaced, with the header size kept consistent. */
function withPayload(request: FrontendRequest, payload: Uint8Array, fds?: number[]): Raw {
  const raw = encode(request);
  return { header: { ...raw.header, size: payload.length }, payload, fds: fds ?? raw.fds };
}

function sample<T extends FrontendRequest['type']>(type: T): Extract<FrontendRequest, { type: T }> {
  return samples.find((s) => s.type === type) as Extract<FrontendRequest, { type: T }>;
}

function rejection(action: () => unknown): ProtocolError {
  try {
    action();
  } catch (error) {
    expect(error).toBeInstanceOf(ProtocolError);
    return error as ProtocolError;
  }
  throw new Error('expected a ProtocolError, but the message was accepted');
}

function expectRejected(name: string, action: () => unknown, why?: RegExp): void {
  const error = rejection(action);
  expect(error.message).toContain(name);
  if (why) expect(error.message).toMatch(why);
}

describe('header', () => {
  it('reads request, flags and size in native (little-endian) order', () => {
    const bytes = encodeMessage(Request.SET_FEATURES, HeaderFlag.VERSION | HeaderFlag.NEED_REPLY, new Uint8Array(8));
    expect(decodeHeader(bytes)).toEqual({ request: 2, flags: 0x9, size: 8 });
    expect(Array.from(bytes.subarray(0, HEADER_SIZE))).toEqual([2, 0, 0, 0, 9, 0, 0, 0, 8, 0, 0, 0]);
  });

  it('reads at an offset', () => {
    const bytes = new Uint8Array(20);
    bytes.set(encodeMessage(Request.GET_FEATURES, 1), 5);
    expect(decodeHeader(bytes, 5)).toEqual({ request: 1, flags: 1, size: 0 });
  });

  it('rejects versions other than 1', () => {
    for (const version of [0, 2, 3]) {
      expectRejected('GET_FEATURES', () => decodeHeader(encodeMessage(Request.GET_FEATURES, version)), /version/);
    }
  });

  it('rejects flag bits the spec does not define', () => {
    for (const flag of [1 << 4, 1 << 16, 0x8000_0000]) {
      expectRejected('SET_OWNER', () => decodeHeader(encodeMessage(Request.SET_OWNER, 1 | flag)), /flag/);
    }
  });

  it('rejects a payload size above the maximum before the payload is read', () => {
    const bytes = encodeMessage(Request.SET_MEM_TABLE, 1);
    new DataView(bytes.buffer).setUint32(8, MAX_PAYLOAD_SIZE + 1, LE);
    expectRejected('SET_MEM_TABLE', () => decodeHeader(bytes), /exceeds/);
    new DataView(bytes.buffer).setUint32(8, 0xffff_ffff, LE);
    expectRejected('SET_MEM_TABLE', () => decodeHeader(bytes), /exceeds/);
    new DataView(bytes.buffer).setUint32(8, MAX_PAYLOAD_SIZE, LE);
    expect(decodeHeader(bytes).size).toBe(MAX_PAYLOAD_SIZE);
  });

  it('rejects a short buffer', () => {
    expect(() => decodeHeader(new Uint8Array(11))).toThrow(ProtocolError);
    expect(() => decodeHeader(new Uint8Array(12), 1)).toThrow(ProtocolError);
  });

  it('leaves unknown request ids to the request decoder (the message is still framed)', () => {
    expect(decodeHeader(encodeMessage(99, 1)).request).toBe(99);
  });
});

describe('request table', () => {
  it('has one row for every request id 1–43, named as in the spec', () => {
    expect([...requestSpecs.keys()].sort((a, b) => a - b)).toEqual(Array.from({ length: 43 }, (_, i) => i + 1));
    for (const [name, id] of Object.entries(Request)) expect(requestSpecs.get(id)?.name).toBe(name);
  });

  it('marks the requests the spec lists as replying as always-reply', () => {
    // Spec, "Communication": GET_FEATURES, GET_PROTOCOL_FEATURES, GET_VRING_BASE, SET_LOG_BASE
    // (with LOG_SHMFD), GET_INFLIGHT_FD (with INFLIGHT_SHMFD) — plus each entry with a reply payload.
    const always = [...requestSpecs.values()]
      .filter((s) => s.replies === 'always')
      .map((s) => s.name)
      .sort();
    expect(always).toEqual(
      [
        'GET_FEATURES',
        'GET_PROTOCOL_FEATURES',
        'GET_VRING_BASE',
        'SET_LOG_BASE',
        'GET_INFLIGHT_FD',
        'GET_QUEUE_NUM',
        'IOTLB_MSG',
        'GET_CONFIG',
        'CREATE_CRYPTO_SESSION',
        'POSTCOPY_ADVISE',
        'POSTCOPY_END',
        'GET_MAX_MEM_SLOTS',
        'GET_STATUS',
        'GET_SHARED_OBJECT',
        'SET_DEVICE_STATE_FD',
        'CHECK_DEVICE_STATE',
      ].sort(),
    );
  });

  it('never allows more than 8 fds or a payload above the maximum', () => {
    for (const spec of requestSpecs.values()) {
      expect(spec.fds.max).toBeLessThanOrEqual(8);
      expect(spec.size.max).toBeLessThanOrEqual(MAX_PAYLOAD_SIZE);
    }
  });

  it('offers isPowerOfTwo for queue sizes', () => {
    expect([1, 2, 256, 32768].every(isPowerOfTwo)).toBe(true);
    expect([0, 3, 255, 32769, -2, 1.5].some(isPowerOfTwo)).toBe(false);
  });
});

describe('every request round-trips', () => {
  it('has a sample for every request id', () => {
    const covered = new Set<number>(samples.map((s) => Request[s.type]));
    expect([...requestSpecs.keys()].filter((id) => !covered.has(id))).toEqual([]);
  });

  it.each(samples.map((s) => [s.type, s] as const))('%s', (_name, request) => {
    const raw = encode(request);
    const spec = requestSpecs.get(raw.header.request)!;
    expect(spec.name).toBe(request.type);
    expect(raw.header.flags).toBe(HeaderFlag.VERSION);
    expect(raw.header.size).toBeGreaterThanOrEqual(spec.size.min);
    expect(raw.header.size).toBeLessThanOrEqual(spec.size.max);
    expect(decode(raw)).toEqual(request);
  });

  it('sets NEED_REPLY when asked', () => {
    expect(encode({ type: 'SET_FEATURES', features: 1n }, true).header.flags).toBe(HeaderFlag.VERSION | HeaderFlag.NEED_REPLY);
  });

  it('copies byte fields out of the receive buffer and reads payloads at any offset', () => {
    const { bytes, fds } = encodeRequest(sample('SET_CONFIG'), false);
    const shifted = new Uint8Array(bytes.length + 3);
    shifted.set(bytes, 3);
    const payload = shifted.subarray(3 + HEADER_SIZE);
    const decoded = decodeRequest(decodeHeader(shifted, 3), payload, fds);
    payload.fill(0xee);
    expect(decoded).toEqual(sample('SET_CONFIG'));
  });
});

describe('hostile requests are refused with the request name', () => {
  // Generic variants, for every request: the wrong size, one fd too many, the REPLY flag.
  it.each(samples.map((s) => [s.type, s] as const))('%s: wrong size, extra fd, REPLY flag', (name, request) => {
    const raw = encode(request);
    const spec = requestSpecs.get(raw.header.request)!;
    const longer = new Uint8Array(raw.payload.length + 1);
    longer.set(raw.payload);
    if (spec.size.max > raw.payload.length) {
      // Variable layouts: one byte more no longer matches their own count field.
      if (spec.payload !== 'crypto-session')
        expectRejected(name, () => decode({ ...raw, header: { ...raw.header, size: longer.length }, payload: longer }), /bytes/);
    } else {
      expectRejected(
        name,
        () => decode({ ...raw, header: { ...raw.header, size: longer.length }, payload: longer }),
        /payload is/,
      );
    }
    if (raw.payload.length > 0) {
      const shorter = raw.payload.subarray(0, raw.payload.length - 1);
      if (spec.payload !== 'crypto-session')
        expectRejected(name, () => decode({ ...raw, header: { ...raw.header, size: shorter.length }, payload: shorter }));
    }
    const extra = [...raw.fds, ...Array.from({ length: spec.fds.max + 1 - raw.fds.length }, (_, i) => fd(50 + i))];
    expectRejected(name, () => decode({ ...raw, fds: extra }), /fd/);
    expectRejected(
      name,
      () => decode({ ...raw, header: { ...raw.header, flags: HeaderFlag.VERSION | HeaderFlag.REPLY } }),
      /REPLY/,
    );
  });

  it('rejects a payload whose length differs from the header size', () => {
    const raw = encode(sample('SET_FEATURES'));
    expectRejected('SET_FEATURES', () => decode({ ...raw, payload: raw.payload.subarray(0, 7) }), /header size/);
  });

  it('rejects unknown request ids as UnknownRequestError', () => {
    for (const id of [0, 44, 1000, 0xffff_ffff]) {
      const error = rejection(() => decodeRequest({ request: id, flags: 1, size: 0 }, new Uint8Array(0), []));
      expect(error).toBeInstanceOf(UnknownRequestError);
      expect(error.request).toBe(id);
    }
  });

  it('rejects fds on requests that carry none', () => {
    expectRejected('GET_FEATURES', () => decode({ ...encode({ type: 'GET_FEATURES' }), fds: [fd(0)] }), /1 fds/);
  });

  describe('SET_MEM_TABLE', () => {
    const table = (regions: RegionDescription[]): FrontendRequest => ({
      type: 'SET_MEM_TABLE',
      regions: regions.map((r, i) => ({ ...r, fd: fd(i) })),
    });
    it('refuses more than 8 regions', () => {
      const nine = table(Array.from({ length: 8 }, (_, i) => region(BigInt(i) * GiB, GiB, BigInt(i + 16) * GiB)));
      const raw = patched(nine, (v) => v.setUint32(0, 9, LE));
      expectRejected('SET_MEM_TABLE', () => decode(raw), /9 regions/);
    });
    it('refuses a count that does not match the payload size', () => {
      expectRejected(
        'SET_MEM_TABLE',
        () => decode(patched(sample('SET_MEM_TABLE'), (v) => v.setUint32(0, 2, LE))),
        /expected 72 for 2 regions/,
      );
    });
    it('refuses fewer or more fds than regions', () => {
      expectRejected(
        'SET_MEM_TABLE',
        () => decode({ ...encode(sample('SET_MEM_TABLE')), fds: [fd(0), fd(1)] }),
        /2 fds for 3 regions/,
      );
      expectRejected(
        'SET_MEM_TABLE',
        () => decode({ ...encode({ type: 'SET_MEM_TABLE', regions: [] }), fds: [fd(0)] }),
        /1 fds for 0 regions/,
      );
    });
    it('refuses a region of size 0', () => {
      expectRejected('SET_MEM_TABLE', () => decode(encode(table([region(0n, 0n, 0x1000n)]))), /size 0/);
    });
    it('refuses ranges that wrap past 2^64', () => {
      const top = (1n << 64n) - 0x1000n;
      expectRejected('SET_MEM_TABLE', () => decode(encode(table([region(top, 0x2000n, 0n)]))), /guest range/);
      expectRejected('SET_MEM_TABLE', () => decode(encode(table([region(0n, 0x2000n, top)]))), /userspace range/);
      expectRejected('SET_MEM_TABLE', () => decode(encode(table([region(0n, 0x2000n, 0n, top)]))), /mmap offset/);
      // Ending exactly at 2^64 is fine.
      expect(() => decode(encode(table([region(top, 0x1000n, 0n)])))).not.toThrow();
    });
    it('refuses overlapping guest-physical ranges', () => {
      const overlapping = table([region(0n, 2n * GiB, 0x10_0000_0000n), region(GiB, 2n * GiB, 0x20_0000_0000n)]);
      expectRejected('SET_MEM_TABLE', () => decode(encode(overlapping)), /overlap in guest-physical/);
    });
    it('refuses overlapping userspace ranges, in any order', () => {
      const overlapping = table([region(8n * GiB, GiB, 0x10_4000_0000n), region(0n, 2n * GiB, 0x10_0000_0000n)]);
      expectRejected('SET_MEM_TABLE', () => decode(encode(overlapping)), /overlap in userspace/);
    });
    it('ignores the padding word', () => {
      expect(decode(patched(sample('SET_MEM_TABLE'), (v) => v.setUint32(4, 0xdead_beef, LE)))).toEqual(sample('SET_MEM_TABLE'));
    });
  });

  it('SET_LOG_BASE needs its fd, a size, and no wrap-around', () => {
    expectRejected('SET_LOG_BASE', () => decode({ ...encode(sample('SET_LOG_BASE')), fds: [] }), /0 fds/);
    expectRejected('SET_LOG_BASE', () => decode(encode({ ...sample('SET_LOG_BASE'), mmapSize: 0n })), /size 0/);
    expectRejected('SET_LOG_BASE', () => decode(encode({ ...sample('SET_LOG_BASE'), mmapOffset: (1n << 64n) - 1n })), /wraps/);
  });

  it('SET_LOG_FD, SET_BACKEND_REQ_FD, GPU_SET_SOCKET, SET_INFLIGHT_FD, ADD_MEM_REG, SET_DEVICE_STATE_FD need exactly one fd', () => {
    for (const type of [
      'SET_LOG_FD',
      'SET_BACKEND_REQ_FD',
      'GPU_SET_SOCKET',
      'SET_INFLIGHT_FD',
      'ADD_MEM_REG',
      'SET_DEVICE_STATE_FD',
    ] as const) {
      expectRejected(type, () => decode({ ...encode(sample(type)), fds: [] }), /0 fds came with the message, expected 1/);
    }
  });

  describe('SET_VRING_ADDR', () => {
    const addr = sample('SET_VRING_ADDR');
    it('refuses undefined flags', () => {
      expectRejected('SET_VRING_ADDR', () => decode(encode({ ...addr, flags: 2 })), /flags/);
    });
    it('refuses misaligned ring parts (desc 16, used 4, avail 2)', () => {
      expectRejected(
        'SET_VRING_ADDR',
        () => decode(encode({ ...addr, descUserAddr: addr.descUserAddr + 8n })),
        /descriptor table .* 16-byte/,
      );
      expectRejected(
        'SET_VRING_ADDR',
        () => decode(encode({ ...addr, usedUserAddr: addr.usedUserAddr + 2n })),
        /used ring .* 4-byte/,
      );
      expectRejected(
        'SET_VRING_ADDR',
        () => decode(encode({ ...addr, availUserAddr: addr.availUserAddr + 1n })),
        /available ring .* 2-byte/,
      );
    });
    it('accepts the log flag and any log address', () => {
      expect(decode(encode({ ...addr, flags: 0, logGuestAddr: 0x123n }))).toMatchObject({ flags: 0, logGuestAddr: 0x123n });
    });
  });

  describe.each(['SET_VRING_KICK', 'SET_VRING_CALL', 'SET_VRING_ERR'] as const)('%s', (type) => {
    const withFdRequest = { type, index: 3, noFd: false, fd: fd(0) } as FrontendRequest;
    const polling = { type, index: 3, noFd: true, fd: -1 } as FrontendRequest;
    it('refuses an fd together with the invalid-fd flag', () => {
      expectRejected(type, () => decode({ ...encode(polling), fds: [fd(0)] }), /invalid-fd flag is set/);
    });
    it('refuses a missing fd without the invalid-fd flag', () => {
      expectRejected(type, () => decode({ ...encode(withFdRequest), fds: [] }), /no fd came/);
    });
    it('refuses bits above bit 8', () => {
      expectRejected(type, () => decode(patched(withFdRequest, (v) => v.setUint32(0, 0x203, LE))), /undefined bits 0x200/);
      expectRejected(type, () => decode(patched(polling, (v) => v.setUint32(4, 1, LE))), /undefined bits/);
    });
  });

  it('GET_VRING_BASE ignores the reserved num (back-ends in the field do)', () => {
    expect(decode(patched(sample('GET_VRING_BASE'), (v) => v.setUint32(4, 77, LE)))).toEqual({
      type: 'GET_VRING_BASE',
      index: 3,
    });
  });

  it('SET_VRING_ENABLE and SET_VRING_ENDIAN accept only 0 and 1', () => {
    expectRejected('SET_VRING_ENABLE', () => decode(encode({ type: 'SET_VRING_ENABLE', index: 0, num: 2 })), /neither 0/);
    expectRejected('SET_VRING_ENDIAN', () => decode(encode({ type: 'SET_VRING_ENDIAN', index: 0, num: 2 })), /neither 0/);
  });

  it('VRING_KICK needs the reserved num to be 0', () => {
    expectRejected('VRING_KICK', () => decode(patched(sample('VRING_KICK'), (v) => v.setUint32(4, 1, LE))), /must be 0/);
  });

  it('SEND_RARP takes the first 6 bytes and ignores the other 2', () => {
    expect(decode(patched(sample('SEND_RARP'), (v) => v.setUint16(6, 0xffff, LE)))).toEqual(sample('SEND_RARP'));
  });

  describe('IOTLB_MSG', () => {
    const update = sample('IOTLB_MSG');
    it('accepts only update and invalidate from the front-end', () => {
      for (const iotlbType of [0, 1, 4, 5])
        expectRejected('IOTLB_MSG', () => decode(encode({ ...update, iotlbType })), /IOTLB type/);
    });
    it('refuses permissions above read/write', () => {
      expectRejected('IOTLB_MSG', () => decode(encode({ ...update, perm: 4 })), /permission/);
    });
    it('range-checks updates but not invalidations', () => {
      const top = (1n << 64n) - 0x800n;
      expectRejected('IOTLB_MSG', () => decode(encode({ ...update, size: 0n })), /size 0/);
      expectRejected('IOTLB_MSG', () => decode(encode({ ...update, iova: top })), /iova/);
      expectRejected('IOTLB_MSG', () => decode(encode({ ...update, userAddr: top })), /uaddr/);
      expect(decode(encode({ ...update, iotlbType: 3, iova: top }))).toMatchObject({ iotlbType: 3 });
    });
  });

  describe.each(['GET_CONFIG', 'SET_CONFIG'] as const)('%s', (type) => {
    const config = (size: number, flags = 0): FrontendRequest =>
      type === 'GET_CONFIG' ? { type, offset: 0, size, flags } : { type, offset: 0, size, flags, payload: new Uint8Array(size) };
    it('refuses a size above 256', () => {
      expectRejected(
        type,
        () =>
          decode(
            withPayload(
              config(0),
              (() => {
                const payload = new Uint8Array(12 + 257);
                new DataView(payload.buffer).setUint32(4, 257, LE);
                return payload;
              })(),
            ),
          ),
        /payload is 269 bytes/,
      );
      expectRejected(type, () => decode(patched(config(256), (v) => v.setUint32(4, 257, LE))), /exceeds 256/);
    });
    it('refuses a size field that does not match the payload', () => {
      expectRejected(type, () => decode(patched(config(8), (v) => v.setUint32(4, 4, LE))), /12 \+ config size 4/);
    });
    it('refuses flags other than front-end (0) and migration (1)', () => {
      expectRejected(type, () => decode(encode(config(4, 2))), /flags 2/);
    });
  });

  it('CREATE_CRYPTO_SESSION needs at least the leading u64', () => {
    expectRejected(
      'CREATE_CRYPTO_SESSION',
      () => decode(withPayload(sample('CREATE_CRYPTO_SESSION'), new Uint8Array(4))),
      /payload is 4 bytes/,
    );
  });

  it('SET_INFLIGHT_FD refuses an area that wraps past 2^64', () => {
    expectRejected(
      'SET_INFLIGHT_FD',
      () => decode(encode({ ...sample('SET_INFLIGHT_FD'), mmapOffset: (1n << 64n) - 1n })),
      /wraps/,
    );
  });

  it('ADD_MEM_REG checks its region', () => {
    const add = sample('ADD_MEM_REG');
    expectRejected('ADD_MEM_REG', () => decode(encode({ ...add, region: { ...add.region, memorySize: 0n } })), /size 0/);
    expectRejected(
      'ADD_MEM_REG',
      () => decode(encode({ ...add, region: { ...add.region, mmapOffset: (1n << 64n) - 1n } })),
      /mmap offset/,
    );
  });

  describe('REM_MEM_REG', () => {
    const rem = sample('REM_MEM_REG');
    it('accepts the one fd older QEMUs send, and surfaces it so it can be closed', () => {
      expect(decode({ ...encode(rem), fds: [fd(4)] })).toEqual({ ...rem, fd: fd(4) });
    });
    it('refuses two fds', () => {
      expectRejected('REM_MEM_REG', () => decode({ ...encode(rem), fds: [fd(0), fd(1)] }), /2 fds/);
    });
    it('ignores the mmap offset ("the mmap offset is ignored") but checks the ranges', () => {
      const anyOffset = { ...rem, region: { ...rem.region, mmapOffset: (1n << 64n) - 1n } };
      expect(decode(encode(anyOffset))).toEqual(anyOffset);
      expectRejected('REM_MEM_REG', () => decode(encode({ ...rem, region: { ...rem.region, memorySize: 0n } })), /size 0/);
    });
  });

  it('SET_STATUS refuses values that are not a status byte', () => {
    expectRejected('SET_STATUS', () => decode(encode({ type: 'SET_STATUS', status: 0x100n })), /status byte/);
  });

  it('SET_DEVICE_STATE_FD passes unknown directions and phases to the session', () => {
    expect(decode(encode({ type: 'SET_DEVICE_STATE_FD', direction: 7, phase: 3, fd: fd(0) }))).toMatchObject({
      direction: 7,
      phase: 3,
    });
  });

  it('GET_SHARED_OBJECT needs a whole UUID', () => {
    expectRejected(
      'GET_SHARED_OBJECT',
      () => decode(withPayload(sample('GET_SHARED_OBJECT'), new Uint8Array(0))),
      /payload is 0 bytes/,
    );
  });
});

describe('encoders refuse values that do not fit the wire format', () => {
  it.each<[string, FrontendRequest]>([
    ['a ring index above 255 in a vring fd message', { type: 'SET_VRING_CALL', index: 256, noFd: true, fd: -1 }],
    ['noFd that disagrees with fd', { type: 'SET_VRING_KICK', index: 0, noFd: true, fd: 5 }],
    ['a negative u64', { type: 'SET_FEATURES', features: -1n }],
    ['a u64 above 2^64 - 1', { type: 'SET_FEATURES', features: 1n << 64n }],
    ['a number where a bigint belongs', { type: 'SET_FEATURES', features: 1 as unknown as bigint }],
    ['a u32 above 2^32 - 1', { type: 'SET_VRING_NUM', index: 0, num: 2 ** 32 }],
    ['a 5-byte MAC', { type: 'SEND_RARP', mac: new Uint8Array(5) }],
    [
      'config size that differs from its payload',
      { type: 'SET_CONFIG', offset: 0, size: 4, flags: 0, payload: new Uint8Array(3) },
    ],
    ['a missing fd', { type: 'SET_LOG_FD', fd: -1 }],
    [
      'nine memory regions',
      {
        type: 'SET_MEM_TABLE',
        regions: Array.from({ length: 9 }, (_, i) => ({ ...region(BigInt(i), 1n, BigInt(i)), fd: fd(i) })),
      },
    ],
  ])('%s', (_why, request) => {
    expect(() => encodeRequest(request, false)).toThrow(RangeError);
  });
});

describe('replies', () => {
  /** [request id, reply, note] — every reply kind, in the shape the spec gives it. */
  const replies: [number, BackendReply][] = [
    [Request.GET_FEATURES, { type: 'u64', value: (1n << 32n) | (1n << 30n) }],
    [Request.GET_PROTOCOL_FEATURES, { type: 'u64', value: 0x8e0bn }],
    [Request.GET_QUEUE_NUM, { type: 'u64', value: 4n }],
    [Request.GET_MAX_MEM_SLOTS, { type: 'u64', value: 509n }],
    [Request.GET_STATUS, { type: 'u64', value: 0x0fn }],
    [Request.CHECK_DEVICE_STATE, { type: 'u64', value: 0n }],
    [Request.POSTCOPY_END, { type: 'u64', value: 0n }],
    [Request.IOTLB_MSG, { type: 'u64', value: 1n }],
    [Request.SET_LOG_BASE, { type: 'u64', value: 0n }],
    // REPLY_ACK statuses of ack-only requests.
    [Request.SET_FEATURES, { type: 'u64', value: 0n }],
    [Request.SET_VRING_ENABLE, { type: 'u64', value: 1n }],
    [Request.SET_MEM_TABLE, { type: 'u64', value: 0n }],
    [Request.ADD_MEM_REG, { type: 'u64', value: 0n }],
    [Request.GET_VRING_BASE, { type: 'vring-state', index: 2, num: 0x1234 }],
    [Request.GET_CONFIG, { type: 'config', offset: 0, size: 4, flags: 0, payload: Uint8Array.of(1, 2, 3, 4) }],
    [Request.GET_CONFIG, { type: 'config-error' }],
    [Request.GET_INFLIGHT_FD, { type: 'inflight', mmapSize: 0x4000n, mmapOffset: 0n, numQueues: 2, queueSize: 256, fd: fd(0) }],
    [Request.GET_INFLIGHT_FD, { type: 'inflight', mmapSize: 0n, mmapOffset: 0n, numQueues: 2, queueSize: 256, fd: -1 }],
    [
      Request.SET_MEM_TABLE,
      { type: 'memory-table', regions: [region(0n, GiB, 0x7f12_0000_0000n, 0n), region(4n * GiB, GiB, 0x7f13_0000_0000n, 0n)] },
    ],
    [Request.ADD_MEM_REG, { type: 'memory-region', region: region(4n * GiB, GiB, 0x7f13_0000_0000n, 0n) }],
    [Request.POSTCOPY_ADVISE, { type: 'userfault-fd', fd: fd(0) }],
    [Request.CREATE_CRYPTO_SESSION, { type: 'crypto-session', payload: Uint8Array.from({ length: 64 }, (_, i) => i) }],
    [Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: fd(0) }],
    [Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: -1 }],
    [Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 5, fd: -1 }],
    [Request.GET_SHARED_OBJECT, { type: 'shared-object', fd: fd(0) }],
    [Request.GET_SHARED_OBJECT, { type: 'shared-object', fd: -1 }],
  ];

  function encodeReplyRaw(request: number, reply: BackendReply): Raw {
    const { bytes, fds } = encodeReply(request, reply);
    return { header: decodeHeader(bytes), payload: bytes.subarray(HEADER_SIZE), fds };
  }
  const decodeAs = (request: number, raw: Raw) => decodeReply(raw.header, raw.payload, request, raw.fds);

  it.each(replies.map(([id, reply]) => [requestSpecs.get(id)!.name, reply.type, id, reply] as const))(
    '%s → %s',
    (_name, _type, id, reply) => {
      const raw = encodeReplyRaw(id, reply);
      // QEMU accepts exactly VERSION | REPLY (vhost_user_read_header).
      expect(raw.header.flags).toBe(HeaderFlag.VERSION | HeaderFlag.REPLY);
      expect(raw.header.request).toBe(id);
      expect(decodeAs(id, raw)).toEqual(reply);
    },
  );

  it('carries the inflight description in 24 bytes (VhostUserInflight is padded)', () => {
    expect(encodeReplyRaw(Request.GET_INFLIGHT_FD, replies.find(([id]) => id === Request.GET_INFLIGHT_FD)![1]).header.size).toBe(
      24,
    );
  });

  it('answers a device-state transfer without an fd with bit 8 set', () => {
    const raw = encodeReplyRaw(Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: -1 });
    expect(new DataView(raw.payload.buffer, raw.payload.byteOffset).getUint32(0, LE)).toBe(0x100);
  });

  it('acks unknown requests with a u64', () => {
    expect(decodeAs(99, encodeReplyRaw(99, { type: 'u64', value: 1n }))).toEqual({ type: 'u64', value: 1n });
  });

  it('refuses to encode a reply kind that does not answer the request', () => {
    expect(() => encodeReply(Request.GET_FEATURES, { type: 'vring-state', index: 0, num: 0 })).toThrow(RangeError);
    expect(() => encodeReply(Request.GET_VRING_BASE, { type: 'u64', value: 0n })).toThrow(RangeError);
    expect(() => encodeReply(99, { type: 'config-error' })).toThrow(RangeError);
    expect(() => encodeReply(Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 1, fd: fd(0) })).toThrow(RangeError);
    expect(() =>
      encodeReply(Request.GET_INFLIGHT_FD, {
        type: 'inflight',
        mmapSize: 0n,
        mmapOffset: 0n,
        numQueues: 1,
        queueSize: 1,
        fd: fd(0),
      }),
    ).toThrow(RangeError);
  });

  describe('hostile replies are refused', () => {
    const features = () => encodeReplyRaw(Request.GET_FEATURES, { type: 'u64', value: 1n });
    it('a reply to another request', () => {
      expectRejected(
        'GET_FEATURES reply',
        () =>
          decodeAs(Request.GET_FEATURES, {
            ...features(),
            header: { ...features().header, request: Request.GET_PROTOCOL_FEATURES },
          }),
        /reply to request 15/,
      );
    });
    it('flags other than exactly VERSION | REPLY', () => {
      for (const flags of [
        HeaderFlag.VERSION,
        HeaderFlag.VERSION | HeaderFlag.REPLY | HeaderFlag.NEED_REPLY,
        2 | HeaderFlag.REPLY,
      ]) {
        expectRejected(
          'GET_FEATURES reply',
          () => decodeAs(Request.GET_FEATURES, { ...features(), header: { ...features().header, flags } }),
          /flags/,
        );
      }
    });
    it('a u64 of the wrong size or with an fd', () => {
      const raw = features();
      expectRejected(
        'GET_FEATURES reply',
        () =>
          decodeAs(Request.GET_FEATURES, { header: { ...raw.header, size: 4 }, payload: raw.payload.subarray(0, 4), fds: [] }),
        /payload is 4 bytes/,
      );
      expectRejected('GET_FEATURES reply', () => decodeAs(Request.GET_FEATURES, { ...raw, fds: [fd(0)] }), /fds/);
    });
    it('a GET_CONFIG reply whose size field disagrees with its payload', () => {
      const raw = encodeReplyRaw(Request.GET_CONFIG, {
        type: 'config',
        offset: 0,
        size: 4,
        flags: 0,
        payload: new Uint8Array(4),
      });
      const payload = raw.payload.slice();
      new DataView(payload.buffer).setUint32(4, 8, LE);
      expectRejected('GET_CONFIG reply', () => decodeAs(Request.GET_CONFIG, { ...raw, payload }), /config size 8/);
    });
    it('an inflight buffer without its fd, or an fd without a buffer', () => {
      const withBuffer = encodeReplyRaw(Request.GET_INFLIGHT_FD, {
        type: 'inflight',
        mmapSize: 0x1000n,
        mmapOffset: 0n,
        numQueues: 1,
        queueSize: 8,
        fd: fd(0),
      });
      expectRejected('GET_INFLIGHT_FD reply', () => decodeAs(Request.GET_INFLIGHT_FD, { ...withBuffer, fds: [] }), /0 fds/);
      const none = encodeReplyRaw(Request.GET_INFLIGHT_FD, {
        type: 'inflight',
        mmapSize: 0n,
        mmapOffset: 0n,
        numQueues: 1,
        queueSize: 8,
        fd: -1,
      });
      expectRejected('GET_INFLIGHT_FD reply', () => decodeAs(Request.GET_INFLIGHT_FD, { ...none, fds: [fd(0)] }), /1 fds/);
    });
    it('a device-state reply with an error and an fd, or undefined bits', () => {
      const raw = encodeReplyRaw(Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: fd(0) });
      const failed = raw.payload.slice();
      failed[0] = 3;
      expectRejected(
        'SET_DEVICE_STATE_FD reply',
        () => decodeAs(Request.SET_DEVICE_STATE_FD, { ...raw, payload: failed }),
        /must not both/,
      );
      const odd = raw.payload.slice();
      odd[1] = 0x02;
      expectRejected(
        'SET_DEVICE_STATE_FD reply',
        () => decodeAs(Request.SET_DEVICE_STATE_FD, { ...raw, payload: odd }),
        /undefined bits/,
      );
      const noFdFlag = encodeReplyRaw(Request.SET_DEVICE_STATE_FD, { type: 'device-state', status: 0, fd: -1 });
      expectRejected(
        'SET_DEVICE_STATE_FD reply',
        () => decodeAs(Request.SET_DEVICE_STATE_FD, { ...noFdFlag, fds: [fd(0)] }),
        /fds/,
      );
    });
    it('a postcopy memory table that does not hold its regions', () => {
      const raw = encodeReplyRaw(Request.SET_MEM_TABLE, { type: 'memory-table', regions: [region(0n, GiB, 0x1000n)] });
      const payload = raw.payload.slice();
      new DataView(payload.buffer).setUint32(0, 2, LE);
      expectRejected(
        'SET_MEM_TABLE reply',
        () => decodeAs(Request.SET_MEM_TABLE, { ...raw, payload }),
        /does not hold 2 regions/,
      );
    });
    it('a userfaultfd reply with a payload or without the fd', () => {
      const raw = encodeReplyRaw(Request.POSTCOPY_ADVISE, { type: 'userfault-fd', fd: fd(0) });
      expectRejected('POSTCOPY_ADVISE reply', () => decodeAs(Request.POSTCOPY_ADVISE, { ...raw, fds: [] }), /0 fds/);
      expectRejected(
        'POSTCOPY_ADVISE reply',
        () => decodeAs(Request.POSTCOPY_ADVISE, { header: { ...raw.header, size: 8 }, payload: new Uint8Array(8), fds: raw.fds }),
        /payload is 8/,
      );
    });
  });

  describe('tolerances real back-ends need', () => {
    it("DPDK's empty SET_LOG_BASE reply reads as success", () => {
      const bytes = encodeMessage(Request.SET_LOG_BASE, HeaderFlag.VERSION | HeaderFlag.REPLY);
      expect(decodeReply(decodeHeader(bytes), new Uint8Array(0), Request.SET_LOG_BASE, [])).toEqual({ type: 'u64', value: 0n });
    });
    it("libvhost-user's GET_SHARED_OBJECT reply (the request's UUID echoed) with its fd", () => {
      const bytes = encodeMessage(Request.GET_SHARED_OBJECT, HeaderFlag.VERSION | HeaderFlag.REPLY, uuid);
      expect(decodeReply(decodeHeader(bytes), bytes.subarray(HEADER_SIZE), Request.GET_SHARED_OBJECT, [fd(3)])).toEqual({
        type: 'shared-object',
        fd: fd(3),
      });
    });
  });
});

describe('postcopy acknowledgement', () => {
  const ack = (request: number, fds: number[] = []) => {
    const bytes = encodeMessage(request, HeaderFlag.VERSION, new Uint8Array(8));
    return () => decodePostcopyAck(decodeHeader(bytes), bytes.subarray(HEADER_SIZE), fds);
  };
  it('reads the u64 QEMU sends after a postcopy SET_MEM_TABLE or ADD_MEM_REG reply', () => {
    expect(ack(Request.SET_MEM_TABLE)()).toBe(0n);
    expect(ack(Request.ADD_MEM_REG)()).toBe(0n);
  });
  it('refuses other requests and fds', () => {
    expectRejected('SET_FEATURES', ack(Request.SET_FEATURES), /postcopy/);
    expectRejected('ADD_MEM_REG', ack(Request.ADD_MEM_REG, [fd(0)]), /fds/);
  });
});

describe('back-end channel', () => {
  const backendSamples: BackendRequest[] = [
    { type: 'IOTLB_MSG', iova: 0x2000n, size: 0n, userAddr: 0n, perm: 1, iotlbType: 1 },
    { type: 'IOTLB_MSG', iova: 0x2000n, size: 0n, userAddr: 0n, perm: 2, iotlbType: 4 },
    { type: 'CONFIG_CHANGE_MSG' },
    { type: 'VRING_HOST_NOTIFIER_MSG', index: 3, noFd: false, size: 4096n, offset: 0x3000n, fd: fd(0) },
    { type: 'VRING_HOST_NOTIFIER_MSG', index: 3, noFd: true, size: 0n, offset: 0n, fd: -1 },
    { type: 'VRING_CALL', index: 1 },
    { type: 'VRING_ERR', index: 0x1_0000 },
    { type: 'SHARED_OBJECT_ADD', uuid },
    { type: 'SHARED_OBJECT_REMOVE', uuid },
    { type: 'SHARED_OBJECT_LOOKUP', uuid },
  ];

  function encodeBackend(request: BackendRequest, needReply = false): Raw {
    const { bytes, fds } = encodeBackendRequest(request, needReply);
    return { header: decodeHeader(bytes), payload: bytes.subarray(HEADER_SIZE), fds };
  }
  const decodeBackend = (raw: Raw) => decodeBackendRequest(raw.header, raw.payload, raw.fds);

  it('has a sample for every back-end request', () => {
    expect(new Set(backendSamples.map((s) => BackendRequestId[s.type]))).toEqual(new Set(backendRequestSpecs.keys()));
  });

  it.each(backendSamples.map((s) => [s.type, s] as const))('%s round-trips', (_name, request) => {
    expect(decodeBackend(encodeBackend(request, true))).toEqual(request);
  });

  it('CONFIG_CHANGE_MSG is an empty message with NEED_REPLY when asked', () => {
    expect(encodeBackend({ type: 'CONFIG_CHANGE_MSG' }, true).header).toEqual({ request: 2, flags: 0x9, size: 0 });
  });

  it('refuses hostile back-end requests', () => {
    expectRejected(
      'BACKEND_IOTLB_MSG',
      () => decodeBackend(encodeBackend({ type: 'IOTLB_MSG', iova: 0n, size: 1n, userAddr: 0n, perm: 3, iotlbType: 2 })),
      /only miss/,
    );
    const call = encodeBackend({ type: 'VRING_CALL', index: 1 });
    const payload = call.payload.slice();
    payload[4] = 1;
    expectRejected('BACKEND_VRING_CALL', () => decodeBackend({ ...call, payload }), /must be 0/);
    const notifier = encodeBackend({ type: 'VRING_HOST_NOTIFIER_MSG', index: 3, noFd: true, size: 0n, offset: 0n, fd: -1 });
    expectRejected('BACKEND_VRING_HOST_NOTIFIER_MSG', () => decodeBackend({ ...notifier, fds: [fd(0)] }), /invalid-fd/);
    expectRejected(
      'BACKEND_CONFIG_CHANGE_MSG',
      () => decodeBackend({ ...encodeBackend({ type: 'CONFIG_CHANGE_MSG' }), fds: [fd(0)] }),
      /fds/,
    );
    expectRejected(
      'BACKEND_SHARED_OBJECT_ADD',
      () => decodeBackend({ header: { request: 6, flags: 1, size: 8 }, payload: new Uint8Array(8), fds: [] }),
      /payload is 8 bytes/,
    );
    expectRejected(
      'BACKEND_CONFIG_CHANGE_MSG',
      () => decodeBackend({ header: { request: 2, flags: 0x5, size: 0 }, payload: new Uint8Array(0), fds: [] }),
      /REPLY/,
    );
    expect(
      rejection(() => decodeBackend({ header: { request: 9, flags: 1, size: 0 }, payload: new Uint8Array(0), fds: [] })),
    ).toBeInstanceOf(UnknownRequestError);
  });

  describe('front-end replies', () => {
    function reply(request: number, value: FrontendReply): Raw {
      const { bytes, fds } = encodeFrontendReply(request, value);
      return { header: decodeHeader(bytes), payload: bytes.subarray(HEADER_SIZE), fds };
    }
    const decodeAs = (request: number, raw: Raw) => decodeFrontendReply(raw.header, raw.payload, request, raw.fds);

    it.each<[string, number, FrontendReply]>([
      ['an ack', BackendRequestId.CONFIG_CHANGE_MSG, { type: 'u64', value: 0n }],
      ['a failure', BackendRequestId.IOTLB_MSG, { type: 'u64', value: 1n }],
      ['a found shared object', BackendRequestId.SHARED_OBJECT_LOOKUP, { type: 'shared-object', value: 0n, fd: fd(0) }],
      ['a failed lookup', BackendRequestId.SHARED_OBJECT_LOOKUP, { type: 'shared-object', value: 22n, fd: -1 }],
    ])('%s round-trips', (_what, request, value) => {
      const raw = reply(request, value);
      expect(raw.header.flags).toBe(HeaderFlag.VERSION | HeaderFlag.REPLY);
      expect(decodeAs(request, raw)).toEqual(value);
    });

    it('refuses an fd with a failed lookup or with an ack, and a reply to another request', () => {
      const failed = reply(BackendRequestId.SHARED_OBJECT_LOOKUP, { type: 'shared-object', value: 22n, fd: -1 });
      expectRejected(
        'BACKEND_SHARED_OBJECT_LOOKUP reply',
        () => decodeAs(BackendRequestId.SHARED_OBJECT_LOOKUP, { ...failed, fds: [fd(0)] }),
        /fds/,
      );
      const ack = reply(BackendRequestId.CONFIG_CHANGE_MSG, { type: 'u64', value: 0n });
      expectRejected(
        'BACKEND_CONFIG_CHANGE_MSG reply',
        () => decodeAs(BackendRequestId.CONFIG_CHANGE_MSG, { ...ack, fds: [fd(0)] }),
        /fds/,
      );
      expectRejected('BACKEND_IOTLB_MSG reply', () => decodeAs(BackendRequestId.IOTLB_MSG, ack), /reply to request 2/);
      expect(() =>
        encodeFrontendReply(BackendRequestId.SHARED_OBJECT_LOOKUP, { type: 'shared-object', value: 1n, fd: fd(0) }),
      ).toThrow(RangeError);
      expect(() => encodeFrontendReply(BackendRequestId.IOTLB_MSG, { type: 'shared-object', value: 0n, fd: fd(0) })).toThrow(
        RangeError,
      );
    });
  });
});
