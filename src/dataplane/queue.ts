// One queue interface over both virtqueue layouts (virtio 1.x §2.7 split, §2.8 packed), so the
// worker and devices never know which one they serve. createVirtqueue() picks the layout from the
// negotiated VIRTIO_F_RING_PACKED.
import type { DirtyLog } from './dirty-log.js';
import type { GuestMemory } from './memory.js';
import { PackedVirtqueue } from './packed-virtqueue.js';
import type { VirtqRequest } from './request.js';
import { SplitVirtqueue, type VirtqueueConfig } from './virtqueue.js';

export interface Virtqueue {
  readonly index: number;
  readonly size: number;
  readonly eventIdx: boolean;
  readonly indirectDesc: boolean;
  /** True for the packed layout. */
  readonly packed: boolean;
  /** The memory table this queue translates through. */
  readonly memory: GuestMemory;
  /** Switches memory tables between batches; returns a BrokenReason (NONE on success). */
  setMemory(memory: GuestMemory): number;
  /**
   * Where the device resumes: GET_VRING_BASE's value. Split: the next avail index (u16). Packed:
   * the next avail ring position in bits 0–14 and the avail wrap counter in bit 15.
   */
  readonly lastAvailIdx: number;
  /** Split: used.idx as last published. Packed: next used position | used wrap counter << 15. */
  readonly usedIdx: number;
  /** Requests popped and not yet given back with pushUsed(). */
  readonly inFlight: number;
  readonly broken: boolean;
  /** A BrokenReason; NONE while healthy. */
  readonly brokenReason: number;
  describeBroken(): string;
  /** Stops the queue; the first reason sticks. */
  markBroken(reason: number, head?: number, descriptorIndex?: number, inIndirect?: boolean): void;
  /** Chains available and not yet popped (diagnostics and tests; not on the hot path for packed). */
  availableCount(): number;
  /** Takes the next available chain into req; false when none or the queue is broken. */
  pop(req: VirtqRequest): boolean;
  /**
   * Gives back the chain popped last, unused (its avail entry/position steps back; nothing is
   * written). False (nothing changes) unless `req` is the chain popped last.
   */
  unpop(req: VirtqRequest): boolean;
  /**
   * Starts (log) or stops (null) marking the ring's own writes in the dirty log; logGuestAddr is
   * SET_VRING_ADDR's log_guest_addr (-1: the ring's own address).
   */
  setUsedLog(log: DirtyLog | null, logGuestAddr?: number): void;
  /** Writes one used element for `head` (split: head index; packed: buffer id), not yet visible. */
  pushUsed(head: number, len: number): boolean;
  /** Makes the used elements pushed so far visible to the driver. */
  flushUsed(): void;
  /** After flushUsed(): whether to signal the call fd. */
  needsCall(): boolean;
  readonly notificationsEnabled: boolean;
  enableNotification(): void;
  disableNotification(): void;
  /** enableNotification(), then true if work arrived meanwhile (process it instead of sleeping). */
  enableNotificationAndRecheck(): boolean;
}

export type { VirtqueueConfig } from './virtqueue.js';

/** A split or a packed queue, as config.packed says. */
export function createVirtqueue(config: VirtqueueConfig): Virtqueue {
  return config.packed === true ? new PackedVirtqueue(config) : new SplitVirtqueue(config);
}
