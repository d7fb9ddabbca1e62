// The front-end library: drive any vhost-user back-end without a VM.
export { VhostUserClient, FrontendError, type ConnectOptions, type ClientOptions } from './client.js';
export { FrontendDevice, FrontendQueue, type FrontendDeviceOptions } from './device.js';
export { FrontendMemory, type RegionSpec, type FrontendRegion } from './memory.js';
export {
  VringDriver,
  splitRingLayout,
  indirectTablesBytes,
  type SplitRingLayout,
  type VringDriverConfig,
} from './vring-driver.js';
export {
  FRONTEND_VIRTIO_FEATURES,
  FRONTEND_PROTOCOL_FEATURES,
  DEVICE_FEATURE_MASK,
  featureHex,
  virtioFeaturesToAck,
  protocolFeaturesToAck,
  type FeatureWishes,
} from './features.js';
