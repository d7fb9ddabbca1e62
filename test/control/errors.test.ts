// The error family: one base class, a stable code per class, a name per class, and the refusal
// flag the session uses to choose between a failure reply and a disconnect.
import { describe, expect, it } from 'vitest';
import * as library from '../../dist/index.js';
import {
  DaemonError,
  FrontendError,
  MemoryTableError,
  ProtocolError,
  SessionError,
  UnknownRequestError,
  UsageError,
  VhostUserError,
} from '../../dist/control/errors.js';
import { decodeHeader, decodeRequest } from '../../dist/control/codec/index.js';
import { mapRegion } from '../../dist/control/memory-table.js';
import { parseSize } from '../../dist/cli/common.js';

const family = [
  { make: () => new ProtocolError('bad', 3), type: ProtocolError, name: 'ProtocolError', code: 'VU_ERR_PROTOCOL', refusal: true },
  {
    make: () => new UnknownRequestError(99),
    type: UnknownRequestError,
    name: 'UnknownRequestError',
    code: 'VU_ERR_UNKNOWN_REQUEST',
    refusal: true,
  },
  {
    make: () => new MemoryTableError('bad'),
    type: MemoryTableError,
    name: 'MemoryTableError',
    code: 'VU_ERR_MEMORY_TABLE',
    refusal: true,
  },
  { make: () => new SessionError('no'), type: SessionError, name: 'SessionError', code: 'VU_ERR_REFUSED', refusal: true },
  { make: () => new DaemonError('taken'), type: DaemonError, name: 'DaemonError', code: 'VU_ERR_DAEMON', refusal: false },
  {
    make: () => new FrontendError('failed', 'GET_FEATURES'),
    type: FrontendError,
    name: 'FrontendError',
    code: 'VU_ERR_FRONTEND',
    refusal: false,
  },
  { make: () => new UsageError('--size'), type: UsageError, name: 'UsageError', code: 'VU_ERR_USAGE', refusal: false },
] as const;

describe('VhostUserError family', () => {
  for (const member of family) {
    it(`${member.name}: code ${member.code}, ${member.refusal ? 'a refusal' : 'not a refusal'}`, () => {
      const error = member.make();
      expect(error).toBeInstanceOf(VhostUserError);
      expect(error).toBeInstanceOf(Error);
      expect(error).toBeInstanceOf(member.type);
      expect(error.name).toBe(member.name);
      expect(error.code).toBe(member.code);
      expect(error.refusal).toBe(member.refusal);
      expect(String(error)).toMatch(new RegExp(`^${member.name}: `));
    });
  }

  it('codes are distinct', () => {
    expect(new Set(family.map((member) => member.code)).size).toBe(family.length);
  });

  it('an unknown request is still a protocol error, and keeps its request id', () => {
    const error = new UnknownRequestError(99);
    expect(error).toBeInstanceOf(ProtocolError);
    expect(error.request).toBe(99);
    expect(error.message).toBe('unknown request 99');
  });

  it('a subclass written by a library user is named after itself', () => {
    class DeviceFault extends VhostUserError {}
    const error = new DeviceFault('disk gone', 'VU_ERR_REFUSED', { refusal: true, cause: new Error('EIO') });
    expect(error.name).toBe('DeviceFault');
    expect(error.refusal).toBe(true);
    expect((error.cause as Error).message).toBe('EIO');
  });

  it('the library throws members of the family', () => {
    expect(() => decodeHeader(new Uint8Array(4))).toThrow(ProtocolError);
    expect(() => decodeRequest({ request: 999, flags: 1, size: 0 }, new Uint8Array(0), [])).toThrow(UnknownRequestError);
    expect(() => mapRegion({ guestPhysAddr: 0n, memorySize: 0n, userspaceAddr: 0n, mmapOffset: 0n }, -1)).toThrow(
      MemoryTableError,
    );
    expect(() => parseSize('lots')).toThrow(UsageError);
  });

  it('the package entry exports every class', () => {
    for (const member of family) expect(library[member.name]).toBe(member.type);
    expect(library.VhostUserError).toBe(VhostUserError);
  });
});
