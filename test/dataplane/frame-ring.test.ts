// The SPSC frame ring between worker threads: records come out as they went in (tag, length,
// bytes), across the end of the data (wrap markers), a full ring refuses and counts, the
// armed flag hands exactly one wake-up per arming, and a producer thread streaming records of
// every size to this thread loses or reorders none.
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import {
  FRAME_RECORD_HEADER_BYTES,
  FrameRingConsumer,
  FrameRingProducer,
  createFrameRing,
  maxFrameRecord,
} from '../../dist/dataplane/frame-ring.js';

function put(producer: FrameRingProducer, bytes: Uint8Array, tag: number): boolean {
  const at = producer.reserve(bytes.length, tag);
  if (at < 0) return false;
  producer.data.set(bytes, at);
  producer.commit();
  return true;
}

function take(consumer: FrameRingConsumer): { tag: number; bytes: Uint8Array } | null {
  if (consumer.next() < 0) return null;
  const bytes = consumer.data.slice(consumer.offset, consumer.offset + consumer.length);
  const tag = consumer.tag;
  consumer.release();
  return { tag, bytes };
}

function pattern(length: number, seed: number): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 31 + seed * 7) & 0xff);
}

describe('frame ring', () => {
  it('refuses a capacity that is not a power of two in range, and a record above a quarter of it', () => {
    expect(() => createFrameRing(5000)).toThrow(/power of two/);
    expect(() => createFrameRing(1024)).toThrow(/power of two/);
    const producer = new FrameRingProducer(createFrameRing(4096));
    expect(maxFrameRecord(4096)).toBe(1024 - FRAME_RECORD_HEADER_BYTES);
    expect(producer.reserve(maxFrameRecord(4096) + 1, 0)).toBe(-1);
    expect(producer.dropped).toBe(1);
    expect(producer.reserve(maxFrameRecord(4096), 0)).toBeGreaterThanOrEqual(0);
  });

  it('hands records over in order with their tags, across the end of the data many times', () => {
    const buffer = createFrameRing(4096);
    const producer = new FrameRingProducer(buffer);
    const consumer = new FrameRingConsumer(buffer);
    expect(consumer.next()).toBe(-1);
    // Lengths that do not divide the capacity: records hit the end at every offset.
    let sent = 0;
    let received = 0;
    for (let round = 0; round < 400; round++) {
      const length = 1 + ((round * 97) % 700);
      expect(put(producer, pattern(length, round), round)).toBe(true);
      sent++;
      if (round % 3 !== 0) continue; // let a few pile up before reading
      for (let got = take(consumer); got !== null; got = take(consumer)) {
        expect(got.tag).toBe(received);
        expect(Buffer.from(got.bytes).equals(Buffer.from(pattern(got.bytes.length, received)))).toBe(true);
        received++;
      }
    }
    for (let got = take(consumer); got !== null; got = take(consumer)) received++;
    expect(received).toBe(sent);
    expect(producer.produced).toBe(sent);
    expect(producer.dropped).toBe(0);
    // 400 records of ~350 bytes went through 4 KiB: it wrapped dozens of times.
    expect(producer.used).toBe(0);
  });

  it('drops and counts records while full, and takes them again once the consumer frees room', () => {
    const buffer = createFrameRing(4096);
    const producer = new FrameRingProducer(buffer);
    const consumer = new FrameRingConsumer(buffer);
    const frame = pattern(500, 1); // 512 bytes with its header: 8 fit
    let accepted = 0;
    for (let i = 0; i < 12; i++) if (put(producer, frame, i)) accepted++;
    expect(accepted).toBe(8);
    expect(producer.dropped).toBe(4);
    expect(producer.used).toBe(4096);
    expect(take(consumer)!.tag).toBe(0);
    expect(put(producer, frame, 100)).toBe(true);
    expect(put(producer, frame, 101)).toBe(false);
    expect(producer.dropped).toBe(5);
    const tags: number[] = [];
    for (let got = take(consumer); got !== null; got = take(consumer)) tags.push(got.tag);
    expect(tags).toEqual([1, 2, 3, 4, 5, 6, 7, 100]);
  });

  it('a record that does not fit before the end waits for room at the start', () => {
    const buffer = createFrameRing(4096);
    const producer = new FrameRingProducer(buffer);
    const consumer = new FrameRingConsumer(buffer);
    // Four 1,000-byte records (1,008 bytes with header and padding) fill 4,032 bytes; a fifth
    // does not fit in the 64 left before the end, so it must start at 0, which is still in use.
    for (let i = 0; i < 4; i++) expect(put(producer, pattern(1000, i), i)).toBe(true);
    expect(put(producer, pattern(1000, 4), 4)).toBe(false);
    expect(take(consumer)!.tag).toBe(0); // frees [0, 1008)
    expect(put(producer, pattern(1000, 4), 4)).toBe(true); // wraps: marker at 4032, record at 0
    const rest: number[] = [];
    for (let got = take(consumer); got !== null; got = take(consumer)) {
      expect(Buffer.from(got.bytes).equals(Buffer.from(pattern(1000, got.tag)))).toBe(true);
      rest.push(got.tag);
    }
    expect(rest).toEqual([1, 2, 3, 4]);
  });

  it('an armed consumer gets exactly one wake-up per arming, and arm() sees a record that slipped in', () => {
    const buffer = createFrameRing(4096);
    const producer = new FrameRingProducer(buffer);
    const consumer = new FrameRingConsumer(buffer);
    expect(put(producer, pattern(10, 0), 0)).toBe(true); // not armed: no wake-up asked
    expect(consumer.arm()).toBe(false); // a record is there: do not sleep
    take(consumer);
    expect(consumer.arm()).toBe(true);
    expect(consumer.armed).toBe(true);
    let at = producer.reserve(10, 1);
    expect(at).toBeGreaterThanOrEqual(0);
    expect(producer.commit()).toBe(true); // wake the consumer
    expect(consumer.armed).toBe(false);
    at = producer.reserve(10, 2);
    expect(producer.commit()).toBe(false); // already woken
    expect(take(consumer)!.tag).toBe(1);
    expect(take(consumer)!.tag).toBe(2);
  });

  it('a producer thread streams 200,000 records of 1 to 1,500 bytes: all arrive, in order, intact', async () => {
    const buffer = createFrameRing(64 * 1024);
    const consumer = new FrameRingConsumer(buffer);
    const count = 200_000;
    const module = new URL('../../dist/dataplane/frame-ring.js', import.meta.url).href;
    // The producer retries a full ring (a test wants every record; the switch drops instead).
    const worker = new Worker(
      `const { workerData } = require('node:worker_threads');
       import(workerData.module).then(({ FrameRingProducer }) => {
         const producer = new FrameRingProducer(workerData.buffer);
         for (let i = 0; i < workerData.count; i++) {
           const length = 1 + ((i * 7919) % 1500);
           let at;
           while ((at = producer.reserve(length, i)) < 0) {}
           for (let b = 0; b < length; b++) producer.data[at + b] = (i + b) & 0xff;
           producer.commit();
         }
       });`,
      { eval: true, workerData: { buffer, count, module } },
    );
    const exited = new Promise<number>((resolve) => worker.once('exit', resolve));
    let received = 0;
    let bad = 0;
    const deadline = Date.now() + 30_000;
    while (received < count && Date.now() < deadline) {
      // Spin: the producer runs on its own thread, and this one has nothing else to do.
      if (consumer.next() < 0) continue;
      const expectedLength = 1 + ((received * 7919) % 1500);
      if (consumer.tag !== received || consumer.length !== expectedLength) bad++;
      else {
        const data = consumer.data;
        for (let b = 0; b < expectedLength; b += 97) if (data[consumer.offset + b] !== ((received + b) & 0xff)) bad++;
      }
      consumer.release();
      received++;
    }
    expect(await exited).toBe(0);
    expect(received).toBe(count);
    expect(bad).toBe(0);
    expect(consumer.next()).toBe(-1);
  }, 60_000);
});
