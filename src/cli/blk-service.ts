// The life of a vhost-user-blk process, shared by its own command line and --qsd-compat: one
// back-end per export, served by the CLIs' common serveBackends.
import type { Logger } from '../log.js';
import { serveBackends } from './serve.js';
import { startBlkBackend, type BlkBackendOptions } from '../devices/blk/backend.js';

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
export function serveBlkBackends(options: ServeOptions): Promise<number> {
  const { backends, log, ...rest } = options;
  return serveBackends({
    ...rest,
    tool: 'vhost-user-blk',
    start: backends.map((backend) => () => startBlkBackend(backend, log)),
    log,
  });
}
