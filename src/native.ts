// Typed loader for the native/ring addon. The addon wraps syscalls only: every decision
// (framing, validation, policy) lives in TypeScript. All fds it creates are non-blocking
// and close-on-exec. Errors are thrown as Error with `code` set to the errno name
// (e.g. 'ENOENT') and `errno` to its positive number (ENOENT = 2, unlike Node's fs errors),
// except where a return value says "would block".
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const require = createRequire(import.meta.url);

export interface RecvResult {
  /** Bytes received: > 0 data, 0 peer closed, -1 would block (EAGAIN). */
  bytes: number;
  /** File descriptors received with these bytes (SCM_RIGHTS), now owned by the caller. */
  fds: number[];
  /** MSG_CTRUNC: more fds were sent than `maxFds`; the kernel dropped the rest. */
  truncated: boolean;
}

/** Watches one fd on the calling thread's libuv loop (uv_poll). Keeps the loop alive while started. */
export interface FdWatcher {
  /**
   * (Re)start watching. Level-triggered (uv_poll): the callback fires on every loop pass while
   * the fd is ready. One watcher per fd: a second one on the same fd fails with EEXIST.
   * `hangup` (EPOLLRDHUP) reports a peer that closed or shut down writing, even while not
   * watching for readable: the callback's `hangup` is then true, on every pass until stopped.
   */
  start(readable: boolean, writable: boolean, hangup?: boolean): void;
  stop(): void;
  /** Stops and frees the poll handle. Does not close the fd. Idempotent. */
  close(): void;
}

export interface FdWatcherConstructor {
  new (fd: number, onEvent: (status: number, readable: boolean, writable: boolean, hangup: boolean) => void): FdWatcher;
}

export interface Uring {
  /** Base pointers for iovec entries: iovec.region indexes this list. Holds the buffers alive. */
  setRegions(regions: SharedArrayBuffer[]): void;
  /** Submit `count` request records from `sqes` (layout: recordLayout), returns how many were queued. */
  submit(sqes: Uint32Array, iovecs: Uint32Array, count: number): number;
  /** Reap up to `max` completions into `cqes` as (user_data u32, res i32) pairs; never blocks. */
  reap(cqes: Int32Array, max: number): number;
  /** Wait for at least `minComplete` completions (blocking); returns at once if fewer are in flight. */
  wait(minComplete: number): void;
  /** An eventfd registered with the ring: readable when completions are posted. */
  eventfd(): number;
  close(): void;
}

export interface UringConstructor {
  new (entries: number, options?: { sqpoll?: boolean; sqpollIdleMs?: number; sqpollCpu?: number }): Uring;
}

export interface NativeRing {
  // Unix sockets (AF_UNIX, SOCK_STREAM).
  /** bind + chmod(mode) + listen. Fails with EADDRINUSE if the path exists. */
  socketListen(path: string, mode: number, backlog: number): number;
  /**
   * Takes over an inherited fd that must be a listening AF_UNIX stream socket (else throws
   * ENOTSOCK, EAFNOSUPPORT, EPROTOTYPE or EINVAL); sets O_NONBLOCK and FD_CLOEXEC. Returns the
   * path it is bound to, or "" for an unnamed or abstract socket.
   */
  socketAdopt(fd: number): string;
  /** Accepts one pending connection, or returns -1 if none (EAGAIN). */
  socketAccept(listenFd: number): number;
  /** Connects (blocking connect, then non-blocking). Throws ENOENT / ECONNREFUSED etc. */
  socketConnect(path: string): number;
  /**
   * Non-blocking connect: never waits. Returns -1 when a listener exists but its backlog is full
   * (EAGAIN); throws ENOENT / ECONNREFUSED etc. like socketConnect.
   */
  socketTryConnect(path: string): number;
  /**
   * getsockopt(SO_ERROR): the pending socket error as a positive errno (0 if none), cleared by
   * reading it. A watcher's negative status (libuv reports POLLERR as EBADF) says only that
   * there is one.
   */
  socketError(fd: number): number;
  /** A connected pair, for tests and in-process transports. */
  socketPair(): [number, number];
  /** sendmsg with SCM_RIGHTS (MSG_NOSIGNAL). Returns bytes sent, or -1 if it would block. */
  sendMsg(fd: number, data: Uint8Array, fds: number[]): number;
  /** recvmsg (MSG_CMSG_CLOEXEC) into data[offset, offset+length). */
  recvMsg(fd: number, data: Uint8Array, offset: number, length: number, maxFds: number): RecvResult;
  /** close(2). Throws EBADF for an fd that is not open. */
  close(fd: number): void;
  FdWatcher: FdWatcherConstructor;

  // Memory.
  /**
   * memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING) + ftruncate(size); sparse, size may
   * exceed 4 GiB. Unsealed: the creator seals it (addFileSeals) once it is sized.
   */
  memfdCreate(name: string, size: number): number;
  /** fcntl(F_GET_SEALS): the FileSeal bits, or -1 for a file that cannot carry seals (EINVAL). */
  fileSeals(fd: number): number;
  /** fcntl(F_ADD_SEALS). Throws EPERM once F_SEAL_SEAL is set, EBUSY for F_SEAL_WRITE over a writable mapping. */
  addFileSeals(fd: number, seals: number): void;
  /**
   * mmap(MAP_SHARED) of fd[offset, offset+length) as a SharedArrayBuffer. The mapping lives
   * until every isolate holding the buffer has dropped it (munmap in the backing-store deleter).
   * The fd may be closed right after. Caller checks the fd size first (a short file would SIGBUS).
   * With writable = false the pages are read-only: a JS write through the buffer is a SIGSEGV.
   */
  mmapShared(fd: number, length: number, offset: number, writable: boolean): SharedArrayBuffer;

  // eventfd.
  /** Non-blocking unless `blocking` (only tests that play a hostile front-end want that). */
  eventfdCreate(initval: number, blocking?: boolean): number;
  /**
   * A front-end's kick, call or error fd: false if it is not an eventfd; otherwise sets
   * O_NONBLOCK on it (shared with the front-end) so that no read or write of it can block.
   */
  eventfdAdopt(fd: number): boolean;
  /** Adds value; false if it would block (counter overflow). */
  eventfdWrite(fd: number, value: number): boolean;
  /** Reads and resets the counter; 0 if it was zero (EAGAIN). */
  eventfdRead(fd: number): number;

  // epoll, for workers that sleep (interrupt and adaptive poll modes).
  epollCreate(): number;
  /** op: 1 add, 2 delete, 3 modify; events: EPOLLIN=1 ...; data: a u32 returned by epollWait. */
  epollCtl(epfd: number, op: number, fd: number, events: number, data: number): void;
  /** Blocks up to timeoutMs (-1 forever). Writes (events, data) pairs into out; returns the count. EINTR → 0. */
  epollWait(epfd: number, out: Uint32Array, maxEvents: number, timeoutMs: number): number;

  // Threads.
  /** sched_setaffinity for the calling thread only. */
  setAffinity(cpus: number[]): void;
  getAffinity(): number[];
  gettid(): number;

  // io_uring (liburing), one ring per worker.
  Uring: UringConstructor;

  // Blocking block I/O (the `threads` engine), for thread-pool threads only: never a polling worker.
  /**
   * Runs `count` SQE records (the Uring layout) in order with preadv/pwritev/fsync/fdatasync/
   * fallocate, iovecs resolved against `regions`; results[i] = res (>= 0) or -errno. A record
   * failing the Uring checks is not run: -EFAULT (bad iovec index, region or range) or -EINVAL.
   * With `nowaitReadBytes` > 0 (for a polling thread; not for O_DIRECT files) only READV records
   * of at most that many bytes run, with preadv2(RWF_NOWAIT): what the page cache holds, never
   * waiting for the device; every other record and a read that would block get -EAGAIN unrun.
   */
  blockIo(
    regions: SharedArrayBuffer[],
    sqes: Uint32Array,
    iovecs: Uint32Array,
    count: number,
    results: Int32Array,
    nowaitReadBytes?: number,
  ): void;

  // Tap devices (the vhost-user-net `tap` back-end). Iovec records use the recordLayout.iovec layout.
  /**
   * Opens /dev/net/tun and attaches to tap `name` (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, and
   * IFF_MULTI_QUEUE when asked), creating it if missing; sets the virtio-net header size and no
   * offloads. `created`: no interface of that name existed before (the kernel then removes the tap
   * when its last fd closes). Throws EPERM without CAP_NET_ADMIN, EINVAL for a non-tap of that name.
   */
  tapOpen(name: string, multiQueue: boolean, headerBytes: number): TapOpened;
  /** TUNSETVNETHDRSZ: the header size (10 or 12) on every read and write of the tap. */
  tapSetHeaderSize(fd: number, bytes: number): void;
  /** TUNSETOFFLOAD: TUN_F_CSUM 1 | TUN_F_TSO4 2 | TUN_F_TSO6 4 | TUN_F_TSO_ECN 8. */
  tapSetOffload(fd: number, flags: number): void;
  /** SIOCSIFMTU on interface `name` (in this process's network namespace). */
  tapSetMtu(name: string, mtu: number): void;
  /**
   * One writev per frame: frame i is iovec records [frames[2i], frames[2i] + frames[2i+1]);
   * results[i] = bytes written or -errno (-EFAULT: a record outside its region).
   */
  tapWriteFrames(
    fd: number,
    regions: readonly SharedArrayBuffer[],
    iovecs: Uint32Array,
    frames: Uint32Array,
    count: number,
    results: Int32Array,
  ): void;
  /**
   * One readv per frame into guest buffers: chain c is iovec records [chains[3c], +chains[3c+1])
   * holding chains[3c+2] bytes. A frame goes into the next chain, or (mergeable) into as many next
   * chains as hold `minRoom` bytes (stops when fewer are left). results[2f] = the frame's bytes
   * (more than the room offered: truncated), results[2f+1] = chains it took. Returns the frames
   * read; results[2 * frames] = why it stopped: -EAGAIN (tap empty), 0 (out of chains or
   * maxFrames), or -errno.
   */
  tapReadFrames(
    fd: number,
    regions: readonly SharedArrayBuffer[],
    iovecs: Uint32Array,
    chains: Uint32Array,
    chainCount: number,
    minRoom: number,
    mergeable: boolean,
    maxFrames: number,
    results: Int32Array,
  ): number;
  /**
   * Copies `template` into guest buffers, one target per frame, in one call: target t copies
   * template[0, targets[4t+2]) across iovec records [targets[4t], +targets[4t+1]) and writes
   * targets[4t+3] as a little-endian u32 at `patchOffset` of the copy (-1: no patch; skipped
   * when the copy is shorter). results[t] = bytes copied, -EFAULT (a record outside its region)
   * or -EINVAL (the records hold fewer bytes than asked).
   */
  copyTemplate(
    regions: readonly SharedArrayBuffer[],
    iovecs: Uint32Array,
    targets: Uint32Array,
    count: number,
    template: Uint8Array,
    patchOffset: number,
    results: Int32Array,
  ): void;

  /** The SQE and IOVEC record layout Uring.submit and blockIo read (native/ring/records.h). */
  readonly recordLayout: RecordLayout;
}

export interface TapOpened {
  fd: number;
  /** The interface name as the kernel has it. */
  name: string;
  created: boolean;
}

/** Word counts and word indexes of the request records (native/ring/records.h, uring.cc). */
export interface RecordLayout {
  sqeWords: number;
  iovecWords: number;
  /** IOV_MAX: iovecs one record may have. */
  maxIovecs: number;
  sqe: {
    opcode: number;
    fd: number;
    offsetLow: number;
    offsetHigh: number;
    userData: number;
    iovecCount: number;
    firstIovec: number;
    length: number;
  };
  iovec: { region: number; offsetLow: number; offsetHigh: number; length: number };
  opcode: {
    NOP: number;
    READV: number;
    WRITEV: number;
    FSYNC: number;
    FDATASYNC: number;
    PUNCH_HOLE: number;
    ZERO_RANGE: number;
  };
}

/** The package root (this file is compiled to dist/native.js). */
const PACKAGE_ROOT = fileURLToPath(new URL('..', import.meta.url));

/**
 * node-gyp-build picks build/Release first (a source build: the repository's own, or an
 * install-time fallback), then the prebuilt prebuilds/<platform>-<arch>/ that ships in the
 * package. Both link liburing, whose absence is the usual cause of a failure here, so the
 * error says what to install and keeps the loader's own message.
 */
function loadAddon(): NativeRing {
  const load = require('node-gyp-build') as (dir: string) => NativeRing;
  try {
    return load(PACKAGE_ROOT);
  } catch (error) {
    const reason = error instanceof Error ? error.message.trim() : String(error);
    throw new Error(
      'vhost-user-ts: cannot load its native addon (native/ring), neither the prebuilt one nor a source build.\n' +
        '  It links liburing: at run time install liburing2 (Debian: apt-get install liburing2).\n' +
        '  To build it from source (Linux): apt-get install build-essential python3 liburing-dev,\n' +
        `  then run \`npm rebuild vhost-user-ts\` (or \`npm run build:native\` in a checkout).\n` +
        `  Loader error: ${reason}`,
      { cause: error },
    );
  }
}

export const native: NativeRing = loadAddon();

/** File seal bits of fcntl(F_ADD_SEALS / F_GET_SEALS) (linux/fcntl.h). */
export const FileSeal = {
  SEAL: 0x1,
  SHRINK: 0x2,
  GROW: 0x4,
  WRITE: 0x8,
} as const;
