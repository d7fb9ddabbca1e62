// Front-end → back-end requests: decodeRequest (back-end side, validating everything the spec
// constrains) and encodeRequest (front-end side, the way QEMU writes them).
import { IotlbType, MAX_MEMORY_REGIONS, HeaderFlag, Request, UUID_SIZE, requestName } from '../protocol.js';
import { ProtocolError, UnknownRequestError } from '../errors.js';
import type { EncodedMessage, FrontendRequest } from '../messages.js';
import { Checker, Reader, U64_LIMIT, Writer, checkFd, checkSize, exactly, hex, type MessageHeader } from './wire.js';
import { payloadSizes, requestSpecs } from './request-table.js';
import {
  CONFIG_HEADER,
  MEMORY_TABLE_HEADER,
  REGION_SIZE,
  checkIotlbPerm,
  checkRegion,
  decodeConfig,
  decodeIotlb,
  decodeMemoryTable,
  decodeRegion,
  decodeVringAddr,
  decodeVringFd,
  vringFdValue,
  writeConfig,
  writeIotlb,
  writeRegion,
  writeUuid,
} from './layouts.js';

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
      return { type: 'SET_LOG_BASE', mmapSize, mmapOffset, fd: fds[0] };
    }
    case Request.SET_LOG_FD:
      return { type: 'SET_LOG_FD', fd: fds[0] };

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
      return { type: spec.name, index, noFd, fd: noFd ? -1 : fds[0] } as FrontendRequest;
    }

    case Request.SEND_RARP: {
      // "The first 6 bytes of the payload contain the mac address"; the other 2 are unspecified.
      return { type: 'SEND_RARP', mac: r.bytes(6) };
    }
    case Request.NET_SET_MTU:
      // Any value: the spec wants an invalid MTU answered with a failure ack, not a dropped connection.
      return { type: 'NET_SET_MTU', mtu: r.u64() };

    case Request.SET_BACKEND_REQ_FD:
      return { type: 'SET_BACKEND_REQ_FD', fd: fds[0] };

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
        if (entry.iova + entry.size > U64_LIMIT)
          check.fail(`IOTLB update iova ${hex(entry.iova)} + size ${hex(entry.size)} wraps past 2^64`);
        if (entry.userAddr + entry.size > U64_LIMIT)
          check.fail(`IOTLB update uaddr ${hex(entry.userAddr)} + size ${hex(entry.size)} wraps past 2^64`);
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
      if (mmapOffset + mmapSize > U64_LIMIT)
        check.fail(`inflight offset ${hex(mmapOffset)} + size ${hex(mmapSize)} wraps past 2^64`);
      return { type: 'SET_INFLIGHT_FD', mmapSize, mmapOffset, numQueues: r.u16(), queueSize: r.u16(), fd: fds[0] };
    }

    case Request.GPU_SET_SOCKET:
      return { type: 'GPU_SET_SOCKET', fd: fds[0] };

    case Request.ADD_MEM_REG: {
      r.skip(8); // padding
      const region = decodeRegion(r);
      checkRegion(check, region, 'region', true);
      return { type: 'ADD_MEM_REG', region, fd: fds[0] };
    }
    case Request.REM_MEM_REG: {
      r.skip(8); // padding
      const region = decodeRegion(r);
      // "The mmap offset is ignored": only the ranges identify the region.
      checkRegion(check, region, 'region', false);
      return { type: 'REM_MEM_REG', region, fd: fds.length > 0 ? fds[0] : -1 };
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
      return { type: 'SET_DEVICE_STATE_FD', direction: r.u32(), phase: r.u32(), fd: fds[0] };
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
      if (req.regions.length > MAX_MEMORY_REGIONS)
        throw new RangeError(`${name}: ${req.regions.length} regions, at most ${MAX_MEMORY_REGIONS}`);
      const writer = w(MEMORY_TABLE_HEADER + REGION_SIZE * req.regions.length)
        .u32(req.regions.length, 'nregions')
        .skip(4);
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
      const bytes = w(CONFIG_HEADER + req.size)
        .u32(req.offset, 'offset')
        .u32(req.size, 'size')
        .u32(req.flags, 'flags')
        .skip(req.size)
        .finish();
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
