// The package as a user gets it: `npm pack` (prepack builds dist/ and the prebuilt addon), then
// `npm install <tarball>` into an empty project, then the CLIs and the library entry points.
// Every path checked comes from package.json (`exports`, `bin`, `main`, `types`) or binding.gyp.
//
// The pack runs in a copy of the checkout (the files git tracks or would track, with this
// checkout's node_modules linked in), so its rebuild of dist/ and build/ never races the other
// test files that load them here.
import { execFile } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const run = promisify(execFile);
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');

interface PackageJson {
  name: string;
  main: string;
  types: string;
  exports: Record<string, string>;
  bin: Record<string, string>;
}
const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as PackageJson;
const gyp = JSON.parse(readFileSync(join(ROOT, 'binding.gyp'), 'utf8')) as { targets: { sources: string[] }[] };

/** npm_* variables of an outer `npm test` (build-from-source, prefix, ...) must not steer the inner npm. */
function cleanEnv(): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (!/^npm_/i.test(key) && key !== 'VHOST_USER_TS_PREBUILD') env[key] = value;
  }
  return env;
}

/** "./dist/index.js" → "dist/index.js", as tar lists it under package/. */
const packagePath = (path: string) => path.replace(/^\.\//, '');

let work: string;
let tarball: string;
let entries: string[];
let app: string;
let installed: string;
const seconds: Record<string, number> = {};

async function timed<T>(what: string, step: () => Promise<T>): Promise<T> {
  const start = performance.now();
  try {
    return await step();
  } finally {
    seconds[what] = Math.round((performance.now() - start) / 100) / 10;
  }
}

beforeAll(async () => {
  work = mkdtempSync(join(tmpdir(), 'vut-pack-'));
  const source = join(work, 'source');
  const out = join(work, 'out');
  app = join(work, 'app');
  for (const dir of [source, out, app]) mkdirSync(dir);
  const env = cleanEnv();

  const listed = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], {
    cwd: ROOT,
    maxBuffer: 16 << 20,
  });
  for (const file of listed.stdout.split('\0')) {
    if (file && existsSync(join(ROOT, file))) cpSync(join(ROOT, file), join(source, file), { recursive: true });
  }
  symlinkSync(join(ROOT, 'node_modules'), join(source, 'node_modules'));

  // `npm pack` runs prepack (dist/ and the prebuilt addon) and then prepare, which compiles
  // dist/ a second time for nothing; prepack alone then a script-less pack makes the same tarball.
  await timed('prepack', () => run('npm', ['run', 'prepack'], { cwd: source, env, maxBuffer: 64 << 20 }));
  await timed('pack', () => run('npm', ['pack', '--ignore-scripts', '--pack-destination', out], { cwd: source, env }));
  const packed = readdirSync(out).filter((name) => name.endsWith('.tgz'));
  expect(packed).toHaveLength(1);
  tarball = join(out, packed[0]);
  const listing = await run('tar', ['-tzf', tarball], { maxBuffer: 16 << 20 });
  entries = listing.stdout
    .split('\n')
    .filter(Boolean)
    .map((entry) => entry.replace(/^package\//, ''));

  // allowScripts: npm 11 skips a dependency's install script unless the project allows it;
  // allowing it here checks that the script itself (node-gyp-build) picks the prebuild.
  writeFileSync(
    join(app, 'package.json'),
    JSON.stringify({ name: 'vut-pack-app', version: '1.0.0', private: true, type: 'module', allowScripts: { [pkg.name]: true } }),
  );
  await timed('install', () =>
    run('npm', ['install', '--no-audit', '--no-fund', tarball], { cwd: app, env, maxBuffer: 16 << 20 }),
  );
  installed = join(app, 'node_modules', pkg.name);
}, 600_000);

afterAll(() => {
  if (work) rmSync(work, { recursive: true, force: true });
  console.log(`pack-install: ${JSON.stringify(seconds)} s`);
});

describe('the packed tarball', () => {
  it('holds every entry point package.json names', () => {
    const targets = [pkg.main, pkg.types, ...Object.values(pkg.exports), ...Object.values(pkg.bin)].map(packagePath);
    for (const target of targets) expect(entries).toContain(target);
  });

  it('holds a prebuilt linux-x64 addon and the sources for the fallback build', () => {
    expect(entries.some((entry) => /^prebuilds\/linux-x64\/[^/]+\.node$/.test(entry))).toBe(true);
    expect(entries).toContain('binding.gyp');
    for (const target of gyp.targets) for (const file of target.sources) expect(entries).toContain(file);
  });

  it('leaves out what only developers use', () => {
    const devOnly = entries.filter((entry) => /^(test|bench|src|scripts|\.ci|build|node_modules)\/|\.map$|\.tgz$/.test(entry));
    expect(devOnly).toEqual([]);
  });
});

describe('installed into an empty project', () => {
  it('loads the prebuilt addon without compiling anything', async () => {
    expect(existsSync(join(installed, 'build'))).toBe(false);
    const script = `import { createRequire } from 'node:module';
      const require = createRequire(import.meta.url);
      console.log(require('node-gyp-build').path(${JSON.stringify(installed)}));`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: app, env: cleanEnv() });
    expect(stdout.trim().startsWith(join(installed, 'prebuilds', 'linux-x64') + '/')).toBe(true);
  });

  it.each(Object.keys(pkg.bin))('npx %s --help exits 0 with its usage', async (name) => {
    const { stdout } = await timed(`npx ${name}`, () =>
      run('npx', ['--no', '--', name, '--help'], { cwd: app, env: cleanEnv() }),
    );
    expect(stdout).toMatch(/^Usage: /);
  });

  it('imports the library and every subpath export as ESM', async () => {
    const specifiers = Object.keys(pkg.exports).map((key) => (key === '.' ? pkg.name : `${pkg.name}/${key.slice(2)}`));
    const script = `const names = {};
      for (const specifier of ${JSON.stringify(specifiers)}) names[specifier] = Object.keys(await import(specifier));
      console.log(JSON.stringify(names));`;
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script], { cwd: app, env: cleanEnv() });
    const names = JSON.parse(stdout) as Record<string, string[]>;
    expect(names[pkg.name]).toEqual(
      expect.arrayContaining(['VhostUserDaemon', 'BlkDevice', 'WorkerDataPlane', 'FrontendDevice']),
    );
    expect(names[`${pkg.name}/frontend`]).toEqual(
      expect.arrayContaining(['FrontendDevice', 'VhostUserClient', 'FrontendMemory']),
    );
  });
});
