// Wire format: the 12-byte header, and the reader, writer and checker every message layout is
// built from. The spec says "machine native byte order"; on every host we run on that is
// little-endian. Checks throw ProtocolError with the message's name first; writers throw
// RangeError for a value that does not fit its field (a programming error, not hostile input).
import { endianness } from 'node:os';
import { ProtocolError } from '../errors.js';
import { HEADER_SIZE, HeaderFlag, KNOWN_HEADER_FLAGS, MAX_PAYLOAD_SIZE, requestName } from '../protocol.js';

export const LITTLE_ENDIAN = endianness() === 'LE';
export const U64_LIMIT = 1n << 64n;
/** The only flags a reply may carry (QEMU's vhost_user_read_header checks for exactly these). */
export const REPLY_FLAGS = HeaderFlag.VERSION | HeaderFlag.REPLY;

export interface MessageHeader {
  request: number;
  flags: number;
  size: number;
}

/**
 * Reads and checks a 12-byte header. Rejects what makes the stream untrustworthy: a version
 * other than 1, flag bits the spec does not define (a future flag could change how the payload
 * must be read; no front-end sets one), and a size above MAX_PAYLOAD_SIZE, before anyone
 * allocates for it. The request id is not checked here: an unknown id is still a well-framed
 * message (see UnknownRequestError).
 */
export function decodeHeader(bytes: Uint8Array, offset = 0): MessageHeader {
  if (!Number.isInteger(offset) || offset < 0 || bytes.length - offset < HEADER_SIZE) {
    throw new ProtocolError(`message header needs ${HEADER_SIZE} bytes, got ${Math.max(0, bytes.length - offset)}`);
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset + offset, HEADER_SIZE);
  const header = {
    request: view.getUint32(0, LITTLE_ENDIAN),
    flags: view.getUint32(4, LITTLE_ENDIAN),
    size: view.getUint32(8, LITTLE_ENDIAN),
  };
  checkFlags(header);
  if (header.size > MAX_PAYLOAD_SIZE) {
    throw new ProtocolError(
      `${requestName(header.request)}: payload size ${header.size} exceeds the maximum of ${MAX_PAYLOAD_SIZE}`,
      header.request,
    );
  }
  return header;
}

export function checkFlags(header: MessageHeader): void {
  const version = header.flags & HeaderFlag.VERSION_MASK;
  if (version !== HeaderFlag.VERSION) {
    throw new ProtocolError(`${requestName(header.request)}: protocol version ${version}, only version 1 exists`, header.request);
  }
  const unknown = header.flags & ~KNOWN_HEADER_FLAGS;
  if (unknown !== 0) {
    throw new ProtocolError(
      `${requestName(header.request)}: undefined header flag bits 0x${(unknown >>> 0).toString(16)}`,
      header.request,
    );
  }
}

/** Header + raw payload, unchecked: for hostile-input tests and for tools that forward bytes. */
export function encodeMessage(request: number, flags: number, payload: Uint8Array = new Uint8Array(0)): Uint8Array {
  const writer = new Writer('message', request, flags, payload.length);
  writer.bytes(payload);
  return writer.finish();
}

/** An inclusive range of legal sizes or fd counts. */
export interface Range {
  readonly min: number;
  readonly max: number;
}

export const exactly = (n: number): Range => ({ min: n, max: n });

// ---- checks, reading and writing ---------------------------------------------------------------

/** Validation for one message; every failure message starts with the message's name. */
export class Checker {
  constructor(
    private readonly name: string,
    private readonly id: number,
  ) {}

  fail(message: string): never {
    throw new ProtocolError(`${this.name}: ${message}`, this.id);
  }

  /** Generic checks of a request: flags, payload length, size and fd count. */
  envelope(header: MessageHeader, payload: Uint8Array, fds: readonly number[], size: Range, fdRange: Range): void {
    checkFlags(header);
    if ((header.flags & HeaderFlag.REPLY) !== 0) this.fail('the REPLY flag is set on a request');
    this.payloadLength(header, payload);
    this.size(payload.length, size);
    this.fds(fds, fdRange);
  }

  replyHeader(header: MessageHeader, payload: Uint8Array, expectedRequest: number): void {
    if (header.request !== expectedRequest) this.fail(`got a reply to request ${header.request} instead`);
    if (header.flags !== REPLY_FLAGS)
      this.fail(
        `reply flags 0x${(header.flags >>> 0).toString(16)}, expected exactly 0x${REPLY_FLAGS.toString(16)} (version 1 | REPLY)`,
      );
    this.payloadLength(header, payload);
  }

  payloadLength(header: MessageHeader, payload: Uint8Array): void {
    if (payload.length !== header.size) this.fail(`${payload.length} payload bytes for a header size of ${header.size}`);
  }

  size(size: number, range: Range): void {
    if (size < range.min || size > range.max) {
      this.fail(
        range.min === range.max
          ? `payload is ${size} bytes, expected ${range.min}`
          : `payload is ${size} bytes, expected ${range.min}–${range.max}`,
      );
    }
  }

  fds(fds: readonly number[], range: Range): void {
    if (fds.length < range.min || fds.length > range.max) {
      const expected = range.min === range.max ? `${range.min}` : `${range.min}–${range.max}`;
      this.fail(`${fds.length} fds came with the message, expected ${expected}`);
    }
  }
}

/** Sequential little-endian reads; callers check sizes first, so reads never run past the end. */
export class Reader {
  private readonly view: DataView;
  private offset = 0;

  constructor(private readonly payload: Uint8Array) {
    this.view = new DataView(payload.buffer, payload.byteOffset, payload.byteLength);
  }

  u8(): number {
    return this.view.getUint8(this.offset++);
  }

  u16(): number {
    const value = this.view.getUint16(this.offset, LITTLE_ENDIAN);
    this.offset += 2;
    return value;
  }

  u32(): number {
    const value = this.view.getUint32(this.offset, LITTLE_ENDIAN);
    this.offset += 4;
    return value;
  }

  u64(): bigint {
    const value = this.view.getBigUint64(this.offset, LITTLE_ENDIAN);
    this.offset += 8;
    return value;
  }

  /** A copy: decoded values must not alias a receive buffer the transport may reuse. */
  bytes(length: number): Uint8Array {
    if (this.offset + length > this.payload.length) throw new RangeError('read past the end of the payload');
    const copy = this.payload.slice(this.offset, this.offset + length);
    this.offset += length;
    return copy;
  }

  skip(length: number): void {
    this.offset += length;
  }
}

/** Builds header + payload in one buffer, checking that every value fits its field. */
export class Writer {
  private readonly buffer: Uint8Array;
  private readonly view: DataView;
  private offset = HEADER_SIZE;

  constructor(
    private readonly name: string,
    request: number,
    flags: number,
    payloadSize: number,
  ) {
    this.buffer = new Uint8Array(HEADER_SIZE + payloadSize);
    this.view = new DataView(this.buffer.buffer);
    this.view.setUint32(0, request, LITTLE_ENDIAN);
    this.view.setUint32(4, flags, LITTLE_ENDIAN);
    this.view.setUint32(8, payloadSize, LITTLE_ENDIAN);
  }

  u8(value: number, field: string): this {
    this.view.setUint8(this.offset, this.unsigned(value, 0xff, field));
    this.offset += 1;
    return this;
  }

  u16(value: number, field: string): this {
    this.view.setUint16(this.offset, this.unsigned(value, 0xffff, field), LITTLE_ENDIAN);
    this.offset += 2;
    return this;
  }

  u32(value: number, field: string): this {
    this.view.setUint32(this.offset, this.unsigned(value, 0xffff_ffff, field), LITTLE_ENDIAN);
    this.offset += 4;
    return this;
  }

  u64(value: bigint, field: string): this {
    if (typeof value !== 'bigint' || value < 0n || value >= U64_LIMIT) {
      throw new RangeError(`${this.name}: ${field} ${String(value)} is not a u64 bigint`);
    }
    this.view.setBigUint64(this.offset, value, LITTLE_ENDIAN);
    this.offset += 8;
    return this;
  }

  bytes(bytes: Uint8Array): this {
    this.buffer.set(bytes, this.offset);
    this.offset += bytes.length;
    return this;
  }

  /** Zero-filled padding (the buffer starts zeroed). */
  skip(length: number): this {
    this.offset += length;
    return this;
  }

  finish(): Uint8Array {
    if (this.offset !== this.buffer.length) throw new Error(`${this.name}: wrote ${this.offset} of ${this.buffer.length} bytes`);
    return this.buffer;
  }

  private unsigned(value: number, max: number, field: string): number {
    if (!Number.isInteger(value) || value < 0 || value > max)
      throw new RangeError(`${this.name}: ${field} ${value} does not fit (0–${max})`);
    return value;
  }
}

export function checkFd(name: string, fd: number): void {
  if (!Number.isInteger(fd) || fd < 0) throw new RangeError(`${name}: ${fd} is not a file descriptor`);
}

export function checkSize(name: string, size: number, range: Range): void {
  if (size < range.min || size > range.max)
    throw new RangeError(`${name}: payload of ${size} bytes, expected ${range.min}–${range.max}`);
}

export function hex(value: bigint | number): string {
  return `0x${value.toString(16)}`;
}
