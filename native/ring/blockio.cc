// blockIo: the io_uring engine's records executed with plain blocking syscalls, for the
// `threads` blk engine where io_uring is unavailable (Docker's default seccomp profile,
// kernel.io_uring_disabled). It runs in a thread-pool thread, never in a polling worker: every
// record blocks that thread until its syscall returns.
//
// The records are the SQE and IOVEC records of uring.cc (same layout, same checks):
//   READV/WRITEV → preadv/pwritev into the regions' memory, FSYNC/FDATASYNC → fsync/fdatasync,
//   PUNCH_HOLE/ZERO_RANGE → fallocate(FALLOC_FL_{PUNCH_HOLE,ZERO_RANGE} | FALLOC_FL_KEEP_SIZE),
//   NOP → 0.
// A record that fails its checks is not executed: -EINVAL (unknown opcode, more than 1024
// iovecs, a file offset beyond 2^63), -EFAULT (iovec index outside the array, unknown region,
// range outside its region). results[i] receives res (>= 0) or -errno, as a CQE would; a short
// transfer is reported as it is (the engine resubmits the rest).
//
// The region list is passed with every call and its backing stores are held for the call's
// duration, so memory stays mapped while the syscalls run even if JS drops the buffers.
//
// Non-blocking mode (`nowaitReadBytes` > 0), for the polling thread itself: only READV records
// of at most that many bytes run, with preadv2(RWF_NOWAIT), which copies what the page cache
// holds and never waits for the device (a short read is a short read: the engine resubmits the
// rest). Every other record and a read that would block get -EAGAIN without running, a read of
// a file system that cannot promise not to block (tmpfs here) -EOPNOTSUPP: the caller hands them
// to a pool thread. A read failing its checks gets its -EFAULT/-EINVAL as in blocking mode. The
// file must not be O_DIRECT: RWF_NOWAIT does not keep a direct read from waiting for the device.
#include "records.h"
#include "ring.h"

#include <fcntl.h>
#include <linux/falloc.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

namespace ring {
namespace {

struct Region {
  uint8_t* base;
  size_t length;
};

// Builds the record's iovecs into `out`: 0 or -errno.
int BuildIovecs(const uint32_t* record, const uint32_t* iovecWords, size_t iovecRecords,
                const std::vector<Region>& regions, std::vector<iovec>* out) {
  uint32_t count = record[kIovecCount];
  uint32_t first = record[kFirstIovec];
  if (count > kMaxIovecs) return -EINVAL;
  if (uint64_t{first} + count > iovecRecords) return -EFAULT;
  out->resize(count);
  for (uint32_t i = 0; i < count; i++) {
    const uint32_t* words = iovecWords + (size_t{first} + i) * kIovecWords;
    if (words[kRegion] >= regions.size()) return -EFAULT;
    const Region& region = regions[words[kRegion]];
    uint64_t offset = uint64_t{words[kRegionOffsetHigh]} << 32 | words[kRegionOffsetLow];
    uint32_t length = words[kIovecLength];
    if (offset > region.length || length > region.length - offset) return -EFAULT;
    (*out)[i] = iovec{region.base + offset, length};
  }
  return 0;
}

// Sum of the iovec lengths (64-bit: 1024 × u32 cannot overflow it).
uint64_t TotalLength(const std::vector<iovec>& iovecs) {
  uint64_t total = 0;
  for (const iovec& one : iovecs) total += one.iov_len;
  return total;
}

// Runs one checked READV without waiting for the device: res >= 0, -EAGAIN (it would block),
// -EOPNOTSUPP (the file system cannot promise not to: nothing ran), or -errno.
int ReadNowait(const uint32_t* record, const std::vector<iovec>& iovecs) {
  uint64_t offset = uint64_t{record[kOffsetHigh]} << 32 | record[kOffsetLow];
  if (offset > static_cast<uint64_t>(INT64_MAX)) return -EINVAL;
  for (;;) {
    ssize_t res = preadv2(static_cast<int>(record[kFd]), iovecs.data(),
                          static_cast<int>(iovecs.size()), static_cast<off_t>(offset), RWF_NOWAIT);
    if (res >= 0) return static_cast<int>(res);
    if (errno == EAGAIN || errno == EOPNOTSUPP) return -errno;
    if (errno != EINTR) return -errno;
  }
}

// Runs one checked record: res >= 0 or -errno.
int Execute(const uint32_t* record, const std::vector<iovec>& iovecs) {
  int fd = static_cast<int>(record[kFd]);
  uint64_t offset = uint64_t{record[kOffsetHigh]} << 32 | record[kOffsetLow];
  if (offset > static_cast<uint64_t>(INT64_MAX)) return -EINVAL;
  off_t at = static_cast<off_t>(offset);
  for (;;) {
    ssize_t res;
    switch (record[kOpcode]) {
      case kNop:
        return 0;
      case kReadv:
        res = preadv(fd, iovecs.data(), static_cast<int>(iovecs.size()), at);
        break;
      case kWritev:
        res = pwritev(fd, iovecs.data(), static_cast<int>(iovecs.size()), at);
        break;
      case kFsync:
        res = fsync(fd);
        break;
      case kFdatasync:
        res = fdatasync(fd);
        break;
      case kPunchHole:
        res = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, at, record[kLength]);
        break;
      case kZeroRange:
        res = fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, at, record[kLength]);
        break;
      default:
        return -EINVAL;
    }
    if (res >= 0) return static_cast<int>(res);  // <= 1024 iovecs of u32: the kernel caps at 2 GiB
    if (errno != EINTR) return -errno;
  }
}

// blockIo(regions: SharedArrayBuffer[], sqes: Uint32Array, iovecs: Uint32Array, count,
//         results: Int32Array, nowaitReadBytes = 0): runs records [0, count) in order,
//         results[i] = res or -errno (non-blocking mode: see the top of this file).
Napi::Value BlockIo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array buffers;
  Napi::Uint32Array sqes, iovecs;
  Napi::Int32Array results;
  int64_t count;
  if (!ArgArray(info, 0, "regions", &buffers) ||
      !ArgTypedArray(info, 1, "sqes", napi_uint32_array, &sqes) ||
      !ArgTypedArray(info, 2, "iovecs", napi_uint32_array, &iovecs) ||
      !ArgTypedArray(info, 4, "results", napi_int32_array, &results) ||
      !ArgInteger(
          info, 3, "count", 0,
          static_cast<int64_t>(std::min(sqes.ElementLength() / kSqeWords, results.ElementLength())),
          &count)) {
    return env.Undefined();
  }
  int64_t nowaitReadBytes = 0;
  if (info.Length() > 5 && !info[5].IsUndefined() &&
      !ArgInteger(info, 5, "nowaitReadBytes", 0, INT64_MAX, &nowaitReadBytes)) {
    return env.Undefined();
  }
  // Reused by every call on this thread (the polling thread calls once per batch): no
  // allocation once grown. The stores keep every region mapped meanwhile; released on return.
  thread_local std::vector<std::shared_ptr<v8::BackingStore>> stores;
  thread_local std::vector<Region> regions;
  struct Release {
    ~Release() {
      stores.clear();
      regions.clear();
    }
  } release;
  stores.clear();
  regions.clear();
  for (uint32_t i = 0; i < buffers.Length(); i++) {
    Napi::Value buffer = buffers.Get(i);
    if (buffer.IsEmpty()) return env.Undefined();  // a throwing getter
    v8::Local<v8::Value> local = ToV8(buffer);
    if (!local->IsSharedArrayBuffer()) {
      return ThrowTypeError(env, "regions[" + std::to_string(i) + "] must be a SharedArrayBuffer");
    }
    stores.push_back(local.As<v8::SharedArrayBuffer>()->GetBackingStore());
    regions.push_back({static_cast<uint8_t*>(stores.back()->Data()), stores.back()->ByteLength()});
  }
  // Reused by every call on this thread: no allocation once it has grown to the largest request.
  thread_local std::vector<iovec> iov;
  const uint32_t* iovecWords = iovecs.Data();
  size_t iovecRecords = iovecs.ElementLength() / kIovecWords;
  int32_t* out = results.Data();
  for (int64_t i = 0; i < count; i++) {
    const uint32_t* record = sqes.Data() + i * kSqeWords;
    int err = 0;
    iov.clear();
    if (nowaitReadBytes > 0) {
      if (record[kOpcode] != kReadv) {
        out[i] = -EAGAIN;
        continue;
      }
      err = BuildIovecs(record, iovecWords, iovecRecords, regions, &iov);
      if (err == 0 && TotalLength(iov) > static_cast<uint64_t>(nowaitReadBytes)) err = -EAGAIN;
      out[i] = err != 0 ? err : ReadNowait(record, iov);
      continue;
    }
    switch (record[kOpcode]) {
      case kNop:
      case kFsync:
      case kFdatasync:
      case kPunchHole:
      case kZeroRange:
        break;
      case kReadv:
      case kWritev:
        err = BuildIovecs(record, iovecWords, iovecRecords, regions, &iov);
        break;
      default:
        err = -EINVAL;
    }
    out[i] = err != 0 ? err : Execute(record, iov);
  }
  return env.Undefined();
}

}  // namespace

void InitBlockIo(Napi::Env env, Napi::Object exports) {
  exports.Set("blockIo", Napi::Function::New<BlockIo>(env, "blockIo"));
}

}  // namespace ring
