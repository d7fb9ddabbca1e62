// Shared pieces of the command-line tools: size parsing, exit codes, version, fatal errors.
import { readFileSync } from 'node:fs';
import { UsageError } from '../control/errors.js';

/** Exit codes: 0 success, 1 runtime failure, 2 bad usage (sysexits-like, kept small). */
export const ExitCode = { OK: 0, FAILURE: 1, USAGE: 2 } as const;

export { UsageError };

const SIZE_SUFFIXES: Record<string, number> = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 };

/** Parses "4096", "64M", "1G", "2T" (binary units; an optional trailing B or iB is accepted). */
export function parseSize(text: string, what = 'size'): number {
  const match = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (!match) throw new UsageError(`${what} "${text}" is not a size (use bytes or a K/M/G/T suffix, e.g. 64M)`);
  const value = Number(match[1]) * SIZE_SUFFIXES[match[2]!.toUpperCase()]!;
  if (!Number.isSafeInteger(value)) throw new UsageError(`${what} "${text}" is too large`);
  return value;
}

/** Parses "0", "0-1", "0,2-3" into CPU numbers. */
export function parseCpuList(text: string): number[] {
  const cpus: number[] = [];
  for (const part of text.split(',')) {
    const match = /^(\d+)(?:-(\d+))?$/.exec(part.trim());
    if (!match) throw new UsageError(`CPU list "${text}" is not valid (examples: 1, 0-1, 0,2)`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (last < first) throw new UsageError(`CPU range "${part}" is reversed`);
    for (let cpu = first; cpu <= last; cpu++) if (!cpus.includes(cpu)) cpus.push(cpu);
  }
  return cpus;
}

export function parseInteger(text: string, what: string, min: number, max: number): number {
  if (!/^\d+$/.test(text.trim())) throw new UsageError(`${what} "${text}" is not a whole number`);
  const value = Number(text);
  if (value < min || value > max) throw new UsageError(`${what} must be between ${min} and ${max}, got ${value}`);
  return value;
}

export function packageVersion(): string {
  const url = new URL('../../package.json', import.meta.url);
  return (JSON.parse(readFileSync(url, 'utf8')) as { version: string }).version;
}
