// Test-side access to the real-guest harness (it lives in src/guest for the demo and benchmarks).
export * from '../../dist/guest/qemu.js';
