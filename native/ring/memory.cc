// Shared memory: memfd for guest RAM in tests and the front-end library, and mmap of any fd as
// a SharedArrayBuffer that every isolate of the process can hold.
//
// memfds allow sealing, so that their creator can seal them against shrinking as QEMU does; a
// back-end reads the seals of a region it is given (fileSeals) before trusting its size.
//
// Ownership: memfdCreate returns an fd the caller closes. A mapping belongs to its V8 backing
// store, shared by every SharedArrayBuffer over it in any isolate; the store's deleter munmaps
// it when the last one is collected. The fd may be closed as soon as mmapShared returns.
#include "ring.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>

namespace ring {
namespace {

Napi::Value MemfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  int64_t size;
  if (!ArgString(info, 0, "name", &name) ||
      !ArgInteger(info, 1, "size", 0, kMaxSafeInteger, &size)) {
    return env.Undefined();
  }
  int fd = memfd_create(name.c_str(), MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) return ThrowErrno(env, errno, "memfd_create", name.c_str());
  if (ftruncate(fd, size) != 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "ftruncate", name.c_str());
  }
  return Napi::Number::New(env, fd);
}

// fcntl(F_GET_SEALS). A file that cannot carry seals (not a memfd or tmpfs/hugetlbfs file) gives
// EINVAL: reported as -1, since "no seals possible" is an answer, not an error.
Napi::Value FileSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    if (errno == EINVAL) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "fcntl(F_GET_SEALS)");
  }
  return Napi::Number::New(env, seals);
}

// fcntl(F_ADD_SEALS).
Napi::Value AddFileSeals(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t seals;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "seals", 0, 0xffff, &seals)) {
    return env.Undefined();
  }
  if (fcntl(fd, F_ADD_SEALS, static_cast<int>(seals)) != 0) {
    return ThrowErrno(env, errno, "fcntl(F_ADD_SEALS)");
  }
  return env.Undefined();
}

// Runs wherever the last holder of the buffer drops it: any thread, any isolate.
void Unmap(void* data, size_t length, void* /*deleterData*/) { munmap(data, length); }

// With writable = false the pages are read-only: a JS write through the buffer faults (SIGSEGV).
// Map read-only only what JS never writes.
Napi::Value MmapShared(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t length, offset;
  bool writable;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "length", 1, kMaxSafeInteger, &length) ||
      !ArgInteger(info, 2, "offset", 0, kMaxSafeInteger, &offset) ||
      !ArgBool(info, 3, "writable", &writable)) {
    return env.Undefined();
  }
  int protection = PROT_READ | (writable ? PROT_WRITE : 0);
  void* base = mmap(nullptr, static_cast<size_t>(length), protection, MAP_SHARED, fd, offset);
  if (base == MAP_FAILED) return ThrowErrno(env, errno, "mmap");
  std::shared_ptr<v8::BackingStore> store =
      v8::SharedArrayBuffer::NewBackingStore(base, static_cast<size_t>(length), Unmap, nullptr);
  v8::Local<v8::SharedArrayBuffer> buffer =
      v8::SharedArrayBuffer::New(v8::Isolate::GetCurrent(), std::move(store));
  return Napi::Value(env, FromV8(buffer));
}

}  // namespace

void InitMemory(Napi::Env env, Napi::Object exports) {
  exports.Set("memfdCreate", Napi::Function::New<MemfdCreate>(env, "memfdCreate"));
  exports.Set("fileSeals", Napi::Function::New<FileSeals>(env, "fileSeals"));
  exports.Set("addFileSeals", Napi::Function::New<AddFileSeals>(env, "addFileSeals"));
  exports.Set("mmapShared", Napi::Function::New<MmapShared>(env, "mmapShared"));
}

}  // namespace ring
