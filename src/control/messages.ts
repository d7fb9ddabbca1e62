// The typed values the codec turns messages into, one per request and reply kind.
// Conventions: u64 wire quantities are bigint; u32 and smaller are number; fds are plain numbers
// with -1 meaning "no fd" (the wire's invalid-fd flag); fds always belong to whoever received the
// message, never to the value that mentions them.

/** One memory region (spec: "Memory region description"), as libvhost-user names its fields. */
export interface RegionDescription {
  guestPhysAddr: bigint;
  memorySize: bigint;
  userspaceAddr: bigint;
  mmapOffset: bigint;
}

/** A region of SET_MEM_TABLE with the fd it is mapped from (same order as the ancillary data). */
export interface RegionDescriptionWithFd extends RegionDescription {
  fd: number;
}

/** struct vhost_iotlb_msg. */
export interface IotlbEntry {
  iova: bigint;
  size: bigint;
  userAddr: bigint;
  /** IotlbPerm. */
  perm: number;
  /** IotlbType (named `type` in C). */
  iotlbType: number;
}

type Message<T extends string, Fields = Record<never, never>> = { type: T } & Fields;

/** A vring state description ({ index, num }). */
interface VringState {
  index: number;
  num: number;
}

/** SET_VRING_KICK / _CALL / _ERR: noFd is the wire's bit 8; fd is -1 exactly when it is set. */
interface VringFd {
  index: number;
  noFd: boolean;
  fd: number;
}

/** Virtio config space access; `size` always equals `payload.length`. */
interface ConfigAccess {
  offset: number;
  size: number;
  flags: number;
  payload: Uint8Array;
}

/** Requests the front-end sends to the back-end, discriminated by their spec name. */
export type FrontendRequest =
  | Message<'GET_FEATURES'>
  | Message<'SET_FEATURES', { features: bigint }>
  | Message<'SET_OWNER'>
  | Message<'RESET_OWNER'>
  | Message<'SET_MEM_TABLE', { regions: RegionDescriptionWithFd[] }>
  | Message<'SET_LOG_BASE', { mmapSize: bigint; mmapOffset: bigint; fd: number }>
  | Message<'SET_LOG_FD', { fd: number }>
  | Message<'SET_VRING_NUM', VringState>
  | Message<
      'SET_VRING_ADDR',
      {
        index: number;
        /** VringAddrFlag bits. */
        flags: number;
        descUserAddr: bigint;
        usedUserAddr: bigint;
        availUserAddr: bigint;
        logGuestAddr: bigint;
      }
    >
  | Message<'SET_VRING_BASE', VringState>
  /** state.num is reserved; the codec ignores it (see decodeRequest). */
  | Message<'GET_VRING_BASE', { index: number }>
  | Message<'SET_VRING_KICK', VringFd>
  | Message<'SET_VRING_CALL', VringFd>
  | Message<'SET_VRING_ERR', VringFd>
  | Message<'GET_PROTOCOL_FEATURES'>
  | Message<'SET_PROTOCOL_FEATURES', { features: bigint }>
  | Message<'GET_QUEUE_NUM'>
  /** num is 0 (disable) or 1 (enable). */
  | Message<'SET_VRING_ENABLE', VringState>
  /** The guest's MAC: the first 6 payload bytes. */
  | Message<'SEND_RARP', { mac: Uint8Array }>
  | Message<'NET_SET_MTU', { mtu: bigint }>
  | Message<'SET_BACKEND_REQ_FD', { fd: number }>
  | Message<'IOTLB_MSG', IotlbEntry>
  /** num is VringEndian (0 little, 1 big). */
  | Message<'SET_VRING_ENDIAN', VringState>
  /** The request carries `size` bytes of (meaningless) config payload; only the range matters. */
  | Message<'GET_CONFIG', { offset: number; size: number; flags: number }>
  | Message<'SET_CONFIG', ConfigAccess>
  /** The session struct differs between QEMU and DPDK versions: passed through as bytes. */
  | Message<'CREATE_CRYPTO_SESSION', { payload: Uint8Array }>
  | Message<'CLOSE_CRYPTO_SESSION', { sessionId: bigint }>
  | Message<'POSTCOPY_ADVISE'>
  | Message<'POSTCOPY_LISTEN'>
  | Message<'POSTCOPY_END'>
  /** The front-end fills only num_queues and queue_size; the mmap fields are the reply's. */
  | Message<'GET_INFLIGHT_FD', { numQueues: number; queueSize: number }>
  | Message<'SET_INFLIGHT_FD', { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number; fd: number }>
  | Message<'GPU_SET_SOCKET', { fd: number }>
  | Message<'RESET_DEVICE'>
  /** In-band kick (INBAND_NOTIFICATIONS); state.num is reserved and must be 0. */
  | Message<'VRING_KICK', { index: number }>
  | Message<'GET_MAX_MEM_SLOTS'>
  | Message<'ADD_MEM_REG', { region: RegionDescription; fd: number }>
  /** fd is -1, or one the front-end sent anyway: the spec says close it without using it. */
  | Message<'REM_MEM_REG', { region: RegionDescription; fd: number }>
  /** A virtio device status byte (the wire carries a u64; values above 0xff are rejected). */
  | Message<'SET_STATUS', { status: bigint }>
  | Message<'GET_STATUS'>
  | Message<'GET_SHARED_OBJECT', { uuid: Uint8Array }>
  /**
   * DeviceStateDirection / DeviceStatePhase. Values the spec does not define yet pass through:
   * the spec expects new phases, and a failure reply lets the migration fail cleanly.
   */
  | Message<'SET_DEVICE_STATE_FD', { direction: number; phase: number; fd: number }>
  | Message<'CHECK_DEVICE_STATE'>;

export type FrontendRequestType = FrontendRequest['type'];

/** Replies the back-end sends, discriminated by payload kind. */
export type BackendReply =
  /** A u64: GET_* values, and the REPLY_ACK status of any request (0 success, else failure). */
  | Message<'u64', { value: bigint }>
  /** GET_VRING_BASE. */
  | Message<'vring-state', VringState>
  /** GET_CONFIG success. */
  | Message<'config', ConfigAccess>
  /** GET_CONFIG failure: a zero-length payload (spec). */
  | Message<'config-error'>
  /** GET_INFLIGHT_FD. mmapSize 0 with fd -1 is the "no inflight buffer" answer QEMU accepts. */
  | Message<'inflight', { mmapSize: bigint; mmapOffset: bigint; numQueues: number; queueSize: number; fd: number }>
  /** SET_MEM_TABLE in postcopy mode: the back-end's mapping bases, one region per request region. */
  | Message<'memory-table', { regions: RegionDescription[] }>
  /** ADD_MEM_REG in postcopy mode. */
  | Message<'memory-region', { region: RegionDescription }>
  /** POSTCOPY_ADVISE: an empty payload and the userfaultfd. */
  | Message<'userfault-fd', { fd: number }>
  /** CREATE_CRYPTO_SESSION: the session struct with its session id filled in. */
  | Message<'crypto-session', { payload: Uint8Array }>
  /**
   * SET_DEVICE_STATE_FD: status 0 accepts the transfer; fd is the back-end's own channel or -1.
   * The spec forbids an fd with a non-zero status.
   */
  | Message<'device-state', { status: number; fd: number }>
  /** GET_SHARED_OBJECT: the dma-buf fd, or -1 when the UUID is unknown. */
  | Message<'shared-object', { fd: number }>;

export type BackendReplyType = BackendReply['type'];

/** Requests the back-end sends on the back-end channel (names without the BACKEND_ prefix). */
export type BackendRequest =
  /** IOTLB miss or access failure. */
  | Message<'IOTLB_MSG', IotlbEntry>
  | Message<'CONFIG_CHANGE_MSG'>
  /** Map `size` bytes at `offset` of fd as the queue's notify area; noFd (fd -1) unregisters it. */
  | Message<'VRING_HOST_NOTIFIER_MSG', { index: number; noFd: boolean; size: bigint; offset: bigint; fd: number }>
  /** In-band call / error (INBAND_NOTIFICATIONS); state.num is reserved and must be 0. */
  | Message<'VRING_CALL', { index: number }>
  | Message<'VRING_ERR', { index: number }>
  | Message<'SHARED_OBJECT_ADD', { uuid: Uint8Array }>
  | Message<'SHARED_OBJECT_REMOVE', { uuid: Uint8Array }>
  | Message<'SHARED_OBJECT_LOOKUP', { uuid: Uint8Array }>;

export type BackendRequestType = BackendRequest['type'];

/** Replies the front-end sends on the back-end channel. */
export type FrontendReply =
  /** REPLY_ACK status: 0 success, non-zero failure. */
  | Message<'u64', { value: bigint }>
  /** SHARED_OBJECT_LOOKUP: status 0 and the dma-buf fd, or a non-zero status and fd -1. */
  | Message<'shared-object', { value: bigint; fd: number }>;

/** A message ready to send: header + payload bytes, and the fds that go with its first byte. */
export interface EncodedMessage {
  bytes: Uint8Array;
  fds: number[];
}
