// Micro-benchmark of the control-plane codec: decode and encode of the messages a front-end
// sends most (ring setup) and of the largest one (an 8-region memory table). The control plane
// is not a hot path; this shows it never becomes one (a VM start sends a few dozen messages).
//
//   npm run bench:micro   (builds, then runs this and micro-chain)
import Benchmark from 'benchmark';
import {
  decodeHeader,
  decodeRequest,
  encodeReply,
  encodeRequest,
  HEADER_SIZE,
  type FrontendRequest,
} from '../dist/control/codec/index.js';

const samples: [string, FrontendRequest][] = [
  [
    'SET_VRING_ADDR',
    {
      type: 'SET_VRING_ADDR',
      index: 0,
      flags: 0,
      descUserAddr: 0x7f0000000000n,
      usedUserAddr: 0x7f0000002000n,
      availUserAddr: 0x7f0000001000n,
      logGuestAddr: 0n,
    },
  ],
  ['SET_VRING_KICK', { type: 'SET_VRING_KICK', index: 1, noFd: false, fd: 9 }],
  [
    'SET_MEM_TABLE (8 regions)',
    {
      type: 'SET_MEM_TABLE',
      regions: Array.from({ length: 8 }, (_, i) => ({
        guestPhysAddr: BigInt(i) << 32n,
        memorySize: 1n << 30n,
        userspaceAddr: 0x7f0000000000n + (BigInt(i) << 32n),
        mmapOffset: 0n,
        fd: 10 + i,
      })),
    },
  ],
];

const suite = new Benchmark.Suite('micro-codec');
let sink = 0;
for (const [name, request] of samples) {
  const encoded = encodeRequest(request, true);
  const payload = encoded.bytes.subarray(HEADER_SIZE);
  suite.add(`decode ${name}`, () => {
    const header = decodeHeader(encoded.bytes);
    sink += decodeRequest(header, payload, encoded.fds).type.length;
  });
  suite.add(`encode ${name}`, () => {
    sink += encodeRequest(request, true).bytes.length;
  });
}
suite.add('encode u64 reply (ack)', () => {
  sink += encodeReply(2, { type: 'u64', value: 0n }).bytes.length;
});
suite.on('cycle', (event: Benchmark.Event) => {
  const bench = event.target as Benchmark.Target & { stats: Benchmark.Stats; hz: number };
  console.log(
    `${String(bench.name).padEnd(40)} ${(1e9 / bench.hz).toFixed(0).padStart(8)} ns/op  ±${bench.stats.rme.toFixed(1)}%`,
  );
});
suite.run();
if (sink === -1) console.log(sink);
