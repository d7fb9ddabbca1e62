// Which native addon dist/native.js loads, and what it says when none loads.
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const NATIVE = join(ROOT, 'dist', 'native.js');
const require = createRequire(import.meta.url);
const work = mkdtempSync(join(tmpdir(), 'vut-addon-'));

afterAll(() => rmSync(work, { recursive: true, force: true }));

/**
 * Imports dist/native.js in a fresh node with node-gyp-build pointed at `dir` instead of the
 * package root (its VHOST_USER_TS_PREBUILD override), and returns how it failed.
 */
function importWithAddonDir(dir: string): Promise<{ code: number | null; stderr: string }> {
  const script = `import(${JSON.stringify(NATIVE)}).catch((error) => { console.error(error.message); process.exit(3); });`;
  return new Promise((done) => {
    const env = { ...process.env, VHOST_USER_TS_PREBUILD: dir };
    const child = execFile(process.execPath, ['-e', script], { env }, (_error, _stdout, stderr) => {
      done({ code: child.exitCode, stderr });
    });
  });
}

describe('the native addon', () => {
  it('in a checkout is the source build in build/Release, never a prebuild', () => {
    const load = require('node-gyp-build') as { path(dir: string): string };
    expect(load.path(ROOT)).toBe(join(ROOT, 'build', 'Release', 'ring.node'));
  });

  it('when none is found, fails with an error that names liburing and keeps the loader error', async () => {
    const empty = join(work, 'empty');
    mkdirSync(empty);
    const { code, stderr } = await importWithAddonDir(empty);
    expect(code).toBe(3);
    expect(stderr).toContain('liburing2');
    expect(stderr).toContain('liburing-dev');
    expect(stderr).toContain(`loaded from: ${empty}`);
  });

  it('when one is found but does not load, fails with the same advice and the dlopen error', async () => {
    const broken = join(work, 'broken');
    mkdirSync(join(broken, 'build', 'Release'), { recursive: true });
    const addon = join(broken, 'build', 'Release', 'ring.node');
    writeFileSync(addon, 'not a shared object');
    const { code, stderr } = await importWithAddonDir(broken);
    expect(code).toBe(3);
    expect(stderr).toContain('liburing2');
    expect(stderr).toContain(addon);
  });
});
