// The life of a vhost-user-blk process, shared by its own command line and --qsd-compat: start
// every back-end (one per export), serve until a stop signal or a failure, stop them all.
import type { Logger } from '../log.js';
import { ExitCode } from './common.js';
import { startBlkBackend, type BlkBackend, type BlkBackendOptions } from '../devices/blk/backend.js';

export interface ServeOptions {
  backends: BlkBackendOptions[];
  /** Resolves with the first SIGTERM/SIGINT (stopSignal), installed before this is called. */
  stop: Promise<NodeJS.Signals>;
  log: Logger;
  statsIntervalSec?: number;
  /** Runs once every back-end listens (e.g. to write a pid file). */
  onReady?: () => void;
}

/** Returns the exit code: 0 after a stop signal, 1 if a back-end could not start or failed. */
export async function serveBlkBackends(options: ServeOptions): Promise<number> {
  const { log } = options;
  let signal: NodeJS.Signals | undefined;
  void options.stop.then((received) => (signal = received));
  const running: BlkBackend[] = [];
  for (const backendOptions of options.backends) {
    try {
      running.push(await startBlkBackend(backendOptions, log));
    } catch (error) {
      log.error('cannot start', { error });
      process.stderr.write(`vhost-user-blk: ${(error as Error).message}\n`);
      await stopAll(running, log);
      return ExitCode.FAILURE;
    }
    // A signal during start-up: stop at once rather than start the rest.
    if (signal) break;
  }
  if (!signal) {
    try {
      options.onReady?.();
    } catch (error) {
      log.error('cannot finish start-up', { error });
      process.stderr.write(`vhost-user-blk: ${(error as Error).message}\n`);
      await stopAll(running, log);
      return ExitCode.FAILURE;
    }
  }
  const statsTimer =
    (options.statsIntervalSec ?? 0) > 0
      ? setInterval(() => {
          for (const backend of running) for (const stats of backend.queueStats()) log.info('queue stats', { ...stats });
        }, options.statsIntervalSec! * 1000)
      : undefined;
  const failed = Promise.race(running.map((backend) => backend.daemon.wait())).then(
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
  await stopAll(running, log);
  return code;
}

async function stopAll(backends: BlkBackend[], log: Logger): Promise<void> {
  const results = await Promise.allSettled(backends.map((backend) => backend.stop()));
  for (const result of results) if (result.status === 'rejected') log.error('stop failed', { error: result.reason });
}
