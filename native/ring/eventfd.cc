// eventfd (kick and call notifications) and epoll (how a sleeping worker waits on many fds).
//
// Ownership: eventfdCreate and epollCreate return fds the caller closes. epollCtl registers,
// it does not take the fd over.
#include "ring.h"

#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>

namespace ring {
namespace {

// Events taken per epollWait call, on the stack; a larger maxEvents gets at most this many.
constexpr int kMaxEpollEvents = 256;

// eventfdCreate(initval, blocking = false). A blocking one exists only for tests that play a
// hostile front-end (see EventfdAdopt).
Napi::Value EventfdCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int64_t initval;
  if (!ArgInteger(info, 0, "initval", 0, UINT32_MAX, &initval)) return env.Undefined();
  bool blocking = info.Length() > 1 && info[1].ToBoolean().Value();
  int fd = eventfd(static_cast<unsigned>(initval), (blocking ? 0 : EFD_NONBLOCK) | EFD_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, errno, "eventfd");
  return Napi::Number::New(env, fd);
}

Napi::Value EventfdWrite(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t value;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "value", 0, kMaxSafeInteger, &value)) {
    return env.Undefined();
  }
  uint64_t add = static_cast<uint64_t>(value);
  ssize_t written;
  do {
    written = write(fd, &add, sizeof(add));
  } while (written < 0 && errno == EINTR);
  if (written < 0) {
    if (errno == EAGAIN) return Napi::Boolean::New(env, false);  // counter would overflow
    return ThrowErrno(env, errno, "write");
  }
  return Napi::Boolean::New(env, true);
}

// Counters above 2^53 lose precision in a JS number; notification counts never get there.
Napi::Value EventfdRead(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  uint64_t counter;
  ssize_t bytes;
  do {
    bytes = read(fd, &counter, sizeof(counter));
  } while (bytes < 0 && errno == EINTR);
  if (bytes < 0) {
    if (errno == EAGAIN) return Napi::Number::New(env, 0);
    return ThrowErrno(env, errno, "read");
  }
  return Napi::Number::New(env, static_cast<double>(counter));
}

// A front-end's kick, call or error fd, before the data plane may touch it: false when it is not
// an eventfd (a pipe or a file would block a write or read, or fill a disk), otherwise it is made
// non-blocking (a front-end may pass a blocking eventfd and push its counter to the maximum, so
// that the next write would block a worker forever). O_NONBLOCK lives on the open file
// description, which the front-end shares; QEMU's and DPDK's eventfds are non-blocking already.
Napi::Value EventfdAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  char link[64];
  char target[64];
  std::snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
  ssize_t length = readlink(link, target, sizeof(target) - 1);
  if (length < 0) return ThrowErrno(env, errno, "readlink", link);
  target[length] = '\0';
  if (std::strcmp(target, "anon_inode:[eventfd]") != 0) return Napi::Boolean::New(env, false);
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return ThrowErrno(env, errno, "fcntl(F_GETFL)");
  if ((flags & O_NONBLOCK) == 0 && fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    return ThrowErrno(env, errno, "fcntl(F_SETFL)");
  }
  return Napi::Boolean::New(env, true);
}

Napi::Value EpollCreate(const Napi::CallbackInfo& info) {
  int fd = epoll_create1(EPOLL_CLOEXEC);
  if (fd < 0) return ThrowErrno(info.Env(), errno, "epoll_create1");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value EpollCtl(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int epfd, fd;
  int64_t op, events, data;
  if (!ArgFd(info, 0, &epfd) || !ArgInteger(info, 1, "op", 1, 3, &op) || !ArgFd(info, 2, &fd) ||
      !ArgInteger(info, 3, "events", 0, UINT32_MAX, &events) ||
      !ArgInteger(info, 4, "data", 0, UINT32_MAX, &data)) {
    return env.Undefined();
  }
  epoll_event event{};
  event.events = static_cast<uint32_t>(events);
  event.data.u64 = static_cast<uint64_t>(data);
  if (epoll_ctl(epfd, static_cast<int>(op), fd, &event) != 0) {
    return ThrowErrno(env, errno, "epoll_ctl");
  }
  return env.Undefined();
}

// Blocks the calling thread (a worker), never the control thread's loop.
Napi::Value EpollWait(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int epfd;
  Napi::Uint32Array out;
  int64_t maxEvents, timeoutMs;
  if (!ArgFd(info, 0, &epfd) || !ArgTypedArray(info, 1, "out", napi_uint32_array, &out) ||
      !ArgInteger(info, 2, "maxEvents", 1, INT32_MAX, &maxEvents) ||
      !ArgInteger(info, 3, "timeoutMs", -1, INT32_MAX, &timeoutMs)) {
    return env.Undefined();
  }
  if (out.ElementLength() < 2 * static_cast<size_t>(maxEvents)) {
    return ThrowRangeError(env, "out must hold 2 * maxEvents entries");
  }
  epoll_event events[kMaxEpollEvents];
  int count =
      epoll_wait(epfd, events, static_cast<int>(std::min<int64_t>(maxEvents, kMaxEpollEvents)),
                 static_cast<int>(timeoutMs));
  if (count < 0) {
    if (errno == EINTR) return Napi::Number::New(env, 0);
    return ThrowErrno(env, errno, "epoll_wait");
  }
  uint32_t* pairs = out.Data();
  for (int i = 0; i < count; i++) {
    pairs[2 * i] = events[i].events;
    pairs[2 * i + 1] = static_cast<uint32_t>(events[i].data.u64);
  }
  return Napi::Number::New(env, count);
}

}  // namespace

void InitEventfd(Napi::Env env, Napi::Object exports) {
  exports.Set("eventfdCreate", Napi::Function::New<EventfdCreate>(env, "eventfdCreate"));
  exports.Set("eventfdWrite", Napi::Function::New<EventfdWrite>(env, "eventfdWrite"));
  exports.Set("eventfdRead", Napi::Function::New<EventfdRead>(env, "eventfdRead"));
  exports.Set("eventfdAdopt", Napi::Function::New<EventfdAdopt>(env, "eventfdAdopt"));
  exports.Set("epollCreate", Napi::Function::New<EpollCreate>(env, "epollCreate"));
  exports.Set("epollCtl", Napi::Function::New<EpollCtl>(env, "epollCtl"));
  exports.Set("epollWait", Napi::Function::New<EpollWait>(env, "epollWait"));
}

}  // namespace ring
