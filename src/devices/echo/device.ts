// The echo test device: a virtio device with no device-specific features whose requests return
// their input. Tests and the micro-benchmarks use it to exercise the framework end to end.
import type { VhostUserDevice } from '../../control/backend.js';
import {
  VIRTIO_F_EVENT_IDX,
  VIRTIO_F_INDIRECT_DESC,
  VIRTIO_F_RING_PACKED,
  VIRTIO_F_VERSION_1,
  bit,
} from '../../control/protocol.js';
import type { HandlerSpec } from '../../dataplane/device-api.js';
import type { EchoHandlerOptions } from './handler.js';

export class EchoDevice implements VhostUserDevice {
  readonly name = 'echo';
  readonly features: bigint;

  /**
   * @param offerPacked also offer VIRTIO_F_RING_PACKED (off by default: the session tests ack
   *   everything the echo device offers and check split-ring behaviour)
   */
  constructor(
    readonly numQueues = 1,
    readonly maxQueueSize = 1024,
    offerPacked = false,
  ) {
    this.features = bit(VIRTIO_F_VERSION_1) | bit(VIRTIO_F_EVENT_IDX) | bit(VIRTIO_F_INDIRECT_DESC);
    if (offerPacked) this.features |= bit(VIRTIO_F_RING_PACKED);
  }

  /** The worker-side handler to pair with this device in a WorkerDataPlane. */
  static handler(options: EchoHandlerOptions = {}): HandlerSpec {
    return { module: new URL('./handler.js', import.meta.url).href, options };
  }
}
