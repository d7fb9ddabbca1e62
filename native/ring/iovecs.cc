// Region/iovec resolution (iovecs.h) and one batch copy into guest memory:
//
// copyTemplate(regions, iovecs, targets, count, template, patchOffset, results)
//   For target t: copies template[0, targets[4t + 2]) across iovec records
//   [targets[4t], targets[4t] + targets[4t + 1]) (records.h layout) in order, then, when
//   patchOffset + 4 <= that length, writes targets[4t + 3] as a little-endian u32 at
//   patchOffset of the copied bytes (a per-target value such as a sequence number).
//   results[t] = bytes copied, -EFAULT (a record outside its region) or -EINVAL (the records
//   hold fewer bytes than asked). `template` is a Uint8Array (not shared: it is the caller's
//   own, never guest memory). One N-API call per batch; a memcpy per segment.
#include "iovecs.h"

#include "records.h"

#include <algorithm>
#include <cerrno>
#include <memory>

namespace ring {
namespace {

struct Region {
  uint8_t* base;
  size_t length;
};

thread_local std::vector<std::shared_ptr<v8::BackingStore>> tStores;
thread_local std::vector<Region> tRegions;

}  // namespace

bool LoadRegions(Napi::Env env, Napi::Array buffers) {
  tStores.clear();
  tRegions.clear();
  for (uint32_t i = 0; i < buffers.Length(); i++) {
    Napi::Value buffer = buffers.Get(i);
    if (buffer.IsEmpty()) return false;  // a throwing getter
    v8::Local<v8::Value> local = ToV8(buffer);
    if (!local->IsSharedArrayBuffer()) {
      ThrowTypeError(env, "regions[" + std::to_string(i) + "] must be a SharedArrayBuffer");
      return false;
    }
    tStores.push_back(local.As<v8::SharedArrayBuffer>()->GetBackingStore());
    tRegions.push_back(
        {static_cast<uint8_t*>(tStores.back()->Data()), tStores.back()->ByteLength()});
  }
  return true;
}

void ReleaseRegions() { tStores.clear(); }

int AppendIovecs(std::vector<iovec>* iov, const uint32_t* words, size_t records, uint32_t first,
                 uint32_t count) {
  if (count >= kMaxIovecs || iov->size() + count >= kMaxIovecs) return -EINVAL;
  if (uint64_t{first} + count > records) return -EFAULT;
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t* record = words + (size_t{first} + i) * kIovecWords;
    if (record[kRegion] >= tRegions.size()) return -EFAULT;
    const Region& region = tRegions[record[kRegion]];
    uint64_t offset = uint64_t{record[kRegionOffsetHigh]} << 32 | record[kRegionOffsetLow];
    uint32_t length = record[kIovecLength];
    if (offset > region.length || length > region.length - offset) return -EFAULT;
    iov->push_back(iovec{region.base + offset, length});
  }
  return 0;
}

namespace {

// Copies source[0, length) across iovec records [first, first + count), writing `value`
// little-endian over bytes [patchAt, patchAt + 4) of the copy on the way (patchAt = SIZE_MAX:
// none). Records are resolved one by one (no iovec array in between: this runs per frame).
// Returns length, -EFAULT or -EINVAL (the records hold fewer bytes than asked).
int32_t CopyToRecords(const uint8_t* source, size_t length, const uint32_t* words, size_t records,
                      uint32_t first, uint32_t count, size_t patchAt, uint32_t value) {
  if (uint64_t{first} + count > records) return -EFAULT;
  const Region* regions = tRegions.data();
  size_t regionCount = tRegions.size();
  size_t done = 0;
  for (uint32_t i = 0; i < count && done < length; i++) {
    const uint32_t* record = words + (size_t{first} + i) * kIovecWords;
    if (record[kRegion] >= regionCount) return -EFAULT;
    const Region& region = regions[record[kRegion]];
    uint64_t offset = uint64_t{record[kRegionOffsetHigh]} << 32 | record[kRegionOffsetLow];
    uint32_t segment = record[kIovecLength];
    if (offset > region.length || segment > region.length - offset) return -EFAULT;
    size_t take = std::min<size_t>(segment, length - done);
    uint8_t* target = region.base + offset;
    std::memcpy(target, source + done, take);
    if (patchAt < done + take && patchAt + 4 > done) {
      for (size_t b = 0; b < 4; b++) {
        size_t at = patchAt + b;
        if (at >= done && at < done + take)
          target[at - done] = static_cast<uint8_t>(value >> (8 * b));
      }
    }
    done += take;
  }
  return done == length ? static_cast<int32_t>(length) : -EINVAL;
}

Napi::Value CopyTemplate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array buffers;
  Napi::Uint32Array iovecs, targets;
  Napi::Uint8Array source;
  Napi::Int32Array results;
  int64_t count, patchOffset;
  if (!ArgArray(info, 0, "regions", &buffers) ||
      !ArgTypedArray(info, 1, "iovecs", napi_uint32_array, &iovecs) ||
      !ArgTypedArray(info, 2, "targets", napi_uint32_array, &targets) ||
      !ArgTypedArray(info, 4, "template", napi_uint8_array, &source) ||
      !ArgInteger(info, 5, "patchOffset", -1, INT32_MAX, &patchOffset) ||
      !ArgTypedArray(info, 6, "results", napi_int32_array, &results) ||
      !ArgInteger(
          info, 3, "count", 0,
          static_cast<int64_t>(std::min(targets.ElementLength() / 4, results.ElementLength())),
          &count)) {
    return env.Undefined();
  }
  if (!LoadRegions(env, buffers)) return env.Undefined();
  const uint32_t* words = iovecs.Data();
  size_t records = iovecs.ElementLength() / kIovecWords;
  const uint32_t* target = targets.Data();
  const uint8_t* bytes = source.Data();
  size_t sourceLength = source.ElementLength();
  int32_t* out = results.Data();
  size_t patchAt = patchOffset >= 0 ? static_cast<size_t>(patchOffset) : SIZE_MAX;
  for (int64_t t = 0; t < count; t++) {
    const uint32_t* entry = target + 4 * t;
    size_t length = entry[2];
    if (length > sourceLength || length > INT32_MAX) {
      out[t] = -EINVAL;
      continue;
    }
    // The patch only where it fits whole in the copy (a shorter copy gets none).
    size_t patch = patchAt != SIZE_MAX && patchAt + 4 <= length ? patchAt : SIZE_MAX;
    out[t] = CopyToRecords(bytes, length, words, records, entry[0], entry[1], patch, entry[3]);
  }
  ReleaseRegions();
  return env.Undefined();
}

}  // namespace

void InitIovecs(Napi::Env env, Napi::Object exports) {
  exports.Set("copyTemplate", Napi::Function::New<CopyTemplate>(env, "copyTemplate"));
}

}  // namespace ring
