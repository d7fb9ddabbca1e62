// What the front-end library implements, so that it acks nothing else. A back-end may offer
// features the library's driver does not honour (SPDK always offers RING_PACKED); acking one of
// them makes the back-end drive a ring layout or protocol the library never speaks — no I/O at
// all, or worse. The default is therefore "offer ∩ implemented"; a caller that wants more says so.
import {
  ProtocolFeature,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_VERSION_1,
  bit,
} from '../control/protocol.js';

/**
 * Virtio transport features the library's driver honours: virtio 1.x split rings (VringDriver)
 * with indirect tables and EVENT_IDX, plus vhost-user's protocol-feature negotiation. Not
 * RING_PACKED, IN_ORDER (the driver reads every used entry), ACCESS_PLATFORM (no IOTLB),
 * LOG_ALL (no dirty log), NOTIFY_ON_EMPTY or ANY_LAYOUT.
 */
export const FRONTEND_VIRTIO_FEATURES =
  bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES);

/**
 * Protocol features the library uses: MQ (GET_QUEUE_NUM), REPLY_ACK (the client waits for each
 * ack), CONFIG (GET_CONFIG) and CONFIGURE_MEM_SLOTS (ADD_MEM_REG beyond 8 regions). Not STATUS:
 * the library sends no SET_STATUS, and DPDK-based back-ends that negotiated it wait for
 * DRIVER_OK before starting a ring.
 */
export const FRONTEND_PROTOCOL_FEATURES =
  bit(ProtocolFeature.MQ) |
  bit(ProtocolFeature.REPLY_ACK) |
  bit(ProtocolFeature.CONFIG) |
  bit(ProtocolFeature.CONFIGURE_MEM_SLOTS);

/**
 * Feature bits that belong to the device type (virtio 1.2 §6: 0–23 and 50–127); the rest are the
 * transport's and the vhost-user bit, which only the library can honour.
 */
export const DEVICE_FEATURE_MASK = (bit(24) - 1n) | (((1n << 64n) - 1n) & ~(bit(50) - 1n));

/** Hex for messages and reports: `0x` and the bits. */
export function featureHex(features: bigint): string {
  return `0x${features.toString(16)}`;
}

export interface FeatureWishes {
  /** Device-type bits the caller's driver understands (only bits in DEVICE_FEATURE_MASK). */
  deviceFeatures?: bigint;
  /** Replace the default wish: ack offer ∩ wantedFeatures, implemented or not. */
  wantedFeatures?: bigint;
  /** Replace the default protocol wish: ack offer ∩ wantedProtocolFeatures, implemented or not. */
  wantedProtocolFeatures?: bigint;
}

/** The virtio features to ack for an offer: what the library and the caller's driver honour. */
export function virtioFeaturesToAck(offered: bigint, wishes: FeatureWishes): bigint {
  if (wishes.wantedFeatures !== undefined) return offered & wishes.wantedFeatures;
  const device = wishes.deviceFeatures ?? 0n;
  const transport = device & ~DEVICE_FEATURE_MASK;
  if (transport !== 0n) {
    throw new RangeError(
      `deviceFeatures holds transport bits ${featureHex(transport)}; the library decides those (ask for them explicitly with wantedFeatures)`,
    );
  }
  return offered & (FRONTEND_VIRTIO_FEATURES | device);
}

/** The protocol features to ack for an offer. */
export function protocolFeaturesToAck(offered: bigint, wishes: FeatureWishes): bigint {
  return offered & (wishes.wantedProtocolFeatures ?? FRONTEND_PROTOCOL_FEATURES);
}
