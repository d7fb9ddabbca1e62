// Linux tap devices for the vhost-user-net `tap` back-end: open/attach, and frames moved
// between the tap and guest memory in batches (one N-API call per batch, one syscall per frame,
// no copy through JS: readv/writev go straight to and from the guest's buffers).
//
// tapOpen(name, multiQueue, headerBytes) → { fd, name, created }
//   open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC) + TUNSETIFF(IFF_TAP | IFF_NO_PI |
//   IFF_VNET_HDR [| IFF_MULTI_QUEUE]) + TUNSETVNETHDRSZ(headerBytes) + TUNSETOFFLOAD(0).
//   `created`: no interface of that name existed in our network namespace before the call (the
//   tap is then not persistent: the kernel removes it when its last fd is closed).
// tapSetHeaderSize(fd, bytes): TUNSETVNETHDRSZ (per device, whichever queue fd is used).
// tapSetOffload(fd, flags): TUNSETOFFLOAD with TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 |
//   TUN_F_TSO_ECN (the frames the host stack may hand us unfinished; per device).
// tapSetMtu(name, mtu): SIOCSIFMTU through a datagram socket.
// tapWriteFrames(fd, regions, iovecs, frames, count, results)
//   frame i is iovec records [frames[2i], frames[2i] + frames[2i + 1]) (records.h layout);
//   results[i] = bytes written or -errno (-EFAULT for a record outside its region).
// tapReadFrames(fd, regions, iovecs, chains, chainCount, minRoom, mergeable, maxFrames, results)
//   chain c is iovec records [chains[3c], +chains[3c + 1]) holding chains[3c + 2] bytes. Frame f
//   is read into the next chain (mergeable = false) or into as many next chains as hold
//   minRoom bytes (mergeable = true; fewer left → stop). A frame longer than its chains is cut
//   to fit (the kernel returns what it copied): one scratch byte after the chains tells, so
//   results[2f] = bytes read, more than the chains hold when the frame was cut;
//   results[2f + 1] = chains the frame took (all the chains it was offered when cut). Returns the
//   frames read and writes the reason it stopped at results[2 * frames]: -EAGAIN (the tap is
//   empty), 0 (out of chains or maxFrames reached) or -errno of the failed read.
#include "iovecs.h"
#include "records.h"
#include "ring.h"

#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

namespace ring {
namespace {

// Reused by every call on this thread (no allocation once grown).
thread_local std::vector<iovec> tIov;
// Where a frame longer than the chains offered spills its next byte (tells a cut frame).
thread_local uint8_t tSpill;

bool TapIoctl(int fd, unsigned long request, unsigned long value) {
  return ioctl(fd, request, value) == 0;
}

Napi::Value TapOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  bool multiQueue;
  int64_t headerBytes;
  if (!ArgString(info, 0, "name", &name) || !ArgBool(info, 1, "multiQueue", &multiQueue) ||
      !ArgInteger(info, 2, "headerBytes", 10, 12, &headerBytes)) {
    return env.Undefined();
  }
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return ThrowRangeError(env, "a tap name has 1 to 15 characters");
  }
  bool existed = if_nametoindex(name.c_str()) != 0;
  int fd = open("/dev/net/tun", O_RDWR | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) return ThrowErrno(env, errno, "open", "/dev/net/tun");
  ifreq request{};
  std::memcpy(request.ifr_name, name.data(), name.size());
  request.ifr_flags = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | (multiQueue ? IFF_MULTI_QUEUE : 0);
  int vnetHeader = static_cast<int>(headerBytes);
  const char* failed = nullptr;
  if (ioctl(fd, TUNSETIFF, &request) != 0) {
    failed = "ioctl TUNSETIFF";
  } else if (ioctl(fd, TUNSETVNETHDRSZ, &vnetHeader) != 0) {
    failed = "ioctl TUNSETVNETHDRSZ";
  } else if (!TapIoctl(fd, TUNSETOFFLOAD, 0)) {
    failed = "ioctl TUNSETOFFLOAD";
  }
  if (failed != nullptr) {
    int err = errno;
    close(fd);
    return ThrowErrno(env, err, failed, name.c_str());
  }
  Napi::Object result = Napi::Object::New(env);
  result.Set("fd", fd);
  result.Set("name", std::string(request.ifr_name, strnlen(request.ifr_name, IFNAMSIZ)));
  result.Set("created", !existed);
  return result;
}

Napi::Value TapSetHeaderSize(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t bytes;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "bytes", 10, 12, &bytes)) {
    return env.Undefined();
  }
  int vnetHeader = static_cast<int>(bytes);
  if (ioctl(fd, TUNSETVNETHDRSZ, &vnetHeader) != 0) {
    return ThrowErrno(env, errno, "ioctl TUNSETVNETHDRSZ");
  }
  return env.Undefined();
}

Napi::Value TapSetOffload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  int64_t flags;
  constexpr int64_t kKnown = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6 | TUN_F_TSO_ECN;
  if (!ArgFd(info, 0, &fd) || !ArgInteger(info, 1, "flags", 0, kKnown, &flags)) {
    return env.Undefined();
  }
  if ((flags & ~kKnown) != 0) return ThrowRangeError(env, "unknown TUNSETOFFLOAD flag");
  if (!TapIoctl(fd, TUNSETOFFLOAD, static_cast<unsigned long>(flags))) {
    return ThrowErrno(env, errno, "ioctl TUNSETOFFLOAD");
  }
  return env.Undefined();
}

Napi::Value TapSetMtu(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string name;
  int64_t mtu;
  if (!ArgString(info, 0, "name", &name) || !ArgInteger(info, 1, "mtu", 68, 65535, &mtu)) {
    return env.Undefined();
  }
  if (name.empty() || name.size() >= IFNAMSIZ) {
    return ThrowRangeError(env, "an interface name has 1 to 15 characters");
  }
  int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (sock < 0) return ThrowErrno(env, errno, "socket");
  ifreq request{};
  std::memcpy(request.ifr_name, name.data(), name.size());
  request.ifr_mtu = static_cast<int>(mtu);
  int rc = ioctl(sock, SIOCSIFMTU, &request);
  int err = errno;
  close(sock);
  if (rc != 0) return ThrowErrno(env, err, "ioctl SIOCSIFMTU", name.c_str());
  return env.Undefined();
}

Napi::Value TapWriteFrames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Array buffers;
  Napi::Uint32Array iovecs, frames;
  Napi::Int32Array results;
  int64_t count;
  if (!ArgFd(info, 0, &fd) || !ArgArray(info, 1, "regions", &buffers) ||
      !ArgTypedArray(info, 2, "iovecs", napi_uint32_array, &iovecs) ||
      !ArgTypedArray(info, 3, "frames", napi_uint32_array, &frames) ||
      !ArgTypedArray(info, 5, "results", napi_int32_array, &results) ||
      !ArgInteger(
          info, 4, "count", 0,
          static_cast<int64_t>(std::min(frames.ElementLength() / 2, results.ElementLength())),
          &count)) {
    return env.Undefined();
  }
  if (!LoadRegions(env, buffers)) return env.Undefined();
  const uint32_t* words = iovecs.Data();
  size_t records = iovecs.ElementLength() / kIovecWords;
  const uint32_t* frame = frames.Data();
  int32_t* out = results.Data();
  for (int64_t i = 0; i < count; i++) {
    tIov.clear();
    int err = AppendIovecs(&tIov, words, records, frame[2 * i], frame[2 * i + 1]);
    if (err != 0) {
      out[i] = err;
      continue;
    }
    ssize_t written;
    do {
      written = writev(fd, tIov.data(), static_cast<int>(tIov.size()));
    } while (written < 0 && errno == EINTR);
    out[i] = written < 0 ? -errno : static_cast<int32_t>(written);
  }
  ReleaseRegions();
  return env.Undefined();
}

Napi::Value TapReadFrames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd;
  Napi::Array buffers;
  Napi::Uint32Array iovecs, chains;
  Napi::Int32Array results;
  int64_t chainCount, minRoom, maxFrames;
  bool mergeable;
  if (!ArgFd(info, 0, &fd) || !ArgArray(info, 1, "regions", &buffers) ||
      !ArgTypedArray(info, 2, "iovecs", napi_uint32_array, &iovecs) ||
      !ArgTypedArray(info, 3, "chains", napi_uint32_array, &chains) ||
      !ArgTypedArray(info, 8, "results", napi_int32_array, &results) ||
      !ArgInteger(info, 4, "chainCount", 0, static_cast<int64_t>(chains.ElementLength() / 3),
                  &chainCount) ||
      !ArgInteger(info, 5, "minRoom", 0, INT32_MAX, &minRoom) ||
      !ArgBool(info, 6, "mergeable", &mergeable) ||
      !ArgInteger(info, 7, "maxFrames", 0, static_cast<int64_t>((results.ElementLength() - 1) / 2),
                  &maxFrames)) {
    return env.Undefined();
  }
  if (results.ElementLength() == 0) return ThrowRangeError(env, "results must hold a stop reason");
  if (!LoadRegions(env, buffers)) return env.Undefined();
  const uint32_t* words = iovecs.Data();
  size_t records = iovecs.ElementLength() / kIovecWords;
  const uint32_t* chain = chains.Data();
  int32_t* out = results.Data();
  int64_t next = 0;
  int64_t frames = 0;
  int32_t stop = 0;
  while (frames < maxFrames && next < chainCount) {
    // The chains this frame is offered: one, or (mergeable) as many as hold minRoom bytes.
    tIov.clear();
    int64_t offered = 0;
    uint64_t room = 0;
    int err = 0;
    while (next + offered < chainCount) {
      const uint32_t* c = chain + 3 * (next + offered);
      err = AppendIovecs(&tIov, words, records, c[0], c[1]);
      if (err != 0) break;
      room += c[2];
      offered++;
      if (!mergeable || room >= static_cast<uint64_t>(minRoom)) break;
    }
    if (err != 0) {
      stop = err;
      break;
    }
    if (mergeable && room < static_cast<uint64_t>(minRoom)) break;  // wait for more chains
    tIov.push_back(iovec{&tSpill, 1});
    ssize_t got;
    do {
      got = readv(fd, tIov.data(), static_cast<int>(tIov.size()));
    } while (got < 0 && errno == EINTR);
    if (got < 0) {
      stop = -errno;
      break;
    }
    // Chains the frame filled: all offered when cut short, else the fewest that hold it.
    int64_t used = offered;
    if (static_cast<uint64_t>(got) <= room) {
      uint64_t held = 0;
      for (used = 0; used < offered;) {
        held += chain[3 * (next + used) + 2];
        used++;
        if (held >= static_cast<uint64_t>(got)) break;
      }
    }
    out[2 * frames] = static_cast<int32_t>(got);
    out[2 * frames + 1] = static_cast<int32_t>(used);
    frames++;
    next += used;
  }
  out[2 * frames] = stop;
  ReleaseRegions();
  return Napi::Number::New(env, static_cast<double>(frames));
}

}  // namespace

void InitTap(Napi::Env env, Napi::Object exports) {
  exports.Set("tapOpen", Napi::Function::New<TapOpen>(env, "tapOpen"));
  exports.Set("tapSetHeaderSize", Napi::Function::New<TapSetHeaderSize>(env, "tapSetHeaderSize"));
  exports.Set("tapSetOffload", Napi::Function::New<TapSetOffload>(env, "tapSetOffload"));
  exports.Set("tapSetMtu", Napi::Function::New<TapSetMtu>(env, "tapSetMtu"));
  exports.Set("tapWriteFrames", Napi::Function::New<TapWriteFrames>(env, "tapWriteFrames"));
  exports.Set("tapReadFrames", Napi::Function::New<TapReadFrames>(env, "tapReadFrames"));
}

}  // namespace ring
