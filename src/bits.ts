// Small numeric helpers the control plane, data plane and devices share: feature bit masks, and
// the 2^32 split that 64-bit guest addresses and file offsets go through as two u32 words.

/** 2^32: a u64 is `high * TWO_POW_32 + low` (exact below 2^53, where every address we use lies). */
export const TWO_POW_32 = 4294967296;

/** Feature bit number → mask. */
export function bit(feature: number): bigint {
  return 1n << BigInt(feature);
}

export function hasFeature(features: bigint, feature: number): boolean {
  return (features & bit(feature)) !== 0n;
}

/** A positive safe integer with one bit set (queue sizes, window sizes); 0 is not one. */
export function isPowerOfTwo(n: number): boolean {
  return Number.isSafeInteger(n) && n > 0 && 2 ** Math.round(Math.log2(n)) === n;
}
