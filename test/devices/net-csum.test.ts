// csum.ts on its own: the software checksum against an independent one (RFC 1071 over the
// pseudo-header and the whole segment, written here from scratch), sums across segments cut at
// odd offsets, and the bounds checks on the header's numbers.
import { describe, expect, it } from 'vitest';
import { GuestMemory } from '../../dist/dataplane/memory.js';
import { VirtqRequest } from '../../dist/dataplane/request.js';
import { checksumInPlace, finishChecksum, offloadHeaderProblem, sumBytes, sumReadable } from '../../dist/devices/net/csum.js';
import { tcpFrame, tcpChecksumValid, partialTcpChecksum, offloadHeader } from './net-offload-frames.js';

function segmentedRequest(memory: GuestMemory, pieces: [number, number][]): VirtqRequest {
  const r = new VirtqRequest(pieces.length);
  r.memory = memory;
  for (const [i, [offset, length]] of pieces.entries()) {
    r.segWindow[i] = 0;
    r.segWindowOffset[i] = offset;
    r.segLength[i] = length;
  }
  r.segmentCount = pieces.length;
  r.readableCount = pieces.length;
  r.readableBytes = pieces.reduce((n, [, length]) => n + length, 0);
  return r;
}

describe('software checksum', () => {
  it('completes a partial TCP checksum the way the receiver checks it (odd and even payloads)', () => {
    for (const payload of [0, 1, 2, 7, 1000, 1461, 9000]) {
      const frame = tcpFrame(payload, payload + 3);
      partialTcpChecksum(frame);
      expect(tcpChecksumValid(frame), `${payload} bytes before`).toBe(false);
      checksumInPlace(frame, 0, frame.length, 34, 16);
      expect(tcpChecksumValid(frame), `${payload} bytes`).toBe(true);
    }
  });

  it('sums a request cut anywhere (odd pieces) the same as the contiguous bytes', () => {
    const buffer = new SharedArrayBuffer(1 << 16);
    const bytes = new Uint8Array(buffer);
    const memory = new GuestMemory([
      { guestPhysAddr: 0, size: 1 << 16, userspaceAddr: 0x7f00_0000_0000, buffer, bufferOffset: 0 },
    ]);
    for (let i = 0; i < 4000; i++) bytes[i] = (i * 37 + 11) & 0xff;
    const whole = sumBytes(bytes, 5, 3005, false, 0);
    // The same 3000 bytes in pieces of 1, 2, 3 ... bytes, scattered with gaps in between.
    const pieces: [number, number][] = [];
    let left = 3000;
    let from = 5;
    let at = 8192;
    for (let n = 1; left > 0; n = (n % 7) + 1) {
      const len = Math.min(n, left);
      bytes.copyWithin(at, from, from + len);
      pieces.push([at, len]);
      at += len + 5;
      from += len;
      left -= len;
    }
    const request = segmentedRequest(memory, pieces);
    expect(finishChecksum(sumReadable(request, 0, 3000))).toBe(finishChecksum(whole));
    // From an offset inside the chain, and a length short of its end.
    expect(finishChecksum(sumReadable(request, 3, 2990))).toBe(finishChecksum(sumBytes(bytes, 8, 2998, false, 0)));
  });

  it('writes 0xffff, never 0, for a sum of all ones', () => {
    expect(finishChecksum(0xffff)).toBe(0xffff);
    expect(finishChecksum(0x1fffe)).toBe(0xffff);
    expect(finishChecksum(0)).toBe(0xffff);
    expect(finishChecksum(0x1234)).toBe(~0x1234 & 0xffff);
  });
});

describe('offload header bounds', () => {
  const check = (fields: Parameters<typeof offloadHeader>[0], frameBytes: number) =>
    offloadHeaderProblem(offloadHeader(fields), 0, frameBytes);

  it('takes numbers inside the frame', () => {
    expect(check({ flags: 1, csumStart: 34, csumOffset: 16 }, 54)).toBe('');
    expect(check({ flags: 1, csumStart: 34, csumOffset: 16 }, 1514)).toBe('');
    expect(check({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 1448, csumStart: 34, csumOffset: 16 }, 4000)).toBe('');
  });

  it('refuses a checksum field outside the frame, gso_size 0 and hdr_len beyond the frame', () => {
    expect(check({ flags: 1, csumStart: 34, csumOffset: 16 }, 51)).toMatch(/csum_start/);
    expect(check({ flags: 1, csumStart: 0xffff, csumOffset: 0xffff }, 1514)).toMatch(/csum_start/);
    expect(check({ flags: 1, csumStart: 1513, csumOffset: 0 }, 1514)).toMatch(/csum_start/);
    expect(check({ flags: 1, csumStart: 1512, csumOffset: 0 }, 1514)).toBe('');
    expect(check({ flags: 1, gsoType: 1, hdrLen: 54, gsoSize: 0, csumStart: 34, csumOffset: 16 }, 4000)).toMatch(/gso_size/);
    expect(check({ flags: 1, gsoType: 4, hdrLen: 4001, gsoSize: 1000, csumStart: 34, csumOffset: 16 }, 4000)).toMatch(/hdr_len/);
  });
});
