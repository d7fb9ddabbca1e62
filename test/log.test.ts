import { afterEach, describe, expect, it } from 'vitest';
import { createLogger, logLevelEnabled, setLogLevel, setLogSink } from '../dist/log.js';

function capture(): { lines: Record<string, unknown>[]; restore: () => void } {
  const lines: Record<string, unknown>[] = [];
  const previous = setLogSink((line) => lines.push(JSON.parse(line) as Record<string, unknown>));
  return { lines, restore: () => void setLogSink(previous) };
}

describe('logger', () => {
  afterEach(() => setLogLevel('warn'));

  it('writes one JSON line per record with time, level, component and message', () => {
    const { lines, restore } = capture();
    setLogLevel('info');
    createLogger('session').info('queue started', { queue: 1, size: 256 });
    restore();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'info', component: 'session', msg: 'queue started', queue: 1, size: 256 });
    expect(Number.isNaN(Date.parse(lines[0].time as string))).toBe(false);
  });

  it('drops records below the threshold, including loggers made before the level changed', () => {
    const early = createLogger('early');
    const { lines, restore } = capture();
    setLogLevel('warn');
    early.info('hidden');
    early.debug('hidden');
    expect(logLevelEnabled('debug')).toBe(false);
    setLogLevel('debug');
    early.debug('shown');
    restore();
    expect(lines.map((line) => line.msg)).toEqual(['shown']);
  });

  it('turns errors into their message and BigInts into decimal strings', () => {
    const { lines, restore } = capture();
    createLogger('x').error('failed', { error: new Error('boom'), features: 1n << 63n });
    restore();
    expect(lines[0]).toMatchObject({ level: 'error', error: 'boom', features: '9223372036854775808' });
  });

  it('names child loggers after their parent', () => {
    const { lines, restore } = capture();
    createLogger('daemon').child('session').warn('refused');
    restore();
    expect(lines[0]).toMatchObject({ component: 'daemon.session', msg: 'refused' });
  });
});
