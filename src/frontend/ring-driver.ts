// What the front-end library, the load generator and tests need from a driver ring, whichever
// the layout (VringDriver: split, §2.7; PackedVringDriver: packed, §2.8).
import type { GuestMemory } from '../dataplane/memory.js';
import { PackedVringDriver } from './packed-vring-driver.js';
import { VringDriver } from './vring-driver.js';

export interface RingDriver {
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectEntries: number;
  readonly freeDescriptors: number;
  readonly inFlight: number;
  readonly broken: boolean;
  readonly brokenReason: string;
  beginChain(indirect?: boolean): void;
  addSegment(gpa: number, len: number, writable: boolean): void;
  /** The chain's head (split) or buffer id (packed), or -1 when it did not fit. */
  endChain(token: number): number;
  abortChain(): void;
  publish(): void;
  needsKick(): boolean;
  hasUsed(): boolean;
  reapUsed(tokens: Float64Array, lens: Uint32Array, heads?: Uint32Array): number;
  enableCallbacks(): void;
  disableCallbacks(): void;
  enableCallbacksAndRecheck(): boolean;
}

export interface RingDriverConfig {
  memory: GuestMemory;
  size: number;
  /** Split: descriptor table, avail ring, used ring. Packed: descriptor ring, driver and device event areas. */
  descAddr: number;
  availAddr: number;
  usedAddr: number;
  eventIdx?: boolean;
  indirect?: { tableAddr: number; maxEntries: number };
  /** VIRTIO_F_RING_PACKED negotiated. */
  packed?: boolean;
}

export function createRingDriver(config: RingDriverConfig): RingDriver {
  return config.packed === true ? new PackedVringDriver(config) : new VringDriver(config);
}
