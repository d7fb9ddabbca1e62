// Frames and headers for the offload tests: IPv4/TCP frames as a guest with CSUM hands them
// over (the checksum field holding the pseudo-header sum, csum_start at the TCP header), an
// independent RFC 1071 check of a finished TCP checksum, and virtio-net headers from fields.

/** Ethernet + IPv4 (20) + TCP (20) + `payload` bytes of a pattern from `seed`. */
export function tcpFrame(
  payload: number,
  seed: number,
  dst: ArrayLike<number> = [0x52, 0x54, 0, 0x12, 0x34, 0x56],
  src: ArrayLike<number> = [0x02, 0, 0, 0, 0, 0x01],
): Uint8Array {
  const frame = new Uint8Array(54 + payload);
  const view = new DataView(frame.buffer);
  frame.set(dst, 0);
  frame.set(src, 6);
  view.setUint16(12, 0x0800);
  frame[14] = 0x45;
  view.setUint16(16, 40 + payload);
  frame[22] = 64;
  frame[23] = 6; // TCP
  frame.set([10, 0, 0, 1], 26);
  frame.set([10, 0, 0, 2], 30);
  view.setUint16(34, 40000);
  view.setUint16(36, 5001);
  view.setUint32(38, seed * 1000);
  frame[46] = 0x50; // data offset 5 words
  frame[47] = 0x18; // PSH ACK
  view.setUint16(48, 65535);
  let x = (seed * 2654435761) >>> 0 || 1;
  for (let i = 54; i < frame.length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    frame[i] = x & 0xff;
  }
  return frame;
}

/** RFC 1071 over the IPv4 pseudo-header and the TCP segment (everything after byte 34). */
function tcpSum(frame: Uint8Array): number {
  const words: number[] = [];
  const add = (hi: number, lo: number) => words.push((hi << 8) | lo);
  for (let i = 26; i < 34; i += 2) add(frame[i], frame[i + 1]);
  const length = frame.length - 34;
  add(0, 6);
  add(length >> 8, length & 0xff);
  for (let i = 34; i < frame.length; i += 2) add(frame[i], i + 1 < frame.length ? frame[i + 1] : 0);
  let sum = words.reduce((a, b) => a + b, 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  return sum;
}

/** What a guest with CSUM leaves in the checksum field: the pseudo-header sum, not complemented. */
export function partialTcpChecksum(frame: Uint8Array): void {
  const length = frame.length - 34;
  let sum = 6 + length;
  for (let i = 26; i < 34; i += 2) sum += (frame[i] << 8) | frame[i + 1];
  while (sum > 0xffff) sum = (sum & 0xffff) + (sum >> 16);
  frame[50] = sum >> 8;
  frame[51] = sum & 0xff;
}

/** A receiver's check: the sum over pseudo-header and segment, checksum included, is all ones. */
export function tcpChecksumValid(frame: Uint8Array): boolean {
  return tcpSum(frame) === 0xffff;
}

export interface HeaderFields {
  flags?: number;
  gsoType?: number;
  hdrLen?: number;
  gsoSize?: number;
  csumStart?: number;
  csumOffset?: number;
}

/** The first 10 bytes of a virtio-net header (little-endian fields). */
export function offloadHeader(fields: HeaderFields): Uint8Array {
  const header = new Uint8Array(10);
  const view = new DataView(header.buffer);
  header[0] = fields.flags ?? 0;
  header[1] = fields.gsoType ?? 0;
  view.setUint16(2, fields.hdrLen ?? 0, true);
  view.setUint16(4, fields.gsoSize ?? 0, true);
  view.setUint16(6, fields.csumStart ?? 0, true);
  view.setUint16(8, fields.csumOffset ?? 0, true);
  return header;
}

/** Ethernet + IPv6 (40) + TCP (20) + `payload` bytes, fd00::1 → fd00::2. */
export function tcp6Frame(payload: number, seed: number, dst: ArrayLike<number> = [0x52, 0x54, 0, 0x12, 0x34, 0x56]): Uint8Array {
  const frame = new Uint8Array(74 + payload);
  const view = new DataView(frame.buffer);
  frame.set(dst, 0);
  frame.set([0x02, 0, 0, 0, 0, 0x01], 6);
  view.setUint16(12, 0x86dd);
  frame[14] = 0x60;
  view.setUint16(18, 20 + payload);
  frame[20] = 6; // next header: TCP
  frame[21] = 64;
  frame.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1], 22);
  frame.set([0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2], 38);
  view.setUint16(54, 40001);
  view.setUint16(56, 5002);
  view.setUint32(58, 0xfffff000 + seed); // wraps within a 64 KiB frame
  frame[66] = 0x50;
  frame[67] = 0x19; // FIN PSH ACK
  view.setUint16(68, 65535);
  for (let i = 74; i < frame.length; i++) frame[i] = (i * 7 + seed) & 0xff;
  return frame;
}

/** RFC 1071 over the IPv6 pseudo-header (RFC 8200 §8.1) and the TCP segment at byte 54. */
export function tcp6ChecksumValid(frame: Uint8Array): boolean {
  let sum = 0;
  for (let i = 22; i < 54; i += 2) sum += (frame[i] << 8) | frame[i + 1];
  const length = frame.length - 54;
  sum += (length >>> 16) + (length & 0xffff) + 6;
  for (let i = 54; i < frame.length; i += 2) sum += (frame[i] << 8) | (i + 1 < frame.length ? frame[i + 1] : 0);
  while (sum > 0xffff) sum = (sum & 0xffff) + Math.floor(sum / 0x10000);
  return sum === 0xffff;
}
