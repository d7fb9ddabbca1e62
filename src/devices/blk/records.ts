// The request records both file engines build (io_uring's Uring.submit and the threads engine's
// blockIo read the same layout). The layout is the addon's (native/ring/records.h), read once
// from it, so TypeScript never re-declares it by hand.
import { native } from '../../native.js';

const layout = native.recordLayout;

export const SQE_WORDS = layout.sqeWords;
export const IOVEC_WORDS = layout.iovecWords;
/** IOV_MAX: the most iovecs one record may have (the kernel's own limit, checked natively too). */
export const MAX_IOVECS = layout.maxIovecs;

/** Word indexes in an SQE record. */
export const Sqe = {
  OPCODE: layout.sqe.opcode,
  FD: layout.sqe.fd,
  OFFSET_LOW: layout.sqe.offsetLow,
  OFFSET_HIGH: layout.sqe.offsetHigh,
  USER_DATA: layout.sqe.userData,
  IOVEC_COUNT: layout.sqe.iovecCount,
  FIRST_IOVEC: layout.sqe.firstIovec,
  LENGTH: layout.sqe.length,
} as const;

/** Word indexes in an IOVEC record. */
export const Iovec = {
  REGION: layout.iovec.region,
  OFFSET_LOW: layout.iovec.offsetLow,
  OFFSET_HIGH: layout.iovec.offsetHigh,
  LENGTH: layout.iovec.length,
} as const;

export const Opcode = layout.opcode;
