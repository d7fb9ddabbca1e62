// eventfd and epoll.
import { describe, expect, it } from 'vitest';
import { native } from '../../dist/native.js';
import { O_CLOEXEC, O_NONBLOCK, fdFlags, thrown, track } from './preamble.js';

const EPOLLIN = 1;
const EPOLLOUT = 4;
const EPOLL_CTL_ADD = 1;
const EPOLL_CTL_DEL = 2;
const EPOLL_CTL_MOD = 3;

describe('eventfd', () => {
  it('is non-blocking and close-on-exec', () => {
    expect(fdFlags(track(native.eventfdCreate(0))) & (O_NONBLOCK | O_CLOEXEC)).toBe(O_NONBLOCK | O_CLOEXEC);
  });

  it('adds writes, and a read returns the sum and resets it', () => {
    const fd = track(native.eventfdCreate(3));
    expect(native.eventfdWrite(fd, 4)).toBe(true);
    expect(native.eventfdWrite(fd, 2 ** 40)).toBe(true);
    expect(native.eventfdRead(fd)).toBe(2 ** 40 + 7);
    expect(native.eventfdRead(fd)).toBe(0);
  });

  it('returns false when the counter would overflow', () => {
    const fd = track(native.eventfdCreate(0));
    let writes = 0;
    while (native.eventfdWrite(fd, Number.MAX_SAFE_INTEGER)) writes++;
    expect(writes).toBe(2048); // the counter tops out at 2^64 - 2
  });

  it('rejects bad arguments', () => {
    expect(thrown(() => native.eventfdCreate(-1))).toBeInstanceOf(RangeError);
    const fd = track(native.eventfdCreate(0));
    expect(thrown(() => native.eventfdWrite(fd, 2 ** 53))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.eventfdWrite(fd, 1.5))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.eventfdRead('x' as never))).toBeInstanceOf(TypeError);
  });
});

describe('epoll', () => {
  it('reports a signalled eventfd with its data word', () => {
    const epfd = track(native.epollCreate());
    expect(fdFlags(epfd) & O_CLOEXEC).toBe(O_CLOEXEC);
    const kick = track(native.eventfdCreate(0));
    const out = new Uint32Array(8);
    native.epollCtl(epfd, EPOLL_CTL_ADD, kick, EPOLLIN, 0xfffffff0);
    expect(native.epollWait(epfd, out, 4, 0)).toBe(0);
    native.eventfdWrite(kick, 1);
    expect(native.epollWait(epfd, out, 4, 1000)).toBe(1);
    expect([out[0], out[1]]).toEqual([EPOLLIN, 0xfffffff0]);
    native.epollCtl(epfd, EPOLL_CTL_MOD, kick, EPOLLIN | EPOLLOUT, 7);
    expect(native.epollWait(epfd, out, 4, 0)).toBe(1);
    expect([out[0], out[1]]).toEqual([EPOLLIN | EPOLLOUT, 7]);
    native.epollCtl(epfd, EPOLL_CTL_DEL, kick, 0, 0);
    expect(native.epollWait(epfd, out, 4, 0)).toBe(0);
  });

  it('times out with 0 events', () => {
    const epfd = track(native.epollCreate());
    const started = Date.now();
    expect(native.epollWait(epfd, new Uint32Array(2), 1, 20)).toBe(0);
    expect(Date.now() - started).toBeGreaterThanOrEqual(15);
  });

  it('validates the output array and the arguments', () => {
    const epfd = track(native.epollCreate());
    expect(thrown(() => native.epollWait(epfd, new Uint32Array(7), 4, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.epollWait(epfd, new Int32Array(8) as never, 4, 0))).toBeInstanceOf(TypeError);
    expect(thrown(() => native.epollWait(epfd, new Uint32Array(8), 0, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.epollCtl(epfd, 4, epfd, EPOLLIN, 0))).toBeInstanceOf(RangeError);
    expect(thrown(() => native.epollCtl(epfd, EPOLL_CTL_ADD, epfd, EPOLLIN, 0))).toMatchObject({
      code: 'EINVAL',
      syscall: 'epoll_ctl',
    });
  });
});
