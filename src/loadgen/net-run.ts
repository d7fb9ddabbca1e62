// One load-generator measurement against a vhost-user-net back-end, and its report: the library
// behind `vhost-user-bench net`. The front-end library plays the guest's virtio-net driver on
// queue pair 0 from one (optionally pinned) thread:
//   tx        frames posted on the TX queue (1) as fast as the back-end takes them (guest → back-end)
//   rx        every RX buffer (queue 0) offered, refilled as the back-end fills them (back-end → guest)
//   loopback  both: `--qd` frames in flight on TX, each stamped with the time it was posted; the
//             round trip is timed when it comes back on RX (a back-end that sends frames back)
// Frames are Ethernet/IPv4/UDP of `--frame-size` bytes (the `source` back-end's kind), header
// zeroed; only VERSION_1 and the transport bits the library implements are acked (no MRG_RXBUF:
// one RX buffer per frame, sized for the frame or 1518 bytes, whichever is larger).
import { cpus, hostname } from 'node:os';
import { FrontendDevice } from '../frontend/device.js';
import { featureHex } from '../frontend/features.js';
import { VIRTIO_F_VERSION_1, bit } from '../control/protocol.js';
import { buildSourceFrame } from '../devices/net/frame.js';
import { NET_HDR_BYTES, NET_HDR_LEGACY_BYTES } from '../devices/net/virtio-net.js';
import { packageVersion } from '../version.js';
import { startLoad, type LoadReport } from './load.js';
import { processCpuSeconds } from './run.js';
import type { NetWorkload } from './load-spec.js';

export type NetBenchMode = 'tx' | 'rx' | 'loopback';
export const NET_BENCH_MODES: readonly NetBenchMode[] = ['tx', 'rx', 'loopback'];
/** Smallest frame: the Ethernet minimum, which holds the loopback stamp (NET_STAMP_OFFSET + 8 bytes). */
export const NET_BENCH_MIN_FRAME = 60;
export const NET_BENCH_MAX_FRAME = 65535;
/** Destination of the generated frames: a locally administered unicast address. */
const BENCH_DST_MAC = [0x02, 0x76, 0x75, 0x74, 0x00, 0x02];
/** RX buffers hold at least a standard 1518-byte frame (1500 MTU + Ethernet header + VLAN tag). */
const RX_MIN_FRAME = 1518;

export interface NetBenchArgs {
  socketPath: string;
  mode: NetBenchMode;
  frameBytes: number;
  /** TX frames in flight (tx, loopback; with `rate`, the cap on them); rx mode offers the whole ring. */
  queueDepth: number;
  /** tx, loopback: open loop at this many TX frames per second, timed from when each was due (0: closed loop). */
  rate: number;
  queueSize: number;
  seconds: number;
  warmup: number;
  wait: 'spin' | 'event';
  cpu: number;
  backendPid: number;
  memoryBytes: number;
  json: boolean;
  verbose: boolean;
}

export interface NetBenchResult {
  tool: string;
  device: 'net';
  machine: { host: string; cpu: string; cpus: number; node: string };
  date: string;
  method: string;
  settings: Omit<NetBenchArgs, 'json' | 'verbose' | 'socketPath'> & {
    socket: string;
    headerBytes: number;
    rxBufferBytes: number;
  };
  /** Frames the back-end took from TX / put into RX over the window, and per second. */
  tx_frames: number;
  rx_frames: number;
  tx_pps: number;
  rx_pps: number;
  /** Ethernet bytes per second (headers excluded) in the measured direction. */
  mbps: number;
  /** loopback: frames sent in the window that did not come back in it (dropped or late). */
  lost: number | null;
  /** tx: post to completion; loopback: round trip; rx: none. */
  lat_us: { mean: number; min: number; p50: number; p90: number; p99: number; 'p99.9': number; max: number } | null;
  seconds: number;
  errors: number;
  first_error?: string;
  loadgen_cpu_s: number;
  backend_cpu_s: number | null;
  kicks: number;
  features: string;
  protocol_features: string;
  offered_features: string;
  offered_protocol_features: string;
  /** TX frames the back-end never took (after the end-of-run drain). */
  in_flight_at_end: number;
  disconnected?: string;
  failures: string[];
}

const METHOD: Record<NetBenchMode, string> = {
  tx: 'frames posted on TX (queue 1) in a closed loop of --qd; rate = TX completions the back-end made',
  rx: 'every RX buffer (queue 0) offered and re-offered as it comes back; rate = RX buffers returned with a frame',
  loopback:
    'RX ring kept full; --qd stamped frames in flight on TX; rate = frames back on RX; latency = post on TX to reap on RX',
};

const OPEN_LOOP = 'open loop: TX frames due at --rate per second (at most --qd in flight), latency timed from when each was due';

export async function runNetBench(
  args: NetBenchArgs,
  onProgress?: (completed: number, measuring: boolean) => void,
): Promise<NetBenchResult> {
  const device = await FrontendDevice.connect({
    socketPath: args.socketPath,
    queues: 2,
    queueSize: args.queueSize,
    memory: [{ guestPhysAddr: 0, size: args.memoryBytes }],
    connectTimeoutMs: 2000,
  });
  try {
    const headerBytes = (device.features & bit(VIRTIO_F_VERSION_1)) !== 0n ? NET_HDR_BYTES : NET_HDR_LEGACY_BYTES;
    const rxBufferBytes = headerBytes + Math.max(args.frameBytes, RX_MIN_FRAME);
    const frame = buildSourceFrame(args.frameBytes, BENCH_DST_MAC);
    const stamp = args.mode === 'loopback';
    const workload = (role: 'tx' | 'rx'): NetWorkload => ({
      kind: 'net',
      role,
      frameBytes: args.frameBytes,
      headerBytes,
      rxBufferBytes,
      frame,
      stamp,
      record: args.mode === 'loopback' ? role === 'rx' : role === 'tx',
    });
    const backendStart = args.backendPid ? processCpuSeconds(args.backendPid) : 0;
    const common = {
      seconds: args.seconds,
      warmupSeconds: args.warmup,
      wait: args.wait,
      cpu: args.cpu,
      rate: args.mode === 'rx' ? 0 : args.rate,
    };
    const load =
      args.mode === 'tx'
        ? startLoad(device, { ...common, workload: workload('tx'), queues: [1], queueDepth: args.queueDepth })
        : args.mode === 'rx'
          ? startLoad(device, { ...common, workload: workload('rx'), queues: [0], queueDepth: args.queueSize })
          : startLoad(device, {
              ...common,
              workload: workload('tx'),
              queueDepth: args.queueDepth,
              perQueue: [
                { queue: 0, workload: workload('rx'), queueDepth: args.queueSize },
                { queue: 1, workload: workload('tx'), queueDepth: args.queueDepth },
              ],
            });
    let disconnected: string | undefined;
    void device.client.closed().then((error) => {
      disconnected = error?.message ?? 'the back-end closed the connection';
      load.stop();
    });
    let backendMeasureStart = backendStart;
    let sawMeasuring = args.warmup === 0;
    const timer = setInterval(() => {
      if (!sawMeasuring && load.measuring()) {
        sawMeasuring = true;
        if (args.backendPid) backendMeasureStart = processCpuSeconds(args.backendPid);
      }
      onProgress?.(load.completed(), load.measuring());
    }, 200);
    let report: LoadReport;
    try {
      report = await load.result;
    } finally {
      clearInterval(timer);
    }
    const backendCpu = args.backendPid ? processCpuSeconds(args.backendPid) - backendMeasureStart : null;
    const tx = report.queues.find((q) => q.index === 1) ?? { requests: 0, bytes: 0 };
    const rx = report.queues.find((q) => q.index === 0) ?? { requests: 0, bytes: 0 };
    const seconds = report.seconds > 0 ? report.seconds : Number.EPSILON;
    const us = (ns: number) => Math.round(ns / 10) / 100;
    const measuredBytes = args.mode === 'tx' ? tx.bytes : rx.bytes;
    const { json: _json, verbose: _verbose, socketPath, ...settings } = args;
    const result: Omit<NetBenchResult, 'failures'> = {
      tool: `vhost-user-bench ${packageVersion()}`,
      device: 'net',
      machine: { host: hostname(), cpu: cpus()[0]?.model ?? 'unknown', cpus: cpus().length, node: process.version },
      date: new Date().toISOString(),
      method: args.rate > 0 && args.mode !== 'rx' ? `${METHOD[args.mode]}; ${OPEN_LOOP}` : METHOD[args.mode],
      settings: { ...settings, socket: socketPath, headerBytes, rxBufferBytes },
      tx_frames: tx.requests,
      rx_frames: rx.requests,
      tx_pps: Math.round(tx.requests / seconds),
      rx_pps: Math.round(rx.requests / seconds),
      mbps: Math.round((measuredBytes / seconds / 1e6) * 100) / 100,
      lost: args.mode === 'loopback' ? Math.max(0, tx.requests - rx.requests) : null,
      lat_us:
        args.mode === 'rx' || report.histogram.count === 0
          ? null
          : {
              mean: us(report.latencyNs.mean),
              min: us(report.latencyNs.min),
              p50: us(report.latencyNs.p50),
              p90: us(report.latencyNs.p90),
              p99: us(report.latencyNs.p99),
              'p99.9': us(report.latencyNs.p999),
              max: us(report.latencyNs.max),
            },
      seconds: Math.round(report.seconds * 1000) / 1000,
      errors: report.errors,
      ...(report.errors ? { first_error: report.firstError } : {}),
      loadgen_cpu_s: Math.round(report.cpuSeconds * 1000) / 1000,
      backend_cpu_s: backendCpu === null ? null : Math.round(backendCpu * 100) / 100,
      kicks: report.kicks,
      features: featureHex(device.features),
      protocol_features: featureHex(device.protocolFeatures),
      offered_features: featureHex(device.offeredFeatures),
      offered_protocol_features: featureHex(device.offeredProtocolFeatures),
      in_flight_at_end: report.inFlightAtEnd,
      ...(disconnected ? { disconnected } : {}),
    };
    return { ...result, failures: netBenchFailures(result, args) };
  } finally {
    device.close();
  }
}

/** Why a finished run is not a measurement (empty if it is). */
export function netBenchFailures(r: Omit<NetBenchResult, 'failures'>, args: Pick<NetBenchArgs, 'seconds' | 'mode'>): string[] {
  const failures: string[] = [];
  const moved = args.mode === 'tx' ? r.tx_frames : r.rx_frames;
  if (moved === 0) {
    failures.push(
      args.mode === 'tx'
        ? `the back-end took no frame in the ${r.seconds} s measured window`
        : `no frame arrived on RX in the ${r.seconds} s measured window`,
    );
  }
  if (r.errors > 0) failures.push(`${r.errors} malformed completion(s); first: ${r.first_error ?? 'unknown'}`);
  if (r.in_flight_at_end > 0) failures.push(`${r.in_flight_at_end} TX frame(s) never taken (the back-end stalled or lost them)`);
  if (r.seconds < args.seconds) {
    failures.push(
      `the measured window was ${r.seconds} s, shorter than the ${args.seconds} s asked${r.disconnected ? ` (${r.disconnected})` : ''}`,
    );
  } else if (r.disconnected) {
    failures.push(`the back-end closed the connection during the run: ${r.disconnected}`);
  }
  return failures;
}

export function formatNetBench(r: NetBenchResult): string {
  const s = r.settings;
  const mpps = (pps: number) => (pps / 1e6).toFixed(3);
  const lines = [
    `vhost-user-bench net: ${s.mode} frame=${s.frameBytes} B${s.mode === 'rx' ? '' : ` qd=${s.queueDepth}`}${s.rate > 0 && s.mode !== 'rx' ? ` rate=${s.rate}/s` : ''} queue-size=${s.queueSize} wait=${s.wait} on ${s.socket}`,
    `machine: ${r.machine.cpu}, ${r.machine.cpus} CPUs, Node ${r.machine.node}; ${r.date}`,
    `method: ${r.method}`,
  ];
  if (s.mode === 'tx')
    lines.push(`  TX ${r.tx_pps} frames/s (${mpps(r.tx_pps)} Mpps)   ${r.mbps} MB/s   ${r.tx_frames} frames in ${r.seconds} s`);
  if (s.mode === 'rx')
    lines.push(`  RX ${r.rx_pps} frames/s (${mpps(r.rx_pps)} Mpps)   ${r.mbps} MB/s   ${r.rx_frames} frames in ${r.seconds} s`);
  if (s.mode === 'loopback') {
    lines.push(
      `  back ${r.rx_pps} frames/s (${mpps(r.rx_pps)} Mpps)   ${r.mbps} MB/s   sent ${r.tx_frames}, back ${r.rx_frames}, lost ${r.lost} in ${r.seconds} s`,
    );
  }
  if (r.lat_us) {
    const l = r.lat_us;
    lines.push(
      `  ${s.mode === 'loopback' ? 'round trip' : 'TX post to completion'} us: mean ${l.mean}  min ${l.min}  p50 ${l.p50}  p90 ${l.p90}  p99 ${l.p99}  p99.9 ${l['p99.9']}  max ${l.max}`,
    );
  }
  lines.push(
    `  CPU: load generator ${r.loadgen_cpu_s} s${r.backend_cpu_s === null ? '' : `, back-end ${r.backend_cpu_s} s`} over ${r.seconds} s   errors ${r.errors}   kicks ${r.kicks}`,
    `  features ${r.features} of ${r.offered_features} offered; protocol features ${r.protocol_features} of ${r.offered_protocol_features}; header ${s.headerBytes} B, RX buffers ${s.rxBufferBytes} B`,
  );
  return lines.join('\n') + '\n';
}
