// virtio-net header offloads (§5.1.6.2, §5.1.6.4): which of CSUM/GUEST_CSUM, TSO4/6 and ECN
// (HOST and GUEST) the guest acked, packed into one Int32 for the workers, and the checks a
// worker makes per frame against it. Plain numbers: nothing here allocates.
import { bit } from '../../control/protocol.js';
import { ETH_HEADER_BYTES, NetFeature, VLAN_TAG_BYTES } from './virtio-net.js';

/** Bits of NegotiatedSlot.offloads (what the guest acked, as the worker needs it). */
export const Offload = {
  /** CSUM: the guest may send NEEDS_CSUM frames. */
  hostCsum: 1,
  hostTso4: 2,
  hostTso6: 4,
  hostEcn: 8,
  /** GUEST_CSUM: the guest takes NEEDS_CSUM (and DATA_VALID) frames. */
  guestCsum: 16,
  guestTso4: 32,
  guestTso6: 64,
  guestEcn: 128,
} as const;

/** The feature bits a back-end that carries the header offers (tap: IFF_VNET_HDR + TUNSETOFFLOAD). */
export const OFFLOAD_FEATURES =
  bit(NetFeature.CSUM) |
  bit(NetFeature.GUEST_CSUM) |
  bit(NetFeature.GUEST_TSO4) |
  bit(NetFeature.GUEST_TSO6) |
  bit(NetFeature.GUEST_ECN) |
  bit(NetFeature.HOST_TSO4) |
  bit(NetFeature.HOST_TSO6) |
  bit(NetFeature.HOST_ECN);

/** virtio_net_hdr.flags and gso_type values (§5.1.6). */
export const HDR_F_NEEDS_CSUM = 1;
export const HDR_F_DATA_VALID = 2;
export const GSO_NONE = 0;
export const GSO_TCPV4 = 1;
export const GSO_TCPV6 = 4;
export const GSO_ECN = 0x80;

/**
 * Largest GSO frame (Ethernet header onwards): a 64 KiB IP packet plus the Ethernet header and
 * one VLAN tag. Frames above MTU + headers are taken only as GSO, and never above this.
 */
export const GSO_MAX_FRAME_BYTES = 65536 + ETH_HEADER_BYTES + VLAN_TAG_BYTES;

/** Offload bits for the acked features; the spec makes each TSO/ECN bit depend on its CSUM bit. */
export function offloadsOf(features: bigint): number {
  const has = (b: number): boolean => (features & bit(b)) !== 0n;
  let bits = 0;
  if (has(NetFeature.CSUM)) {
    bits |= Offload.hostCsum;
    if (has(NetFeature.HOST_TSO4)) bits |= Offload.hostTso4;
    if (has(NetFeature.HOST_TSO6)) bits |= Offload.hostTso6;
    if (has(NetFeature.HOST_ECN) && (bits & (Offload.hostTso4 | Offload.hostTso6)) !== 0) bits |= Offload.hostEcn;
  }
  if (has(NetFeature.GUEST_CSUM)) {
    bits |= Offload.guestCsum;
    if (has(NetFeature.GUEST_TSO4)) bits |= Offload.guestTso4;
    if (has(NetFeature.GUEST_TSO6)) bits |= Offload.guestTso6;
    if (has(NetFeature.GUEST_ECN) && (bits & (Offload.guestTso4 | Offload.guestTso6)) !== 0) bits |= Offload.guestEcn;
  }
  return bits;
}

/**
 * Whether a header's flags and gso_type stay within what `csum`, `tso4`, `tso6`, `ecn` (one
 * direction's Offload bits) allow. DATA_VALID is accepted only with `dataValidOk` (RX, with
 * GUEST_CSUM); a GSO frame must also ask for NEEDS_CSUM (§5.1.6.2).
 */
export function headerAllowed(
  flags: number,
  gsoType: number,
  offloads: number,
  csum: number,
  tso4: number,
  tso6: number,
  ecn: number,
  dataValidOk: boolean,
): boolean {
  const known = HDR_F_NEEDS_CSUM | (dataValidOk ? HDR_F_DATA_VALID : 0);
  if ((flags & ~known) !== 0) return false;
  if ((flags & HDR_F_NEEDS_CSUM) !== 0 && (offloads & csum) === 0) return false;
  if (gsoType === GSO_NONE) return true;
  if ((gsoType & GSO_ECN) !== 0 && (offloads & ecn) === 0) return false;
  const kind = gsoType & ~GSO_ECN;
  if (kind === GSO_TCPV4) return (offloads & tso4) !== 0 && (flags & HDR_F_NEEDS_CSUM) !== 0;
  if (kind === GSO_TCPV6) return (offloads & tso6) !== 0 && (flags & HDR_F_NEEDS_CSUM) !== 0;
  return false;
}

/** TUNSETOFFLOAD flags for what the guest takes (TUN_F_CSUM 1, TSO4 2, TSO6 4, TSO_ECN 8). */
export function tunOffloadFlags(offloads: number): number {
  if ((offloads & Offload.guestCsum) === 0) return 0;
  let flags = 1;
  if ((offloads & Offload.guestTso4) !== 0) flags |= 2;
  if ((offloads & Offload.guestTso6) !== 0) flags |= 4;
  if ((offloads & Offload.guestEcn) !== 0) flags |= 8;
  return flags;
}

/** What a receiver gets of a frame that asks for an offload (receiverAction). */
export const RX_PASS = 0;
/** Checksum completed in software, delivered with flags 0. */
export const RX_CHECKSUM = 1;
/** A GSO frame the receiver cannot take (no matching GUEST_TSO4/6, or GUEST_ECN): cut into TCP segments (segment.ts). */
export const RX_REFUSE = 2;

/**
 * loopback and switch: what to do with a TX frame whose header asks for an offload (flags or
 * gso_type set; checked against the sender's HOST bits already), for a receiver that acked
 * `offloads` (its Offload bits). The header passes through unchanged when the receiver acked the
 * matching GUEST bit; otherwise a partial checksum is completed in software, and a GSO frame is
 * cut into TCP segments (segment.ts).
 */
export function receiverAction(flags: number, gsoType: number, offloads: number): number {
  if (gsoType !== GSO_NONE) {
    return headerAllowed(
      flags,
      gsoType,
      offloads,
      Offload.guestCsum,
      Offload.guestTso4,
      Offload.guestTso6,
      Offload.guestEcn,
      true,
    )
      ? RX_PASS
      : RX_REFUSE;
  }
  if ((flags & HDR_F_NEEDS_CSUM) === 0) return RX_PASS;
  return (offloads & Offload.guestCsum) !== 0 ? RX_PASS : RX_CHECKSUM;
}
