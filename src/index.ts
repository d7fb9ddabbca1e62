// Public surface of vhost-user-ts.
export { createLogger, setLogLevel, setLogSink, type Logger, type LogLevel } from './log.js';
export type { VhostUserDevice, DeviceRequest, DataPlane, VringConfig } from './control/backend.js';
export { VhostUserDaemon, type DaemonOptions } from './control/daemon.js';
export { VhostUserSession } from './control/session.js';
export {
  VhostUserError,
  ProtocolError,
  UnknownRequestError,
  MemoryTableError,
  SessionError,
  DaemonError,
  FrontendError,
  UsageError,
  type VhostUserErrorCode,
  type VhostUserErrorOptions,
} from './control/errors.js';
export * as protocol from './control/protocol.js';
export * as codec from './control/codec/index.js';
export * from './frontend/index.js';
export { BlkDevice, type BlkDeviceOptions } from './devices/blk/device.js';
export { NetDevice, type NetDeviceOptions } from './devices/net/device.js';
export { startNetBackend, type NetBackend, type NetBackendOptions } from './devices/net/backend.js';
export { WorkerDataPlane, type WorkerDataPlaneOptions } from './dataplane/pool.js';
export type { QueueHandler, WorkerQueue, CreateQueueHandler, HandlerContext, HandlerSpec } from './dataplane/device-api.js';
export { FdEvent, MAX_WATCH_TOKEN } from './dataplane/device-api.js';
export type { PollMode } from './dataplane/commands.js';
export type { QueueStats } from './dataplane/stats.js';
export { VirtqRequest } from './dataplane/request.js';
export { GuestMemory } from './dataplane/memory.js';
export { EchoDevice } from './devices/echo/device.js';
export { startLoad, runLoad, type LoadOptions, type LoadReport } from './loadgen/load.js';
export { runBench, formatBench, randRead4k, type BenchArgs, type BenchResult } from './loadgen/run.js';
