// The frames the `source` back-end generates: Ethernet + IPv4 + UDP to the discard port, from
// the benchmarking range (RFC 2544, 198.18.0.0/15), with a valid IPv4 header checksum and no UDP
// checksum (0 = none, RFC 768). A 32-bit sequence number at SOURCE_SEQUENCE_OFFSET makes every
// frame distinct; the rest of the payload is a fixed pattern.
import { ETH_HEADER_BYTES } from './virtio-net.js';

const IPV4_HEADER_BYTES = 20;
const UDP_HEADER_BYTES = 8;
/** Smallest frame that holds all three headers and the sequence number. */
export const SOURCE_MIN_FRAME = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES + 4;
/** Where the little-endian u32 sequence number sits (start of the UDP payload). */
export const SOURCE_SEQUENCE_OFFSET = ETH_HEADER_BYTES + IPV4_HEADER_BYTES + UDP_HEADER_BYTES;
/** Locally administered source MAC of generated frames. */
export const SOURCE_MAC = Uint8Array.of(0x02, 0x76, 0x75, 0x74, 0x00, 0x01);

/** One frame of `bytes` bytes (Ethernet header onwards, no FCS) addressed to `dstMac`. */
export function buildSourceFrame(bytes: number, dstMac: ArrayLike<number>): Uint8Array {
  if (!Number.isInteger(bytes) || bytes < SOURCE_MIN_FRAME || bytes > 65535 + ETH_HEADER_BYTES) {
    throw new RangeError(`generated frames must be ${SOURCE_MIN_FRAME} to ${65535 + ETH_HEADER_BYTES} bytes, got ${bytes}`);
  }
  const frame = new Uint8Array(bytes);
  const view = new DataView(frame.buffer);
  for (let i = 0; i < 6; i++) frame[i] = dstMac[i]!;
  frame.set(SOURCE_MAC, 6);
  view.setUint16(12, 0x0800); // IPv4
  const ip = ETH_HEADER_BYTES;
  const ipLength = bytes - ETH_HEADER_BYTES;
  frame[ip] = 0x45; // version 4, 5 words
  view.setUint16(ip + 2, ipLength);
  frame[ip + 8] = 64; // TTL
  frame[ip + 9] = 17; // UDP
  frame.set([198, 18, 0, 1], ip + 12);
  frame.set([198, 18, 0, 2], ip + 16);
  view.setUint16(ip + 10, ipv4HeaderChecksum(frame, ip));
  const udp = ip + IPV4_HEADER_BYTES;
  view.setUint16(udp, 9);
  view.setUint16(udp + 2, 9);
  view.setUint16(udp + 4, ipLength - IPV4_HEADER_BYTES);
  for (let i = SOURCE_SEQUENCE_OFFSET + 4; i < bytes; i++) frame[i] = i & 0xff;
  return frame;
}

/** The one's-complement sum of a 20-byte IPv4 header (its checksum field taken as is). */
export function ipv4HeaderChecksum(frame: Uint8Array, offset: number): number {
  let sum = 0;
  for (let i = 0; i < IPV4_HEADER_BYTES; i += 2) {
    if (i === 10) continue;
    sum += (frame[offset + i] << 8) | frame[offset + i + 1];
  }
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >>> 16);
  return ~sum & 0xffff;
}
