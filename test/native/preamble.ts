// What every test of the native/ring addon shares: fd flag checks, thrown-error capture and fd
// tracking (each test's fds are closed after it, whether or not the test closed them itself).
import { readdirSync, readFileSync } from 'node:fs';
import { afterEach } from 'vitest';
import { native } from '../../dist/native.js';

export const O_NONBLOCK = 0o4000;
export const O_CLOEXEC = 0o2000000;

/** The open-file flags of `fd`, as /proc/self/fdinfo reports them. */
export function fdFlags(fd: number): number {
  return parseInt(/flags:\s+([0-7]+)/.exec(readFileSync(`/proc/self/fdinfo/${fd}`, 'utf8'))![1], 8);
}

export const openFdCount = (): number => readdirSync('/proc/self/fd').length;

/** What the addon throws: errno errors carry code, errno, syscall and sometimes path. */
export interface NativeError extends Error {
  code?: string;
  errno?: number;
  syscall?: string;
  path?: string;
}

/** The error `fn` throws; fails the test when it returns instead. */
export function thrown(fn: () => unknown): NativeError {
  try {
    fn();
  } catch (error) {
    return error as NativeError;
  }
  throw new Error('expected a throw');
}

export const sleep = (ms: number): Promise<void> => new Promise((done) => setTimeout(done, ms));

let opened: number[] = [];

/** Closes `fds` after the current test (fds the test closed itself are skipped quietly). */
export function track<T extends number | number[]>(fds: T): T {
  opened.push(...([] as number[]).concat(fds));
  return fds;
}

afterEach(() => {
  for (const fd of opened) {
    try {
      native.close(fd);
    } catch {
      // closed by the test itself
    }
  }
  opened = [];
});
