// Software TCP segmentation (what a NIC does for TSO) for a receiving guest (a switch port, or a
// loopback guest) that did not ack the GUEST_TSO4/6 a GSO frame needs: the frame's payload cut into gso_size pieces, each a whole
// frame with its own IPv4 total length, ID and header checksum (IPv6 payload length), TCP
// sequence number, flags (FIN and PSH on the last segment only, CWR on the first only) and a
// complete TCP checksum. Headers are parsed from the frame itself (hdr_len is only a hint,
// §5.1.6.2), bounds-checked: a frame that is not TCP over IPv4/IPv6 as gso_type says, or that
// would make more than MAX_SEGMENTS segments, is not segmented (the caller drops it).
//
// One segment at a time is built into a preallocated scratch buffer; nothing allocates.
import { finishChecksum, sumBytes } from './csum.js';
import { GSO_ECN, GSO_MAX_FRAME_BYTES, GSO_TCPV4, GSO_TCPV6 } from './offload.js';

/** Segments one GSO frame may be cut into (64 KiB in 1448-byte segments is 46). */
export const MAX_SEGMENTS = 64;
const ETHERTYPE_IPV4 = 0x0800;
const ETHERTYPE_IPV6 = 0x86dd;
const ETHERTYPE_VLAN = 0x8100;
const PROTO_TCP = 6;
const TCP_FIN = 0x01;
const TCP_PSH = 0x08;
const TCP_CWR = 0x80;

export class TcpSegmenter {
  /** The segment last built (build()), Ethernet header onwards. */
  readonly scratch: Uint8Array;
  /** The same bytes as u32 words (for word copies out of it). */
  readonly scratchWords: Uint32Array;
  private source: Uint8Array = new Uint8Array(0);
  private frame = 0;
  private l3 = 0;
  private l4 = 0;
  private headerEnd = 0;
  private payload = 0;
  private mss = 0;
  private v4 = false;
  private segments = 0;

  constructor() {
    const buffer = new ArrayBuffer((GSO_MAX_FRAME_BYTES + 3) & ~3);
    this.scratch = new Uint8Array(buffer);
    this.scratchWords = new Uint32Array(buffer);
  }

  /**
   * Parses the GSO frame data[frame, frame + length) for gso_type `gsoType` and gso_size
   * `gsoSize`: returns how many segments it makes, or 0 when it cannot be segmented.
   */
  begin(data: Uint8Array, frame: number, length: number, gsoType: number, gsoSize: number): number {
    this.segments = 0;
    if (gsoSize === 0 || length < 14) return 0;
    let l3 = 14;
    let type = (data[frame + 12] << 8) | data[frame + 13];
    if (type === ETHERTYPE_VLAN) {
      if (length < 18) return 0;
      l3 = 18;
      type = (data[frame + 16] << 8) | data[frame + 17];
    }
    const kind = gsoType & ~GSO_ECN;
    let l4: number;
    if (kind === GSO_TCPV4) {
      if (type !== ETHERTYPE_IPV4 || length < l3 + 20) return 0;
      const versionIhl = data[frame + l3];
      const ihl = (versionIhl & 15) * 4;
      if (versionIhl >>> 4 !== 4 || ihl < 20 || data[frame + l3 + 9] !== PROTO_TCP) return 0;
      l4 = l3 + ihl;
    } else if (kind === GSO_TCPV6) {
      // No extension headers: Linux sends TSO6 only for TCP right after the IPv6 header.
      if (type !== ETHERTYPE_IPV6 || length < l3 + 40 || data[frame + l3] >>> 4 !== 6 || data[frame + l3 + 6] !== PROTO_TCP) {
        return 0;
      }
      l4 = l3 + 40;
    } else {
      return 0;
    }
    if (length < l4 + 20) return 0;
    const tcpHeader = (data[frame + l4 + 12] >>> 4) * 4;
    if (tcpHeader < 20 || l4 + tcpHeader > length) return 0;
    const headerEnd = l4 + tcpHeader;
    const payload = length - headerEnd;
    const segments = payload === 0 ? 1 : Math.ceil(payload / gsoSize);
    if (segments > MAX_SEGMENTS) return 0;
    this.source = data;
    this.frame = frame;
    this.l3 = l3;
    this.l4 = l4;
    this.headerEnd = headerEnd;
    this.payload = payload;
    this.mss = gsoSize;
    this.v4 = kind === GSO_TCPV4;
    this.segments = segments;
    return segments;
  }

  /** Builds segment `index` (of begin()'s count) into scratch; returns its length. */
  build(index: number): number {
    const data = this.source;
    const out = this.scratch;
    const { frame, l3, l4, headerEnd, mss } = this;
    const offset = index * mss;
    const n = Math.min(mss, this.payload - offset);
    for (let i = 0; i < headerEnd; i++) out[i] = data[frame + i];
    const from = frame + headerEnd + offset;
    for (let i = 0; i < n; i++) out[headerEnd + i] = data[from + i];
    const tcpLength = headerEnd - l4 + n;
    let pseudo = PROTO_TCP + tcpLength;
    if (this.v4) {
      const totalLength = headerEnd - l3 + n;
      out[l3 + 2] = totalLength >>> 8;
      out[l3 + 3] = totalLength & 0xff;
      const id = (((data[frame + l3 + 4] << 8) | data[frame + l3 + 5]) + index) & 0xffff;
      out[l3 + 4] = id >>> 8;
      out[l3 + 5] = id & 0xff;
      out[l3 + 10] = 0;
      out[l3 + 11] = 0;
      const ipChecksum = ~foldSum(sumBytes(out, l3, l4, false, 0)) & 0xffff;
      out[l3 + 10] = ipChecksum >>> 8;
      out[l3 + 11] = ipChecksum & 0xff;
      pseudo = sumBytes(out, l3 + 12, l3 + 20, false, pseudo);
    } else {
      const payloadLength = tcpLength;
      out[l3 + 4] = payloadLength >>> 8;
      out[l3 + 5] = payloadLength & 0xff;
      pseudo = sumBytes(out, l3 + 8, l3 + 40, false, pseudo);
    }
    // Sequence number: the original plus the bytes before this segment (mod 2^32).
    const seq =
      (((data[frame + l4 + 4] << 24) | (data[frame + l4 + 5] << 16) | (data[frame + l4 + 6] << 8) | data[frame + l4 + 7]) +
        offset) >>>
      0;
    out[l4 + 4] = seq >>> 24;
    out[l4 + 5] = (seq >>> 16) & 0xff;
    out[l4 + 6] = (seq >>> 8) & 0xff;
    out[l4 + 7] = seq & 0xff;
    let flags = data[frame + l4 + 13];
    if (index < this.segments - 1) flags &= ~(TCP_FIN | TCP_PSH);
    if (index > 0) flags &= ~TCP_CWR;
    out[l4 + 13] = flags;
    out[l4 + 16] = 0;
    out[l4 + 17] = 0;
    const tcpChecksum = finishChecksum(sumBytes(out, l4, headerEnd + n, false, pseudo));
    out[l4 + 16] = tcpChecksum >>> 8;
    out[l4 + 17] = tcpChecksum & 0xff;
    return headerEnd + n;
  }
}

function foldSum(sum: number): number {
  let s = sum;
  while (s > 0xffff) s = (s & 0xffff) + Math.floor(s / 0x10000);
  return s;
}
