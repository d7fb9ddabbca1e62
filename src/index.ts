// Public surface of vhost-user-ts.
export { createLogger, setLogLevel, setLogSink } from './log.js';
