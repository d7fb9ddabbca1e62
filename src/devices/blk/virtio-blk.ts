// virtio-blk numbers and the config space layout (OASIS virtio 1.2, §5.2 "Block Device").

export const VIRTIO_ID_BLOCK = 2;
export const SECTOR_SIZE = 512;
export const SECTOR_SHIFT = 9;

/** Feature bits (§5.2.3). */
export const BlkFeature = {
  SIZE_MAX: 1,
  SEG_MAX: 2,
  GEOMETRY: 4,
  RO: 5,
  BLK_SIZE: 6,
  FLUSH: 9,
  TOPOLOGY: 10,
  CONFIG_WCE: 11,
  MQ: 12,
  DISCARD: 13,
  WRITE_ZEROES: 14,
} as const;

/** Request types (§5.2.6). */
export const BlkRequestType = {
  IN: 0,
  OUT: 1,
  FLUSH: 4,
  GET_ID: 8,
  DISCARD: 11,
  WRITE_ZEROES: 13,
} as const;

/** Bytes of struct virtio_blk_outhdr (le32 type, le32 reserved, le64 sector) that start every request. */
export const BLK_OUTHDR_BYTES = 16;

/** Status byte values (§5.2.6). */
export const BlkStatus = { OK: 0, IOERR: 1, UNSUPP: 2 } as const;

/** The serial number returned by GET_ID is at most this long (not NUL-terminated when full). */
export const VIRTIO_BLK_ID_BYTES = 20;

/** Offsets into struct virtio_blk_config (§5.2.4). */
export const BlkConfigOffset = {
  capacity: 0, // le64, in 512-byte sectors
  sizeMax: 8, // le32
  segMax: 12, // le32
  geometry: 16, // le16 cylinders, u8 heads, u8 sectors
  blkSize: 20, // le32
  physicalBlockExp: 24, // u8
  alignmentOffset: 25, // u8
  minIoSize: 26, // le16
  optIoSize: 28, // le32
  writeback: 32, // u8
  numQueues: 34, // le16
  maxDiscardSectors: 36, // le32
  maxDiscardSeg: 40, // le32
  discardSectorAlignment: 44, // le32
  maxWriteZeroesSectors: 48, // le32
  maxWriteZeroesSeg: 52, // le32
  writeZeroesMayUnmap: 56, // u8
  maxSecureEraseSectors: 60, // le32
  maxSecureEraseSeg: 64, // le32
  secureEraseSectorAlignment: 68, // le32
} as const;

/** Size of the config structure we expose (through the secure-erase fields, virtio 1.2). */
export const BLK_CONFIG_SIZE = 72;

export interface BlkGeometry {
  capacityBytes: number;
  logicalBlockSize: number;
  sizeMax: number;
  segMax: number;
  numQueues: number;
  writeback: boolean;
  maxDiscardSectors: number;
  maxWriteZeroesSectors: number;
}

/** Encodes the config space (little-endian, as virtio 1.x requires). */
export function encodeBlkConfig(geometry: BlkGeometry): Uint8Array {
  const bytes = new Uint8Array(BLK_CONFIG_SIZE);
  const view = new DataView(bytes.buffer);
  view.setBigUint64(BlkConfigOffset.capacity, BigInt(Math.floor(geometry.capacityBytes / SECTOR_SIZE)), true);
  view.setUint32(BlkConfigOffset.sizeMax, geometry.sizeMax, true);
  view.setUint32(BlkConfigOffset.segMax, geometry.segMax, true);
  view.setUint32(BlkConfigOffset.blkSize, geometry.logicalBlockSize, true);
  view.setUint8(BlkConfigOffset.physicalBlockExp, 0);
  view.setUint16(BlkConfigOffset.minIoSize, 1, true);
  view.setUint32(BlkConfigOffset.optIoSize, 0, true);
  view.setUint8(BlkConfigOffset.writeback, geometry.writeback ? 1 : 0);
  view.setUint16(BlkConfigOffset.numQueues, geometry.numQueues, true);
  view.setUint32(BlkConfigOffset.maxDiscardSectors, geometry.maxDiscardSectors, true);
  view.setUint32(BlkConfigOffset.maxDiscardSeg, 1, true);
  view.setUint32(BlkConfigOffset.discardSectorAlignment, geometry.logicalBlockSize / SECTOR_SIZE, true);
  view.setUint32(BlkConfigOffset.maxWriteZeroesSectors, geometry.maxWriteZeroesSectors, true);
  view.setUint32(BlkConfigOffset.maxWriteZeroesSeg, 1, true);
  view.setUint8(BlkConfigOffset.writeZeroesMayUnmap, 1);
  return bytes;
}
