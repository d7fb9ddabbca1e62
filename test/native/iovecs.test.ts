// native copyTemplate: a template copied into guest buffers described as iovec records, with a
// per-target u32 patch; every record is checked against its region (hostile offsets, lengths,
// record ranges) and a bad target fails alone.
import { describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { thrown } from './preamble.js';

const WORDS = native.recordLayout.iovecWords;
const { region: REGION, offsetLow: LOW, offsetHigh: HIGH, length: LENGTH } = native.recordLayout.iovec;
const EFAULT = 14;
const EINVAL = 22;

function records(list: [region: number, offset: number, length: number][]): Uint32Array {
  const words = new Uint32Array(Math.max(1, list.length) * WORDS);
  list.forEach(([region, offset, length], i) => {
    words[i * WORDS + REGION] = region;
    words[i * WORDS + LOW] = offset >>> 0;
    words[i * WORDS + HIGH] = Math.floor(offset / 2 ** 32);
    words[i * WORDS + LENGTH] = length;
  });
  return words;
}

function targets(list: [first: number, count: number, length: number, patch: number][]): Uint32Array {
  return Uint32Array.from(list.flat());
}

const template = Uint8Array.from({ length: 100 }, (_, i) => i + 1);

describe('copyTemplate', () => {
  it('copies the template across segments of two regions, patching a u32 that straddles a segment end', () => {
    const a = new SharedArrayBuffer(4096);
    const b = new SharedArrayBuffer(4096);
    // Target 0: 30 bytes at a+100, then 70 at b+10. Target 1: 50 bytes at a+1000 (a shorter copy).
    const iovecs = records([
      [0, 100, 30],
      [1, 10, 70],
      [0, 1000, 64],
    ]);
    const results = new Int32Array(2);
    native.copyTemplate(
      [a, b],
      iovecs,
      targets([
        [0, 2, 100, 0xaabbccdd],
        [2, 1, 50, 7],
      ]),
      2,
      template,
      28,
      results,
    );
    expect(Array.from(results)).toEqual([100, 50]);
    const expected = template.slice();
    expected.set([0xdd, 0xcc, 0xbb, 0xaa], 28);
    const got = new Uint8Array(100);
    got.set(new Uint8Array(a, 100, 30), 0);
    got.set(new Uint8Array(b, 10, 70), 30);
    expect(Array.from(got)).toEqual(Array.from(expected));
    const second = template.slice(0, 50);
    second.set([7, 0, 0, 0], 28);
    expect(Array.from(new Uint8Array(a, 1000, 50))).toEqual(Array.from(second));
    expect(new Uint8Array(a, 1050, 14).every((x) => x === 0)).toBe(true); // nothing past the copy
  });

  it('patches nothing with patchOffset -1, nor where the patch does not fit the copy', () => {
    const a = new SharedArrayBuffer(4096);
    const results = new Int32Array(2);
    const iovecs = records([
      [0, 0, 100],
      [0, 200, 100],
    ]);
    native.copyTemplate([a], iovecs, targets([[0, 1, 100, 0xffffffff]]), 1, template, -1, results);
    expect(Array.from(new Uint8Array(a, 0, 100))).toEqual(Array.from(template));
    native.copyTemplate([a], iovecs, targets([[1, 1, 30, 0xffffffff]]), 1, template, 28, results);
    expect(Array.from(new Uint8Array(a, 200, 30))).toEqual(Array.from(template.slice(0, 30)));
  });

  it('fails a hostile target alone: outside its region, an unknown region, records past the list, too little room, more than the template', () => {
    const a = new SharedArrayBuffer(4096);
    const iovecs = records([
      [0, 4090, 10], // ends past the region
      [3, 0, 10], // no such region
      [0, 0, 10], // room for 10 bytes only
      [0, 2 ** 40, 1], // offset far outside
      [0, 500, 100], // a good one
    ]);
    const results = new Int32Array(7);
    const list = targets([
      [0, 1, 10, 0],
      [1, 1, 10, 0],
      [2, 1, 20, 0],
      [3, 1, 1, 0],
      [4, 2, 10, 0], // two records from the last: past the list
      [4, 1, 101, 0], // longer than the template
      [4, 1, 100, 0],
    ]);
    native.copyTemplate([a], iovecs, list, 7, template, -1, results);
    expect(Array.from(results)).toEqual([-EFAULT, -EFAULT, -EINVAL, -EFAULT, -EFAULT, -EINVAL, 100]);
    expect(Array.from(new Uint8Array(a, 500, 100))).toEqual(Array.from(template));
  });

  it('checks its arguments', () => {
    const a = new SharedArrayBuffer(64);
    const results = new Int32Array(1);
    const iovecs = records([[0, 0, 10]]);
    const one = targets([[0, 1, 10, 0]]);
    expect(thrown(() => native.copyTemplate([a], iovecs, one, 2, template, -1, results))).toBeInstanceOf(RangeError);
    expect(
      thrown(() =>
        native.copyTemplate([new ArrayBuffer(64) as unknown as SharedArrayBuffer], iovecs, one, 1, template, -1, results),
      ),
    ).toBeInstanceOf(TypeError);
    expect(thrown(() => native.copyTemplate([a], iovecs, one, 1, template, -2, results))).toBeInstanceOf(RangeError);
    expect(
      thrown(() => native.copyTemplate([a], new Int32Array(4) as unknown as Uint32Array, one, 1, template, -1, results)),
    ).toBeInstanceOf(TypeError);
  });
});
