// Byte copies between guest buffers and frame rings without allocating: segment walks over
// VirtqRequests and a copy that goes a u32 word at a time when both sides are equally aligned
// (a byte loop costs ~4x more here; subarray/set would allocate per frame).
import type { VirtqRequest } from '../../dataplane/request.js';

/**
 * Copies `length` readable bytes of `src` (from `from` bytes in) into the writable bytes of
 * `dst` (from `to` bytes in), segment by segment; returns the bytes copied. Within one window (a
 * guest looping back to itself) copyWithin is a memmove; across windows or guests (the switch
 * copying between two ports) word copies where the alignment allows.
 */
export function copyRequestToRequest(src: VirtqRequest, from: number, dst: VirtqRequest, to: number, length: number): number {
  const srcMemory = src.memory!;
  const dstMemory = dst.memory!;
  const srcEnd = src.readableCount;
  const dstEnd = dst.segmentCount;
  let s = 0;
  let sOff = from;
  while (s < srcEnd && sOff >= src.segLength[s]) sOff -= src.segLength[s++];
  let d = dst.readableCount;
  let dOff = to;
  while (d < dstEnd && dOff >= dst.segLength[d]) dOff -= dst.segLength[d++];
  let copied = 0;
  while (copied < length && s < srcEnd && d < dstEnd) {
    let n = length - copied;
    const sRoom = src.segLength[s] - sOff;
    const dRoom = dst.segLength[d] - dOff;
    if (n > sRoom) n = sRoom;
    if (n > dRoom) n = dRoom;
    const sw = src.segWindow[s];
    const dw = dst.segWindow[d];
    const sView = srcMemory.windowBytesView[sw];
    const dView = dstMemory.windowBytesView[dw];
    const sp = src.segWindowOffset[s] + sOff;
    const dp = dst.segWindowOffset[d] + dOff;
    if (sView === dView) {
      dView.copyWithin(dp, sp, sp + n);
    } else {
      copyBytes(
        dView,
        dstMemory.windowWords[dw],
        dstMemory.windowSkew[dw],
        dp,
        sView,
        srcMemory.windowWords[sw],
        srcMemory.windowSkew[sw],
        sp,
        n,
      );
    }
    copied += n;
    sOff += n;
    dOff += n;
    if (sOff === src.segLength[s]) {
      s++;
      sOff = 0;
    }
    if (dOff === dst.segLength[d]) {
      d++;
      dOff = 0;
    }
  }
  return copied;
}

/**
 * dst[to, to + n) = src[from, from + n). `words` views hold the same bytes as u32 words, their
 * first word starting `skew` bytes before the byte view (GuestMemory.windowSkew); when both
 * sides have the same alignment the middle goes a word at a time.
 */
export function copyBytes(
  dst: Uint8Array,
  dstWords: Uint32Array,
  dstSkew: number,
  to: number,
  src: Uint8Array,
  srcWords: Uint32Array,
  srcSkew: number,
  from: number,
  n: number,
): void {
  let d = to;
  let s = from;
  let left = n;
  if (left >= 16 && ((d + dstSkew) & 3) === ((s + srcSkew) & 3)) {
    while (((d + dstSkew) & 3) !== 0) {
      dst[d++] = src[s++];
      left--;
    }
    const words = left >>> 2;
    let dw = (d + dstSkew) >>> 2;
    let sw = (s + srcSkew) >>> 2;
    const end = sw + words;
    while (sw < end) dstWords[dw++] = srcWords[sw++];
    d += words << 2;
    s += words << 2;
    left -= words << 2;
  }
  const end = s + left;
  while (s < end) dst[d++] = src[s++];
}
