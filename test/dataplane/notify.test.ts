import { describe, expect, it } from 'vitest';
import { availEventSlot, usedEventSlot, vringNeedEvent } from '../../dist/dataplane/notify.js';

describe('vringNeedEvent: notify iff (u16)(new - event - 1) < (u16)(new - old)', () => {
  it('is true when the event index was passed by this batch', () => {
    expect(vringNeedEvent(5, 6, 5)).toBe(true); // exactly event → event+1
    expect(vringNeedEvent(5, 10, 0)).toBe(true); // inside [old, new)
    expect(vringNeedEvent(0, 10, 0)).toBe(true); // event == old
  });
  it('is false when the event index is ahead of or behind the batch', () => {
    expect(vringNeedEvent(10, 10, 0)).toBe(false); // event == new: not yet passed
    expect(vringNeedEvent(11, 10, 0)).toBe(false);
    expect(vringNeedEvent(3, 10, 5)).toBe(false); // before old: signalled already
  });
  it('is false when nothing moved', () => {
    expect(vringNeedEvent(7, 7, 7)).toBe(false);
    expect(vringNeedEvent(6, 7, 7)).toBe(false);
  });
  it('wraps at 2^16', () => {
    expect(vringNeedEvent(0xffff, 2, 0xfffe)).toBe(true);
    expect(vringNeedEvent(0, 2, 0xfffe)).toBe(true);
    expect(vringNeedEvent(2, 2, 0xfffe)).toBe(false);
    expect(vringNeedEvent(0xfffd, 2, 0xfffe)).toBe(false);
  });
  it('matches a brute-force interval check for every event index', () => {
    for (const [oldIdx, newIdx] of [
      [0, 1],
      [100, 164],
      [0xfff0, 0x0010],
      [5, 5],
    ]) {
      const mismatches: number[] = [];
      for (let event = 0; event < 0x10000; event++) {
        const distance = (newIdx - oldIdx) & 0xffff;
        const inBatch = ((event - oldIdx) & 0xffff) < distance;
        if (vringNeedEvent(event, newIdx, oldIdx) !== inBatch) mismatches.push(event);
      }
      expect(mismatches).toEqual([]);
    }
  });
  it('places used_event after the avail ring and avail_event after the used ring (u16 slots)', () => {
    expect(usedEventSlot(256)).toBe(2 + 256); // byte 4 + 2n
    expect(availEventSlot(256)).toBe(2 + 4 * 256); // byte 4 + 8n
  });
});
