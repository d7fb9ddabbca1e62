// Public surface of vhost-user-ts.
export { createLogger, setLogLevel, setLogSink, type Logger, type LogLevel } from './log.js';
export type { VhostUserDevice, DataPlane, VringConfig } from './control/backend.js';
export { VhostUserDaemon, DaemonError, type DaemonOptions } from './control/daemon.js';
export { VhostUserSession, SessionError } from './control/session.js';
export * as protocol from './control/protocol.js';
export * as codec from './control/codec.js';
export * from './control/frontend/index.js';
export { BlkDevice, type BlkDeviceOptions } from './devices/blk/device.js';
export { WorkerDataPlane, type WorkerDataPlaneOptions } from './dataplane/pool.js';
export type { QueueHandler, WorkerQueue, CreateQueueHandler, HandlerContext, HandlerSpec } from './dataplane/device-api.js';
export { FdEvent, MAX_WATCH_TOKEN } from './dataplane/device-api.js';
export type { PollMode } from './dataplane/commands.js';
export type { QueueStats } from './dataplane/stats.js';
export { VirtqRequest } from './dataplane/request.js';
export { GuestMemory } from './dataplane/memory.js';
export { EchoDevice } from './devices/echo/device.js';
export { startLoad, runLoad, type LoadOptions, type LoadReport } from './bench/load.js';
