// The tap back-end's control side: the tap device a port's frames go to. It is opened (and
// created if missing) in this process's network namespace, with one fd per queue pair
// (IFF_MULTI_QUEUE when there are several), IFF_VNET_HDR and no offloads until the guest acks
// GUEST_CSUM/GUEST_TSO (setOffloads). SEND_RARP writes a RARP announcement into it (sendRarp).
// A tap we created is
// not persistent: the kernel removes it when the last fd closes, so close() (or our exit, or a
// crash) removes it; a tap that already existed (e.g. `ip tuntap add`) is left as it was.
import { native } from '../../native.js';
import { tunOffloadFlags } from './offload.js';
import { buildRarpFrame } from './switch-fabric.js';
import { ETH_MIN_FRAME, NET_HDR_BYTES } from './virtio-net.js';

const LAYOUT = native.recordLayout;

/** Linux interface names: 1 to 15 bytes, no '/', ':' or whitespace, not "." or "..". */
export function checkTapName(name: string): string | undefined {
  if (name.length === 0 || Buffer.byteLength(name) > 15) return 'a tap name has 1 to 15 bytes';
  if (/[/:\s]/.test(name) || name === '.' || name === '..') return `"${name}" is not a valid interface name`;
  return undefined;
}

export class TapDevice {
  private closed = false;
  /** The header size the tap reads and writes (tapOpen sets 12; setHeaderBytes follows the guest). */
  private headerBytes = NET_HDR_BYTES;
  /** SEND_RARP: the zeroed virtio-net header and the frame, as one iovec for tapWriteFrames. */
  private readonly rarpBuffer = new SharedArrayBuffer(NET_HDR_BYTES + ETH_MIN_FRAME);
  private readonly rarpIovec = new Uint32Array(LAYOUT.iovecWords);
  private readonly rarpFrames = Uint32Array.of(0, 1);
  private readonly rarpResult = new Int32Array(1);

  private constructor(
    /** The interface name as the kernel has it. */
    readonly name: string,
    /** One fd per queue pair (the workers read and write them; this object closes them). */
    readonly fds: number[],
    /** We created it (it disappears with our last fd). */
    readonly created: boolean,
  ) {}

  /**
   * Opens tap `name` for `queuePairs` pairs. A tap we create gets `mtu`; an existing one keeps
   * its own (frames longer than the guest's buffers are dropped and counted).
   */
  static open(name: string, queuePairs: number, mtu: number): TapDevice {
    const problem = checkTapName(name);
    if (problem) throw new RangeError(problem);
    const fds: number[] = [];
    try {
      const first = native.tapOpen(name, queuePairs > 1, 12);
      fds.push(first.fd);
      for (let pair = 1; pair < queuePairs; pair++) fds.push(native.tapOpen(first.name, true, 12).fd);
      if (first.created) native.tapSetMtu(first.name, mtu);
      return new TapDevice(first.name, fds, first.created);
    } catch (error) {
      for (const fd of fds) native.close(fd);
      throw new Error(`cannot open tap ${name}: ${(error as Error).message}${hint(error)}`, { cause: error });
    }
  }

  /** The virtio-net header length the guest negotiated (the tap's is per device). */
  setHeaderBytes(bytes: number): void {
    if (this.closed) return;
    native.tapSetHeaderSize(this.fds[0], bytes);
    this.headerBytes = bytes;
  }

  /**
   * SEND_RARP (control thread): one RARP request announcing `mac` into the tap (the switch's
   * frame, switch-fabric.ts buildRarpFrame), behind a zeroed virtio-net header of the size the tap
   * expects. A tap write is one frame, whole, so this cannot interleave with the workers' writes
   * on the same fd. Throws with the errno when the tap refuses it (e.g. EIO while its link is down).
   */
  sendRarp(mac: Uint8Array): void {
    if (this.closed) throw new Error(`tap ${this.name} is closed`);
    const bytes = new Uint8Array(this.rarpBuffer);
    bytes.fill(0, 0, this.headerBytes);
    buildRarpFrame(bytes, this.headerBytes, mac);
    const iovec = this.rarpIovec;
    iovec[LAYOUT.iovec.region] = 0;
    iovec[LAYOUT.iovec.offsetLow] = 0;
    iovec[LAYOUT.iovec.offsetHigh] = 0;
    iovec[LAYOUT.iovec.length] = this.headerBytes + ETH_MIN_FRAME;
    native.tapWriteFrames(this.fds[0], [this.rarpBuffer], iovec, this.rarpFrames, 1, this.rarpResult);
    const result = this.rarpResult[0];
    if (result < 0) throw new Error(`tap ${this.name}: writing the RARP announcement failed (errno ${-result})`);
  }

  /**
   * What the host stack may hand us unfinished: the guest's acked GUEST_CSUM/TSO/ECN (Offload
   * bits). The guest's own CSUM/HOST_TSO need nothing here: the tap takes any header on write.
   */
  setOffloads(offloads: number): void {
    if (!this.closed) native.tapSetOffload(this.fds[0], tunOffloadFlags(offloads));
  }

  /** Closes every fd (after the workers stopped using them); a tap we created goes away. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    for (const fd of this.fds) native.close(fd);
  }
}

function hint(error: unknown): string {
  const code = (error as { code?: string }).code;
  if (code === 'EPERM') return ' (creating or attaching a tap needs CAP_NET_ADMIN, or a tap owned by this user)';
  if (code === 'EINVAL') {
    return ' (an interface of that name exists but is not a tap, or its multi_queue setting differs from --queues)';
  }
  if (code === 'ENOENT') return ' (no /dev/net/tun: load the tun module)';
  return '';
}
