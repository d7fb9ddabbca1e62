// virtio-net numbers (virtio 1.2 §5.1): feature bits, the config space layout and the per-frame
// header. Plain data, shared by the control-side device and the worker-side handler.

/** Device feature bits (§5.1.3). Only the ones this device offers or checks are named. */
export const NetFeature = {
  CSUM: 0,
  GUEST_CSUM: 1,
  MTU: 3,
  MAC: 5,
  GUEST_TSO4: 7,
  GUEST_TSO6: 8,
  GUEST_ECN: 9,
  HOST_TSO4: 11,
  HOST_TSO6: 12,
  HOST_ECN: 13,
  MRG_RXBUF: 15,
  STATUS: 16,
  CTRL_VQ: 17,
  GUEST_ANNOUNCE: 21,
  MQ: 22,
} as const;

/** Config space (§5.1.4): mac[6], status u16, max_virtqueue_pairs u16, mtu u16 (little-endian). */
export const NetConfigOffset = {
  mac: 0,
  status: 6,
  maxVirtqueuePairs: 8,
  mtu: 10,
} as const;
export const NET_CONFIG_SIZE = 12;

/** config.status bits. */
export const NET_S_LINK_UP = 1;

/**
 * The header before every frame (§5.1.6): struct virtio_net_hdr is 10 bytes (flags, gso_type,
 * hdr_len, gso_size, csum_start, csum_offset); with VERSION_1 or MRG_RXBUF it is followed by
 * u16 num_buffers (12 bytes in all, virtio_net_hdr_mrg_rxbuf).
 */
export const NET_HDR_LEGACY_BYTES = 10;
export const NET_HDR_BYTES = 12;
/** Offset of num_buffers in the 12-byte header. */
export const NET_HDR_NUM_BUFFERS = 10;

export const ETH_HEADER_BYTES = 14;
/** An 802.1Q tag a frame may carry on top of the MTU. */
export const VLAN_TAG_BYTES = 4;
/** The smallest Ethernet frame without its FCS (64 on the wire). */
export const ETH_MIN_FRAME = 60;

/** Header length for the negotiated features (§5.1.6.1). */
export function netHeaderBytes(version1: boolean, mergeableRxBuffers: boolean): number {
  return version1 || mergeableRxBuffers ? NET_HDR_BYTES : NET_HDR_LEGACY_BYTES;
}

/** Parses "52:54:00:12:34:56" (also with '-'); throws RangeError on anything else. */
export function parseMac(text: string): Uint8Array {
  const parts = text.trim().split(/[:-]/);
  if (parts.length !== 6 || parts.some((p) => !/^[0-9a-f]{1,2}$/i.test(p))) {
    throw new RangeError(`"${text}" is not a MAC address (six hex bytes, e.g. 52:54:00:12:34:56)`);
  }
  return Uint8Array.from(parts, (p) => parseInt(p, 16));
}

export function formatMac(mac: Uint8Array): string {
  return Array.from(mac, (b) => b.toString(16).padStart(2, '0')).join(':');
}

export interface NetConfigFields {
  mac: Uint8Array;
  linkUp: boolean;
  maxVirtqueuePairs: number;
  mtu: number;
}

export function encodeNetConfig(fields: NetConfigFields): Uint8Array {
  const bytes = new Uint8Array(NET_CONFIG_SIZE);
  const view = new DataView(bytes.buffer);
  bytes.set(fields.mac.subarray(0, 6), NetConfigOffset.mac);
  view.setUint16(NetConfigOffset.status, fields.linkUp ? NET_S_LINK_UP : 0, true);
  view.setUint16(NetConfigOffset.maxVirtqueuePairs, fields.maxVirtqueuePairs, true);
  view.setUint16(NetConfigOffset.mtu, fields.mtu, true);
  return bytes;
}
