// `vhost-user-blk --qsd-compat`: takes the arguments a manager gives qemu-storage-daemon to export
// vhost-user-blk devices (--blockdev + --export, in key=value or JSON form) and serves every
// export from this one process. Whatever has no faithful mapping is refused with a usage error
// (exit 2) rather than silently dropped: a manager must not believe it got what it asked for.
import { existsSync, unlinkSync, writeFileSync } from 'node:fs';
import { createLogger, setLogLevel } from '../log.js';
import { ExitCode, UsageError, parseCommandLine, parseCpuList, parseInteger, parseSize } from './common.js';
import type { BlkBackendOptions } from '../devices/blk/backend.js';
import { INTERRUPT_GRACE_US, type PollMode } from '../dataplane/commands.js';
import { serveBlkBackends } from './blk-service.js';

const HELP = `Usage: vhost-user-blk --qsd-compat [our options] <qemu-storage-daemon arguments>

qemu-storage-daemon arguments that map:
  --blockdev driver=file,node-name=N,filename=F[,cache.direct=on|off][,read-only=on|off]
             [,aio=threads|native|io_uring][,discard=ignore|unmap][,locking=..][,auto-read-only=..]
  --blockdev driver=raw,node-name=N,file=M          (a raw format layer over file node M, or
             file.driver=file,file.filename=F inline)
  --blockdev driver=null-co,node-name=N[,size=S][,read-zeroes=on|off]
  --export type=vhost-user-blk,id=ID,node-name=N,addr.type=unix,addr.path=P | addr.type=fd,addr.str=FD
           [,writable=on|off][,num-queues=K][,logical-block-size=512|4096][,iothread=..]
  --object iothread,id=ID   accepted; our worker threads (--cpus) do the I/O
  --pidfile PATH            written once every export listens, removed on exit
  Every option value may also be given as JSON ('{"driver":"file",...}'), as libvirt does.
  Not supported (exit 2): --chardev, --monitor, --nbd-server, --daemonize, -T/--trace, other
  drivers and export types.

Our options (anywhere in the list):
  --poll MODE            busy | interrupt | adaptive (default adaptive)
  --cpus LIST            CPUs for each export's worker threads (default 1)
  --idle-budget-us N     adaptive mode: spin this long without work before sleeping (default 50)
  --interrupt-grace-us N interrupt mode: stay awake this long after the last request (default 2)
  --queue-size N         largest queue size accepted (default 256)
  --verbose              protocol and lifecycle details on stderr

SIGTERM or SIGINT stops every export, exit 0.
`;

export interface QsdCompatArgs {
  help: boolean;
  version: boolean;
  verbose: boolean;
  pidfile?: string;
  backends: BlkBackendOptions[];
}

/** Options that take a value; --name=value and --name value both work, as with getopt_long. */
const VALUE_OPTIONS = new Set([
  'blockdev',
  'export',
  'object',
  'pidfile',
  'poll',
  'cpus',
  'idle-budget-us',
  'interrupt-grace-us',
  'queue-size',
]);
const UNSUPPORTED = new Map([
  ['chardev', 'there is no monitor to attach a character device to'],
  ['monitor', 'there is no QMP monitor; exports are fixed at start'],
  ['nbd-server', 'only vhost-user-blk exports are served'],
  ['daemonize', 'run it in the foreground under your manager (systemd: Type=simple)'],
  ['trace', 'QEMU trace events do not exist here; use --verbose'],
]);

type Keyval = Map<string, string>;

interface FileNode {
  driver: 'file' | 'null-co';
  nodeName: string;
  filename?: string;
  sizeBytes?: number;
  direct: boolean;
  readOnly: boolean;
  /** Our engine for a file node: aio=io_uring → io_uring, aio=threads → threads, else auto. */
  engine: 'auto' | 'io_uring' | 'threads' | 'null';
}

export function parseQsdArgs(argv: string[]): QsdCompatArgs {
  const blockdevs: Keyval[] = [];
  const exports: Keyval[] = [];
  const ours = new Map<string, string>();
  const result: QsdCompatArgs = { help: false, version: false, verbose: false, backends: [] };
  for (let i = 0; i < argv.length; i++) {
    const token = argv[i];
    let name: string;
    let value: string | undefined;
    if (token === '-h') name = 'help';
    else if (token === '-V') name = 'version';
    else if (token === '-T') name = 'trace';
    else if (token.startsWith('--')) {
      const eq = token.indexOf('=');
      name = eq < 0 ? token.slice(2) : token.slice(2, eq);
      if (eq >= 0) value = token.slice(eq + 1);
    } else throw new UsageError(`unexpected argument "${token}" (qemu-storage-daemon takes options only)`);
    const unsupported = UNSUPPORTED.get(name);
    if (unsupported) throw new UsageError(`--${name} is not supported: ${unsupported}`);
    if (VALUE_OPTIONS.has(name)) {
      if (value === undefined) {
        value = argv[++i];
        if (value === undefined) throw new UsageError(`--${name} needs a value`);
      }
    } else if (value !== undefined) {
      throw new UsageError(`--${name} takes no value`);
    }
    switch (name) {
      case 'help':
        result.help = true;
        break;
      case 'version':
        result.version = true;
        break;
      case 'verbose':
        result.verbose = true;
        break;
      case 'blockdev':
        blockdevs.push(parseOptionValue(value!, '--blockdev'));
        break;
      case 'export':
        exports.push(parseOptionValue(value!, '--export'));
        break;
      case 'object':
        checkObject(parseOptionValue(value!, '--object', 'qom-type'));
        break;
      case 'pidfile':
        result.pidfile = value!;
        break;
      case 'poll':
      case 'cpus':
      case 'idle-budget-us':
      case 'interrupt-grace-us':
      case 'queue-size':
        ours.set(name, value!);
        break;
      default:
        throw new UsageError(`unknown option ${token.startsWith('--') ? `--${name}` : token}`);
    }
  }
  if (result.help || result.version) return result;
  if (exports.length === 0) throw new UsageError('no --export given: nothing to serve');
  const nodes = resolveNodes(blockdevs);
  const poll = (ours.get('poll') ?? 'adaptive') as PollMode;
  if (!['busy', 'interrupt', 'adaptive'].includes(poll))
    throw new UsageError(`--poll must be busy, interrupt or adaptive, not "${poll}"`);
  const queueSize = ours.has('queue-size') ? parseInteger(ours.get('queue-size')!, '--queue-size', 2, 32768) : 256;
  if ((queueSize & (queueSize - 1)) !== 0) throw new UsageError(`--queue-size must be a power of two, got ${queueSize}`);
  const cpus = ours.has('cpus') ? parseCpuList(ours.get('cpus')!) : [1];
  const idleBudgetUs = ours.has('idle-budget-us')
    ? parseInteger(ours.get('idle-budget-us')!, '--idle-budget-us', 0, 10_000_000)
    : 50;
  const interruptGraceUs = ours.has('interrupt-grace-us')
    ? parseInteger(ours.get('interrupt-grace-us')!, '--interrupt-grace-us', 0, 1_000)
    : INTERRUPT_GRACE_US;
  const exported = new Set<string>();
  const ids = new Set<string>();
  const addresses = new Set<string>();
  for (const exp of exports) {
    const what = `--export ${exp.get('id') ?? ''}`.trimEnd();
    checkKeys(exp, what, [
      'type',
      'id',
      'node-name',
      'addr.type',
      'addr.path',
      'addr.str',
      'writable',
      'num-queues',
      'logical-block-size',
      'iothread',
      'fixed-iothread',
      'writethrough',
    ]);
    const type = required(exp, 'type', what);
    if (type !== 'vhost-user-blk') throw new UsageError(`${what}: type=${type} is not supported (only vhost-user-blk)`);
    const id = required(exp, 'id', what);
    if (ids.has(id)) throw new UsageError(`${what}: id ${id} is used twice`);
    ids.add(id);
    const nodeName = required(exp, 'node-name', what);
    const node = nodes.get(nodeName);
    if (!node) throw new UsageError(`${what}: no --blockdev with node-name=${nodeName}`);
    if (exported.has(node.nodeName)) throw new UsageError(`${what}: node ${nodeName} is already exported (one export per image)`);
    exported.add(node.nodeName);
    if (onOff(exp, 'writethrough', what, false))
      throw new UsageError(`${what}: writethrough=on is not supported (the guest's FLUSH requests are honoured)`);
    const writable = onOff(exp, 'writable', what, false); // qemu-storage-daemon's default: read-only
    if (writable && node.readOnly) throw new UsageError(`${what}: writable=on, but node ${nodeName} is read-only`);
    const addrType = required(exp, 'addr.type', what);
    let socketPath: string | undefined;
    let listenFd: number | undefined;
    if (addrType === 'unix') {
      if (exp.has('addr.str')) throw new UsageError(`${what}: addr.str belongs to addr.type=fd`);
      socketPath = required(exp, 'addr.path', what);
    } else if (addrType === 'fd') {
      if (exp.has('addr.path')) throw new UsageError(`${what}: addr.path belongs to addr.type=unix`);
      const fd = required(exp, 'addr.str', what);
      if (!/^\d+$/.test(fd))
        throw new UsageError(`${what}: addr.str=${fd} must be an fd number (named monitor fds do not exist here)`);
      listenFd = parseInteger(fd, `${what} addr.str`, 0, 2 ** 31 - 1);
    } else {
      throw new UsageError(`${what}: addr.type=${addrType} is not supported (unix or fd)`);
    }
    const address = socketPath ?? `fd ${listenFd}`;
    if (addresses.has(address)) throw new UsageError(`${what}: ${address} is already used by another export`);
    addresses.add(address);
    const logicalBlockSize = exp.has('logical-block-size')
      ? parseSize(exp.get('logical-block-size')!, `${what} logical-block-size`)
      : 512;
    if (logicalBlockSize !== 512 && logicalBlockSize !== 4096)
      throw new UsageError(`${what}: logical-block-size must be 512 or 4096`);
    result.backends.push({
      socketPath,
      listenFd,
      client: false,
      engine: node.engine,
      diskPath: node.filename,
      sizeBytes: node.sizeBytes,
      direct: node.direct,
      readOnly: !writable,
      logicalBlockSize,
      serial: undefined,
      queues: exp.has('num-queues') ? parseInteger(exp.get('num-queues')!, `${what} num-queues`, 1, 64) : 1,
      queueSize,
      cpus,
      poll,
      idleBudgetUs,
      interruptGraceUs,
    });
  }
  return result;
}

/** Node name → the file (or null) node it stands for; raw format layers resolve to their file. */
function resolveNodes(blockdevs: Keyval[]): Map<string, FileNode> {
  const nodes = new Map<string, FileNode>();
  const raws: { nodeName: string; file: string; readOnly: boolean; what: string }[] = [];
  const add = (node: FileNode, what: string) => {
    if (nodes.has(node.nodeName) || raws.some((raw) => raw.nodeName === node.nodeName))
      throw new UsageError(`${what}: node-name ${node.nodeName} is used twice`);
    nodes.set(node.nodeName, node);
  };
  let anonymous = 0;
  for (const dev of blockdevs) {
    const what = `--blockdev ${dev.get('node-name') ?? ''}`.trimEnd();
    const driver = required(dev, 'driver', what);
    const nodeName = required(dev, 'node-name', what);
    if (driver === 'raw') {
      checkKeys(dev, what, ['driver', 'node-name', 'file', 'read-only', 'auto-read-only', 'discard', 'detect-zeroes'], 'file.');
      checkHarmless(dev, what);
      const inline = new Map([...dev].filter(([key]) => key.startsWith('file.')).map(([key, value]) => [key.slice(5), value]));
      let file = dev.get('file');
      if (inline.size > 0) {
        if (file !== undefined) throw new UsageError(`${what}: give file=NODE or file.* options, not both`);
        file = `#raw-file-${anonymous++}`;
        inline.set('node-name', file);
        add(fileNode(inline, `${what} file`), what);
      }
      if (file === undefined) throw new UsageError(`${what}: driver=raw needs file=NODE (or file.driver=file,file.filename=...)`);
      raws.push({ nodeName, file, readOnly: onOff(dev, 'read-only', what, false), what });
    } else {
      add(fileNode(dev, what), what);
    }
  }
  for (const raw of raws) {
    const file = nodes.get(raw.file);
    if (!file) throw new UsageError(`${raw.what}: no --blockdev with node-name=${raw.file}`);
    if (nodes.has(raw.nodeName)) throw new UsageError(`${raw.what}: node-name ${raw.nodeName} is used twice`);
    // The raw layer is the file as is (no offset/size options are accepted), so it exports the same image.
    nodes.set(raw.nodeName, { ...file, readOnly: file.readOnly || raw.readOnly });
  }
  return nodes;
}

function fileNode(dev: Keyval, what: string): FileNode {
  const driver = required(dev, 'driver', what);
  const nodeName = required(dev, 'node-name', what);
  if (driver === 'file') {
    checkKeys(dev, what, [
      'driver',
      'node-name',
      'filename',
      'aio',
      'cache.direct',
      'cache.no-flush',
      'read-only',
      'auto-read-only',
      'discard',
      'detect-zeroes',
      'locking',
    ]);
    checkHarmless(dev, what);
    const aio = dev.get('aio');
    if (aio !== undefined && !['threads', 'native', 'io_uring'].includes(aio))
      throw new UsageError(`${what}: aio=${aio} is not a qemu-storage-daemon value`);
    if (onOff(dev, 'cache.no-flush', what, false))
      throw new UsageError(`${what}: cache.no-flush=on is not supported (FLUSH is always honoured)`);
    const locking = dev.get('locking');
    if (locking !== undefined && !['auto', 'on', 'off'].includes(locking))
      throw new UsageError(`${what}: locking=${locking} must be auto, on or off`);
    return {
      driver,
      nodeName,
      filename: required(dev, 'filename', what),
      direct: onOff(dev, 'cache.direct', what, false),
      readOnly: onOff(dev, 'read-only', what, false),
      engine: aio === 'io_uring' ? 'io_uring' : aio === 'threads' ? 'threads' : 'auto',
    };
  }
  if (driver === 'null-co') {
    checkKeys(dev, what, ['driver', 'node-name', 'size', 'read-zeroes', 'read-only', 'auto-read-only']);
    onOff(dev, 'read-zeroes', what, false);
    onOff(dev, 'auto-read-only', what, false);
    const size = dev.has('size') ? parseSize(dev.get('size')!, `${what} size`) : 2 ** 30; // QEMU's null-co default
    if (size === 0 || size % 512 !== 0) throw new UsageError(`${what}: size must be a positive multiple of 512`);
    return { driver, nodeName, sizeBytes: size, direct: false, readOnly: onOff(dev, 'read-only', what, false), engine: 'null' };
  }
  throw new UsageError(`${what}: driver=${driver} is not supported (file, raw over file, null-co)`);
}

/** Options whose every value is served the same way here (locking: I/O is ours). */
function checkHarmless(dev: Keyval, what: string): void {
  onOff(dev, 'auto-read-only', what, false);
  const discard = dev.get('discard');
  if (discard !== undefined && !['ignore', 'off', 'unmap', 'on'].includes(discard))
    throw new UsageError(`${what}: discard=${discard} must be ignore or unmap`);
  const detect = dev.get('detect-zeroes');
  if (detect !== undefined && detect !== 'off')
    throw new UsageError(`${what}: detect-zeroes=${detect} is not supported (only off)`);
}

function checkObject(obj: Keyval): void {
  const type = obj.get('qom-type');
  if (type !== 'iothread')
    throw new UsageError(`--object ${type ?? ''}: only iothread objects are accepted (and need no mapping)`);
  checkKeys(obj, '--object iothread', ['qom-type', 'id', 'poll-max-ns', 'poll-grow', 'poll-shrink', 'aio-max-batch']);
}

function checkKeys(options: Keyval, what: string, known: string[], prefix?: string): void {
  for (const key of options.keys()) {
    if (known.includes(key) || (prefix && key.startsWith(prefix))) continue;
    throw new UsageError(`${what}: option ${key} is not supported (known: ${known.join(', ')})`);
  }
}

function required(options: Keyval, key: string, what: string): string {
  const value = options.get(key);
  if (value === undefined || value === '') throw new UsageError(`${what}: ${key}= is required`);
  return value;
}

function onOff(options: Keyval, key: string, what: string, fallback: boolean): boolean {
  const value = options.get(key);
  if (value === undefined) return fallback;
  if (value === 'on' || value === 'true' || value === 'yes') return true;
  if (value === 'off' || value === 'false' || value === 'no') return false;
  throw new UsageError(`${what}: ${key}=${value} must be on or off`);
}

/** QEMU's two spellings of an option value: keyval ("a=1,b.c=x,,y") or a JSON object. */
export function parseOptionValue(text: string, what: string, impliedKey?: string): Keyval {
  return text.trimStart().startsWith('{') ? parseJsonOption(text, what) : parseKeyval(text, what, impliedKey);
}

/** key=value pairs split at single commas; ",," is a literal comma (QEMU's keyval syntax). */
export function parseKeyval(text: string, what: string, impliedKey?: string): Keyval {
  const result: Keyval = new Map();
  let i = 0;
  let first = true;
  while (i <= text.length) {
    let part = '';
    for (; i < text.length; i++) {
      if (text[i] === ',') {
        if (text[i + 1] === ',') {
          part += ',';
          i++;
          continue;
        }
        break;
      }
      part += text[i];
    }
    i++; // past the separator
    const eq = part.indexOf('=');
    let key: string;
    let value: string;
    if (eq < 0) {
      if (!(first && impliedKey)) throw new UsageError(`${what}: "${part}" is not key=value`);
      key = impliedKey;
      value = part;
    } else {
      key = part.slice(0, eq);
      value = part.slice(eq + 1);
    }
    if (!/^[A-Za-z0-9_.-]+$/.test(key)) throw new UsageError(`${what}: "${key}" is not an option name`);
    if (result.has(key)) throw new UsageError(`${what}: ${key} is given twice`);
    result.set(key, value);
    first = false;
  }
  return result;
}

function parseJsonOption(text: string, what: string): Keyval {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw new UsageError(`${what}: not valid JSON: ${(error as Error).message}`);
  }
  const result: Keyval = new Map();
  const flatten = (value: unknown, path: string) => {
    if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) flatten(inner, path ? `${path}.${key}` : key);
    } else if (typeof value === 'boolean') result.set(path, value ? 'on' : 'off');
    else if (typeof value === 'number' || typeof value === 'string') result.set(path, String(value));
    else throw new UsageError(`${what}: ${path || 'the value'} must be an object, string, number or boolean`);
  };
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed))
    throw new UsageError(`${what}: JSON must be an object`);
  flatten(parsed, '');
  return result;
}

export async function qsdCompatMain(argv: string[], stop: Promise<NodeJS.Signals>): Promise<number> {
  const args = parseCommandLine('vhost-user-blk --qsd-compat', () => parseQsdArgs(argv), HELP, ' --qsd-compat');
  if (typeof args === 'number') return args;
  // qemu-storage-daemon opens images, it never creates them: neither do we here.
  const missing = args.backends.find((backend) => backend.diskPath !== undefined && !existsSync(backend.diskPath));
  if (missing) {
    process.stderr.write(`vhost-user-blk --qsd-compat: ${missing.diskPath} does not exist (images are not created here)\n`);
    return ExitCode.FAILURE;
  }
  setLogLevel(args.verbose ? 'debug' : 'info');
  const log = createLogger('vhost-user-blk');
  const pidfile = args.pidfile;
  let wrotePidfile = false;
  const code = await serveBlkBackends({
    backends: args.backends,
    stop,
    log,
    onReady: () => {
      if (!pidfile) return;
      writeFileSync(pidfile, `${process.pid}\n`);
      wrotePidfile = true;
    },
  });
  if (wrotePidfile) {
    try {
      unlinkSync(pidfile!);
    } catch {
      // Removed by the manager already.
    }
  }
  return code;
}
