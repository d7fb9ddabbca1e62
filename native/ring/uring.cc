// io_uring (liburing), one ring per worker thread. JS describes requests as fixed-size u32
// records in typed arrays; native code checks them against the registered regions, builds the
// iovec arrays and queues SQEs: one call per batch, never per descriptor.
//
// Record layouts (records.h; exported to JS as `recordLayout`, used by
// src/devices/blk/uring-engine.ts):
//   SQE record, 8 u32 words:
//     [0] opcode  0 NOP, 1 READV, 2 WRITEV, 3 FSYNC, 4 FDATASYNC,
//                 5 FALLOCATE_PUNCH_HOLE (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE),
//                 6 FALLOCATE_ZERO_RANGE (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)
//     [1] fd
//     [2] file offset, low 32 bits      [3] file offset, high 32 bits
//     [4] user_data (u32, returned with the completion)
//     [5] iovec count (READV/WRITEV, at most 1024)
//     [6] index of the first IOVEC record
//     [7] length in bytes (FALLOCATE_*; 0 otherwise)
//   IOVEC record, 4 u32 words:
//     [0] region index (into the setRegions() list)
//     [1] offset in the region, low 32  [2] offset in the region, high 32
//     [3] length in bytes
//   Completion, 2 i32 words written by reap(): [0] user_data (u32 bits), [1] res (>= 0 or -errno).
//
// A record that fails its checks never reaches the kernel; it completes with -EFAULT (iovec
// index outside the array, unknown region, range outside its region) or -EINVAL (unknown
// opcode, more than 1024 iovecs), and the next reap() returns it before kernel completions.
//
// Ownership: the ring owns its io_uring fd and the eventfd registered by eventfd(); close()
// (idempotent, also run by the finalizer) closes both. Each request in flight holds the region
// list it was checked against, and with it the regions' backing stores: memory stays mapped
// until the kernel is done with it, even if setRegions() replaces the list or JS drops buffers.
#include "records.h"
#include "ring.h"

#include <fcntl.h>
#include <liburing.h>
#include <linux/falloc.h>
#include <sched.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

namespace ring {
namespace {

constexpr size_t kReservedIovecsPerSlot = 16;  // grows to the largest request seen, then stays
constexpr int64_t kMaxEntries = 32768;         // IORING_MAX_ENTRIES

struct Region {
  uint8_t* base;
  size_t length;
  std::shared_ptr<v8::BackingStore> store;  // keeps base valid
};
using RegionList = std::vector<Region>;

// A request from submit() until reap() returns its completion. The kernel's user_data is the
// slot index, so a completion finds its iovecs and regions without a lookup.
struct Slot {
  uint32_t userData = 0;
  int32_t res = 0;                            // set when completed without the kernel
  std::shared_ptr<const RegionList> regions;  // READV/WRITEV: what the iovecs point into
  std::vector<iovec> iovecs;                  // must outlive the request (SQPOLL reads it late)
};

uint64_t Join(uint32_t low, uint32_t high) { return uint64_t{high} << 32 | low; }

class Uring : public Napi::ObjectWrap<Uring> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "Uring",
        {InstanceMethod<&Uring::SetRegions>("setRegions"), InstanceMethod<&Uring::Submit>("submit"),
         InstanceMethod<&Uring::Reap>("reap"), InstanceMethod<&Uring::Wait>("wait"),
         InstanceMethod<&Uring::Eventfd>("eventfd"), InstanceMethod<&Uring::Close>("close")});
  }

  explicit Uring(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Uring>(info) {
    Napi::Env env = info.Env();
    int64_t entries;
    io_uring_params params{};
    if (!ArgInteger(info, 0, "entries", 1, kMaxEntries, &entries) ||
        !ReadOptions(env, info[1], &params)) {
      return;
    }
    int err = io_uring_queue_init_params(static_cast<unsigned>(entries), &ring_, &params);
    if (err < 0) {
      ThrowErrno(env, -err, "io_uring_setup");
      return;
    }
    open_ = true;
    // At most cq_entries requests in flight: the completion queue can never overflow.
    slots_.resize(params.cq_entries);
    freeSlots_.reserve(slots_.size());
    immediate_.reserve(slots_.size());
    for (size_t i = slots_.size(); i-- > 0;) {
      slots_[i].iovecs.reserve(kReservedIovecsPerSlot);
      freeSlots_.push_back(static_cast<uint32_t>(i));
    }
  }

  ~Uring() override { Teardown(); }

 private:
  static bool ReadOptions(Napi::Env env, Napi::Value value, io_uring_params* params) {
    if (value.IsUndefined()) return true;
    if (!value.IsObject()) {
      ThrowTypeError(env, "options must be an object");
      return false;
    }
    Napi::Object options = value.As<Napi::Object>();
    Napi::Value sqpoll = options.Get("sqpoll");
    Napi::Value idleMs = options.Get("sqpollIdleMs");
    Napi::Value cpu = options.Get("sqpollCpu");
    if (env.IsExceptionPending()) return false;  // a throwing getter
    if (!sqpoll.IsUndefined() && !sqpoll.IsBoolean()) {
      ThrowTypeError(env, "options.sqpoll must be a boolean");
      return false;
    }
    if (!sqpoll.IsBoolean() || !sqpoll.As<Napi::Boolean>().Value()) return true;
    params->flags |= IORING_SETUP_SQPOLL;
    int64_t number;
    if (!idleMs.IsUndefined()) {
      if (!ToInteger(env, idleMs, "options.sqpollIdleMs", 0, UINT32_MAX, &number)) return false;
      params->sq_thread_idle = static_cast<uint32_t>(number);
    }
    if (!cpu.IsUndefined()) {
      if (!ToInteger(env, cpu, "options.sqpollCpu", 0, CPU_SETSIZE - 1, &number)) return false;
      params->flags |= IORING_SETUP_SQ_AFF;
      params->sq_thread_cpu = static_cast<uint32_t>(number);
    }
    return true;
  }

  bool CheckOpen(Napi::Env env, const char* method) {
    if (open_) return true;
    Napi::Error::New(env, std::string("Uring.") + method + ": the ring is closed")
        .ThrowAsJavaScriptException();
    return false;
  }

  Napi::Value SetRegions(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Array buffers;
    if (!CheckOpen(env, "setRegions") || !ArgArray(info, 0, "regions", &buffers)) {
      return env.Undefined();
    }
    auto regions = std::make_shared<RegionList>();
    regions->reserve(buffers.Length());
    for (uint32_t i = 0; i < buffers.Length(); i++) {
      Napi::Value buffer = buffers.Get(i);
      if (buffer.IsEmpty()) return env.Undefined();  // a throwing getter
      v8::Local<v8::Value> local = ToV8(buffer);
      if (!local->IsSharedArrayBuffer()) {
        return ThrowTypeError(env,
                              "regions[" + std::to_string(i) + "] must be a SharedArrayBuffer");
      }
      std::shared_ptr<v8::BackingStore> store =
          local.As<v8::SharedArrayBuffer>()->GetBackingStore();
      regions->push_back({static_cast<uint8_t*>(store->Data()), store->ByteLength(), store});
    }
    // Requests in flight keep the list they were checked against.
    regions_ = std::move(regions);
    return env.Undefined();
  }

  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Uint32Array sqes, iovecs;
    int64_t count;
    if (!CheckOpen(env, "submit") || !ArgTypedArray(info, 0, "sqes", napi_uint32_array, &sqes) ||
        !ArgTypedArray(info, 1, "iovecs", napi_uint32_array, &iovecs) ||
        !ArgInteger(info, 2, "count", 0, static_cast<int64_t>(sqes.ElementLength() / kSqeWords),
                    &count)) {
      return env.Undefined();
    }
    const uint32_t* iovecWords = iovecs.Data();
    size_t iovecRecords = iovecs.ElementLength() / kIovecWords;
    int64_t queued = 0;
    // Stops early when the SQ or the in-flight budget is full; the caller retries the rest.
    for (; queued < count; queued++) {
      if (freeSlots_.empty() || io_uring_sq_space_left(&ring_) == 0) break;
      const uint32_t* record = sqes.Data() + queued * kSqeWords;
      uint32_t slotIndex = freeSlots_.back();
      freeSlots_.pop_back();
      Slot& slot = slots_[slotIndex];
      slot.userData = record[kUserData];
      int err = Check(record, iovecWords, iovecRecords, &slot);
      if (err != 0) {
        slot.res = err;
        immediate_.push_back(slotIndex);
        continue;
      }
      // Never null: the SQ had space and only this thread fills it.
      io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
      Prepare(sqe, record, slot);
      io_uring_sqe_set_data64(sqe, slotIndex);
    }
    // EAGAIN/EBUSY/EINTR leave the SQEs queued; the next submit() or wait() passes them on.
    int err = io_uring_submit(&ring_);
    if (err < 0 && err != -EAGAIN && err != -EBUSY && err != -EINTR) {
      return ThrowErrno(env, -err, "io_uring_enter");
    }
    return Napi::Number::New(env, static_cast<double>(queued));
  }

  Napi::Value Reap(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    Napi::Int32Array cqes;
    int64_t max;
    if (!CheckOpen(env, "reap") || !ArgTypedArray(info, 0, "cqes", napi_int32_array, &cqes) ||
        !ArgInteger(info, 1, "max", 0, static_cast<int64_t>(cqes.ElementLength() / 2), &max)) {
      return env.Undefined();
    }
    int32_t* out = cqes.Data();
    size_t reaped = 0;
    size_t fromImmediate = std::min(immediate_.size(), static_cast<size_t>(max));
    for (size_t i = 0; i < fromImmediate; i++) {
      Slot& slot = slots_[immediate_[i]];
      out[2 * reaped] = static_cast<int32_t>(slot.userData);
      out[2 * reaped + 1] = slot.res;
      reaped++;
      Release(immediate_[i]);
    }
    immediate_.erase(immediate_.begin(), immediate_.begin() + fromImmediate);
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (reaped == static_cast<size_t>(max)) break;
      seen++;
      uint64_t slotIndex = cqe->user_data;
      if (slotIndex >= slots_.size()) continue;  // not ours; cannot happen
      out[2 * reaped] = static_cast<int32_t>(slots_[slotIndex].userData);
      out[2 * reaped + 1] = cqe->res;
      reaped++;
      Release(static_cast<uint32_t>(slotIndex));
    }
    io_uring_cq_advance(&ring_, seen);
    return Napi::Number::New(env, static_cast<double>(reaped));
  }

  // Blocks until minComplete completions are ready to reap (fewer if fewer are in flight: a
  // wait that nothing can satisfy returns at once). Also passes on SQEs still queued.
  Napi::Value Wait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    int64_t minComplete;
    if (!CheckOpen(env, "wait") ||
        !ArgInteger(info, 0, "minComplete", 0, UINT32_MAX, &minComplete)) {
      return env.Undefined();
    }
    size_t ready = immediate_.size();
    size_t wanted = static_cast<size_t>(minComplete);
    unsigned waitNr =
        wanted > ready ? static_cast<unsigned>(std::min(wanted - ready, InKernel())) : 0;
    int err = io_uring_submit_and_wait(&ring_, waitNr);
    if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) {
      return ThrowErrno(env, -err, "io_uring_enter");
    }
    return env.Undefined();
  }

  Napi::Value Eventfd(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (!CheckOpen(env, "eventfd")) return env.Undefined();
    if (eventfd_ < 0) {
      int fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
      if (fd < 0) return ThrowErrno(env, errno, "eventfd");
      int err = io_uring_register_eventfd(&ring_, fd);
      if (err < 0) {
        close(fd);
        return ThrowErrno(env, -err, "io_uring_register");
      }
      eventfd_ = fd;
    }
    return Napi::Number::New(env, eventfd_);
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Teardown();
    return info.Env().Undefined();
  }

  // Checks one record and, for READV/WRITEV, builds its iovecs in the slot: 0 or -errno.
  int Check(const uint32_t* record, const uint32_t* iovecWords, size_t iovecRecords, Slot* slot) {
    switch (record[kOpcode]) {
      case kNop:
      case kFsync:
      case kFdatasync:
      case kPunchHole:
      case kZeroRange:
        return 0;
      case kReadv:
      case kWritev:
        break;
      default:
        return -EINVAL;
    }
    uint32_t count = record[kIovecCount];
    uint32_t first = record[kFirstIovec];
    if (count > kMaxIovecs) return -EINVAL;
    if (uint64_t{first} + count > iovecRecords) return -EFAULT;
    const RegionList* regions = regions_.get();
    slot->iovecs.resize(count);
    for (uint32_t i = 0; i < count; i++) {
      const uint32_t* words = iovecWords + (size_t{first} + i) * kIovecWords;
      if (regions == nullptr || words[kRegion] >= regions->size()) return -EFAULT;
      const Region& region = (*regions)[words[kRegion]];
      uint64_t offset = Join(words[kRegionOffsetLow], words[kRegionOffsetHigh]);
      uint32_t length = words[kIovecLength];
      if (offset > region.length || length > region.length - offset) return -EFAULT;
      slot->iovecs[i] = iovec{region.base + offset, length};
    }
    slot->regions = regions_;
    return 0;
  }

  static void Prepare(io_uring_sqe* sqe, const uint32_t* record, const Slot& slot) {
    int fd = static_cast<int>(record[kFd]);
    uint64_t offset = Join(record[kOffsetLow], record[kOffsetHigh]);
    unsigned iovecCount = static_cast<unsigned>(slot.iovecs.size());
    switch (record[kOpcode]) {
      case kNop:
        io_uring_prep_nop(sqe);
        break;
      case kReadv:
        io_uring_prep_readv(sqe, fd, slot.iovecs.data(), iovecCount, offset);
        break;
      case kWritev:
        io_uring_prep_writev(sqe, fd, slot.iovecs.data(), iovecCount, offset);
        break;
      case kFsync:
        io_uring_prep_fsync(sqe, fd, 0);
        break;
      case kFdatasync:
        io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
        break;
      case kPunchHole:
        io_uring_prep_fallocate(sqe, fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                static_cast<off_t>(offset), record[kLength]);
        break;
      case kZeroRange:
        io_uring_prep_fallocate(sqe, fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE,
                                static_cast<off_t>(offset), record[kLength]);
        break;
    }
  }

  void Release(uint32_t slotIndex) {
    slots_[slotIndex].regions.reset();
    freeSlots_.push_back(slotIndex);
  }

  // Requests the kernel still has to complete (posted or not).
  size_t InKernel() const { return slots_.size() - freeSlots_.size() - immediate_.size(); }

  void Teardown() {
    if (!open_) return;
    open_ = false;
    // Closing a ring neither cancels nor waits for its requests, and a READV still running
    // could write into memory unmapped (and reused) once the regions go. So cancel what can be
    // cancelled (a read from a socket or pipe might never end), wait for the rest (file I/O
    // under way finishes by itself) and discard the completions.
    while (InKernel() > 0) {
      io_uring_submit(&ring_);  // cancellation only sees requests the kernel has taken
      io_uring_sync_cancel_reg cancel{};
      cancel.flags = IORING_ASYNC_CANCEL_ANY | IORING_ASYNC_CANCEL_ALL;
      cancel.timeout = {-1, -1};  // until every request found is cancelled or finished
      io_uring_register_sync_cancel(&ring_, &cancel);  // best effort: kernels before 6.0 lack it
      int err = io_uring_submit_and_wait(&ring_, 1);
      if (err < 0 && err != -EINTR && err != -EAGAIN && err != -EBUSY) break;  // ring unusable
      unsigned head, seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        seen++;
        if (cqe->user_data < slots_.size()) Release(static_cast<uint32_t>(cqe->user_data));
      }
      io_uring_cq_advance(&ring_, seen);
    }
    io_uring_queue_exit(&ring_);
    if (eventfd_ >= 0) close(eventfd_);
    eventfd_ = -1;
    slots_.clear();
    freeSlots_.clear();
    immediate_.clear();
    regions_.reset();
  }

  io_uring ring_{};
  bool open_ = false;
  int eventfd_ = -1;                           // owned; registered with the ring
  std::shared_ptr<const RegionList> regions_;  // the list new requests are checked against
  std::vector<Slot> slots_;
  std::vector<uint32_t> freeSlots_;  // stack of unused slot indexes
  std::vector<uint32_t> immediate_;  // slots completed without the kernel, reaped first, FIFO
};

}  // namespace

void InitUring(Napi::Env env, Napi::Object exports) { exports.Set("Uring", Uring::Define(env)); }

}  // namespace ring
