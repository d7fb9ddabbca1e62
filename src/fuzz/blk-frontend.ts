// A clean virtio-blk front-end for the live-socket fuzzer's health checks and the soak: connect
// and negotiate with the front-end library, write a pattern, read it back, compare.
import { FrontendDevice, FrontendMemory } from '../frontend/index.js';

const VIRTIO_BLK_T_IN = 0;
const VIRTIO_BLK_T_OUT = 1;
const SECTOR = 512;

/** One connected front-end with a little guest memory for requests. */
export class BlkFrontend {
  private readonly tokens = new Float64Array(64);
  private readonly lens = new Uint32Array(64);
  private nextToken = 1;

  private constructor(
    readonly device: FrontendDevice,
    private readonly memory: FrontendMemory,
  ) {}

  static async connect(socketPath: string, timeoutMs = 10_000): Promise<BlkFrontend> {
    const memory = FrontendMemory.simple(4 << 20);
    try {
      const device = await FrontendDevice.connect({
        socketPath,
        memory,
        queues: 1,
        queueSize: 64,
        connectTimeoutMs: timeoutMs,
        replyTimeoutMs: timeoutMs,
      });
      return new BlkFrontend(device, memory);
    } catch (error) {
      memory.close();
      throw error;
    }
  }

  /**
   * Posts `count` write requests of `sectors` sectors each (not waited for): what a guest has in
   * flight when it is killed mid-I/O.
   */
  postWrites(count: number, sectors: number, firstSector: number): void {
    const driver = this.device.queues[0].driver;
    for (let i = 0; i < count; i++) {
      const header = this.header(VIRTIO_BLK_T_OUT, firstSector + i * sectors);
      const data = this.memory.allocate(sectors * SECTOR, 4096);
      const status = this.memory.allocate(1, 1);
      driver.beginChain();
      driver.addSegment(header, 16, false);
      driver.addSegment(data, sectors * SECTOR, false);
      driver.addSegment(status, 1, true);
      if (driver.endChain(this.nextToken++) < 0) break;
    }
    this.device.queues[0].publishAndKick();
  }

  /** Writes a pattern at `sector`, reads it back, and throws unless both succeed and match. */
  async roundTrip(sector: number, sectors = 8, timeoutMs = 10_000): Promise<void> {
    const length = sectors * SECTOR;
    const data = this.memory.allocate(length, 4096);
    const bytes = this.memory.bytes(data, length);
    for (let i = 0; i < length; i++) bytes[i] = (i * 7 + sector) & 0xff;
    const expected = bytes.slice();
    await this.request(VIRTIO_BLK_T_OUT, sector, data, length, false, timeoutMs);
    bytes.fill(0);
    await this.request(VIRTIO_BLK_T_IN, sector, data, length, true, timeoutMs);
    for (let i = 0; i < length; i++) {
      if (bytes[i] !== expected[i]) throw new Error(`read back differs at byte ${i} of sector ${sector}`);
    }
  }

  close(): void {
    this.device.close();
    this.memory.close();
  }

  private header(type: number, sector: number): number {
    const at = this.memory.allocate(16, 16);
    const view = new DataView(this.memory.bytes(at, 16).buffer, this.memory.bytes(at, 16).byteOffset, 16);
    view.setUint32(0, type, true);
    view.setUint32(4, 0, true);
    view.setBigUint64(8, BigInt(sector), true);
    return at;
  }

  private async request(
    type: number,
    sector: number,
    data: number,
    length: number,
    write: boolean,
    timeoutMs: number,
  ): Promise<void> {
    const queue = this.device.queues[0];
    const driver = queue.driver;
    const status = this.memory.allocate(1, 1);
    this.memory.bytes(status, 1)[0] = 0xff;
    driver.beginChain();
    driver.addSegment(this.header(type, sector), 16, false);
    driver.addSegment(data, length, write);
    driver.addSegment(status, 1, true);
    const token = this.nextToken++;
    if (driver.endChain(token) < 0) throw new Error('no room in the ring');
    queue.publishAndKick();
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const count = driver.reapUsed(this.tokens, this.lens);
      for (let i = 0; i < count; i++) {
        if (this.tokens[i] === token) {
          const code = this.memory.bytes(status, 1)[0];
          if (code !== 0) throw new Error(`request on sector ${sector} failed with status ${code}`);
          return;
        }
      }
      if (driver.brokenReason !== '') throw new Error(`ring broken: ${driver.brokenReason}`);
      if (Date.now() > deadline) throw new Error(`request on sector ${sector} did not complete within ${timeoutMs} ms`);
      await new Promise((resolve) => setTimeout(resolve, 1));
    }
  }
}
