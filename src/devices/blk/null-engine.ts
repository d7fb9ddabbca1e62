// The null engine: every operation succeeds at once and touches nothing (reads leave the guest
// buffers as they were). It measures the framework and the request parser alone.
import type { BlkEngine } from './engine.js';

export class NullEngine implements BlkEngine {
  readonly completionFd = -1;
  readonly unsubmitted = 0;
  readonly synchronous = true;

  ensureSlots(): void {}
  read(): number {
    return 0;
  }
  write(): number {
    return 0;
  }
  flush(): number {
    return 0;
  }
  discard(): number {
    return 0;
  }
  writeZeroes(): number {
    return 0;
  }
  submit(): void {}
  waitForCompletion(): void {}
  reap(): number {
    return 0;
  }
  setMemory(): void {}
  close(): void {}
}
