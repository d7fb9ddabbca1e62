// Unix stream sockets that carry fds (SCM_RIGHTS), and FdWatcher: one fd on the calling
// thread's libuv loop.
//
// Ownership: every fd handed to JS (socketListen/Accept/Connect/Pair, fds from recvMsg) belongs
// to the caller, who closes it exactly once with close(). sendMsg only borrows the fds it sends
// (the kernel duplicates them into the message). FdWatcher never owns or closes its fd.
#include "ring.h"

#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#include <uv.h>

#include <cerrno>
#include <cstddef>

namespace ring {
namespace {

// The kernel's SCM_MAX_FD: a message carrying more fds fails with EINVAL.
constexpr int64_t kMaxFds = 253;

// Control-message buffer for up to kMaxFds fds, aligned for cmsghdr.
union FdControl {
  char bytes[CMSG_SPACE(sizeof(int) * kMaxFds)];
  cmsghdr align;
};

bool ToSockaddr(Napi::Env env, const std::string& path, const char* syscall, sockaddr_un* addr) {
  *addr = sockaddr_un{};
  addr->sun_family = AF_UNIX;
  if (path.empty()) {
    ThrowErrno(env, ENOENT, syscall, path.c_str());
    return false;
  }
  // Keep the terminating NUL inside sun_path (108 bytes on Linux).
  if (path.size() >= sizeof(addr->sun_path)) {
    ThrowErrno(env, ENAMETOOLONG, syscall, path.c_str());
    return false;
  }
  std::memcpy(addr->sun_path, path.data(), path.size());
  return true;
}

Napi::Value SocketListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  int64_t mode, backlog;
  sockaddr_un addr;
  if (!ArgString(info, 0, "path", &path) || !ArgInteger(info, 1, "mode", 0, 07777, &mode) ||
      !ArgInteger(info, 2, "backlog", 0, INT32_MAX, &backlog) ||
      !ToSockaddr(env, path, "bind", &addr)) {
    return env.Undefined();
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, errno, "socket");
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, "bind", path.c_str());
  }
  // chmod between bind and listen: until listen() every connect is refused, so the moment
  // the socket file carries umask permissions admits nobody.
  const char* failed = chmod(path.c_str(), static_cast<mode_t>(mode)) != 0 ? "chmod"
                       : listen(fd, static_cast<int>(backlog)) != 0        ? "listen"
                                                                           : nullptr;
  if (failed != nullptr) {
    int err = errno;
    unlink(path.c_str());
    close(fd);
    return ThrowErrno(env, err, failed, path.c_str());
  }
  return Napi::Number::New(env, fd);
}

// Takes over an inherited listening socket (systemd socket activation, a manager's
// addr.type=fd): checks it is an AF_UNIX stream socket in the listening state, makes it
// non-blocking (a front-end that leaves the backlog between poll and accept must not block
// the control thread) and close-on-exec (children do not inherit it). Returns the bound path
// ("" when unnamed or abstract).
Napi::Value SocketAdopt(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  struct stat st;
  if (fstat(fd, &st) != 0) return ThrowErrno(env, errno, "fstat");
  if (!S_ISSOCK(st.st_mode)) return ThrowErrno(env, ENOTSOCK, "fstat");
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0)
    return ThrowErrno(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0)
    return ThrowErrno(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) {
    return ThrowErrno(env, errno, "getsockopt");
  }
  if (domain != AF_UNIX) return ThrowErrno(env, EAFNOSUPPORT, "getsockopt(SO_DOMAIN)");
  if (type != SOCK_STREAM) return ThrowErrno(env, EPROTOTYPE, "getsockopt(SO_TYPE)");
  if (listening == 0) return ThrowErrno(env, EINVAL, "getsockopt(SO_ACCEPTCONN)");
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0)
    return ThrowErrno(env, errno, "fcntl");
  int fdFlags = fcntl(fd, F_GETFD);
  if (fdFlags < 0 || fcntl(fd, F_SETFD, fdFlags | FD_CLOEXEC) != 0)
    return ThrowErrno(env, errno, "fcntl");
  sockaddr_un addr{};
  socklen_t addrLen = sizeof(addr);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &addrLen) != 0)
    return ThrowErrno(env, errno, "getsockname");
  size_t pathOffset = offsetof(sockaddr_un, sun_path);
  // Unnamed (no path bytes) or abstract (leading NUL): no file to report.
  if (addrLen <= pathOffset || addr.sun_path[0] == '\0') return Napi::String::New(env, "");
  return Napi::String::New(env, addr.sun_path, strnlen(addr.sun_path, addrLen - pathOffset));
}

Napi::Value SocketAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int listenFd;
  if (!ArgFd(info, 0, &listenFd)) return env.Undefined();
  for (;;) {
    int fd = accept4(listenFd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) return Napi::Number::New(env, fd);
    // ECONNABORTED: that client gave up while queued; the next one may be waiting.
    if (errno == EINTR || errno == ECONNABORTED) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "accept4");
  }
}

Napi::Value SocketConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  sockaddr_un addr;
  if (!ArgString(info, 0, "path", &path) || !ToSockaddr(env, path, "connect", &addr)) {
    return env.Undefined();
  }
  // Blocking connect: a Unix socket connects at once, or waits only while the backlog is full.
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, errno, "socket");
  const char* failed = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0
                           ? "connect"
                       : fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) != 0 ? "fcntl"
                                                                                  : nullptr;
  if (failed != nullptr) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, failed, path.c_str());
  }
  return Napi::Number::New(env, fd);
}

// Non-blocking connect. A Unix stream connect completes at once or fails; it never returns
// EINPROGRESS. EAGAIN means a listener exists but its backlog is full: reported as -1 rather
// than waited for, so a caller on the event loop is never held up by a busy peer.
Napi::Value SocketTryConnect(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path;
  sockaddr_un addr;
  if (!ArgString(info, 0, "path", &path) || !ToSockaddr(env, path, "connect", &addr)) {
    return env.Undefined();
  }
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ThrowErrno(env, errno, "socket");
  int result;
  do {
    result = connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  } while (result != 0 && errno == EINTR);
  if (result != 0) {
    int err = errno;
    close(fd);
    if (err == EAGAIN) return Napi::Number::New(env, -1);
    return ThrowErrno(env, err, "connect", path.c_str());
  }
  return Napi::Number::New(env, fd);
}

// getsockopt(SO_ERROR): the socket's pending error (0 if none; reading it clears it). libuv
// reports any POLLERR as EBADF; this tells what actually happened (ECONNRESET: the peer
// closed with data of ours unread).
Napi::Value SocketError(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  int error = 0;
  socklen_t len = sizeof(error);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &len) != 0) {
    return ThrowErrno(env, errno, "getsockopt");
  }
  return Napi::Number::New(env, error);
}

Napi::Value SocketPair(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) != 0) {
    return ThrowErrno(env, errno, "socketpair");
  }
  Napi::Array pair = Napi::Array::New(env, 2);
  pair.Set(0u, fds[0]);
  pair.Set(1u, fds[1]);
  return pair;
}

Napi::Value SendMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Uint8Array data;
  Napi::Array fdList;
  if (!ArgFd(info, 0, &fd) || !ArgTypedArray(info, 1, "data", napi_uint8_array, &data) ||
      !ArgArray(info, 2, "fds", &fdList)) {
    return env.Undefined();
  }
  uint32_t fdCount = fdList.Length();
  if (fdCount > kMaxFds) {
    return ThrowRangeError(env, "at most " + std::to_string(kMaxFds) + " fds fit in one message");
  }
  // On a stream socket the fds travel with the first byte; with no byte they would be lost.
  if (fdCount > 0 && data.ByteLength() == 0) {
    return ThrowRangeError(env, "a message carrying fds needs at least one byte of data");
  }
  iovec iov{data.Data(), data.ByteLength()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  FdControl control;
  if (fdCount > 0) {
    std::memset(control.bytes, 0, sizeof(control.bytes));
    msg.msg_control = control.bytes;
    msg.msg_controllen = CMSG_SPACE(sizeof(int) * fdCount);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int) * fdCount);
    unsigned char* slots = CMSG_DATA(cmsg);
    for (uint32_t i = 0; i < fdCount; i++) {
      int64_t value;
      if (!ToInteger(env, fdList.Get(i), "fds[" + std::to_string(i) + "]", 0, INT32_MAX, &value)) {
        return env.Undefined();
      }
      int sendFd = static_cast<int>(value);
      std::memcpy(slots + i * sizeof(int), &sendFd, sizeof(int));
    }
  }
  ssize_t sent;
  do {
    sent = sendmsg(fd, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) return Napi::Number::New(env, -1);
    return ThrowErrno(env, errno, "sendmsg");
  }
  return Napi::Number::New(env, static_cast<double>(sent));
}

Napi::Object MakeRecvResult(Napi::Env env, double bytes, Napi::Array fds, bool truncated) {
  Napi::Object result = Napi::Object::New(env);
  result.Set("bytes", bytes);
  result.Set("fds", fds);
  result.Set("truncated", truncated);
  return result;
}

Napi::Value RecvMsg(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Uint8Array data;
  int64_t offset, length, maxFds;
  // length >= 1: a zero-byte read would look like end of stream.
  if (!ArgFd(info, 0, &fd) || !ArgTypedArray(info, 1, "data", napi_uint8_array, &data) ||
      !ArgInteger(info, 2, "offset", 0, static_cast<int64_t>(data.ByteLength()), &offset) ||
      !ArgInteger(info, 3, "length", 1, static_cast<int64_t>(data.ByteLength()) - offset,
                  &length) ||
      !ArgInteger(info, 4, "maxFds", 0, kMaxFds, &maxFds)) {
    return env.Undefined();
  }
  iovec iov{data.Data() + offset, static_cast<size_t>(length)};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  FdControl control;
  if (maxFds > 0) {
    msg.msg_control = control.bytes;
    // CMSG_LEN, not CMSG_SPACE: the kernel fits as many fds as the length allows, and the
    // padding of CMSG_SPACE would admit one more than maxFds when maxFds is odd.
    msg.msg_controllen = CMSG_LEN(sizeof(int) * maxFds);
  }
  ssize_t received;
  do {
    received = recvmsg(fd, &msg, MSG_CMSG_CLOEXEC);
  } while (received < 0 && errno == EINTR);
  if (received < 0) {
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      return MakeRecvResult(env, -1, Napi::Array::New(env), false);
    }
    return ThrowErrno(env, errno, "recvmsg");
  }
  // Gather fds from every SCM_RIGHTS message; from here on they belong to the caller.
  Napi::Array fds = Napi::Array::New(env);
  uint32_t fdCount = 0;
  if (maxFds > 0) {
    for (cmsghdr* cmsg = CMSG_FIRSTHDR(&msg); cmsg != nullptr; cmsg = CMSG_NXTHDR(&msg, cmsg)) {
      if (cmsg->cmsg_level != SOL_SOCKET || cmsg->cmsg_type != SCM_RIGHTS) continue;
      size_t count = (cmsg->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; i++) {
        int receivedFd;
        std::memcpy(&receivedFd, CMSG_DATA(cmsg) + i * sizeof(int), sizeof(int));
        fds.Set(fdCount++, receivedFd);
      }
    }
  }
  return MakeRecvResult(env, static_cast<double>(received), fds, (msg.msg_flags & MSG_CTRUNC) != 0);
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  if (!ArgFd(info, 0, &fd)) return env.Undefined();
  // On Linux the fd is released even when close() reports EINTR: never retry.
  if (close(fd) != 0 && errno != EINTR) return ThrowErrno(env, errno, "close");
  return env.Undefined();
}

// Watches one fd with a uv_poll_t on the loop of the thread that created it. libuv polls
// level-triggered: the callback runs on every loop pass while the fd stays ready.
// One watcher per fd and loop (libuv refuses a second with EEXIST). Stop or close the
// watcher before closing the fd.
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(
        env, "FdWatcher",
        {InstanceMethod<&FdWatcher::Start>("start"), InstanceMethod<&FdWatcher::Stop>("stop"),
         InstanceMethod<&FdWatcher::Close>("close")});
  }

  explicit FdWatcher(const Napi::CallbackInfo& info)
      : Napi::ObjectWrap<FdWatcher>(info), asyncContext_(info.Env(), "FdWatcher") {
    Napi::Env env = info.Env();
    int fd;
    if (!ArgFd(info, 0, &fd)) return;
    if (!info[1].IsFunction()) {
      ThrowTypeError(env, "onEvent must be a function");
      return;
    }
    uv_loop_t* loop;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) {
      Napi::Error::New(env, "FdWatcher: no event loop on this thread").ThrowAsJavaScriptException();
      return;
    }
    auto* handle = new uv_poll_t;
    int err = uv_poll_init(loop, handle, fd);
    if (err != 0) {
      delete handle;  // uv_poll_init registers nothing when it fails
      ThrowErrno(env, -err, "uv_poll_init");
      return;
    }
    handle->data = this;
    handle_ = handle;
    // The callback lives exactly as long as this object: a non-enumerable property holds it
    // (traced by the GC, so a callback that captures the watcher is no uncollectable cycle)
    // and a weak reference finds it.
    Napi::Function onEvent = info[1].As<Napi::Function>();
    info.This().As<Napi::Object>().DefineProperty(
        Napi::PropertyDescriptor::Value(Napi::Symbol::New(env, "onEvent"), onEvent, napi_default));
    onEvent_ = Napi::Weak(onEvent);
    // A worker thread closes its loop when it exits: release the handle before that, whether or
    // not JS called close().
    napi_add_env_cleanup_hook(env, OnEnvCleanup, this);
    cleanupHook_ = true;
  }

  ~FdWatcher() override {
    CloseHandle();
    RemoveCleanupHook();
  }

 private:
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    bool readable, writable, hangup = false;
    if (!ArgBool(info, 0, "readable", &readable) || !ArgBool(info, 1, "writable", &writable) ||
        (!info[2].IsUndefined() && !ArgBool(info, 2, "hangup", &hangup))) {
      return env.Undefined();
    }
    if (handle_ == nullptr) {
      Napi::Error::New(env, "FdWatcher.start: the watcher is closed").ThrowAsJavaScriptException();
      return env.Undefined();
    }
    // UV_DISCONNECT (EPOLLRDHUP): the peer shut down or closed, seen even while not reading.
    int events =
        (readable ? UV_READABLE : 0) | (writable ? UV_WRITABLE : 0) | (hangup ? UV_DISCONNECT : 0);
    if (events == 0) return Stop(info);
    int err = uv_poll_start(handle_, events, OnPoll);
    if (err != 0) return ThrowErrno(env, -err, "uv_poll_start");
    // While started the loop may call back at any time: keep the JS object alive even if
    // nothing else references it.
    if (!pinned_) {
      Ref();
      pinned_ = true;
    }
    return env.Undefined();
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) uv_poll_stop(handle_);
    Unpin();
    return info.Env().Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    CloseHandle();
    Unpin();
    RemoveCleanupHook();
    return info.Env().Undefined();
  }

  static void OnPoll(uv_poll_t* handle, int status, int events) {
    auto* self = static_cast<FdWatcher*>(handle->data);
    if (self == nullptr) return;  // closed earlier in this loop pass
    Napi::Env env = self->Env();
    Napi::HandleScope scope(env);
    Napi::Function onEvent = self->onEvent_.Value();
    if (onEvent.IsEmpty()) return;
    onEvent.MakeCallback(
        self->Value(),
        {Napi::Number::New(env, status), Napi::Boolean::New(env, (events & UV_READABLE) != 0),
         Napi::Boolean::New(env, (events & UV_WRITABLE) != 0),
         Napi::Boolean::New(env, (events & UV_DISCONNECT) != 0)},
        self->asyncContext_);
    // Nothing above us catches: report a throwing callback as an uncaught exception, as Node
    // does for its own handles.
    if (env.IsExceptionPending()) {
      napi_fatal_exception(env, env.GetAndClearPendingException().Value());
    }
  }

  static void OnEnvCleanup(void* data) {
    auto* self = static_cast<FdWatcher*>(data);
    self->cleanupHook_ = false;  // Node drops the hook after running it
    self->CloseHandle();
  }

  void CloseHandle() {
    if (handle_ == nullptr) return;
    handle_->data = nullptr;  // no callback after close(), not even one due in this loop pass
    uv_close(reinterpret_cast<uv_handle_t*>(handle_),
             [](uv_handle_t* handle) { delete reinterpret_cast<uv_poll_t*>(handle); });
    handle_ = nullptr;
  }

  void Unpin() {
    if (!pinned_) return;
    pinned_ = false;
    Unref();
  }

  void RemoveCleanupHook() {
    if (!cleanupHook_) return;
    cleanupHook_ = false;
    napi_remove_env_cleanup_hook(Env(), OnEnvCleanup, this);
  }

  uv_poll_t* handle_ = nullptr;      // owned; freed by the uv_close callback
  Napi::FunctionReference onEvent_;  // weak, see the constructor
  Napi::AsyncContext asyncContext_;
  bool pinned_ = false;       // Ref() taken while started
  bool cleanupHook_ = false;  // env cleanup hook registered
};

}  // namespace

void InitSocket(Napi::Env env, Napi::Object exports) {
  exports.Set("socketListen", Napi::Function::New<SocketListen>(env, "socketListen"));
  exports.Set("socketAdopt", Napi::Function::New<SocketAdopt>(env, "socketAdopt"));
  exports.Set("socketAccept", Napi::Function::New<SocketAccept>(env, "socketAccept"));
  exports.Set("socketConnect", Napi::Function::New<SocketConnect>(env, "socketConnect"));
  exports.Set("socketTryConnect", Napi::Function::New<SocketTryConnect>(env, "socketTryConnect"));
  exports.Set("socketError", Napi::Function::New<SocketError>(env, "socketError"));
  exports.Set("socketPair", Napi::Function::New<SocketPair>(env, "socketPair"));
  exports.Set("sendMsg", Napi::Function::New<SendMsg>(env, "sendMsg"));
  exports.Set("recvMsg", Napi::Function::New<RecvMsg>(env, "recvMsg"));
  exports.Set("close", Napi::Function::New<Close>(env, "close"));
  exports.Set("FdWatcher", FdWatcher::Define(env));
}

}  // namespace ring
