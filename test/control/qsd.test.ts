// The front-end library against a real back-end: qemu-storage-daemon exporting a raw image as
// vhost-user-blk (QEMU's own libvhost-user implementation). If these fail while our back-end's
// tests pass, the front-end library only agrees with itself.
// No silent skips in CI: with CI=true a machine without qemu-storage-daemon fails here.
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FrontendDevice } from '../../dist/frontend/index.js';
import { ProtocolFeature, VHOST_USER_F_PROTOCOL_FEATURES, VIRTIO_F_VERSION_1, bit } from '../../dist/control/protocol.js';
import { BlkConfigOffset, BlkFeature } from '../../dist/devices/blk/virtio-blk.js';
import { createRawImage, startStorageDaemon, type StorageDaemon } from '../guest/qsd.js';

const MiB = 1024 * 1024;
/** Not a round number of MiB, so a capacity read from the wrong field or in the wrong unit shows. */
const IMAGE_BYTES = 48 * MiB + 7 * 512;
const QUEUES = 2;
const TIMEOUT_MS = 5000;

function missingTools(): string | undefined {
  const path = (process.env.PATH ?? '').split(':');
  for (const [tool, pkg] of [
    [process.env.VUT_QSD ?? 'qemu-storage-daemon', 'qemu-storage-daemon (Debian: qemu-utils)'],
    ['qemu-img', 'qemu-utils'],
  ] as const) {
    const found = tool.includes('/') ? existsSync(tool) : path.some((dir) => dir !== '' && existsSync(join(dir, tool)));
    if (!found) return `${tool} not found: install ${pkg}`;
  }
  return undefined;
}

const missing = missingTools();

// Never skipped: without QEMU's tools this file fails and says what to install.
describe('the front-end library against qemu-storage-daemon', () => {
  it('qemu-storage-daemon and qemu-img are installed', () => {
    expect(missing).toBeUndefined();
  });

  let dir: string;
  let qsd: StorageDaemon;
  let socketPath: string;
  const devices: FrontendDevice[] = [];

  beforeAll(async () => {
    if (missing) return; // the test above fails with what to install
    dir = mkdtempSync(join(tmpdir(), 'vut-qsd-'));
    const image = join(dir, 'disk.img');
    socketPath = join(dir, 'qsd.sock');
    await createRawImage(image, IMAGE_BYTES);
    qsd = await startStorageDaemon({ image, socketPath, numQueues: QUEUES });
  });

  afterEach(() => {
    for (const device of devices.splice(0)) device.close();
  });

  afterAll(async () => {
    await qsd?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  async function connect(): Promise<FrontendDevice> {
    if (missing) throw new Error(missing);
    const device = await FrontendDevice.connect({
      socketPath,
      queues: QUEUES,
      connectTimeoutMs: TIMEOUT_MS,
      replyTimeoutMs: TIMEOUT_MS,
    });
    devices.push(device);
    return device;
  }

  it('negotiates in QEMU order: virtio and protocol features, queues, memory, and both rings', async () => {
    const device = await connect();
    expect(device.features & bit(VIRTIO_F_VERSION_1)).toBe(bit(VIRTIO_F_VERSION_1));
    expect(device.features & bit(VHOST_USER_F_PROTOCOL_FEATURES)).toBe(bit(VHOST_USER_F_PROTOCOL_FEATURES));
    for (const feature of [ProtocolFeature.MQ, ProtocolFeature.REPLY_ACK, ProtocolFeature.CONFIG]) {
      expect(device.protocolFeatures & bit(feature), `protocol feature ${feature}`).toBe(bit(feature));
    }
    expect(device.backendQueues).toBe(QUEUES);
    expect(device.queues.map((queue) => queue.index)).toEqual([0, 1]);
  });

  it('GET_CONFIG: the capacity is the image size, in 512-byte sectors', async () => {
    const device = await connect();
    // QEMU's struct virtio_blk_config predates the secure-erase fields (our BLK_CONFIG_SIZE), and
    // a back-end refuses reads past its end: read up to num_queues only.
    const config = await device.getConfig(0, BlkConfigOffset.numQueues + 2);
    const view = new DataView(config.buffer, config.byteOffset, config.byteLength);
    expect(view.getBigUint64(BlkConfigOffset.capacity, true) * 512n).toBe(BigInt(IMAGE_BYTES));
    if (device.features & bit(BlkFeature.MQ)) expect(view.getUint16(BlkConfigOffset.numQueues, true)).toBe(QUEUES);
    if (device.features & bit(BlkFeature.BLK_SIZE)) expect(view.getUint32(BlkConfigOffset.blkSize, true)).toBe(512);
  });

  it('GET_VRING_BASE stops a ring that processed nothing at index 0', async () => {
    const device = await connect();
    expect(await device.stopQueue(0)).toBe(0);
    expect(await device.stopQueue(1)).toBe(0);
  });

  it('serves the next front-end after this one disconnects', async () => {
    (await connect()).close();
    const again = await connect();
    expect((await again.getConfig(BlkConfigOffset.capacity, 8)).length).toBe(8);
  });
});
