// Message framing over a Unix socket with SCM_RIGHTS (VhostUserConnection): however the peer
// splits or batches its writes, each message arrives whole with exactly its own fds, and fds of
// a message that never completes are closed (checked in /proc/self/fd).
import { afterEach, describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { HangUpError, VhostUserConnection, closeAll, type ConnectionLimits } from '../../dist/control/connection.js';
import { HEADER_SIZE, encodeMessage, type MessageHeader } from '../../dist/control/codec/index.js';
import { HeaderFlag, MAX_PAYLOAD_SIZE, Request } from '../../dist/control/protocol.js';
import { fdSet, fdsBackTo, openFds, until } from './helpers.js';

const VERSION = HeaderFlag.VERSION;

interface Received {
  header: MessageHeader;
  payload: Uint8Array;
  fds: number[];
}

const toClose: number[] = [];
const connections: VhostUserConnection[] = [];

afterEach(() => {
  for (const connection of connections.splice(0)) connection.close();
  closeAll(toClose.splice(0));
  for (const message of received.splice(0)) closeAll(message.fds);
});

const received: Received[] = [];

/** A connection on one end of a socket pair; the test writes raw bytes into `peer`. */
function framed(onMessage?: (message: Received) => void | Promise<void>, limits?: ConnectionLimits) {
  const [local, peer] = native.socketPair();
  toClose.push(peer);
  const closes: (Error | undefined)[] = [];
  const connection = new VhostUserConnection(
    local,
    {
      onMessage: (header, payload, fds) => {
        const message = { header, payload: payload.slice(), fds };
        received.push(message);
        return onMessage?.(message);
      },
      onClose: (error) => closes.push(error),
    },
    limits,
  );
  connections.push(connection);
  return { connection, peer, closes };
}

function patterned(length: number, seed = 1): Uint8Array {
  return Uint8Array.from({ length }, (_, i) => (i * 7 + seed) & 0xff);
}

function eventfds(count: number): number[] {
  const fds = Array.from({ length: count }, () => native.eventfdCreate(0));
  toClose.push(...fds);
  return fds;
}

function sendAll(fd: number, bytes: Uint8Array, fds: number[] = []): void {
  expect(native.sendMsg(fd, bytes, fds)).toBe(bytes.length);
}

/** The received fd is the same eventfd as ours: a count written on one is read on the other. */
function sameEventfd(ours: number, theirs: number): boolean {
  native.eventfdWrite(ours, 5);
  return native.eventfdRead(theirs) === 5;
}

const tick = () => new Promise((resolve) => setImmediate(resolve));

describe('receiving', () => {
  it('a message written one byte at a time arrives as one message', async () => {
    const { peer } = framed();
    const message = encodeMessage(Request.SET_VRING_ADDR, VERSION, patterned(40));
    for (let i = 0; i < message.length; i++) {
      sendAll(peer, message.subarray(i, i + 1));
      await tick(); // let the connection read each byte on its own
    }
    await until(() => received.length === 1, 2000, 'the message');
    expect(received[0].header).toEqual({ request: Request.SET_VRING_ADDR, flags: VERSION, size: 40 });
    expect(received[0].payload).toEqual(patterned(40));
    expect(received[0].fds).toEqual([]);
  });

  it('fds sent with the header are delivered with that message (payload > 0)', async () => {
    const { peer } = framed();
    const fds = eventfds(2);
    sendAll(peer, encodeMessage(Request.SET_MEM_TABLE, VERSION, patterned(72)), fds);
    await until(() => received.length === 1, 2000, 'the message');
    expect(received[0].payload).toEqual(patterned(72));
    expect(received[0].fds).toHaveLength(2);
    expect(sameEventfd(fds[0], received[0].fds[0])).toBe(true);
    expect(sameEventfd(fds[1], received[0].fds[1])).toBe(true);
  });

  it('fds sent with a later piece of the message are delivered with it as well', async () => {
    const { peer } = framed();
    const message = encodeMessage(Request.SET_VRING_KICK, VERSION, patterned(8));
    const [fd] = eventfds(1);
    sendAll(peer, message.subarray(0, 12));
    await tick();
    sendAll(peer, message.subarray(12), [fd]);
    await until(() => received.length === 1, 2000, 'the message');
    expect(received[0].fds).toHaveLength(1);
    expect(sameEventfd(fd, received[0].fds[0])).toBe(true);
  });

  it('back-to-back messages in one write arrive separately, in order', async () => {
    const { peer } = framed();
    const messages = [
      encodeMessage(Request.SET_FEATURES, VERSION, patterned(8, 1)),
      encodeMessage(Request.SET_OWNER, VERSION),
      encodeMessage(Request.SET_VRING_ADDR, HeaderFlag.VERSION | HeaderFlag.NEED_REPLY, patterned(40, 2)),
      encodeMessage(Request.GET_FEATURES, VERSION),
    ];
    const all = new Uint8Array(messages.reduce((sum, m) => sum + m.length, 0));
    messages.reduce((offset, m) => (all.set(m, offset), offset + m.length), 0);
    sendAll(peer, all);
    await until(() => received.length === 4, 2000, 'four messages');
    expect(received.map((m) => [m.header.request, m.header.size])).toEqual([
      [Request.SET_FEATURES, 8],
      [Request.SET_OWNER, 0],
      [Request.SET_VRING_ADDR, 40],
      [Request.GET_FEATURES, 0],
    ]);
    expect(received[0].payload).toEqual(patterned(8, 1));
    expect(received[2].payload).toEqual(patterned(40, 2));
  });

  it('messages sent back to back, each with its own fds, each get exactly their own', async () => {
    const { peer } = framed();
    const first = eventfds(1);
    const second = eventfds(2);
    // Both are queued before the connection reads anything.
    sendAll(peer, encodeMessage(Request.SET_VRING_CALL, VERSION, patterned(8)), first);
    sendAll(peer, encodeMessage(Request.SET_MEM_TABLE, VERSION, patterned(72)), second);
    await until(() => received.length === 2, 2000, 'two messages');
    expect(received.map((m) => m.fds.length)).toEqual([1, 2]);
    expect(sameEventfd(first[0], received[0].fds[0])).toBe(true);
    expect(sameEventfd(second[1], received[1].fds[1])).toBe(true);
  });

  it('a message with fds and no payload is delivered with its fds', async () => {
    const { peer } = framed();
    const [fd] = eventfds(1);
    sendAll(peer, encodeMessage(Request.SET_LOG_FD, VERSION), [fd]);
    await until(() => received.length === 1, 2000, 'the message');
    expect(received[0].fds).toHaveLength(1);
  });

  it('a handler that returns a promise holds back later messages until it settles', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { peer } = framed((message) => (message.header.request === Request.SET_OWNER ? gate : undefined));
    sendAll(peer, encodeMessage(Request.SET_OWNER, VERSION));
    sendAll(peer, encodeMessage(Request.GET_FEATURES, VERSION));
    await until(() => received.length === 1, 2000, 'the first message');
    for (let i = 0; i < 20; i++) await tick();
    expect(received).toHaveLength(1);
    release();
    await until(() => received.length === 2, 2000, 'the second message');
  });

  it('a handler that closes the connection and returns a promise: closed cleanly, nothing thrown', async () => {
    const { peer, connection, closes } = framed(() => Promise.resolve(connection.close(new Error('refused'))));
    sendAll(peer, encodeMessage(Request.GET_INFLIGHT_FD, VERSION, new Uint8Array(24)));
    await until(() => closes.length === 1, 2000, 'the close');
    expect(closes[0]?.message).toBe('refused');
    expect(connection.isClosed).toBe(true);
  });
});

describe('closing', () => {
  it('the peer closing in the middle of a message closes the fds that came with it', async () => {
    const { peer, closes } = framed();
    const ours = eventfds(2);
    const before = fdSet();
    const message = encodeMessage(Request.SET_MEM_TABLE, VERSION, patterned(72));
    sendAll(peer, message.subarray(0, 30), ours);
    // The connection has read the fds once their dups show up in this process.
    let delivered: number[] = [];
    await until(() => (delivered = [...fdSet()].filter((fd) => !before.has(fd))).length === 2, 2000, 'the fds to be received');
    toClose.splice(toClose.indexOf(peer), 1);
    native.close(peer);
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(closes[0]?.message).toMatch(/in the middle of a message/);
    const after = fdSet();
    expect(delivered.filter((fd) => after.has(fd))).toEqual([]);
    expect(received).toHaveLength(0);
  });

  it('an orderly close between messages is not an error', async () => {
    const { peer, closes } = framed();
    sendAll(peer, encodeMessage(Request.GET_FEATURES, VERSION));
    await until(() => received.length === 1, 2000, 'the message');
    toClose.splice(toClose.indexOf(peer), 1);
    native.close(peer);
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(closes).toEqual([undefined]);
  });

  it('more than 8 fds with one message closes the connection, and no received fd stays open', async () => {
    const baseline = openFds();
    const { peer, closes } = framed();
    const ours = eventfds(9);
    sendAll(peer, encodeMessage(Request.SET_MEM_TABLE, VERSION, patterned(8)), ours);
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(closes[0]?.message).toMatch(/more than 8 file descriptors/);
    expect(received).toHaveLength(0);
    // Left open: the peer's end and our 9 eventfds; the connection's socket and every dup are gone.
    await fdsBackTo(baseline + 1 + 9, 'the received fds to be closed');
  });

  it('a header announcing more than the maximum payload closes the connection before reading on', async () => {
    const { peer, closes } = framed();
    const header = encodeMessage(Request.SET_MEM_TABLE, VERSION);
    new DataView(header.buffer).setUint32(8, MAX_PAYLOAD_SIZE + 1, true);
    sendAll(peer, header, eventfds(1));
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(closes[0]?.message).toMatch(/exceeds the maximum/);
  });

  it('close() closes the socket once and reports once', async () => {
    const baseline = openFds();
    const { connection, closes } = framed();
    connection.close();
    connection.close();
    expect(closes).toEqual([undefined]);
    expect(connection.send(new Uint8Array(12))).toBe(false);
    await fdsBackTo(baseline + 1, 'only the peer end to remain');
  });
});

describe('sending', () => {
  it('bytes and fds reach the peer, the fds with the first byte', () => {
    const { connection, peer } = framed();
    const [fd] = eventfds(1);
    const message = encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION | HeaderFlag.REPLY, patterned(8));
    expect(connection.send(message, [fd])).toBe(true);
    const buffer = new Uint8Array(message.length);
    const result = native.recvMsg(peer, buffer, 0, buffer.length, 8);
    toClose.push(...result.fds);
    expect(result.bytes).toBe(message.length);
    expect(buffer).toEqual(message);
    expect(result.fds).toHaveLength(1);
    expect(sameEventfd(fd, result.fds[0])).toBe(true);
  });

  it('a message larger than the socket buffer is finished when the peer drains it', async () => {
    const { connection, peer } = framed();
    const big = patterned(4 << 20, 3);
    expect(connection.send(big)).toBe(true);
    const got = new Uint8Array(big.length);
    let offset = 0;
    const deadline = Date.now() + 5000;
    while (offset < got.length) {
      const result = native.recvMsg(peer, got, offset, got.length - offset, 0);
      if (result.bytes > 0) offset += result.bytes;
      else if (result.bytes === 0) throw new Error('peer closed');
      else if (Date.now() > deadline) throw new Error(`only ${offset} of ${got.length} bytes arrived`);
      else await tick();
    }
    // (Buffer comparison: a deep equality over 4 Mi elements would take seconds.)
    expect(Buffer.compare(got, big)).toBe(0);
  });
});

// ---- bounds on what a peer can make us hold ---------------------------------------------------------

/** A GET_FEATURES reply's size: what each request in the floods below costs the connection. */
const REPLY = encodeMessage(Request.GET_FEATURES, HeaderFlag.VERSION | HeaderFlag.REPLY, patterned(8));

/** Writes GET_FEATURES headers into `peer` until its socket is full; returns the whole requests written. */
function flood(peer: number): number {
  const header = encodeMessage(Request.GET_FEATURES, VERSION);
  const chunk = new Uint8Array(HEADER_SIZE * 4096);
  for (let offset = 0; offset < chunk.length; offset += HEADER_SIZE) chunk.set(header, offset);
  let bytes = 0;
  for (;;) {
    const sent = native.sendMsg(peer, chunk, []);
    if (sent < 0) return Math.floor(bytes / HEADER_SIZE);
    bytes += sent;
  }
}

/** Reads and discards whatever the peer has been sent; returns the byte count. */
function drain(peer: number): number {
  const buffer = new Uint8Array(1 << 16);
  let total = 0;
  for (;;) {
    const result = native.recvMsg(peer, buffer, 0, buffer.length, 0);
    if (result.bytes <= 0) return total;
    total += result.bytes;
  }
}

/** Waits until `value()` stops changing for a few loop passes (the connection has gone quiet). */
async function settles(value: () => number): Promise<number> {
  let last = -1;
  let stable = 0;
  while (stable < 10) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    const now = value();
    stable = now === last ? stable + 1 : 0;
    last = now;
  }
  return last;
}

describe('a peer that sends requests and never reads the replies', () => {
  const BOUND = 4096;

  function replying(limits: ConnectionLimits) {
    const rig = framed(() => void rig.connection.send(REPLY), limits);
    return rig;
  }

  it('is read no further while its unsent replies exceed the bound, and again once it drains them', async () => {
    const { connection, peer, closes } = replying({ maxQueuedBytes: BOUND });
    const requests = flood(peer);
    expect(requests * REPLY.length, 'the flood asks for far more than the bound').toBeGreaterThan(10 * BOUND);
    const handled = await settles(() => received.length);
    expect(handled).toBeLessThan(requests);
    expect(connection.queuedBytes).toBeGreaterThanOrEqual(BOUND);
    expect(connection.queuedBytes).toBeLessThan(BOUND + REPLY.length);
    // The peer reads: every request is answered, in bounded steps.
    let answered = 0;
    let mostQueued = 0;
    const deadline = Date.now() + 5000;
    while (answered < requests * REPLY.length && Date.now() < deadline) {
      answered += drain(peer);
      mostQueued = Math.max(mostQueued, connection.queuedBytes);
      await tick();
    }
    expect(answered).toBe(requests * REPLY.length);
    expect(received).toHaveLength(requests);
    expect(mostQueued).toBeLessThan(BOUND + REPLY.length);
    expect(connection.queuedBytes).toBe(0);
    expect(closes).toEqual([]);
  });

  it('hanging up while its replies are backed up closes the connection and lets go of them', async () => {
    const { connection, peer, closes } = replying({ maxQueuedBytes: BOUND });
    flood(peer);
    await settles(() => received.length);
    expect(connection.queuedBytes).toBeGreaterThanOrEqual(BOUND);
    toClose.splice(toClose.indexOf(peer), 1);
    native.close(peer);
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(closes[0]).toBeInstanceOf(HangUpError);
    expect(closes[0]?.message).toMatch(/without reading its replies/);
    expect(connection.queuedBytes).toBe(0);
  });
});

describe('a message that stops half-way', () => {
  it('is dropped after the partial-message timeout, with what arrived in the reason', async () => {
    const { peer, closes } = framed(undefined, { partialMessageTimeoutMs: 100 });
    const started = performance.now();
    sendAll(peer, encodeMessage(Request.GET_FEATURES, VERSION).subarray(0, 5));
    await until(() => closes.length === 1, 2000, 'the connection to close');
    expect(performance.now() - started).toBeGreaterThanOrEqual(100);
    expect(closes[0]?.message).toBe('peer sent 5 of 12 header bytes and nothing more for 100 ms');
    expect(received).toHaveLength(0);
  });

  it('a peer trickling a byte at a time is dropped too: the clock runs per message, not per byte', async () => {
    const { peer, closes } = framed(undefined, { partialMessageTimeoutMs: 100 });
    const message = encodeMessage(Request.SET_VRING_ADDR, VERSION, patterned(40));
    sendAll(peer, message.subarray(0, HEADER_SIZE));
    for (let i = HEADER_SIZE; i < message.length && closes.length === 0; i++) {
      native.sendMsg(peer, message.subarray(i, i + 1), []);
      await new Promise((resolve) => setTimeout(resolve, 10));
    }
    expect(closes).toHaveLength(1);
    expect(closes[0]?.message).toMatch(/^peer sent 12 header bytes and \d+ of 40 payload bytes \(request 9\)/);
    expect(received).toHaveLength(0);
  });

  it('messages that each finish within the bound are kept, however long the pauses add up to', async () => {
    const { peer, closes } = framed(undefined, { partialMessageTimeoutMs: 100 });
    const message = encodeMessage(Request.SET_VRING_ADDR, VERSION, patterned(40));
    for (let i = 0; i < 4; i++) {
      sendAll(peer, message.subarray(0, 20));
      await new Promise((resolve) => setTimeout(resolve, 60));
      sendAll(peer, message.subarray(20));
      await until(() => received.length === i + 1, 2000, `message ${i + 1}`);
    }
    await new Promise((resolve) => setTimeout(resolve, 120));
    expect(closes).toEqual([]);
  });
});

describe('a peer that hangs up while its request is being handled', () => {
  it('is seen at once, not when the handler finishes', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { peer, closes, connection } = framed(() => gate);
    sendAll(peer, encodeMessage(Request.GET_VRING_BASE, VERSION, new Uint8Array(8)));
    await until(() => received.length === 1, 2000, 'the request');
    toClose.splice(toClose.indexOf(peer), 1);
    native.close(peer);
    await until(() => closes.length === 1, 2000, 'the hang-up to be seen while the handler runs');
    expect(closes[0]).toBeInstanceOf(HangUpError);
    expect(closes[0]?.message).toMatch(/while its request was being handled/);
    expect(connection.isClosed).toBe(true);
    release();
    await gate;
    await tick();
    expect(closes).toHaveLength(1);
  });

  it('requests sent behind the busy one are not taken for a hang-up', async () => {
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const { peer, closes } = framed((message) => (message.header.request === Request.SET_OWNER ? gate : undefined));
    sendAll(peer, encodeMessage(Request.SET_OWNER, VERSION));
    await until(() => received.length === 1, 2000, 'the first request');
    sendAll(peer, encodeMessage(Request.GET_FEATURES, VERSION));
    for (let i = 0; i < 20; i++) await tick();
    expect(closes).toEqual([]);
    release();
    await until(() => received.length === 2, 2000, 'the second request');
    expect(closes).toEqual([]);
  });
});
