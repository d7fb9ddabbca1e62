// Notification suppression for split rings (virtio 1.x §2.7.7, §2.7.10): the EVENT_IDX
// arithmetic and the ring flag / trailing-index positions both sides use. The state machines
// live with their rings (SplitVirtqueue for the device, VringDriver for the driver).

/** avail.flags: the driver asks the device not to interrupt (without EVENT_IDX). */
export const VRING_AVAIL_F_NO_INTERRUPT = 1;
/** used.flags: the device asks the driver not to kick (without EVENT_IDX). */
export const VRING_USED_F_NO_NOTIFY = 1;

/**
 * Whether moving an index from oldIdx to newIdx passed eventIdx, i.e. eventIdx is in
 * [oldIdx, newIdx) modulo 2^16: `(u16)(new - event - 1) < (u16)(new - old)` (§2.7.10, Linux
 * vring_need_event). False when newIdx === oldIdx.
 */
export function vringNeedEvent(eventIdx: number, newIdx: number, oldIdx: number): boolean {
  return ((newIdx - eventIdx - 1) & 0xffff) < ((newIdx - oldIdx) & 0xffff);
}

/** u16 index, in a Uint16Array over the avail ring, of used_event (written by the driver). */
export function usedEventSlot(queueSize: number): number {
  return 2 + queueSize;
}

/** u16 index, in a Uint16Array over the used ring, of avail_event (written by the device). */
export function availEventSlot(queueSize: number): number {
  return 2 + 4 * queueSize;
}
