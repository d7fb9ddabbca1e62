// Offload headers between two guests of one process (loopback, switch): the checks a TX header
// with flags or gso_type set must pass before it may reach another guest, and the software
// checksum for a receiver that did not ack GUEST_CSUM (§5.1.6.2: "the device MUST ... compute
// the checksum from csum_start to the end of the packet and store it at csum_start +
// csum_offset"; the checksum field already holds the pseudo-header sum the driver put there).
//
// The sums read guest memory (a request's segments) or a frame ring's bytes in place: nothing
// is copied into a JS buffer, nothing allocates. Only frames that ask for an offload come here;
// a plain frame (flags 0, gso_type 0) never does.
import type { VirtqRequest } from '../../dataplane/request.js';
import { GSO_NONE, HDR_F_NEEDS_CSUM } from './offload.js';

/** Bytes of struct virtio_net_hdr carried from TX to RX (num_buffers is the receiver's own). */
export const OFFLOAD_HEADER_BYTES = 10;
/** Field offsets in the header (little-endian u16s with VERSION_1, §5.1.6). */
export const HDR_FLAGS = 0;
export const HDR_GSO_TYPE = 1;
export const HDR_HDR_LEN = 2;
export const HDR_GSO_SIZE = 4;
export const HDR_CSUM_START = 6;
export const HDR_CSUM_OFFSET = 8;

/**
 * Why a TX header asking for an offload cannot go on (a message for the counters' log), or ''
 * when it may. headerAllowed (offload.ts) has already checked flags and gso_type against what
 * the sender acked; this checks the numbers against the frame (`frameBytes`, Ethernet header
 * onwards), so that neither our software checksum nor the receiving guest reads or writes
 * outside it.
 */
export function offloadHeaderProblem(header: Uint8Array, at: number, frameBytes: number): string {
  const flags = header[at + HDR_FLAGS];
  if ((flags & HDR_F_NEEDS_CSUM) !== 0) {
    const csumStart = u16(header, at + HDR_CSUM_START);
    const csumOffset = u16(header, at + HDR_CSUM_OFFSET);
    // The 16-bit checksum field must lie inside the frame, after csum_start.
    if (csumStart + csumOffset + 2 > frameBytes) {
      return 'TX header: csum_start + csum_offset outside the frame: dropped';
    }
  }
  if (header[at + HDR_GSO_TYPE] !== GSO_NONE) {
    if (u16(header, at + HDR_GSO_SIZE) === 0) return 'TX header: GSO frame with gso_size 0: dropped';
    if (u16(header, at + HDR_HDR_LEN) > frameBytes) return 'TX header: hdr_len beyond the frame: dropped';
  }
  return '';
}

/** Little-endian u16 at `at`. */
export function u16(bytes: Uint8Array, at: number): number {
  return bytes[at] | (bytes[at + 1] << 8);
}

/**
 * Adds bytes [start, end) of `view` to `sum` as big-endian 16-bit words; `odd` says the first
 * byte is the low half of a word (it continues an odd-length piece before it). Not folded: a
 * 64 KiB frame adds at most 2^32, far inside a double's exact range.
 */
export function sumBytes(view: Uint8Array, start: number, end: number, odd: boolean, sum: number): number {
  let p = start;
  if (odd && p < end) sum += view[p++];
  const pairsEnd = p + ((end - p) & ~1);
  while (p < pairsEnd) {
    sum += (view[p] << 8) | view[p + 1];
    p += 2;
  }
  if (p < end) sum += view[p] << 8;
  return sum;
}

/** The one's-complement sum of `length` device-readable bytes of `request` from `from` (unfolded). */
export function sumReadable(request: VirtqRequest, from: number, length: number): number {
  const views = request.memory!.windowBytesView;
  let skip = from;
  let done = 0;
  let sum = 0;
  for (let s = 0; s < request.readableCount && done < length; s++) {
    const segLength = request.segLength[s];
    if (skip >= segLength) {
      skip -= segLength;
      continue;
    }
    let n = segLength - skip;
    if (n > length - done) n = length - done;
    const start = request.segWindowOffset[s] + skip;
    sum = sumBytes(views[request.segWindow[s]], start, start + n, (done & 1) !== 0, sum);
    skip = 0;
    done += n;
  }
  return sum;
}

/**
 * The checksum to store: the folded sum complemented; 0 goes out as 0xffff (the same value in
 * one's complement; Linux's skb_checksum_help does the same, UDP reads 0 as "no checksum").
 */
export function finishChecksum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  const result = ~s & 0xffff;
  return result === 0 ? 0xffff : result;
}

/**
 * Completes a NEEDS_CSUM frame in `view` (Ethernet header at `frame`, `frameBytes` long) in
 * place; the header was checked by offloadHeaderProblem.
 */
export function checksumInPlace(
  view: Uint8Array,
  frame: number,
  frameBytes: number,
  csumStart: number,
  csumOffset: number,
): void {
  const value = finishChecksum(sumBytes(view, frame + csumStart, frame + frameBytes, false, 0));
  const at = frame + csumStart + csumOffset;
  view[at] = value >>> 8;
  view[at + 1] = value & 0xff;
}
