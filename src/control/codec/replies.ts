// Back-end → front-end replies: encodeReply (back-end side) and decodeReply (front-end side).
// A request is answered with its own reply kind (RequestSpec.reply) or a u64 REPLY_ACK status.
import { MAX_MEMORY_REGIONS, Request, UUID_SIZE, VRING_NOFD_MASK, requestName } from '../protocol.js';
import type { BackendReply, BackendReplyType, EncodedMessage } from '../messages.js';
import { Checker, REPLY_FLAGS, Reader, Writer, checkFd, checkSize, exactly, hex, type MessageHeader } from './wire.js';
import { payloadSizes, requestSpecs, type RequestSpec } from './request-table.js';
import { MEMORY_TABLE_HEADER, REGION_SIZE, decodeConfig, decodeRegion, writeConfig, writeRegion } from './layouts.js';

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
      if (reply.regions.length > MAX_MEMORY_REGIONS)
        throw new RangeError(`${name}: ${reply.regions.length} regions, at most ${MAX_MEMORY_REGIONS}`);
      const writer = w(MEMORY_TABLE_HEADER + REGION_SIZE * reply.regions.length)
        .u32(reply.regions.length, 'nregions')
        .skip(4);
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
      return {
        bytes: w(8)
          .u64(found ? 0n : 1n, 'value')
          .finish(),
        fds: found ? [reply.fd] : [],
      };
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
      return { type: 'inflight', mmapSize, mmapOffset, numQueues, queueSize, fd: mmapSize === 0n ? -1 : fds[0] };
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
      return { type: 'userfault-fd', fd: fds[0] };

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
      if (status !== 0 && !noFd)
        check.fail(`status ${status} with an fd: "the back-end must not both indicate an error and return a file descriptor"`);
      return { type: 'device-state', status, fd: noFd ? -1 : fds[0] };
    }

    case 'shared-object':
      // QEMU reads only the fd. libvhost-user echoes the 16-byte request; a u64 status is the
      // form QEMU itself uses for BACKEND_SHARED_OBJECT_LOOKUP.
      if (size !== 8 && size !== UUID_SIZE) check.fail(`payload is ${size} bytes, expected 8 or ${UUID_SIZE}`);
      check.fds(fds, { min: 0, max: 1 });
      return { type: 'shared-object', fd: fds.length > 0 ? fds[0] : -1 };
  }
}

function decodeU64Reply(check: Checker, r: Reader, size: number, fds: readonly number[]): BackendReply {
  check.size(size, exactly(8));
  check.fds(fds, exactly(0));
  return { type: 'u64', value: r.u64() };
}
