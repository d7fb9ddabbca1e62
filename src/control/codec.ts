// vhost-user message codec: bytes + fds ⇄ typed, validated values. No sockets, no state, so any
// transport can use it, on either side of the connection:
//   back-end:  decodeRequest  / encodeReply           (and encodeBackendRequest / decodeFrontendReply)
//   front-end: encodeRequest  / decodeReply           (and decodeBackendRequest / encodeFrontendReply)
// Read top to bottom: header → the request table → back-end side → front-end side → back-end
// channel. Spec references are to QEMU docs/interop/vhost-user.rst.
//
// Validation policy. Decoders check everything that can be checked without session state:
// header flags, payload size and fd count per request, and each field the spec constrains.
// They throw ProtocolError for anything else, and never close fds (the caller owns them).
// Strict where the spec is strict ("must be 0", "other values are invalid"); tolerant only where
// real front-ends or back-ends need it, each tolerance commented with who needs it. Padding and
// bytes the spec leaves unspecified are ignored. Encoders write what they are given as long as
// it fits the wire format (so tests can send hostile but well-formed messages); a value that does
// not fit is a programming error and throws RangeError.
import { endianness } from 'node:os';
import {
  BackendRequestId,
  ConfigFlag,
  HEADER_SIZE,
  HeaderFlag,
  IotlbType,
  KNOWN_HEADER_FLAGS,
  MAX_CONFIG_SIZE,
  MAX_MEMORY_REGIONS,
  MAX_PAYLOAD_SIZE,
  ProtocolFeature,
  RING_ALIGN,
  Request,
  UUID_SIZE,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  VringAddrFlag,
  backendRequestName,
  requestName,
  type BackendRequestName,
  type RequestName,
} from './protocol.js';
import type {
  BackendReply,
  BackendReplyType,
  BackendRequest as BackendRequestValue,
  EncodedMessage,
  FrontendReply,
  FrontendRequest,
  IotlbEntry,
  MemoryRegion,
  MemoryRegionWithFd,
} from './messages.js';

export type * from './messages.js';
export { HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE } from './protocol.js';
export { isPowerOfTwo } from './protocol.js';

/** The spec says "machine native byte order"; on every host we run on that is little-endian. */
const LITTLE_ENDIAN = endianness() === 'LE';
const U64_LIMIT = 1n << 64n;
const REGION_SIZE = 32;
const MEMORY_TABLE_HEADER = 8;
const CONFIG_HEADER = 12;
const REPLY_FLAGS = HeaderFlag.VERSION | HeaderFlag.REPLY;

// ---- header ---------------------------------------------------------------------------------

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

/** A message that breaks the protocol. `request` is its request id when known. */
export class ProtocolError extends Error {
  constructor(
    message: string,
    readonly request?: number,
  ) {
    super(message);
    this.name = 'ProtocolError';
  }
}

/**
 * A request id the protocol does not define. The message itself was framed correctly (its size
 * is in the header), so a session may skip it and answer a NEED_REPLY with a failure ack.
 */
export class UnknownRequestError extends ProtocolError {
  constructor(request: number, what = 'request') {
    super(`unknown ${what} ${request}`, request);
    this.name = 'UnknownRequestError';
  }
}

/**
 * Reads and checks a 12-byte header. Rejects what makes the stream untrustworthy: a version
 * other than 1, flag bits the spec does not define (a future flag could change how the payload
 * must be read; no front-end sets one), and a size above MAX_PAYLOAD_SIZE, before anyone
 * allocates for it. The request id is not checked here: an unknown id is still a well-framed
 * message (see UnknownRequestError).
 */
export function decodeHeader(bytes: Uint8Array, offset = 0): MessageHeader {
  if (!Number.isInteger(offset) || offset < 0 || bytes.length - offset < HEADER_SIZE) {
    throw new ProtocolError(`message header needs ${HEADER_SIZE} bytes, got ${Math.max(0, bytes.length - offset)}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, HEADER_SIZE);
  const header = {
    request: view.getUint32(0, LITTLE_ENDIAN),
    flags: view.getUint32(4, LITTLE_ENDIAN),
    size: view.getUint32(8, LITTLE_ENDIAN),
  };
  checkFlags(header);
  if (header.size > MAX_PAYLOAD_SIZE) {
    throw new ProtocolError(
      `${requestName(header.request)}: payload size ${header.size} exceeds the maximum of ${MAX_PAYLOAD_SIZE}`,
      header.request,
    );
  }
  return header;
}

function checkFlags(header: MessageHeader): void {
  const version = header.flags & HeaderFlag.VERSION_MASK;
  if (version !== HeaderFlag.VERSION) {
    throw new ProtocolError(`${requestName(header.request)}: protocol version ${version}, only version 1 exists`, header.request);
  }
  const unknown = header.flags & ~KNOWN_HEADER_FLAGS;
  if (unknown !== 0) {
    throw new ProtocolError(`${requestName(header.request)}: undefined header flag bits 0x${(unknown >>> 0).toString(16)}`, header.request);
  }
}

/** Header + raw payload, unchecked: for hostile-input tests and for tools that forward bytes. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const writer = new Writer('message', request, flags, payload.length);
  writer.bytes(payload);
  return writer.finish();
}

// ---- the request table ------------------------------------------------------------------------

/** Payload layouts (spec: "Payload"). */
export type PayloadKind =
  | 'none'
  | 'u64'
  | 'vring-state'
  | 'vring-addr'
  /** u64: ring index in bits 0–7, invalid-fd flag in bit 8. */
  | 'vring-fd'
  | 'memory-table'
  /** u64 padding + one region (ADD_MEM_REG / REM_MEM_REG). */
  | 'memory-region'
  | 'log'
  | 'iotlb'
  | 'config'
  | 'crypto-session'
  | 'inflight'
  | 'vring-area'
  | 'shared-object'
  | 'transfer-state';

export interface Range {
  readonly min: number;
  readonly max: number;
}

const exactly = (n: number): Range => ({ min: n, max: n });

/** Legal payload sizes of each layout. */
const payloadSizes: Record<PayloadKind, Range> = {
  none: exactly(0),
  u64: exactly(8),
  'vring-state': exactly(8),
  // struct vhost_vring_addr: u32 index, u32 flags, u64 desc, used, avail, log.
  'vring-addr': exactly(40),
  'vring-fd': exactly(8),
  'memory-table': { min: MEMORY_TABLE_HEADER, max: MEMORY_TABLE_HEADER + MAX_MEMORY_REGIONS * REGION_SIZE },
  'memory-region': exactly(8 + REGION_SIZE),
  log: exactly(16),
  // struct vhost_iotlb_msg: 3 × u64 + u8 perm + u8 type, padded to 8 bytes by the C ABI.
  iotlb: exactly(32),
  config: { min: CONFIG_HEADER, max: CONFIG_HEADER + MAX_CONFIG_SIZE },
  // The struct changed across QEMU versions (asymmetric keys were added) and differs in DPDK;
  // it starts with a u64 in all of them.
  'crypto-session': { min: 8, max: MAX_PAYLOAD_SIZE },
  // VhostUserInflight: u64, u64, u16, u16 padded to 24 by the C ABI; QEMU checks for 24.
  inflight: exactly(24),
  'vring-area': exactly(24),
  'shared-object': exactly(UUID_SIZE),
  'transfer-state': exactly(8),
};

/** Reply bodies a request can have (BackendReply types, 'config-error' being config's failure form). */
export type ReplyKind = Exclude<BackendReplyType, 'config-error'>;

export interface RequestSpec {
  readonly id: number;
  readonly name: RequestName;
  readonly payload: PayloadKind;
  /** Legal payload sizes; variable layouts are checked again against their own count fields. */
  readonly size: Range;
  /** Legal number of fds in the ancillary data. */
  readonly fds: Range;
  /**
   * 'always': the spec defines a reply, sent once whether or not NEED_REPLY is set.
   * 'ack': a u64 status only when NEED_REPLY is set and REPLY_ACK was negotiated.
   */
  readonly replies: 'always' | 'ack';
  /**
   * Body of the 'always' reply; 'u64' for 'ack' requests. SET_MEM_TABLE and ADD_MEM_REG also
   * answer with 'memory-table' / 'memory-region' in postcopy mode (spec: SET_MEM_TABLE).
   */
  readonly reply: ReplyKind;
  /** The protocol feature the spec makes this request depend on, if any (enforcement is the session's). */
  readonly protocolFeature?: number;
}

interface Row {
  fds?: Range;
  replies?: 'always';
  reply?: ReplyKind;
  feature?: number;
  size?: Range;
}

function row(id: number, payload: PayloadKind, options: Row = {}): RequestSpec {
  const spec: RequestSpec = {
    id,
    name: requestName(id) as RequestName,
    payload,
    size: options.size ?? payloadSizes[payload],
    fds: options.fds ?? exactly(0),
    replies: options.replies ?? 'ack',
    reply: options.reply ?? 'u64',
  };
  return options.feature === undefined ? spec : { ...spec, protocolFeature: options.feature };
}

const ONE_FD = exactly(1);
const always = (reply: ReplyKind = 'u64') => ({ replies: 'always' as const, reply });

/** One row per request, in id order (spec: "Front-end message types"). */
const requestTable: readonly RequestSpec[] = [
  row(Request.GET_FEATURES, 'none', always()),
  row(Request.SET_FEATURES, 'u64'),
  row(Request.SET_OWNER, 'none'),
  row(Request.RESET_OWNER, 'none'),
  // One fd per region; the exact count is checked against nregions.
  row(Request.SET_MEM_TABLE, 'memory-table', { fds: { min: 0, max: MAX_MEMORY_REGIONS }, reply: 'memory-table' }),
  // The spec's entry says "u64", but QEMU sends the 16-byte log description (mmap size and
  // offset) with the log fd. Without the fd (no LOG_SHMFD) a process cannot log at all.
  row(Request.SET_LOG_BASE, 'log', { fds: ONE_FD, ...always(), feature: ProtocolFeature.LOG_SHMFD }),
  row(Request.SET_LOG_FD, 'none', { fds: ONE_FD }),
  row(Request.SET_VRING_NUM, 'vring-state'),
  row(Request.SET_VRING_ADDR, 'vring-addr'),
  row(Request.SET_VRING_BASE, 'vring-state'),
  row(Request.GET_VRING_BASE, 'vring-state', always('vring-state')),
  row(Request.SET_VRING_KICK, 'vring-fd', { fds: { min: 0, max: 1 } }),
  row(Request.SET_VRING_CALL, 'vring-fd', { fds: { min: 0, max: 1 } }),
  row(Request.SET_VRING_ERR, 'vring-fd', { fds: { min: 0, max: 1 } }),
  row(Request.GET_PROTOCOL_FEATURES, 'none', always()),
  row(Request.SET_PROTOCOL_FEATURES, 'u64'),
  row(Request.GET_QUEUE_NUM, 'none', { ...always(), feature: ProtocolFeature.MQ }),
  row(Request.SET_VRING_ENABLE, 'vring-state'),
  row(Request.SEND_RARP, 'u64', { feature: ProtocolFeature.RARP }),
  row(Request.NET_SET_MTU, 'u64', { feature: ProtocolFeature.MTU }),
  row(Request.SET_BACKEND_REQ_FD, 'none', { fds: ONE_FD, feature: ProtocolFeature.BACKEND_REQ }),
  // "The back-end has to acknowledge the request"; QEMU always sets NEED_REPLY on it.
  row(Request.IOTLB_MSG, 'iotlb', always()),
  row(Request.SET_VRING_ENDIAN, 'vring-state', { feature: ProtocolFeature.CROSS_ENDIAN }),
  row(Request.GET_CONFIG, 'config', { ...always('config'), feature: ProtocolFeature.CONFIG }),
  row(Request.SET_CONFIG, 'config', { feature: ProtocolFeature.CONFIG }),
  row(Request.CREATE_CRYPTO_SESSION, 'crypto-session', { ...always('crypto-session'), feature: ProtocolFeature.CRYPTO_SESSION }),
  row(Request.CLOSE_CRYPTO_SESSION, 'u64', { feature: ProtocolFeature.CRYPTO_SESSION }),
  row(Request.POSTCOPY_ADVISE, 'none', { ...always('userfault-fd'), feature: ProtocolFeature.PAGEFAULT }),
  row(Request.POSTCOPY_LISTEN, 'none', { feature: ProtocolFeature.PAGEFAULT }),
  row(Request.POSTCOPY_END, 'none', { ...always(), feature: ProtocolFeature.PAGEFAULT }),
  // The spec's entry says "reply payload: N/A", but its Communication section and QEMU expect
  // the inflight description back.
  row(Request.GET_INFLIGHT_FD, 'inflight', { ...always('inflight'), feature: ProtocolFeature.INFLIGHT_SHMFD }),
  row(Request.SET_INFLIGHT_FD, 'inflight', { fds: ONE_FD, feature: ProtocolFeature.INFLIGHT_SHMFD }),
  row(Request.GPU_SET_SOCKET, 'none', { fds: ONE_FD }),
  row(Request.RESET_DEVICE, 'none', { feature: ProtocolFeature.RESET_DEVICE }),
  row(Request.VRING_KICK, 'vring-state', { feature: ProtocolFeature.INBAND_NOTIFICATIONS }),
  row(Request.GET_MAX_MEM_SLOTS, 'none', { ...always(), feature: ProtocolFeature.CONFIGURE_MEM_SLOTS }),
  row(Request.ADD_MEM_REG, 'memory-region', { fds: ONE_FD, reply: 'memory-region', feature: ProtocolFeature.CONFIGURE_MEM_SLOTS }),
  // "No file descriptors SHOULD be passed ... the back-end MAY accept messages with one": older
  // QEMUs sent the region's fd along.
  row(Request.REM_MEM_REG, 'memory-region', { fds: { min: 0, max: 1 }, feature: ProtocolFeature.CONFIGURE_MEM_SLOTS }),
  row(Request.SET_STATUS, 'u64', { feature: ProtocolFeature.STATUS }),
  row(Request.GET_STATUS, 'none', { ...always(), feature: ProtocolFeature.STATUS }),
  row(Request.GET_SHARED_OBJECT, 'shared-object', { ...always('shared-object'), feature: ProtocolFeature.SHARED_OBJECT }),
  row(Request.SET_DEVICE_STATE_FD, 'transfer-state', { fds: ONE_FD, ...always('device-state'), feature: ProtocolFeature.DEVICE_STATE }),
  row(Request.CHECK_DEVICE_STATE, 'none', { ...always(), feature: ProtocolFeature.DEVICE_STATE }),
];

/** Wire properties of every front-end request, by id: what generic code checks before a handler runs. */
export const requestSpecs: ReadonlyMap<number, RequestSpec> = new Map(requestTable.map((spec) => [spec.id, spec]));

// ---- back-end side: requests in, replies out ---------------------------------------------------

/**
 * Decodes and validates one front-end request. `payload` is exactly the header's `size` bytes;
 * `fds` came with the message and stay the caller's (also on error).
 */
export function decodeRequest(header: MessageHeader, payload: Uint8Array, fds: readonly number[]): FrontendRequest {
  const spec = requestSpecs.get(header.request);
  if (!spec) throw new UnknownRequestError(header.request);
  const check = new Checker(spec.name, spec.id);
  check.envelope(header, payload, fds, spec.size, spec.fds);
  const r = new Reader(payload);
  switch (spec.id) {
    case Request.GET_FEATURES:
    case Request.SET_OWNER:
    case Request.RESET_OWNER:
    case Request.GET_PROTOCOL_FEATURES:
    case Request.GET_QUEUE_NUM:
    case Request.POSTCOPY_ADVISE:
    case Request.POSTCOPY_LISTEN:
    case Request.POSTCOPY_END:
    case Request.RESET_DEVICE:
    case Request.GET_MAX_MEM_SLOTS:
    case Request.GET_STATUS:
    case Request.CHECK_DEVICE_STATE:
      return { type: spec.name } as FrontendRequest;

    case Request.SET_FEATURES:
      return { type: 'SET_FEATURES', features: r.u64() };
    case Request.SET_PROTOCOL_FEATURES:
      return { type: 'SET_PROTOCOL_FEATURES', features: r.u64() };

    case Request.SET_MEM_TABLE:
      return { type: 'SET_MEM_TABLE', regions: decodeMemoryTable(check, r, payload.length, fds) };

    case Request.SET_LOG_BASE: {
      const mmapSize = r.u64();
      const mmapOffset = r.u64();
      if (mmapSize === 0n) check.fail('the log has size 0');
      if (mmapOffset + mmapSize > U64_LIMIT) check.fail(`log offset ${hex(mmapOffset)} + size ${hex(mmapSize)} wraps past 2^64`);
      return { type: 'SET_LOG_BASE', mmapSize, mmapOffset, fd: fds[0]! };
    }
    case Request.SET_LOG_FD:
      return { type: 'SET_LOG_FD', fd: fds[0]! };

    case Request.SET_VRING_NUM:
      return { type: 'SET_VRING_NUM', index: r.u32(), num: r.u32() };
    case Request.SET_VRING_BASE:
      // Split rings use bits 0–15, packed rings all 32 (spec: "vring descriptor indices"); which
      // one applies is negotiated state, so the range check is the session's.
      return { type: 'SET_VRING_BASE', index: r.u32(), num: r.u32() };
    case Request.GET_VRING_BASE: {
      // state.num "is currently reserved and must be set to 0", but libvhost-user and DPDK
      // ignore it, and refusing would drop the connection exactly when the front-end asks where
      // a ring stopped. Ignored.
      const index = r.u32();
      return { type: 'GET_VRING_BASE', index };
    }
    case Request.SET_VRING_ENABLE: {
      const index = r.u32();
      const num = r.u32();
      if (num > 1) check.fail(`num ${num} is neither 0 (disable) nor 1 (enable)`);
      return { type: 'SET_VRING_ENABLE', index, num };
    }
    case Request.SET_VRING_ENDIAN: {
      const index = r.u32();
      const num = r.u32();
      if (num > 1) check.fail(`num ${num} is neither 0 (little-endian) nor 1 (big-endian); "other values are invalid"`);
      return { type: 'SET_VRING_ENDIAN', index, num };
    }
    case Request.VRING_KICK: {
      const index = r.u32();
      const num = r.u32();
      if (num !== 0) check.fail(`state.num is reserved and must be 0, got ${num}`);
      return { type: 'VRING_KICK', index };
    }

    case Request.SET_VRING_ADDR:
      return decodeVringAddr(check, r);

    case Request.SET_VRING_KICK:
    case Request.SET_VRING_CALL:
    case Request.SET_VRING_ERR: {
      const { index, noFd } = decodeVringFd(check, r.u64(), fds.length, 'ring');
      return { type: spec.name, index, noFd, fd: noFd ? -1 : fds[0]! } as FrontendRequest;
    }

    case Request.SEND_RARP: {
      // "The first 6 bytes of the payload contain the mac address"; the other 2 are unspecified.
      return { type: 'SEND_RARP', mac: r.bytes(6) };
    }
    case Request.NET_SET_MTU:
      // Any value: the spec wants an invalid MTU answered with a failure ack, not a dropped connection.
      return { type: 'NET_SET_MTU', mtu: r.u64() };

    case Request.SET_BACKEND_REQ_FD:
      return { type: 'SET_BACKEND_REQ_FD', fd: fds[0]! };

    case Request.IOTLB_MSG: {
      const entry = decodeIotlb(r);
      if (entry.iotlbType !== IotlbType.UPDATE && entry.iotlbType !== IotlbType.INVALIDATE) {
        check.fail(`IOTLB type ${entry.iotlbType}: the front-end sends only update (2) and invalidate (3)`);
      }
      checkIotlbPerm(check, entry);
      if (entry.iotlbType === IotlbType.UPDATE) {
        // Invalidations may cover "everything" with a size that wrapped to 0 (QEMU computes it as
        // addr_mask + 1), so only updates are range-checked.
        if (entry.size === 0n) check.fail('IOTLB update of size 0');
        if (entry.iova + entry.size > U64_LIMIT) check.fail(`IOTLB update iova ${hex(entry.iova)} + size ${hex(entry.size)} wraps past 2^64`);
        if (entry.userAddr + entry.size > U64_LIMIT) check.fail(`IOTLB update uaddr ${hex(entry.userAddr)} + size ${hex(entry.size)} wraps past 2^64`);
      }
      return { type: 'IOTLB_MSG', ...entry };
    }

    case Request.GET_CONFIG: {
      const { offset, size, flags } = decodeConfig(check, r, payload.length);
      return { type: 'GET_CONFIG', offset, size, flags };
    }
    case Request.SET_CONFIG:
      return { type: 'SET_CONFIG', ...decodeConfig(check, r, payload.length) };

    case Request.CREATE_CRYPTO_SESSION:
      return { type: 'CREATE_CRYPTO_SESSION', payload: r.bytes(payload.length) };
    case Request.CLOSE_CRYPTO_SESSION:
      return { type: 'CLOSE_CRYPTO_SESSION', sessionId: r.u64() };

    case Request.GET_INFLIGHT_FD: {
      r.skip(16); // mmap_size, mmap_offset: the reply's fields, zero in the request.
      return { type: 'GET_INFLIGHT_FD', numQueues: r.u16(), queueSize: r.u16() };
    }
    case Request.SET_INFLIGHT_FD: {
      const mmapSize = r.u64();
      const mmapOffset = r.u64();
      if (mmapOffset + mmapSize > U64_LIMIT) check.fail(`inflight offset ${hex(mmapOffset)} + size ${hex(mmapSize)} wraps past 2^64`);
      return { type: 'SET_INFLIGHT_FD', mmapSize, mmapOffset, numQueues: r.u16(), queueSize: r.u16(), fd: fds[0]! };
    }

    case Request.GPU_SET_SOCKET:
      return { type: 'GPU_SET_SOCKET', fd: fds[0]! };

    case Request.ADD_MEM_REG: {
      r.skip(8); // padding
      const region = decodeRegion(r);
      checkRegion(check, region, 'region', true);
      return { type: 'ADD_MEM_REG', region, fd: fds[0]! };
    }
    case Request.REM_MEM_REG: {
      r.skip(8); // padding
      const region = decodeRegion(r);
      // "The mmap offset is ignored": only the ranges identify the region.
      checkRegion(check, region, 'region', false);
      return { type: 'REM_MEM_REG', region, fd: fds.length > 0 ? fds[0]! : -1 };
    }

    case Request.SET_STATUS: {
      const status = r.u64();
      if (status > 0xffn) check.fail(`device status ${hex(status)} does not fit the virtio status byte`);
      return { type: 'SET_STATUS', status };
    }

    case Request.GET_SHARED_OBJECT:
      // QEMU's vhost_user_get_shared_object never sets hdr.size, so it sends no UUID at all;
      // that is refused here (nothing could be looked up), and a failure reply tells QEMU.
      return { type: 'GET_SHARED_OBJECT', uuid: r.bytes(UUID_SIZE) };

    case Request.SET_DEVICE_STATE_FD:
      return { type: 'SET_DEVICE_STATE_FD', direction: r.u32(), phase: r.u32(), fd: fds[0]! };
  }
  // Unreachable while every table row has a case above.
  throw new ProtocolError(`${spec.name}: no decoder`, spec.id);
}

/**
 * The acknowledgement QEMU sends in postcopy mode after reading the back-end's SET_MEM_TABLE or
 * ADD_MEM_REG reply: the same request id, a u64 (0 = OK) and no fds (spec: SET_MEM_TABLE note).
 * A session waiting for it decodes it here instead of with decodeRequest.
 */
export function decodePostcopyAck(header: MessageHeader, payload: Uint8Array, fds: readonly number[]): bigint {
  const id = header.request;
  if (id !== Request.SET_MEM_TABLE && id !== Request.ADD_MEM_REG && id !== Request.REM_MEM_REG) {
    throw new ProtocolError(`${requestName(id)} is not a postcopy memory acknowledgement`, id);
  }
  const check = new Checker(`${requestName(id)} (postcopy ack)`, id);
  check.envelope(header, payload, fds, exactly(8), exactly(0));
  return new Reader(payload).u64();
}

/**
 * Encodes the back-end's reply to `request`. Requests may be answered with their own reply kind
 * (RequestSpec.reply) or, for ack requests and unknown ids, with a u64 status.
 */
export function encodeReply(request: number, reply: BackendReply): EncodedMessage {
  const spec = requestSpecs.get(request);
  const name = requestName(request);
  if (!replyKindsFor(spec).includes(reply.type)) {
    throw new RangeError(`${name}: a '${reply.type}' reply does not answer this request`);
  }
  const w = (size: number) => new Writer(name, request, REPLY_FLAGS, size);
  switch (reply.type) {
    case 'u64':
      return { bytes: w(8).u64(reply.value, 'value').finish(), fds: [] };
    case 'vring-state':
      return { bytes: w(8).u32(reply.index, 'index').u32(reply.num, 'num').finish(), fds: [] };
    case 'config':
      return { bytes: writeConfig(w, name, reply), fds: [] };
    case 'config-error':
      return { bytes: w(0).finish(), fds: [] };
    case 'inflight': {
      // No buffer (mmapSize 0) travels without an fd; QEMU only takes one for a real buffer.
      const hasFd = reply.mmapSize !== 0n;
      if (hasFd) checkFd(name, reply.fd);
      else if (reply.fd >= 0) throw new RangeError(`${name}: an fd without an inflight buffer (mmapSize 0)`);
      const bytes = w(24)
        .u64(reply.mmapSize, 'mmapSize')
        .u64(reply.mmapOffset, 'mmapOffset')
        .u16(reply.numQueues, 'numQueues')
        .u16(reply.queueSize, 'queueSize')
        .skip(4)
        .finish();
      return { bytes, fds: hasFd ? [reply.fd] : [] };
    }
    case 'memory-table': {
      if (reply.regions.length > MAX_MEMORY_REGIONS) throw new RangeError(`${name}: ${reply.regions.length} regions, at most ${MAX_MEMORY_REGIONS}`);
      const writer = w(MEMORY_TABLE_HEADER + REGION_SIZE * reply.regions.length).u32(reply.regions.length, 'nregions').skip(4);
      for (const region of reply.regions) writeRegion(writer, region);
      return { bytes: writer.finish(), fds: [] };
    }
    case 'memory-region':
      return { bytes: writeRegion(w(8 + REGION_SIZE).skip(8), reply.region).finish(), fds: [] };
    case 'userfault-fd':
      checkFd(name, reply.fd);
      return { bytes: w(0).finish(), fds: [reply.fd] };
    case 'crypto-session':
      checkSize(name, reply.payload.length, payloadSizes['crypto-session']);
      return { bytes: w(reply.payload.length).bytes(reply.payload).finish(), fds: [] };
    case 'device-state': {
      if (!Number.isInteger(reply.status) || reply.status < 0 || reply.status > 0xff) {
        throw new RangeError(`${name}: status ${reply.status} does not fit bits 0–7`);
      }
      if (reply.fd >= 0 && reply.status !== 0) throw new RangeError(`${name}: the spec forbids an fd with a failure status`);
      const noFd = reply.fd < 0;
      if (!noFd) checkFd(name, reply.fd);
      const value = BigInt(reply.status) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n);
      return { bytes: w(8).u64(value, 'value').finish(), fds: noFd ? [] : [reply.fd] };
    }
    case 'shared-object': {
      // QEMU only looks at the fd; the u64 (0 with an fd, 1 without) mirrors QEMU's own reply to
      // BACKEND_SHARED_OBJECT_LOOKUP.
      const found = reply.fd >= 0;
      if (found) checkFd(name, reply.fd);
      return { bytes: w(8).u64(found ? 0n : 1n, 'value').finish(), fds: found ? [reply.fd] : [] };
    }
  }
}

function replyKindsFor(spec: RequestSpec | undefined): readonly BackendReplyType[] {
  const kind = spec?.reply ?? 'u64';
  switch (kind) {
    case 'config':
      return ['config', 'config-error'];
    // Postcopy replies; otherwise a REPLY_ACK status.
    case 'memory-table':
    case 'memory-region':
      return ['u64', kind];
    // A u64 failure without an fd reads the same to QEMU as "not found".
    case 'shared-object':
      return ['shared-object', 'u64'];
    default:
      return [kind];
  }
}

// ---- front-end side: requests out, replies in --------------------------------------------------

/** Encodes a request the way QEMU does; `needReply` sets NEED_REPLY (REPLY_ACK). */
export function encodeRequest(req: FrontendRequest, needReply: boolean): EncodedMessage {
  const id = Request[req.type];
  const name = req.type;
  const flags = HeaderFlag.VERSION | (needReply ? HeaderFlag.NEED_REPLY : 0);
  const w = (size: number) => new Writer(name, id, flags, size);
  const none = (): EncodedMessage => ({ bytes: w(0).finish(), fds: [] });
  const u64 = (value: bigint, field: string): EncodedMessage => ({ bytes: w(8).u64(value, field).finish(), fds: [] });
  const state = (index: number, num: number): EncodedMessage => ({
    bytes: w(8).u32(index, 'index').u32(num, 'num').finish(),
    fds: [],
  });
  const withFd = (message: EncodedMessage, fd: number): EncodedMessage => {
    checkFd(name, fd);
    return { bytes: message.bytes, fds: [fd] };
  };
  switch (req.type) {
    case 'GET_FEATURES':
    case 'SET_OWNER':
    case 'RESET_OWNER':
    case 'GET_PROTOCOL_FEATURES':
    case 'GET_QUEUE_NUM':
    case 'POSTCOPY_ADVISE':
    case 'POSTCOPY_LISTEN':
    case 'POSTCOPY_END':
    case 'RESET_DEVICE':
    case 'GET_MAX_MEM_SLOTS':
    case 'GET_STATUS':
    case 'CHECK_DEVICE_STATE':
      return none();
    case 'SET_FEATURES':
    case 'SET_PROTOCOL_FEATURES':
      return u64(req.features, 'features');
    case 'SET_MEM_TABLE': {
      if (req.regions.length > MAX_MEMORY_REGIONS) throw new RangeError(`${name}: ${req.regions.length} regions, at most ${MAX_MEMORY_REGIONS}`);
      const writer = w(MEMORY_TABLE_HEADER + REGION_SIZE * req.regions.length).u32(req.regions.length, 'nregions').skip(4);
      for (const region of req.regions) {
        writeRegion(writer, region);
        checkFd(name, region.fd);
      }
      return { bytes: writer.finish(), fds: req.regions.map((region) => region.fd) };
    }
    case 'SET_LOG_BASE':
      return withFd({ bytes: w(16).u64(req.mmapSize, 'mmapSize').u64(req.mmapOffset, 'mmapOffset').finish(), fds: [] }, req.fd);
    case 'SET_LOG_FD':
    case 'SET_BACKEND_REQ_FD':
    case 'GPU_SET_SOCKET':
      return withFd(none(), req.fd);
    case 'SET_VRING_NUM':
    case 'SET_VRING_BASE':
    case 'SET_VRING_ENABLE':
    case 'SET_VRING_ENDIAN':
      return state(req.index, req.num);
    case 'GET_VRING_BASE':
    case 'VRING_KICK':
      return state(req.index, 0);
    case 'SET_VRING_ADDR': {
      const bytes = w(40)
        .u32(req.index, 'index')
        .u32(req.flags, 'flags')
        .u64(req.descUserAddr, 'descUserAddr')
        .u64(req.usedUserAddr, 'usedUserAddr')
        .u64(req.availUserAddr, 'availUserAddr')
        .u64(req.logGuestAddr, 'logGuestAddr')
        .finish();
      return { bytes, fds: [] };
    }
    case 'SET_VRING_KICK':
    case 'SET_VRING_CALL':
    case 'SET_VRING_ERR': {
      const message = u64(vringFdValue(name, req.index, req.noFd, req.fd), 'u64');
      return req.noFd ? message : withFd(message, req.fd);
    }
    case 'SEND_RARP': {
      if (req.mac.length !== 6) throw new RangeError(`${name}: a MAC address has 6 bytes, got ${req.mac.length}`);
      return { bytes: w(8).bytes(req.mac).skip(2).finish(), fds: [] };
    }
    case 'NET_SET_MTU':
      return u64(req.mtu, 'mtu');
    case 'IOTLB_MSG':
      return { bytes: writeIotlb(w(32), req).finish(), fds: [] };
    case 'GET_CONFIG': {
      // QEMU sends size bytes of zeroes after the config header.
      const bytes = w(CONFIG_HEADER + req.size).u32(req.offset, 'offset').u32(req.size, 'size').u32(req.flags, 'flags').skip(req.size).finish();
      return { bytes, fds: [] };
    }
    case 'SET_CONFIG':
      return { bytes: writeConfig(w, name, req), fds: [] };
    case 'CREATE_CRYPTO_SESSION':
      checkSize(name, req.payload.length, payloadSizes['crypto-session']);
      return { bytes: w(req.payload.length).bytes(req.payload).finish(), fds: [] };
    case 'CLOSE_CRYPTO_SESSION':
      return u64(req.sessionId, 'sessionId');
    case 'GET_INFLIGHT_FD':
      return { bytes: w(24).skip(16).u16(req.numQueues, 'numQueues').u16(req.queueSize, 'queueSize').skip(4).finish(), fds: [] };
    case 'SET_INFLIGHT_FD': {
      const bytes = w(24)
        .u64(req.mmapSize, 'mmapSize')
        .u64(req.mmapOffset, 'mmapOffset')
        .u16(req.numQueues, 'numQueues')
        .u16(req.queueSize, 'queueSize')
        .skip(4)
        .finish();
      return withFd({ bytes, fds: [] }, req.fd);
    }
    case 'ADD_MEM_REG':
      return withFd({ bytes: writeRegion(w(8 + REGION_SIZE).skip(8), req.region).finish(), fds: [] }, req.fd);
    case 'REM_MEM_REG': {
      const message = { bytes: writeRegion(w(8 + REGION_SIZE).skip(8), req.region).finish(), fds: [] };
      return req.fd >= 0 ? withFd(message, req.fd) : message;
    }
    case 'SET_STATUS':
      return u64(req.status, 'status');
    case 'GET_SHARED_OBJECT':
      return { bytes: writeUuid(w(UUID_SIZE), name, req.uuid).finish(), fds: [] };
    case 'SET_DEVICE_STATE_FD':
      return withFd({ bytes: w(8).u32(req.direction, 'direction').u32(req.phase, 'phase').finish(), fds: [] }, req.fd);
  }
}

/**
 * Decodes the back-end's reply to `expectedRequest`. `fds` arrived with it and stay the caller's.
 * The flags must be exactly VERSION | REPLY, as QEMU requires (vhost_user_read_header).
 */
export function decodeReply(
  header: MessageHeader,
  payload: Uint8Array,
  expectedRequest: number,
  fds: readonly number[] = [],
): BackendReply {
  const spec = requestSpecs.get(expectedRequest);
  const check = new Checker(`${requestName(expectedRequest)} reply`, expectedRequest);
  check.replyHeader(header, payload, expectedRequest);
  const r = new Reader(payload);
  const size = payload.length;
  const kind = spec?.reply ?? 'u64';
  switch (kind) {
    case 'u64':
      // DPDK's vhost library answers SET_LOG_BASE with an empty payload; QEMU accepts any size
      // (vhost_user_set_log_base only checks the request id).
      if (spec?.id === Request.SET_LOG_BASE && size === 0) {
        check.fds(fds, exactly(0));
        return { type: 'u64', value: 0n };
      }
      return decodeU64Reply(check, r, size, fds);

    case 'vring-state':
      check.size(size, exactly(8));
      check.fds(fds, exactly(0));
      return { type: 'vring-state', index: r.u32(), num: r.u32() };

    case 'config':
      check.fds(fds, exactly(0));
      if (size === 0) return { type: 'config-error' };
      check.size(size, payloadSizes.config);
      return { type: 'config', ...decodeConfig(check, r, size) };

    case 'inflight': {
      check.size(size, payloadSizes.inflight);
      const mmapSize = r.u64();
      const mmapOffset = r.u64();
      const numQueues = r.u16();
      const queueSize = r.u16();
      // QEMU takes the fd only when mmap_size is non-zero (vhost_user_get_inflight_fd).
      check.fds(fds, exactly(mmapSize === 0n ? 0 : 1));
      return { type: 'inflight', mmapSize, mmapOffset, numQueues, queueSize, fd: mmapSize === 0n ? -1 : fds[0]! };
    }

    case 'memory-table': {
      if (size === 8) return decodeU64Reply(check, r, size, fds);
      check.size(size, payloadSizes['memory-table']);
      check.fds(fds, exactly(0));
      const count = r.u32();
      r.skip(4);
      if (count === 0 || size !== MEMORY_TABLE_HEADER + REGION_SIZE * count) {
        check.fail(`${size}-byte payload does not hold ${count} regions`);
      }
      return { type: 'memory-table', regions: Array.from({ length: count }, () => decodeRegion(r)) };
    }

    case 'memory-region': {
      if (size === 8) return decodeU64Reply(check, r, size, fds);
      check.size(size, payloadSizes['memory-region']);
      check.fds(fds, exactly(0));
      r.skip(8);
      return { type: 'memory-region', region: decodeRegion(r) };
    }

    case 'userfault-fd':
      // QEMU: "Received bad msg size" unless the payload is empty; then it takes the fd.
      check.size(size, exactly(0));
      check.fds(fds, exactly(1));
      return { type: 'userfault-fd', fd: fds[0]! };

    case 'crypto-session':
      check.size(size, payloadSizes['crypto-session']);
      check.fds(fds, exactly(0));
      return { type: 'crypto-session', payload: r.bytes(size) };

    case 'device-state': {
      check.size(size, exactly(8));
      const value = r.u64();
      if (value >> 9n !== 0n) check.fail(`undefined bits in ${hex(value)} (bits 0–7 status, bit 8 no-fd)`);
      const status = Number(value & 0xffn);
      const noFd = (value & BigInt(VRING_NOFD_MASK)) !== 0n;
      check.fds(fds, exactly(noFd ? 0 : 1));
      if (status !== 0 && !noFd) check.fail(`status ${status} with an fd: "the back-end must not both indicate an error and return a file descriptor"`);
      return { type: 'device-state', status, fd: noFd ? -1 : fds[0]! };
    }

    case 'shared-object':
      // QEMU reads only the fd. libvhost-user echoes the 16-byte request; a u64 status is the
      // form QEMU itself uses for BACKEND_SHARED_OBJECT_LOOKUP.
      if (size !== 8 && size !== UUID_SIZE) check.fail(`payload is ${size} bytes, expected 8 or ${UUID_SIZE}`);
      check.fds(fds, { min: 0, max: 1 });
      return { type: 'shared-object', fd: fds.length > 0 ? fds[0]! : -1 };
  }
}

function decodeU64Reply(check: Checker, r: Reader, size: number, fds: readonly number[]): BackendReply {
  check.size(size, exactly(8));
  check.fds(fds, exactly(0));
  return { type: 'u64', value: r.u64() };
}

// ---- the back-end channel: back-end requests, front-end replies -------------------------------

export interface BackendRequestSpec {
  readonly id: number;
  readonly name: BackendRequestName;
  readonly payload: PayloadKind;
  readonly size: Range;
  readonly fds: Range;
  /** SHARED_OBJECT_LOOKUP always gets a u64 + fd; the others an ack when NEED_REPLY is set. */
  readonly replies: 'always' | 'ack';
  readonly protocolFeature: number;
}

function backendRow(id: number, payload: PayloadKind, protocolFeature: number, fds = exactly(0), replies: 'always' | 'ack' = 'ack'): BackendRequestSpec {
  return { id, name: backendRequestName(id) as BackendRequestName, payload, size: payloadSizes[payload], fds, replies, protocolFeature };
}

/** Wire properties of every back-end request (spec: "Back-end message types"). */
export const backendRequestSpecs: ReadonlyMap<number, BackendRequestSpec> = new Map(
  [
    backendRow(BackendRequestId.IOTLB_MSG, 'iotlb', ProtocolFeature.BACKEND_REQ),
    backendRow(BackendRequestId.CONFIG_CHANGE_MSG, 'none', ProtocolFeature.CONFIG),
    backendRow(BackendRequestId.VRING_HOST_NOTIFIER_MSG, 'vring-area', ProtocolFeature.HOST_NOTIFIER, { min: 0, max: 1 }),
    backendRow(BackendRequestId.VRING_CALL, 'vring-state', ProtocolFeature.INBAND_NOTIFICATIONS),
    backendRow(BackendRequestId.VRING_ERR, 'vring-state', ProtocolFeature.INBAND_NOTIFICATIONS),
    backendRow(BackendRequestId.SHARED_OBJECT_ADD, 'shared-object', ProtocolFeature.SHARED_OBJECT),
    backendRow(BackendRequestId.SHARED_OBJECT_REMOVE, 'shared-object', ProtocolFeature.SHARED_OBJECT),
    backendRow(BackendRequestId.SHARED_OBJECT_LOOKUP, 'shared-object', ProtocolFeature.SHARED_OBJECT, exactly(0), 'always'),
  ].map((spec) => [spec.id, spec]),
);

/** Encodes a back-end request; `needReply` asks the front-end for an ack (REPLY_ACK). */
export function encodeBackendRequest(req: BackendRequestValue, needReply: boolean): EncodedMessage {
  const id = BackendRequestId[req.type];
  const name = req.type;
  const flags = HeaderFlag.VERSION | (needReply ? HeaderFlag.NEED_REPLY : 0);
  const w = (size: number) => new Writer(name, id, flags, size);
  switch (req.type) {
    case 'IOTLB_MSG':
      return { bytes: writeIotlb(w(32), req).finish(), fds: [] };
    case 'CONFIG_CHANGE_MSG':
      return { bytes: w(0).finish(), fds: [] };
    case 'VRING_HOST_NOTIFIER_MSG': {
      const bytes = w(24)
        .u64(vringFdValue(name, req.index, req.noFd, req.fd), 'u64')
        .u64(req.size, 'size')
        .u64(req.offset, 'offset')
        .finish();
      if (req.noFd) return { bytes, fds: [] };
      checkFd(name, req.fd);
      return { bytes, fds: [req.fd] };
    }
    case 'VRING_CALL':
    case 'VRING_ERR':
      return { bytes: w(8).u32(req.index, 'index').u32(0, 'num').finish(), fds: [] };
    case 'SHARED_OBJECT_ADD':
    case 'SHARED_OBJECT_REMOVE':
    case 'SHARED_OBJECT_LOOKUP':
      return { bytes: writeUuid(w(UUID_SIZE), name, req.uuid).finish(), fds: [] };
  }
}

/** Decodes a back-end request on the front-end side. `fds` stay the caller's. */
export function decodeBackendRequest(header: MessageHeader, payload: Uint8Array, fds: readonly number[]): BackendRequestValue {
  const spec = backendRequestSpecs.get(header.request);
  if (!spec) throw new UnknownRequestError(header.request, 'back-end request');
  const check = new Checker(`BACKEND_${spec.name}`, spec.id);
  check.envelope(header, payload, fds, spec.size, spec.fds);
  const r = new Reader(payload);
  switch (spec.id) {
    case BackendRequestId.IOTLB_MSG: {
      const entry = decodeIotlb(r);
      if (entry.iotlbType !== IotlbType.MISS && entry.iotlbType !== IotlbType.ACCESS_FAIL) {
        check.fail(`IOTLB type ${entry.iotlbType}: the back-end sends only miss (1) and access fail (4)`);
      }
      checkIotlbPerm(check, entry);
      return { type: 'IOTLB_MSG', ...entry };
    }
    case BackendRequestId.CONFIG_CHANGE_MSG:
      return { type: 'CONFIG_CHANGE_MSG' };
    case BackendRequestId.VRING_HOST_NOTIFIER_MSG: {
      const { index, noFd } = decodeVringFd(check, r.u64(), fds.length, 'queue');
      return { type: 'VRING_HOST_NOTIFIER_MSG', index, noFd, size: r.u64(), offset: r.u64(), fd: noFd ? -1 : fds[0]! };
    }
    case BackendRequestId.VRING_CALL:
    case BackendRequestId.VRING_ERR: {
      const index = r.u32();
      const num = r.u32();
      if (num !== 0) check.fail(`state.num is reserved and must be 0, got ${num}`);
      return { type: spec.name, index } as BackendRequestValue;
    }
    case BackendRequestId.SHARED_OBJECT_ADD:
    case BackendRequestId.SHARED_OBJECT_REMOVE:
    case BackendRequestId.SHARED_OBJECT_LOOKUP:
      return { type: spec.name, uuid: r.bytes(UUID_SIZE) } as BackendRequestValue;
  }
  throw new ProtocolError(`BACKEND_${spec.name}: no decoder`, spec.id);
}

/** Encodes the front-end's reply to a back-end request. */
export function encodeFrontendReply(request: number, reply: FrontendReply): EncodedMessage {
  const name = `BACKEND_${backendRequestName(request)}`;
  const writer = new Writer(name, request, REPLY_FLAGS, 8);
  if (reply.type === 'u64') return { bytes: writer.u64(reply.value, 'value').finish(), fds: [] };
  if (request !== BackendRequestId.SHARED_OBJECT_LOOKUP) throw new RangeError(`${name}: a 'shared-object' reply does not answer this request`);
  if (reply.fd >= 0 && reply.value !== 0n) throw new RangeError(`${name}: "if the operation fails, no fd is sent"`);
  if (reply.fd >= 0) checkFd(name, reply.fd);
  return { bytes: writer.u64(reply.value, 'value').finish(), fds: reply.fd >= 0 ? [reply.fd] : [] };
}

/** Decodes the front-end's reply to the back-end request `expectedRequest`. `fds` stay the caller's. */
export function decodeFrontendReply(
  header: MessageHeader,
  payload: Uint8Array,
  expectedRequest: number,
  fds: readonly number[] = [],
): FrontendReply {
  const check = new Checker(`BACKEND_${backendRequestName(expectedRequest)} reply`, expectedRequest);
  check.replyHeader(header, payload, expectedRequest);
  check.size(payload.length, exactly(8));
  const value = new Reader(payload).u64();
  if (expectedRequest !== BackendRequestId.SHARED_OBJECT_LOOKUP) {
    check.fds(fds, exactly(0));
    return { type: 'u64', value };
  }
  // QEMU answers a dma-buf lookup that finds nothing with status 0 and no fd, so an fd is
  // optional on success; on failure there must be none.
  check.fds(fds, { min: 0, max: value === 0n ? 1 : 0 });
  return { type: 'shared-object', value, fd: fds.length > 0 ? fds[0]! : -1 };
}

// ---- payload layouts ---------------------------------------------------------------------------

function decodeMemoryTable(check: Checker, r: Reader, size: number, fds: readonly number[]): MemoryRegionWithFd[] {
  const count = r.u32();
  r.skip(4); // padding
  // Zero regions is legal: the spec sets no lower bound and the kernel's VHOST_SET_MEM_TABLE
  // accepts an empty table. (QEMU's postcopy acknowledgement has this shape too.)
  if (count > MAX_MEMORY_REGIONS) check.fail(`${count} regions, at most ${MAX_MEMORY_REGIONS} fit one message`);
  const expected = MEMORY_TABLE_HEADER + REGION_SIZE * count;
  if (size !== expected) check.fail(`payload is ${size} bytes, expected ${expected} for ${count} regions`);
  if (fds.length !== count) check.fail(`${fds.length} fds for ${count} regions: "the size and ordering of the fds matches the number and ordering of memory regions"`);
  const regions = Array.from({ length: count }, (_, i): MemoryRegionWithFd => ({ ...decodeRegion(r), fd: fds[i]! }));
  regions.forEach((region, i) => checkRegion(check, region, `region ${i}`, true));
  checkDisjoint(check, regions, 'guestPhysAddr', 'guest-physical');
  checkDisjoint(check, regions, 'userspaceAddr', 'userspace');
  return regions;
}

function decodeRegion(r: Reader): MemoryRegion {
  return { guestPhysAddr: r.u64(), memorySize: r.u64(), userspaceAddr: r.u64(), mmapOffset: r.u64() };
}

/** A region must have a size and must not wrap around the 64-bit address or file-offset space. */
function checkRegion(check: Checker, region: MemoryRegion, label: string, withOffset: boolean): void {
  const { guestPhysAddr, memorySize, userspaceAddr, mmapOffset } = region;
  if (memorySize === 0n) check.fail(`${label} has size 0`);
  if (guestPhysAddr + memorySize > U64_LIMIT) check.fail(`${label} guest range ${hex(guestPhysAddr)} + ${hex(memorySize)} wraps past 2^64`);
  if (userspaceAddr + memorySize > U64_LIMIT) check.fail(`${label} userspace range ${hex(userspaceAddr)} + ${hex(memorySize)} wraps past 2^64`);
  if (withOffset && mmapOffset + memorySize > U64_LIMIT) check.fail(`${label} mmap offset ${hex(mmapOffset)} + ${hex(memorySize)} wraps past 2^64`);
}

/** Two regions claiming the same guest or userspace bytes would make translation ambiguous. */
function checkDisjoint(check: Checker, regions: readonly MemoryRegion[], key: 'guestPhysAddr' | 'userspaceAddr', what: string): void {
  const sorted = [...regions].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1]!;
    const current = sorted[i]!;
    if (previous[key] + previous.memorySize > current[key]) {
      check.fail(`regions overlap in ${what} addresses: [${hex(previous[key])}, +${hex(previous.memorySize)}) and [${hex(current[key])}, +${hex(current.memorySize)})`);
    }
  }
}

function writeRegion(writer: Writer, region: MemoryRegion): Writer {
  return writer
    .u64(region.guestPhysAddr, 'guestPhysAddr')
    .u64(region.memorySize, 'memorySize')
    .u64(region.userspaceAddr, 'userspaceAddr')
    .u64(region.mmapOffset, 'mmapOffset');
}

function decodeVringAddr(check: Checker, r: Reader): FrontendRequest {
  const index = r.u32();
  const flags = r.u32();
  const descUserAddr = r.u64();
  const usedUserAddr = r.u64();
  const availUserAddr = r.u64();
  const logGuestAddr = r.u64();
  if ((flags & ~VringAddrFlag.LOG) !== 0) check.fail(`undefined ring flags 0x${(flags >>> 0).toString(16)} (only bit 0, LOG, exists)`);
  // The driver must align the ring parts (virtio 1.2 §2.7); the back-end's atomic accesses
  // rely on it. Packed rings need 16/4/4, which these also accept.
  const parts: [string, bigint, number][] = [
    ['descriptor table', descUserAddr, RING_ALIGN.desc],
    ['used ring', usedUserAddr, RING_ALIGN.used],
    ['available ring', availUserAddr, RING_ALIGN.avail],
  ];
  for (const [what, address, alignment] of parts) {
    if (address % BigInt(alignment) !== 0n) check.fail(`${what} address ${hex(address)} is not ${alignment}-byte aligned`);
  }
  return { type: 'SET_VRING_ADDR', index, flags, descUserAddr, usedUserAddr, availUserAddr, logGuestAddr };
}

/** Bits 0–7: index; bit 8: no fd (then the ancillary data must be empty); the rest: zero. */
function decodeVringFd(check: Checker, value: bigint, fdCount: number, what: string): { index: number; noFd: boolean } {
  const undefinedBits = value & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK);
  if (undefinedBits !== 0n) check.fail(`undefined bits ${hex(undefinedBits)} in ${hex(value)} (bits 0–7 ${what} index, bit 8 no-fd)`);
  const noFd = (value & BigInt(VRING_NOFD_MASK)) !== 0n;
  if (noFd && fdCount !== 0) check.fail(`the invalid-fd flag is set but ${fdCount} fd came with the message`);
  if (!noFd && fdCount !== 1) check.fail('no fd came with the message and the invalid-fd flag (bit 8) is not set');
  return { index: Number(value & BigInt(VRING_IDX_MASK)), noFd };
}

function vringFdValue(name: string, index: number, noFd: boolean, fd: number): bigint {
  if (!Number.isInteger(index) || index < 0 || index > VRING_IDX_MASK) throw new RangeError(`${name}: index ${index} does not fit bits 0–7`);
  if (noFd !== fd < 0) throw new RangeError(`${name}: noFd must be set exactly when fd is -1`);
  return BigInt(index) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n);
}

function decodeIotlb(r: Reader): IotlbEntry {
  const iova = r.u64();
  const size = r.u64();
  const userAddr = r.u64();
  const perm = r.u8();
  const iotlbType = r.u8();
  return { iova, size, userAddr, perm, iotlbType };
}

function checkIotlbPerm(check: Checker, entry: IotlbEntry): void {
  if (entry.perm > 3) check.fail(`IOTLB permission ${entry.perm} is not 0–3`);
}

function writeIotlb(writer: Writer, entry: IotlbEntry): Writer {
  return writer
    .u64(entry.iova, 'iova')
    .u64(entry.size, 'size')
    .u64(entry.userAddr, 'userAddr')
    .u8(entry.perm, 'perm')
    .u8(entry.iotlbType, 'iotlbType')
    .skip(6);
}

/** u32 offset, u32 size, u32 flags, then exactly `size` bytes (≤ 256). */
function decodeConfig(check: Checker, r: Reader, payloadSize: number): { offset: number; size: number; flags: number; payload: Uint8Array } {
  const offset = r.u32();
  const size = r.u32();
  const flags = r.u32();
  if (size > MAX_CONFIG_SIZE) check.fail(`config size ${size} exceeds ${MAX_CONFIG_SIZE}`);
  if (payloadSize !== CONFIG_HEADER + size) check.fail(`payload is ${payloadSize} bytes, expected ${CONFIG_HEADER} + config size ${size}`);
  if (flags !== ConfigFlag.FRONTEND && flags !== ConfigFlag.MIGRATION) check.fail(`config flags ${flags} are neither 0 (front-end) nor 1 (migration)`);
  return { offset, size, flags, payload: r.bytes(size) };
}

function writeConfig(w: (size: number) => Writer, name: string, config: { offset: number; size: number; flags: number; payload: Uint8Array }): Uint8Array {
  if (config.size !== config.payload.length) throw new RangeError(`${name}: size ${config.size} but ${config.payload.length} payload bytes`);
  if (config.size > MAX_CONFIG_SIZE) throw new RangeError(`${name}: config size ${config.size} exceeds ${MAX_CONFIG_SIZE}`);
  return w(CONFIG_HEADER + config.size)
    .u32(config.offset, 'offset')
    .u32(config.size, 'size')
    .u32(config.flags, 'flags')
    .bytes(config.payload)
    .finish();
}

function writeUuid(writer: Writer, name: string, uuid: Uint8Array): Writer {
  if (uuid.length !== UUID_SIZE) throw new RangeError(`${name}: a UUID has ${UUID_SIZE} bytes, got ${uuid.length}`);
  return writer.bytes(uuid);
}

// ---- checks, reading and writing ---------------------------------------------------------------

/** Validation for one message; every failure message starts with the message's name. */
class Checker {
  constructor(
    private readonly name: string,
    private readonly id: number,
  ) {}

  fail(message: string): never {
    throw new ProtocolError(`${this.name}: ${message}`, this.id);
  }

  /** Generic checks of a request: flags, payload length, size and fd count. */
  envelope(header: MessageHeader, payload: Uint8Array, fds: readonly number[], size: Range, fdRange: Range): void {
    checkFlags(header);
    if ((header.flags & HeaderFlag.REPLY) !== 0) this.fail('the REPLY flag is set on a request');
    this.payloadLength(header, payload);
    this.size(payload.length, size);
    this.fds(fds, fdRange);
  }

  replyHeader(header: MessageHeader, payload: Uint8Array, expectedRequest: number): void {
    if (header.request !== expectedRequest) this.fail(`got a reply to request ${header.request} instead`);
    if (header.flags !== REPLY_FLAGS) this.fail(`reply flags 0x${(header.flags >>> 0).toString(16)}, expected exactly 0x${REPLY_FLAGS.toString(16)} (version 1 | REPLY)`);
    this.payloadLength(header, payload);
  }

  payloadLength(header: MessageHeader, payload: Uint8Array): void {
    if (payload.length !== header.size) this.fail(`${payload.length} payload bytes for a header size of ${header.size}`);
  }

  size(size: number, range: Range): void {
    if (size < range.min || size > range.max) {
      this.fail(range.min === range.max ? `payload is ${size} bytes, expected ${range.min}` : `payload is ${size} bytes, expected ${range.min}–${range.max}`);
    }
  }

  fds(fds: readonly number[], range: Range): void {
    if (fds.length < range.min || fds.length > range.max) {
      const expected = range.min === range.max ? `${range.min}` : `${range.min}–${range.max}`;
      this.fail(`${fds.length} fds came with the message, expected ${expected}`);
    }
  }
}

/** Sequential little-endian reads; callers check sizes first, so reads never run past the end. */
class Reader {
  private readonly view: DataView;
  private offset = 0;

  constructor(private readonly payload: Uint8Array) {
    this.view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  }

  u8(): number {
    return this.view.getUint8(this.offset++);
  }

  u16(): number {
    const value = this.view.getUint16(this.offset, LITTLE_ENDIAN);
    this.offset += 2;
    return value;
  }

  u32(): number {
    const value = this.view.getUint32(this.offset, LITTLE_ENDIAN);
    this.offset += 4;
    return value;
  }

  u64(): bigint {
    const value = this.view.getBigUint64(this.offset, LITTLE_ENDIAN);
    this.offset += 8;
    return value;
  }

  /** A copy: decoded values must not alias a receive buffer the transport may reuse. */
  bytes(length: number): Uint8Array {
    if (this.offset + length > this.payload.length) throw new RangeError('read past the end of the payload');
    const copy = this.payload.slice(this.offset, this.offset + length);
    this.offset += length;
    return copy;
  }

  skip(length: number): void {
    this.offset += length;
  }
}

/** Builds header + payload in one buffer, checking that every value fits its field. */
class Writer {
  private readonly buffer: Uint8Array;
  private readonly view: DataView;
  private offset = HEADER_SIZE;

  constructor(
    private readonly name: string,
    request: number,
    flags: number,
    payloadSize: number,
  ) {
    this.buffer = new Uint8Array(HEADER_SIZE + payloadSize);
    this.view = new DataView(this.buffer.buffer);
    this.view.setUint32(0, request, LITTLE_ENDIAN);
    this.view.setUint32(4, flags, LITTLE_ENDIAN);
    this.view.setUint32(8, payloadSize, LITTLE_ENDIAN);
  }

  u8(value: number, field: string): this {
    this.view.setUint8(this.offset, this.unsigned(value, 0xff, field));
    this.offset += 1;
    return this;
  }

  u16(value: number, field: string): this {
    this.view.setUint16(this.offset, this.unsigned(value, 0xffff, field), LITTLE_ENDIAN);
    this.offset += 2;
    return this;
  }

  u32(value: number, field: string): this {
    this.view.setUint32(this.offset, this.unsigned(value, 0xffff_ffff, field), LITTLE_ENDIAN);
    this.offset += 4;
    return this;
  }

  u64(value: bigint, field: string): this {
    if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
      throw new RangeError(`${this.name}: ${field} ${String(value)} is not a u64 bigint`);
    }
    this.view.setBigUint64(this.offset, value, LITTLE_ENDIAN);
    this.offset += 8;
    return this;
  }

  bytes(bytes: Uint8Array): this {
    this.buffer.set(bytes, this.offset);
    this.offset += bytes.length;
    return this;
  }

  /** Zero-filled padding (the buffer starts zeroed). */
  skip(length: number): this {
    this.offset += length;
    return this;
  }

  finish(): Uint8Array {
    if (this.offset !== this.buffer.length) throw new Error(`${this.name}: wrote ${this.offset} of ${this.buffer.length} bytes`);
    return this.buffer;
  }

  private unsigned(value: number, max: number, field: string): number {
    if (!Number.isInteger(value) || value < 0 || value > max) throw new RangeError(`${this.name}: ${field} ${value} does not fit (0–${max})`);
    return value;
  }
}

function checkFd(name: string, fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`${name}: ${fd} is not a file descriptor`);
}

function checkSize(name: string, size: number, range: Range): void {
  if (size < range.min || size > range.max) throw new RangeError(`${name}: payload of ${size} bytes, expected ${range.min}–${range.max}`);
}

function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
