// The error family of vhost-user-ts. Every error the library throws on purpose is a
// VhostUserError with a stable `code` (like undici's UND_ERR_*): match on `code`, not on the
// message, which may be reworded. `refusal` tells the session how to answer: a refused request
// is answered the way the protocol defines (a failure ack or a reply's failure form) and the
// connection goes on; any other error means the back-end is broken and the connection is dropped.
// ERROR-CODES.md (README "Errors") lists the codes and what a library user does about each.

export type VhostUserErrorCode =
  | 'VU_ERR_PROTOCOL'
  | 'VU_ERR_UNKNOWN_REQUEST'
  | 'VU_ERR_MEMORY_TABLE'
  | 'VU_ERR_REFUSED'
  | 'VU_ERR_DAEMON'
  | 'VU_ERR_FRONTEND'
  | 'VU_ERR_USAGE';

export interface VhostUserErrorOptions {
  /** A refusal the protocol can express; see the module comment. Default false. */
  refusal?: boolean;
  cause?: unknown;
}

export class VhostUserError extends Error {
  readonly code: VhostUserErrorCode;
  readonly refusal: boolean;

  constructor(message: string, code: VhostUserErrorCode, options: VhostUserErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    // new.target: every subclass, including a device author's, is named after itself.
    this.name = new.target.name;
    this.code = code;
    this.refusal = options.refusal ?? false;
  }
}

/** A message that breaks the protocol. `request` is its request id when known. */
export class ProtocolError extends VhostUserError {
  constructor(
    message: string,
    readonly request?: number,
    code: VhostUserErrorCode = 'VU_ERR_PROTOCOL',
  ) {
    // A malformed request is refused (failure ack); a stream that cannot be framed any more is
    // dropped by the connection, which does not look at this flag.
    super(message, code, { refusal: true });
  }
}

/**
 * A request id the protocol does not define. The message itself was framed correctly (its size
 * is in the header), so a session may skip it and answer a NEED_REPLY with a failure ack.
 */
export class UnknownRequestError extends ProtocolError {
  constructor(request: number, what = 'request') {
    super(`unknown ${what} ${request}`, request, 'VU_ERR_UNKNOWN_REQUEST');
  }
}

/** A memory region the back-end cannot map or use (bad fd, too small a file, overlap). */
export class MemoryTableError extends VhostUserError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, 'VU_ERR_MEMORY_TABLE', { refusal: true, cause: options.cause });
  }
}

/** A request the back-end refuses: answered with a failure ack when the front-end can hear it. */
export class SessionError extends VhostUserError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, 'VU_ERR_REFUSED', { refusal: true, cause: options.cause });
  }
}

/** The daemon cannot serve: the socket path is taken or unusable, no front-end to connect to. */
export class DaemonError extends VhostUserError {
  constructor(message: string, options: { cause?: unknown } = {}) {
    super(message, 'VU_ERR_DAEMON', options);
  }
}

/** The front-end library's request failed: refused by the back-end, bad reply, closed, timed out. */
export class FrontendError extends VhostUserError {
  constructor(
    message: string,
    /** The request's name, when the failure belongs to one. */
    readonly request?: string,
  ) {
    super(message, 'VU_ERR_FRONTEND');
  }
}

/** A command-line argument the tools cannot use (exit code 2). */
export class UsageError extends VhostUserError {
  constructor(message: string) {
    super(message, 'VU_ERR_USAGE');
  }
}
