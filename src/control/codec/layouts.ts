// Payload layouts shared by several messages (memory regions, ring addresses and fds, IOTLB
// entries, config space, UUIDs): one decoder, checker and writer each, used by requests, replies
// and the back-end channel alike.
import {
  ConfigFlag,
  MAX_CONFIG_SIZE,
  MAX_MEMORY_REGIONS,
  RING_ALIGN,
  UUID_SIZE,
  VRING_IDX_MASK,
  VRING_NOFD_MASK,
  VringAddrFlag,
} from '../protocol.js';
import type { FrontendRequest, IotlbEntry, RegionDescription, RegionDescriptionWithFd } from '../messages.js';
import { type Checker, type Reader, type Writer, U64_LIMIT, hex } from './wire.js';

/** A memory region description: guest address, size, userspace address, mmap offset (u64 each). */
export const REGION_SIZE = 32;
/** SET_MEM_TABLE: u32 nregions and u32 padding before the regions. */
export const MEMORY_TABLE_HEADER = 8;
/** GET_CONFIG / SET_CONFIG: u32 offset, u32 size, u32 flags before the config bytes. */
export const CONFIG_HEADER = 12;

export function decodeMemoryTable(check: Checker, r: Reader, size: number, fds: readonly number[]): RegionDescriptionWithFd[] {
  const count = r.u32();
  r.skip(4); // padding
  // Zero regions is legal: the spec sets no lower bound and the kernel's VHOST_SET_MEM_TABLE
  // accepts an empty table. (QEMU's postcopy acknowledgement has this shape too.)
  if (count > MAX_MEMORY_REGIONS) check.fail(`${count} regions, at most ${MAX_MEMORY_REGIONS} fit one message`);
  const expected = MEMORY_TABLE_HEADER + REGION_SIZE * count;
  if (size !== expected) check.fail(`payload is ${size} bytes, expected ${expected} for ${count} regions`);
  if (fds.length !== count)
    check.fail(
      `${fds.length} fds for ${count} regions: "the size and ordering of the fds matches the number and ordering of memory regions"`,
    );
  const regions = Array.from({ length: count }, (_, i): RegionDescriptionWithFd => ({ ...decodeRegion(r), fd: fds[i] }));
  regions.forEach((region, i) => checkRegion(check, region, `region ${i}`, true));
  checkDisjoint(check, regions, 'guestPhysAddr', 'guest-physical');
  checkDisjoint(check, regions, 'userspaceAddr', 'userspace');
  return regions;
}

export function decodeRegion(r: Reader): RegionDescription {
  return { guestPhysAddr: r.u64(), memorySize: r.u64(), userspaceAddr: r.u64(), mmapOffset: r.u64() };
}

/** A region must have a size and must not wrap around the 64-bit address or file-offset space. */
export function checkRegion(check: Checker, region: RegionDescription, label: string, withOffset: boolean): void {
  const { guestPhysAddr, memorySize, userspaceAddr, mmapOffset } = region;
  if (memorySize === 0n) check.fail(`${label} has size 0`);
  if (guestPhysAddr + memorySize > U64_LIMIT)
    check.fail(`${label} guest range ${hex(guestPhysAddr)} + ${hex(memorySize)} wraps past 2^64`);
  if (userspaceAddr + memorySize > U64_LIMIT)
    check.fail(`${label} userspace range ${hex(userspaceAddr)} + ${hex(memorySize)} wraps past 2^64`);
  if (withOffset && mmapOffset + memorySize > U64_LIMIT)
    check.fail(`${label} mmap offset ${hex(mmapOffset)} + ${hex(memorySize)} wraps past 2^64`);
}

/** Two regions claiming the same guest or userspace bytes would make translation ambiguous. */
export function checkDisjoint(
  check: Checker,
  regions: readonly RegionDescription[],
  key: 'guestPhysAddr' | 'userspaceAddr',
  what: string,
): void {
  const sorted = [...regions].sort((a, b) => (a[key] < b[key] ? -1 : a[key] > b[key] ? 1 : 0));
  for (let i = 1; i < sorted.length; i++) {
    const previous = sorted[i - 1];
    const current = sorted[i];
    if (previous[key] + previous.memorySize > current[key]) {
      check.fail(
        `regions overlap in ${what} addresses: [${hex(previous[key])}, +${hex(previous.memorySize)}) and [${hex(current[key])}, +${hex(current.memorySize)})`,
      );
    }
  }
}

export function writeRegion(writer: Writer, region: RegionDescription): Writer {
  return writer
    .u64(region.guestPhysAddr, 'guestPhysAddr')
    .u64(region.memorySize, 'memorySize')
    .u64(region.userspaceAddr, 'userspaceAddr')
    .u64(region.mmapOffset, 'mmapOffset');
}

export function decodeVringAddr(check: Checker, r: Reader): FrontendRequest {
  const index = r.u32();
  const flags = r.u32();
  const descUserAddr = r.u64();
  const usedUserAddr = r.u64();
  const availUserAddr = r.u64();
  const logGuestAddr = r.u64();
  if ((flags & ~VringAddrFlag.LOG) !== 0)
    check.fail(`undefined ring flags 0x${(flags >>> 0).toString(16)} (only bit 0, LOG, exists)`);
  // The driver must align the ring parts (virtio 1.2 §2.7); the back-end's atomic accesses
  // rely on it. Packed rings need 16/4/4, which these also accept.
  const parts: [string, bigint, number][] = [
    ['descriptor table', descUserAddr, RING_ALIGN.desc],
    ['used ring', usedUserAddr, RING_ALIGN.used],
    ['available ring', availUserAddr, RING_ALIGN.avail],
  ];
  for (const [what, address, alignment] of parts) {
    if (address % BigInt(alignment) !== 0n) check.fail(`${what} address ${hex(address)} is not ${alignment}-byte aligned`);
  }
  return { type: 'SET_VRING_ADDR', index, flags, descUserAddr, usedUserAddr, availUserAddr, logGuestAddr };
}

/** Bits 0–7: index; bit 8: no fd (then the ancillary data must be empty); the rest: zero. */
export function decodeVringFd(check: Checker, value: bigint, fdCount: number, what: string): { index: number; noFd: boolean } {
  const undefinedBits = value & ~BigInt(VRING_IDX_MASK | VRING_NOFD_MASK);
  if (undefinedBits !== 0n)
    check.fail(`undefined bits ${hex(undefinedBits)} in ${hex(value)} (bits 0–7 ${what} index, bit 8 no-fd)`);
  const noFd = (value & BigInt(VRING_NOFD_MASK)) !== 0n;
  if (noFd && fdCount !== 0) check.fail(`the invalid-fd flag is set but ${fdCount} fd came with the message`);
  if (!noFd && fdCount !== 1) check.fail('no fd came with the message and the invalid-fd flag (bit 8) is not set');
  return { index: Number(value & BigInt(VRING_IDX_MASK)), noFd };
}

export function vringFdValue(name: string, index: number, noFd: boolean, fd: number): bigint {
  if (!Number.isInteger(index) || index < 0 || index > VRING_IDX_MASK)
    throw new RangeError(`${name}: index ${index} does not fit bits 0–7`);
  if (noFd !== fd < 0) throw new RangeError(`${name}: noFd must be set exactly when fd is -1`);
  return BigInt(index) | (noFd ? BigInt(VRING_NOFD_MASK) : 0n);
}

export function decodeIotlb(r: Reader): IotlbEntry {
  const iova = r.u64();
  const size = r.u64();
  const userAddr = r.u64();
  const perm = r.u8();
  const iotlbType = r.u8();
  return { iova, size, userAddr, perm, iotlbType };
}

export function checkIotlbPerm(check: Checker, entry: IotlbEntry): void {
  if (entry.perm > 3) check.fail(`IOTLB permission ${entry.perm} is not 0–3`);
}

export function writeIotlb(writer: Writer, entry: IotlbEntry): Writer {
  return writer
    .u64(entry.iova, 'iova')
    .u64(entry.size, 'size')
    .u64(entry.userAddr, 'userAddr')
    .u8(entry.perm, 'perm')
    .u8(entry.iotlbType, 'iotlbType')
    .skip(6);
}

/** u32 offset, u32 size, u32 flags, then exactly `size` bytes (≤ 256). */
export function decodeConfig(
  check: Checker,
  r: Reader,
  payloadSize: number,
): { offset: number; size: number; flags: number; payload: Uint8Array } {
  const offset = r.u32();
  const size = r.u32();
  const flags = r.u32();
  if (size > MAX_CONFIG_SIZE) check.fail(`config size ${size} exceeds ${MAX_CONFIG_SIZE}`);
  if (payloadSize !== CONFIG_HEADER + size)
    check.fail(`payload is ${payloadSize} bytes, expected ${CONFIG_HEADER} + config size ${size}`);
  if (flags !== ConfigFlag.FRONTEND && flags !== ConfigFlag.MIGRATION)
    check.fail(`config flags ${flags} are neither 0 (front-end) nor 1 (migration)`);
  return { offset, size, flags, payload: r.bytes(size) };
}

export function writeConfig(
  w: (size: number) => Writer,
  name: string,
  config: { offset: number; size: number; flags: number; payload: Uint8Array },
): Uint8Array {
  if (config.size !== config.payload.length)
    throw new RangeError(`${name}: size ${config.size} but ${config.payload.length} payload bytes`);
  if (config.size > MAX_CONFIG_SIZE) throw new RangeError(`${name}: config size ${config.size} exceeds ${MAX_CONFIG_SIZE}`);
  return w(CONFIG_HEADER + config.size)
    .u32(config.offset, 'offset')
    .u32(config.size, 'size')
    .u32(config.flags, 'flags')
    .bytes(config.payload)
    .finish();
}

export function writeUuid(writer: Writer, name: string, uuid: Uint8Array): Writer {
  if (uuid.length !== UUID_SIZE) throw new RangeError(`${name}: a UUID has ${UUID_SIZE} bytes, got ${uuid.length}`);
  return writer.bytes(uuid);
}
