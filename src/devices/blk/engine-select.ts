// Which disk engine serves an image: io_uring where the kernel lets us, else the thread pool.
//
// `auto` (the default for a disk) probes io_uring once on the control thread: a ring of one
// entry, opened and closed. io_uring_setup failing with EPERM (a seccomp filter, e.g. Docker's
// default profile), EACCES or ENOSYS (kernel.io_uring_disabled, or a kernel built without it)
// selects the `threads` engine, with one warning that says why; any other failure is an error.
//
// Test hook: VUT_FAKE_IO_URING_ERRNO=EPERM (or any errno name) in the environment makes every
// io_uring_setup of this process — the probe and the engine's own rings, in every worker —
// fail as the kernel would, with that errno, before the kernel is asked.
import { native, type Uring, type UringConstructor } from '../../native.js';
import type { BlkEngineChoice, BlkEngineName } from './options.js';

export const FAKE_URING_ERRNO_ENV = 'VUT_FAKE_IO_URING_ERRNO';

/** io_uring_setup errors that mean "not allowed or not there here": fall back to threads. */
const UNAVAILABLE = new Set(['EPERM', 'EACCES', 'ENOSYS']);
const ERRNO: Record<string, number> = { EPERM: 1, EACCES: 13, ENOSYS: 38, ENOMEM: 12, EINVAL: 22 };

/** A kernel io_uring (the engine's default ring), through the test hook above. */
export function openUring(entries: number, options?: ConstructorParameters<UringConstructor>[1]): Uring {
  const fake = process.env[FAKE_URING_ERRNO_ENV];
  if (fake) {
    const error = new Error(
      `${fake}: io_uring_setup refused (${FAKE_URING_ERRNO_ENV} is set), io_uring_setup`,
    ) as NodeJS.ErrnoException;
    error.code = fake;
    error.errno = ERRNO[fake] ?? 0;
    error.syscall = 'io_uring_setup';
    throw error;
  }
  return new native.Uring(entries, options);
}

/** Why io_uring cannot be used here (the errno name), or null if it can. Throws on other errors. */
export function probeUring(): string | null {
  let ring: Uring;
  try {
    ring = openUring(1);
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code !== undefined && UNAVAILABLE.has(code)) return code;
    throw error;
  }
  ring.close();
  return null;
}

export interface EngineLog {
  warn(msg: string, fields?: Record<string, unknown>): void;
}

/** The concrete engine for a choice: `auto` becomes io_uring or threads (logged once, if a log is given). */
export function resolveEngine(choice: BlkEngineChoice, log?: EngineLog): BlkEngineName {
  if (choice !== 'auto') return choice;
  const refused = probeUring();
  if (refused === null) return 'io_uring';
  log?.warn(
    `io_uring is not available here (io_uring_setup failed with ${refused}: a seccomp profile such as Docker's default, ` +
      'or kernel.io_uring_disabled, forbids it); serving the disk with the threads engine (blocking I/O in a thread pool). ' +
      'Pass --engine threads to choose it without this probe, or allow io_uring to use the io_uring engine.',
    { errno: refused, engine: 'threads' },
  );
  return 'threads';
}
