// The numbers of the vhost-user protocol, nothing else: request ids, header flags, feature bits,
// field masks and limits. Source: QEMU docs/interop/vhost-user.rst (cited as "spec"), with
// struct layouts from QEMU hw/virtio/vhost-user.c, subprojects/libvhost-user/libvhost-user.h and
// DPDK lib/vhost/vhost_user.h. Names drop the VHOST_USER_ prefix.

/** Front-end → back-end requests (spec: "Front-end message types"). */
export const Request = {
  GET_FEATURES: 1,
  SET_FEATURES: 2,
  SET_OWNER: 3,
  RESET_OWNER: 4,
  SET_MEM_TABLE: 5,
  SET_LOG_BASE: 6,
  SET_LOG_FD: 7,
  SET_VRING_NUM: 8,
  SET_VRING_ADDR: 9,
  SET_VRING_BASE: 10,
  GET_VRING_BASE: 11,
  SET_VRING_KICK: 12,
  SET_VRING_CALL: 13,
  SET_VRING_ERR: 14,
  GET_PROTOCOL_FEATURES: 15,
  SET_PROTOCOL_FEATURES: 16,
  GET_QUEUE_NUM: 17,
  SET_VRING_ENABLE: 18,
  SEND_RARP: 19,
  NET_SET_MTU: 20,
  /** Previously SET_SLAVE_REQ_FD. */
  SET_BACKEND_REQ_FD: 21,
  IOTLB_MSG: 22,
  SET_VRING_ENDIAN: 23,
  GET_CONFIG: 24,
  SET_CONFIG: 25,
  CREATE_CRYPTO_SESSION: 26,
  CLOSE_CRYPTO_SESSION: 27,
  POSTCOPY_ADVISE: 28,
  POSTCOPY_LISTEN: 29,
  POSTCOPY_END: 30,
  GET_INFLIGHT_FD: 31,
  SET_INFLIGHT_FD: 32,
  GPU_SET_SOCKET: 33,
  RESET_DEVICE: 34,
  VRING_KICK: 35,
  GET_MAX_MEM_SLOTS: 36,
  ADD_MEM_REG: 37,
  REM_MEM_REG: 38,
  SET_STATUS: 39,
  GET_STATUS: 40,
  GET_SHARED_OBJECT: 41,
  SET_DEVICE_STATE_FD: 42,
  CHECK_DEVICE_STATE: 43,
} as const;
export type RequestName = keyof typeof Request;

/**
 * Back-end → front-end requests on the channel set up by SET_BACKEND_REQ_FD (spec: "Back-end
 * message types"; each is VHOST_USER_BACKEND_<name>, previously VHOST_USER_SLAVE_<name>).
 */
export const BackendRequestId = {
  IOTLB_MSG: 1,
  CONFIG_CHANGE_MSG: 2,
  VRING_HOST_NOTIFIER_MSG: 3,
  VRING_CALL: 4,
  VRING_ERR: 5,
  SHARED_OBJECT_ADD: 6,
  SHARED_OBJECT_REMOVE: 7,
  SHARED_OBJECT_LOOKUP: 8,
} as const;
export type BackendRequestName = keyof typeof BackendRequestId;

/** Header `flags` bits (spec: "Header"). */
export const HeaderFlag = {
  /** Bits 0–1 hold the protocol version. */
  VERSION_MASK: 0x3,
  /** The only version there is. */
  VERSION: 0x1,
  /** Set on every reply. */
  REPLY: 0x4,
  /** The sender asks for a REPLY_ACK status (spec: "REPLY_ACK"). */
  NEED_REPLY: 0x8,
} as const;
/** Every bit the spec defines; a message with any other bit set is rejected. */
export const KNOWN_HEADER_FLAGS = HeaderFlag.VERSION_MASK | HeaderFlag.REPLY | HeaderFlag.NEED_REPLY;

/** Protocol feature bit numbers (spec: "Protocol features"). */
export const ProtocolFeature = {
  MQ: 0,
  LOG_SHMFD: 1,
  RARP: 2,
  REPLY_ACK: 3,
  /** NET_MTU in libvhost-user. */
  MTU: 4,
  BACKEND_REQ: 5,
  CROSS_ENDIAN: 6,
  CRYPTO_SESSION: 7,
  PAGEFAULT: 8,
  CONFIG: 9,
  BACKEND_SEND_FD: 10,
  HOST_NOTIFIER: 11,
  INFLIGHT_SHMFD: 12,
  RESET_DEVICE: 13,
  INBAND_NOTIFICATIONS: 14,
  CONFIGURE_MEM_SLOTS: 15,
  STATUS: 16,
  XEN_MMAP: 17,
  SHARED_OBJECT: 18,
  DEVICE_STATE: 19,
} as const;

/** Virtio feature bit 30, reused by vhost-user to announce protocol feature negotiation. */
export const VHOST_USER_F_PROTOCOL_FEATURES = 30;

// Virtio feature bits the framework itself acts on (virtio 1.2 §6 "Reserved Feature Bits").
export const VIRTIO_F_NOTIFY_ON_EMPTY = 24;
/** VHOST_F_LOG_ALL: dirty-page logging for migration (a vhost bit, not a virtio one). */
export const VHOST_F_LOG_ALL = 26;
export const VIRTIO_F_ANY_LAYOUT = 27;
/** VIRTIO_RING_F_INDIRECT_DESC in the C headers. */
export const VIRTIO_F_INDIRECT_DESC = 28;
/** VIRTIO_RING_F_EVENT_IDX in the C headers. */
export const VIRTIO_F_EVENT_IDX = 29;
export const VIRTIO_F_VERSION_1 = 32;
/** Called IOMMU_PLATFORM in vhost-user.rst. */
export const VIRTIO_F_ACCESS_PLATFORM = 33;
export const VIRTIO_F_RING_PACKED = 34;
export const VIRTIO_F_IN_ORDER = 35;

/** Virtio device status bits (virtio 1.2 §2.1), carried by SET_STATUS / GET_STATUS. */
export const DeviceStatus = {
  ACKNOWLEDGE: 1,
  DRIVER: 2,
  DRIVER_OK: 4,
  FEATURES_OK: 8,
  DEVICE_NEEDS_RESET: 64,
  FAILED: 128,
} as const;

/** SET_VRING_KICK / _CALL / _ERR payload: bits 0–7 are the ring index, bit 8 says "no fd". */
export const VRING_IDX_MASK = 0xff;
export const VRING_NOFD_MASK = 0x100;

/** SET_VRING_ADDR flags: bit 0 (VHOST_VRING_F_LOG) logs used-ring writes. No other bit exists. */
export const VringAddrFlag = { LOG: 0x1 } as const;

/** SET_VRING_ENDIAN state.num. */
export const VringEndian = { LITTLE: 0, BIG: 1 } as const;

/** struct vhost_iotlb_msg `type`. */
export const IotlbType = { MISS: 1, UPDATE: 2, INVALIDATE: 3, ACCESS_FAIL: 4 } as const;
/** struct vhost_iotlb_msg `perm`. */
export const IotlbPerm = { NONE: 0, READ: 1, WRITE: 2, READ_WRITE: 3 } as const;

/** GET_CONFIG / SET_CONFIG `flags` (VhostSetConfigType). */
export const ConfigFlag = { FRONTEND: 0, MIGRATION: 1 } as const;

/** SET_DEVICE_STATE_FD parameters (spec: "Device state transfer parameters"). */
export const DeviceStateDirection = { SAVE: 0, LOAD: 1 } as const;
export const DeviceStatePhase = { STOPPED: 0 } as const;

// ---- sizes and limits -------------------------------------------------------------------

export const HEADER_SIZE = 12;
/**
 * Largest payload accepted. The spec sets no bound (size is a u32); QEMU bounds it by its payload
 * union, whose largest member is the crypto session (~1.1 KiB since QEMU 8 added asymmetric
 * keys; ≤ 8 + 8·32 for memory tables, 12 + 256 for config). One page covers every message with
 * room to spare and keeps a hostile size field from making us buffer megabytes.
 */
export const MAX_PAYLOAD_SIZE = 4096;
/** Fds per message in the baseline protocol (spec: SET_MEM_TABLE "region0 … region7"). */
export const MAX_FDS = 8;
/** VHOST_MEMORY_BASELINE_NREGIONS: regions in one SET_MEM_TABLE. */
export const MAX_MEMORY_REGIONS = 8;
/** VHOST_USER_MAX_CONFIG_SIZE in QEMU, libvhost-user and DPDK. */
export const MAX_CONFIG_SIZE = 256;
/** Largest split-virtqueue size (virtio 1.2 §2.7: "Queue Size ... maximum 32768"). */
export const MAX_QUEUE_SIZE = 32768;
/** Dirty-log page size (spec: "VHOST_LOG_PAGE 0x1000"). */
export const LOG_PAGE_SIZE = 4096;
export const UUID_SIZE = 16;

/** Ring part alignments (virtio 1.2 §2.7 split rings): descriptor table, available ring, used ring. */
export const RING_ALIGN = { desc: 16, avail: 2, used: 4 } as const;

export { bit, hasFeature, isPowerOfTwo } from '../bits.js';

const requestNames = new Map<number, string>(Object.entries(Request).map(([name, id]) => [id, name]));
const backendRequestNames = new Map<number, string>(Object.entries(BackendRequestId).map(([name, id]) => [id, name]));

/** Spec name of a front-end request id, or `request <id>` for an unknown one (for messages). */
export function requestName(id: number): string {
  return requestNames.get(id) ?? `request ${id}`;
}

/** Spec name (without BACKEND_) of a back-end request id, or `backend request <id>`. */
export function backendRequestName(id: number): string {
  return backendRequestNames.get(id) ?? `backend request ${id}`;
}
