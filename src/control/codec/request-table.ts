// The request table: one row per front-end request with its wire properties (payload layout
// and sizes, fds, reply policy, the protocol feature it depends on), checked by generic code
// before any handler runs (spec: "Front-end message types").
import {
  MAX_CONFIG_SIZE,
  MAX_MEMORY_REGIONS,
  MAX_PAYLOAD_SIZE,
  ProtocolFeature,
  Request,
  UUID_SIZE,
  requestName,
  type RequestName,
} from '../protocol.js';
import type { BackendReplyType } from '../messages.js';
import { type Range, exactly } from './wire.js';
import { CONFIG_HEADER, MEMORY_TABLE_HEADER, REGION_SIZE } from './layouts.js';

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

/** Legal payload sizes of each layout. */
export const payloadSizes: Record<PayloadKind, Range> = {
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
  row(Request.ADD_MEM_REG, 'memory-region', {
    fds: ONE_FD,
    reply: 'memory-region',
    feature: ProtocolFeature.CONFIGURE_MEM_SLOTS,
  }),
  // "No file descriptors SHOULD be passed ... the back-end MAY accept messages with one": older
  // QEMUs sent the region's fd along.
  row(Request.REM_MEM_REG, 'memory-region', { fds: { min: 0, max: 1 }, feature: ProtocolFeature.CONFIGURE_MEM_SLOTS }),
  row(Request.SET_STATUS, 'u64', { feature: ProtocolFeature.STATUS }),
  row(Request.GET_STATUS, 'none', { ...always(), feature: ProtocolFeature.STATUS }),
  row(Request.GET_SHARED_OBJECT, 'shared-object', { ...always('shared-object'), feature: ProtocolFeature.SHARED_OBJECT }),
  row(Request.SET_DEVICE_STATE_FD, 'transfer-state', {
    fds: ONE_FD,
    ...always('device-state'),
    feature: ProtocolFeature.DEVICE_STATE,
  }),
  row(Request.CHECK_DEVICE_STATE, 'none', { ...always(), feature: ProtocolFeature.DEVICE_STATE }),
];

/** Wire properties of every front-end request, by id: what generic code checks before a handler runs. */
export const requestSpecs: ReadonlyMap<number, RequestSpec> = new Map(requestTable.map((spec) => [spec.id, spec]));
