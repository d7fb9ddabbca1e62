// The life of a back-end process, shared by every CLI: start each back-end, serve until a stop
// signal or a failure (logging the counters on an interval), stop them all, and answer with the
// exit code.
import type { Logger } from '../log.js';
import { ExitCode } from './common.js';

/** What serveBackends needs of a started back-end (blk's, net's). */
export interface ServedBackend<S extends object> {
  queueStats(): S[];
  /** Settles when the back-end's first daemon ends: resolves if it stopped, rejects if it failed. */
  wait(): Promise<void>;
  stop(): Promise<void>;
}

export interface ServeOptions<S extends object> {
  /** Prefixes the start-up failure printed on stderr. */
  tool: string;
  /** One starter per back-end, run in order. */
  start: (() => Promise<ServedBackend<S>>)[];
  /** Resolves with the first SIGTERM/SIGINT (stopSignal), installed before this is called. */
  stop: Promise<NodeJS.Signals>;
  log: Logger;
  statsIntervalSec?: number;
  /** Runs once every back-end listens (e.g. to write a pid file). */
  onReady?: () => void;
  /** Runs after every back-end stopped, with the counters read just before stopping. */
  atExit?: (stats: S[]) => void;
}

/** Returns the exit code: 0 after a stop signal, 1 if a back-end could not start or failed. */
export async function serveBackends<S extends object>(options: ServeOptions<S>): Promise<number> {
  const { log } = options;
  let signal: NodeJS.Signals | undefined;
  void options.stop.then((received) => (signal = received));
  const running: ServedBackend<S>[] = [];
  const fail = async (what: string, error: unknown) => {
    log.error(what, { error });
    process.stderr.write(`${options.tool}: ${(error as Error).message}\n`);
    await stopAll(running, log);
    return ExitCode.FAILURE;
  };
  for (const start of options.start) {
    try {
      running.push(await start());
    } catch (error) {
      return fail('cannot start', error);
    }
    // A signal during start-up: stop at once rather than start the rest.
    if (signal) break;
  }
  if (!signal) {
    try {
      options.onReady?.();
    } catch (error) {
      return fail('cannot finish start-up', error);
    }
  }
  const allStats = () => running.flatMap((backend) => backend.queueStats());
  const statsTimer =
    (options.statsIntervalSec ?? 0) > 0
      ? setInterval(() => {
          for (const stats of allStats()) log.info('queue stats', { ...stats } as Record<string, unknown>);
        }, options.statsIntervalSec! * 1000)
      : undefined;
  const failed = Promise.race(running.map((backend) => backend.wait())).then(
    () => ExitCode.OK,
    (error: Error) => {
      log.error('daemon failed', { error });
      return ExitCode.FAILURE;
    },
  );
  const code = await Promise.race([
    options.stop.then((received) => {
      log.info('stopping', { signal: received });
      return ExitCode.OK;
    }),
    failed,
  ]);
  if (statsTimer) clearInterval(statsTimer);
  const final = allStats();
  await stopAll(running, log);
  options.atExit?.(final);
  return code;
}

async function stopAll<S extends object>(backends: ServedBackend<S>[], log: Logger): Promise<void> {
  const results = await Promise.allSettled(backends.map((backend) => backend.stop()));
  for (const result of results) if (result.status === 'rejected') log.error('stop failed', { error: result.reason });
}
