// Offload negotiation without a front-end: which features NetDevice offers with and without a
// back-end that carries the header, the Offload bits it hands the workers and the tap, and the
// per-frame header check (flags, gso_type) against them.
import { describe, expect, it } from 'vitest';
import { NetDevice } from '../../dist/devices/net/device.js';
import {
  GSO_ECN,
  GSO_TCPV4,
  GSO_TCPV6,
  HDR_F_DATA_VALID,
  HDR_F_NEEDS_CSUM,
  OFFLOAD_FEATURES,
  Offload,
  headerAllowed,
  offloadsOf,
  tunOffloadFlags,
} from '../../dist/devices/net/offload.js';
import { NegotiatedSlot } from '../../dist/devices/net/options.js';
import { NetFeature } from '../../dist/devices/net/virtio-net.js';

const bit = (n: number) => 1n << BigInt(n);
const MAC = Uint8Array.of(0x52, 0x54, 0, 0x12, 0x34, 0x56);
const OFFLOAD_BITS = [
  NetFeature.CSUM,
  NetFeature.GUEST_CSUM,
  NetFeature.GUEST_TSO4,
  NetFeature.GUEST_TSO6,
  NetFeature.GUEST_ECN,
  NetFeature.HOST_TSO4,
  NetFeature.HOST_TSO6,
  NetFeature.HOST_ECN,
];

function device(offloads: boolean, seen: number[] = []): NetDevice {
  return new NetDevice({
    queuePairs: 1,
    maxQueueSize: 256,
    mac: MAC,
    mtu: 1500,
    offloads,
    onOffloads: (bits) => seen.push(bits),
  });
}

const hostCheck = (flags: number, gso: number, offloads: number) =>
  headerAllowed(flags, gso, offloads, Offload.hostCsum, Offload.hostTso4, Offload.hostTso6, Offload.hostEcn, false);

describe('offload features', () => {
  it('are offered only when the back-end carries the header', () => {
    const plain = device(false);
    const tap = device(true);
    for (const feature of OFFLOAD_BITS) {
      expect(plain.features & bit(feature), `bit ${feature} without`).toBe(0n);
      expect(tap.features & bit(feature), `bit ${feature} with`).not.toBe(0n);
    }
    expect(tap.features & ~OFFLOAD_FEATURES).toBe(plain.features);
  });

  it('hand the acked bits to the workers and to onOffloads, and clear them at reset', () => {
    const seen: number[] = [];
    const d = device(true, seen);
    const slots = new Int32Array(d.negotiated);
    d.setFeatures(
      bit(32) | bit(NetFeature.CSUM) | bit(NetFeature.HOST_TSO4) | bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_TSO6),
    );
    const expected = Offload.hostCsum | Offload.hostTso4 | Offload.guestCsum | Offload.guestTso6;
    expect(slots[NegotiatedSlot.offloads]).toBe(expected);
    expect(d.offloads).toBe(expected);
    expect(tunOffloadFlags(expected)).toBe(1 | 4);
    d.reset();
    expect(slots[NegotiatedSlot.offloads]).toBe(0);
    expect(seen).toEqual([expected, 0]);
    // A device that does not offer them ignores a front-end acking them anyway.
    const plainSeen: number[] = [];
    const plain = device(false, plainSeen);
    plain.setFeatures(bit(NetFeature.CSUM) | bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_TSO4));
    expect(plain.offloads).toBe(0);
    expect(plainSeen).toEqual([]);
  });

  it('TSO and ECN count only with their checksum bit (the spec makes them depend on it)', () => {
    expect(offloadsOf(bit(NetFeature.HOST_TSO4) | bit(NetFeature.GUEST_TSO4) | bit(NetFeature.GUEST_ECN))).toBe(0);
    expect(offloadsOf(bit(NetFeature.GUEST_CSUM) | bit(NetFeature.GUEST_ECN))).toBe(Offload.guestCsum);
    expect(tunOffloadFlags(Offload.guestTso4 | Offload.guestTso6)).toBe(0);
    const all = offloadsOf(OFFLOAD_FEATURES);
    expect(tunOffloadFlags(all)).toBe(1 | 2 | 4 | 8);
  });
});

describe('header check', () => {
  const all = offloadsOf(OFFLOAD_FEATURES);
  it('takes a plain header always, and offload requests only as acked', () => {
    expect(hostCheck(0, 0, 0)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 0, 0)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 0, Offload.hostCsum)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV4, Offload.hostCsum)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV4, Offload.hostCsum | Offload.hostTso4)).toBe(true);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6, Offload.hostCsum | Offload.hostTso4)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, Offload.hostCsum | Offload.hostTso6)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, GSO_TCPV6 | GSO_ECN, all)).toBe(true);
  });

  it('refuses GSO without NEEDS_CSUM, UDP/unknown GSO types, unknown flags, DATA_VALID on TX', () => {
    expect(hostCheck(0, GSO_TCPV4, all)).toBe(false);
    expect(hostCheck(HDR_F_NEEDS_CSUM, 3, all)).toBe(false); // UDP (UFO): not offered
    expect(hostCheck(HDR_F_NEEDS_CSUM, 5, all)).toBe(false);
    expect(hostCheck(0x80, 0, all)).toBe(false);
    expect(hostCheck(HDR_F_DATA_VALID, 0, all)).toBe(false);
    // RX: DATA_VALID is fine (the handler clears it without GUEST_CSUM).
    expect(
      headerAllowed(HDR_F_DATA_VALID, 0, 0, Offload.guestCsum, Offload.guestTso4, Offload.guestTso6, Offload.guestEcn, true),
    ).toBe(true);
    // RX GSO needs the guest's bits, not the host's.
    const hostOnly = Offload.hostCsum | Offload.hostTso4;
    expect(
      headerAllowed(
        HDR_F_NEEDS_CSUM,
        GSO_TCPV4,
        hostOnly,
        Offload.guestCsum,
        Offload.guestTso4,
        Offload.guestTso6,
        Offload.guestEcn,
        true,
      ),
    ).toBe(false);
  });
});
