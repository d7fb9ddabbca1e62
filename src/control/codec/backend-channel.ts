// The back-end channel (SET_BACKEND_REQ_FD): requests the back-end sends and the front-end's
// replies (spec: "Back-end message types").
import {
  BackendRequestId,
  HeaderFlag,
  IotlbType,
  ProtocolFeature,
  UUID_SIZE,
  backendRequestName,
  type BackendRequestName,
} from '../protocol.js';
import { ProtocolError, UnknownRequestError } from '../errors.js';
import type { BackendRequest as BackendRequestValue, EncodedMessage, FrontendReply } from '../messages.js';
import { Checker, REPLY_FLAGS, Reader, Writer, checkFd, exactly, type MessageHeader, type Range } from './wire.js';
import { payloadSizes, type PayloadKind } from './request-table.js';
import { checkIotlbPerm, decodeIotlb, decodeVringFd, vringFdValue, writeIotlb, writeUuid } from './layouts.js';

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

function backendRow(
  id: number,
  payload: PayloadKind,
  protocolFeature: number,
  fds = exactly(0),
  replies: 'always' | 'ack' = 'ack',
): BackendRequestSpec {
  return {
    id,
    name: backendRequestName(id) as BackendRequestName,
    payload,
    size: payloadSizes[payload],
    fds,
    replies,
    protocolFeature,
  };
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
      return { type: 'VRING_HOST_NOTIFIER_MSG', index, noFd, size: r.u64(), offset: r.u64(), fd: noFd ? -1 : fds[0] };
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
  if (request !== BackendRequestId.SHARED_OBJECT_LOOKUP)
    throw new RangeError(`${name}: a 'shared-object' reply does not answer this request`);
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
  return { type: 'shared-object', value, fd: fds.length > 0 ? fds[0] : -1 };
}
