// Honest negotiation: against a back-end that offers every virtio feature bit and every protocol
// feature bit, FrontendDevice acks exactly what the library implements (plus the device bits its
// caller says it understands), unless the caller explicitly asks for more.
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { VhostUserDevice } from '../../dist/control/backend.js';
import { FrontendDevice, featureHex } from '../../dist/frontend/index.js';
import {
  ProtocolFeature,
  VHOST_F_LOG_ALL,
  VHOST_USER_F_PROTOCOL_FEATURES,
  VIRTIO_F_ACCESS_PLATFORM,
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_IN_ORDER,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../dist/control/protocol.js';
import { BlkFeature } from '../../dist/devices/blk/virtio-blk.js';
import { EchoDevice } from '../../dist/devices/echo/device.js';
import { captureLogs, startTestDaemon, testBlkDevice, type TestDaemon } from '../control/helpers.js';

const ALL_BITS = (1n << 64n) - 1n;
const TIMEOUT_MS = 2000;

/** A device that offers all 64 feature bits and all 64 protocol bits, and records what it was given. */
class EverythingDevice implements VhostUserDevice {
  readonly name = 'everything';
  readonly numQueues = 2;
  readonly maxQueueSize = 256;
  readonly features = ALL_BITS;
  readonly protocolFeatures = ALL_BITS;
  acked: bigint | undefined;
  setFeatures(features: bigint): void {
    this.acked = features;
  }
  getConfig(offset: number, size: number): Uint8Array {
    return new Uint8Array(size).fill(offset & 0xff);
  }
}

let logs: ReturnType<typeof captureLogs>;
let rig: TestDaemon | undefined;
let device: EverythingDevice;

beforeAll(() => {
  logs = captureLogs();
});
afterAll(() => logs.restore());
afterEach(async () => {
  await rig?.stop();
  rig = undefined;
});

async function everything(): Promise<TestDaemon> {
  device = new EverythingDevice();
  rig = await startTestDaemon(device);
  return rig;
}

/** What the back-end's session recorded as acked, once the front-end finished negotiating. */
function backendAcks(daemon: TestDaemon): { features: bigint | undefined; protocol: bigint | undefined } {
  const session = daemon.daemon.currentSession;
  return { features: device.acked, protocol: session?.protocolFeatures };
}

describe('FrontendDevice negotiation against a back-end offering everything', () => {
  it('acks only the transport and protocol features the library implements by default', async () => {
    const { socketPath } = await everything();
    const frontend = await FrontendDevice.connect({ socketPath, queues: 2, replyTimeoutMs: TIMEOUT_MS });
    try {
      const transport =
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
      const protocol =
        bit(ProtocolFeature.MQ) |
        bit(ProtocolFeature.REPLY_ACK) |
        bit(ProtocolFeature.CONFIG) |
        bit(ProtocolFeature.CONFIGURE_MEM_SLOTS);
      expect(frontend.offeredFeatures).toBe(ALL_BITS);
      expect(frontend.offeredProtocolFeatures).toBe(ALL_BITS);
      expect(featureHex(frontend.features)).toBe(featureHex(transport));
      expect(featureHex(frontend.protocolFeatures)).toBe(featureHex(protocol));
      // The back-end saw the same: nothing it offered beyond that was acked.
      const acks = backendAcks(rig!);
      expect(acks.features).toBe(transport);
      expect(acks.protocol).toBe(protocol);
      for (const never of [VIRTIO_F_RING_PACKED, VIRTIO_F_IN_ORDER, VIRTIO_F_ACCESS_PLATFORM, VHOST_F_LOG_ALL]) {
        expect(frontend.features & bit(never)).toBe(0n);
      }
      expect(frontend.protocolFeatures & bit(ProtocolFeature.STATUS)).toBe(0n);
      expect(frontend.protocolFeatures & bit(ProtocolFeature.LOG_SHMFD)).toBe(0n);
      // MQ was negotiated, so both queues were set up; the implemented subset is usable.
      expect(frontend.queues).toHaveLength(2);
      expect(frontend.queues[0].driver.eventIdx).toBe(true);
      expect(Array.from(await frontend.getConfig(4, 2))).toEqual([4, 4]);
    } finally {
      frontend.close();
    }
  });

  it('adds the device-type bits the caller understands, and only those', async () => {
    const { socketPath } = await everything();
    const understood = bit(BlkFeature.SIZE_MAX) | bit(BlkFeature.BLK_SIZE) | bit(BlkFeature.MQ) | bit(55);
    const frontend = await FrontendDevice.connect({ socketPath, deviceFeatures: understood, replyTimeoutMs: TIMEOUT_MS });
    try {
      const transport =
        bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC) | bit(VHOST_USER_F_PROTOCOL_FEATURES);
      expect(frontend.features).toBe(transport | understood);
      expect(device.acked).toBe(transport | understood);
    } finally {
      frontend.close();
    }
  });

  it('acks more only when asked explicitly', async () => {
    const { socketPath } = await everything();
    const wanted = bit(VIRTIO_F_RING_PACKED) | bit(VHOST_F_LOG_ALL) | bit(VIRTIO_F_VERSION_1);
    const wantedProtocol = bit(ProtocolFeature.STATUS) | bit(ProtocolFeature.REPLY_ACK);
    const frontend = await FrontendDevice.connect({
      socketPath,
      wantedFeatures: wanted,
      wantedProtocolFeatures: wantedProtocol,
      replyTimeoutMs: TIMEOUT_MS,
    });
    try {
      expect(frontend.features).toBe(wanted);
      expect(frontend.protocolFeatures).toBe(wantedProtocol);
      expect(backendAcks(rig!)).toEqual({ features: wanted, protocol: wantedProtocol });
    } finally {
      frontend.close();
    }
  });

  it('refuses transport bits passed as device features, before connecting', async () => {
    const { socketPath } = await everything();
    await expect(FrontendDevice.connect({ socketPath, deviceFeatures: bit(VIRTIO_F_RING_PACKED) })).rejects.toThrow(
      /transport bits 0x400000000/,
    );
    expect(rig!.daemon.connections).toBe(0);
  });

  it('acks nothing the back-end did not offer', async () => {
    // A real offer (our virtio-blk device) is narrower than the library's sets: the ack is the intersection.
    rig = await startTestDaemon(testBlkDevice(1));
    const frontend = await FrontendDevice.connect({
      socketPath: rig.socketPath,
      deviceFeatures: bit(BlkFeature.RO) | bit(BlkFeature.MQ),
      replyTimeoutMs: TIMEOUT_MS,
    });
    try {
      expect(frontend.features & ~frontend.offeredFeatures).toBe(0n);
      expect(frontend.protocolFeatures & ~frontend.offeredProtocolFeatures).toBe(0n);
      // The blk device offers MQ but not RO (it is writable); STATUS and BACKEND_REQ are offered and left alone.
      expect(frontend.features & bit(BlkFeature.MQ)).not.toBe(0n);
      expect(frontend.features & bit(BlkFeature.RO)).toBe(0n);
      expect(frontend.features & bit(BlkFeature.FLUSH)).toBe(0n);
      expect(frontend.offeredProtocolFeatures & bit(ProtocolFeature.STATUS)).not.toBe(0n);
      expect(frontend.protocolFeatures & (bit(ProtocolFeature.STATUS) | bit(ProtocolFeature.BACKEND_REQ))).toBe(0n);
      expect(rig.daemon.currentSession?.features).toBe(frontend.features);
    } finally {
      frontend.close();
    }
  });

  it('acks RING_PACKED when packed rings are asked for, and refuses a back-end that does not offer it', async () => {
    rig = await startTestDaemon(testBlkDevice(1));
    const frontend = await FrontendDevice.connect({ socketPath: rig.socketPath, packed: true, replyTimeoutMs: TIMEOUT_MS });
    try {
      expect(frontend.features & bit(VIRTIO_F_RING_PACKED)).not.toBe(0n);
      expect(frontend.queues[0].packed).toBe(true);
      expect(rig.daemon.currentSession?.features).toBe(frontend.features);
    } finally {
      frontend.close();
    }
    await rig.stop();
    // The echo device offers split rings only unless asked.
    rig = await startTestDaemon(new EchoDevice(1, 256));
    await expect(
      FrontendDevice.connect({ socketPath: rig.socketPath, packed: true, replyTimeoutMs: TIMEOUT_MS }),
    ).rejects.toThrow(/does not offer VIRTIO_F_RING_PACKED/);
  });
});
