// vhost-user message codec: bytes + fds ⇄ typed, validated values. No sockets, no state, so any
// transport can use it, on either side of the connection:
//   back-end:  decodeRequest  / encodeReply           (and encodeBackendRequest / decodeFrontendReply)
//   front-end: encodeRequest  / decodeReply           (and decodeBackendRequest / encodeFrontendReply)
// One module per idea, read in this order: wire (header, reader, writer, checks) → request-table
// → requests (front-end → back-end) → replies (back-end → front-end) → backend-channel; layouts
// holds the payload pieces they share. Spec references are to QEMU docs/interop/vhost-user.rst.
//
// Validation policy. Decoders check everything that can be checked without session state:
// header flags, payload size and fd count per request, and each field the spec constrains.
// They throw ProtocolError for anything else, and never close fds (the caller owns them).
// Strict where the spec is strict ("must be 0", "other values are invalid"); tolerant only where
// real front-ends or back-ends need it, each tolerance commented with who needs it. Padding and
// bytes the spec leaves unspecified are ignored. Encoders write what they are given as long as
// it fits the wire format (so tests can send hostile but well-formed messages); a value that does
// not fit is a programming error and throws RangeError.
export type * from '../messages.js';
export { HEADER_SIZE, MAX_FDS, MAX_PAYLOAD_SIZE, isPowerOfTwo } from '../protocol.js';
export { ProtocolError, UnknownRequestError } from '../errors.js';
export { decodeHeader, encodeMessage, type MessageHeader, type Range } from './wire.js';
export { requestSpecs, type PayloadKind, type ReplyKind, type RequestSpec } from './request-table.js';
export { decodePostcopyAck, decodeRequest, encodeRequest } from './requests.js';
export { decodeReply, encodeReply } from './replies.js';
export {
  backendRequestSpecs,
  decodeBackendRequest,
  decodeFrontendReply,
  encodeBackendRequest,
  encodeFrontendReply,
  type BackendRequestSpec,
} from './backend-channel.js';
