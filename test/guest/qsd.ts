// Test-side access to the qemu-storage-daemon helpers (they live in src/guest for the benchmarks).
export * from '../../dist/guest/qsd.js';
