// segment.ts on its own: a GSO frame cut into TCP segments as a NIC would (each checked with an
// independent IPv4 header checksum and RFC 1071 TCP checksum, sequence numbers, flags, lengths,
// and the payload put back together), over IPv4, IPv4 behind a VLAN tag, and IPv6; frames that
// are not what gso_type says are not segmented.
import { describe, expect, it } from 'vitest';
import { TcpSegmenter, MAX_SEGMENTS } from '../../dist/devices/net/segment.js';
import { GSO_ECN, GSO_TCPV4, GSO_TCPV6 } from '../../dist/devices/net/offload.js';
import { ipv4HeaderChecksum } from '../../dist/devices/net/frame.js';
import { tcp6ChecksumValid, tcp6Frame, tcpChecksumValid, tcpFrame } from './net-offload-frames.js';

const be16 = (b: Uint8Array, at: number) => (b[at] << 8) | b[at + 1];
const be32 = (b: Uint8Array, at: number) => ((b[at] << 24) | (b[at + 1] << 16) | (b[at + 2] << 8) | b[at + 3]) >>> 0;

function cut(segmenter: TcpSegmenter, data: Uint8Array, at: number, length: number, gsoType: number, mss: number): Uint8Array[] {
  const count = segmenter.begin(data, at, length, gsoType, mss);
  // Each segment is built into the one scratch buffer: copy it out before building the next.
  return Array.from({ length: count }, (_, i) => segmenter.scratch.slice(0, segmenter.build(i)));
}

describe('TCP segmentation in software', () => {
  it('IPv4: gso_size pieces, each with its length, ID, header checksum, sequence, flags and TCP checksum', () => {
    const segmenter = new TcpSegmenter();
    for (const payload of [1, 1448, 1449, 5000, 64000]) {
      const frame = tcpFrame(payload, 3);
      frame[18] = 0x12;
      frame[19] = 0xff; // IP ID 0x12ff: wraps the low byte
      frame[47] = 0x19 | 0x80; // FIN PSH ACK CWR
      // Placed at an odd offset of a larger buffer: the frame need not start the buffer.
      const data = new Uint8Array(frame.length + 7);
      data.set(frame, 7);
      const segments = cut(segmenter, data, 7, frame.length, GSO_TCPV4 | GSO_ECN, 1448);
      expect(segments.length).toBe(Math.ceil(payload / 1448));
      const payloads: Uint8Array[] = [];
      for (const [i, s] of segments.entries()) {
        const last = i === segments.length - 1;
        expect(s.length, `${payload}: segment ${i}`).toBe(54 + (last ? payload - 1448 * i : 1448));
        expect(be16(s, 16)).toBe(s.length - 14); // total length
        expect(be16(s, 18)).toBe((0x12ff + i) & 0xffff);
        expect(be16(s, 24)).toBe(ipv4HeaderChecksum(s, 14));
        expect(be32(s, 38)).toBe((3000 + 1448 * i) >>> 0);
        expect(s[47]).toBe(0x10 | (last ? 0x09 : 0) | (i === 0 ? 0x80 : 0));
        expect(tcpChecksumValid(s), `${payload}: segment ${i}`).toBe(true);
        expect(Buffer.from(s.subarray(0, 14)).equals(Buffer.from(frame.subarray(0, 14)))).toBe(true);
        payloads.push(s.subarray(54));
      }
      expect(Buffer.concat(payloads).equals(Buffer.from(frame.subarray(54)))).toBe(true);
    }
  });

  it('IPv4 behind an 802.1Q tag', () => {
    const plain = tcpFrame(3000, 4);
    const tagged = new Uint8Array(plain.length + 4);
    tagged.set(plain.subarray(0, 12), 0);
    tagged.set([0x81, 0x00, 0x00, 0x05], 12);
    tagged.set(plain.subarray(12), 16);
    const segments = cut(new TcpSegmenter(), tagged, 0, tagged.length, GSO_TCPV4, 1000);
    expect(segments.length).toBe(3);
    for (const s of segments) {
      const untagged = new Uint8Array(s.length - 4);
      untagged.set(s.subarray(0, 12), 0);
      untagged.set(s.subarray(16), 12);
      expect(be16(untagged, 24)).toBe(ipv4HeaderChecksum(untagged, 14));
      expect(tcpChecksumValid(untagged)).toBe(true);
    }
  });

  it('IPv6: payload length, sequence numbers wrapping past 2^32, TCP checksum over the IPv6 pseudo-header', () => {
    const frame = tcp6Frame(10000, 9);
    const segments = cut(new TcpSegmenter(), frame, 0, frame.length, GSO_TCPV6, 1428);
    expect(segments.length).toBe(8);
    for (const [i, s] of segments.entries()) {
      expect(be16(s, 18)).toBe(s.length - 54); // payload length
      expect(be32(s, 58)).toBe((0xfffff000 + 9 + 1428 * i) >>> 0);
      expect(tcp6ChecksumValid(s), `segment ${i}`).toBe(true);
    }
    expect(Buffer.concat(segments.map((s) => s.subarray(74))).equals(Buffer.from(frame.subarray(74)))).toBe(true);
  });

  it('refuses what gso_type does not describe, headers beyond the frame, and more than MAX_SEGMENTS pieces', () => {
    const segmenter = new TcpSegmenter();
    const v4 = tcpFrame(3000, 1);
    const v6 = tcp6Frame(3000, 1);
    expect(segmenter.begin(v4, 0, v4.length, GSO_TCPV6, 1000)).toBe(0);
    expect(segmenter.begin(v6, 0, v6.length, GSO_TCPV4, 1000)).toBe(0);
    expect(segmenter.begin(v4, 0, v4.length, 3, 1000)).toBe(0); // UDP
    expect(segmenter.begin(v4, 0, v4.length, GSO_TCPV4, 0)).toBe(0);
    expect(segmenter.begin(v4, 0, 40, GSO_TCPV4, 1000)).toBe(0); // TCP header cut off
    const udp = v4.slice();
    udp[23] = 17;
    expect(segmenter.begin(udp, 0, udp.length, GSO_TCPV4, 1000)).toBe(0);
    const bigOffset = v4.slice();
    bigOffset[46] = 0xf0; // 60-byte TCP header: fine
    expect(segmenter.begin(bigOffset, 0, bigOffset.length, GSO_TCPV4, 1000)).toBe(3);
    expect(segmenter.begin(bigOffset, 0, 80, GSO_TCPV4, 1000)).toBe(0); // ...but not past the frame
    const badIhl = v4.slice();
    badIhl[14] = 0x44;
    expect(segmenter.begin(badIhl, 0, badIhl.length, GSO_TCPV4, 1000)).toBe(0);
    expect(segmenter.begin(v4, 0, v4.length, GSO_TCPV4, Math.floor(3000 / MAX_SEGMENTS))).toBe(0);
    expect(segmenter.begin(v4, 0, v4.length, GSO_TCPV4, Math.ceil(3000 / MAX_SEGMENTS))).toBe(MAX_SEGMENTS);
  });
});
