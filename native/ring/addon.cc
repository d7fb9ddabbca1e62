// Entry point of the native/ring addon: syscalls only, no protocol logic.
// Also the helpers every part shares: errno errors and argument checks (ring.h).
#include "records.h"
#include "ring.h"

#include <cmath>

namespace ring {

Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* path) {
  // strerrorname_np/strerrordesc_np return static strings: safe on worker threads too.
  const char* code = strerrorname_np(err);
  const char* description = strerrordesc_np(err);
  std::string message = std::string(code ? code : "UNKNOWN") + ": " +
                        (description ? description : "Unknown error") + ", " + syscall;
  if (path != nullptr) message += std::string(" '") + path + "'";
  Napi::Object error = Napi::Error::New(env, message).Value();
  error.Set("code", code ? code : "UNKNOWN");
  error.Set("errno", err);
  error.Set("syscall", syscall);
  if (path != nullptr) error.Set("path", path);
  Napi::Error(env, error).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowTypeError(Napi::Env env, const std::string& message) {
  Napi::TypeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

Napi::Value ThrowRangeError(Napi::Env env, const std::string& message) {
  Napi::RangeError::New(env, message).ThrowAsJavaScriptException();
  return env.Undefined();
}

bool ToInteger(Napi::Env env, Napi::Value value, const std::string& name, int64_t min, int64_t max,
               int64_t* out) {
  if (!value.IsNumber()) {
    ThrowTypeError(env, name + " must be a number");
    return false;
  }
  double number = value.As<Napi::Number>().DoubleValue();
  // Both bounds are exact doubles here (|bound| <= 2^53), so the comparisons are exact.
  if (!(number >= static_cast<double>(min) && number <= static_cast<double>(max)) ||
      number != std::trunc(number)) {
    ThrowRangeError(env, name + " must be an integer in [" + std::to_string(min) + ", " +
                             std::to_string(max) + "], got " + std::to_string(number));
    return false;
  }
  *out = static_cast<int64_t>(number);
  return true;
}

bool ArgInteger(const Napi::CallbackInfo& info, size_t index, const char* name, int64_t min,
                int64_t max, int64_t* out) {
  return ToInteger(info.Env(), info[index], name, min, max, out);
}

bool ArgFd(const Napi::CallbackInfo& info, size_t index, int* fd) {
  int64_t value;
  if (!ArgInteger(info, index, "fd", 0, INT32_MAX, &value)) return false;
  *fd = static_cast<int>(value);
  return true;
}

bool ArgBool(const Napi::CallbackInfo& info, size_t index, const char* name, bool* out) {
  if (!info[index].IsBoolean()) {
    ThrowTypeError(info.Env(), std::string(name) + " must be a boolean");
    return false;
  }
  *out = info[index].As<Napi::Boolean>().Value();
  return true;
}

bool ArgString(const Napi::CallbackInfo& info, size_t index, const char* name, std::string* out) {
  if (!info[index].IsString()) {
    ThrowTypeError(info.Env(), std::string(name) + " must be a string");
    return false;
  }
  *out = info[index].As<Napi::String>().Utf8Value();
  if (out->find('\0') != std::string::npos) {
    ThrowTypeError(info.Env(), std::string(name) + " must not contain NUL characters");
    return false;
  }
  return true;
}

bool ArgArray(const Napi::CallbackInfo& info, size_t index, const char* name, Napi::Array* out) {
  if (!info[index].IsArray()) {
    ThrowTypeError(info.Env(), std::string(name) + " must be an array");
    return false;
  }
  *out = info[index].As<Napi::Array>();
  return true;
}

// The record layout of records.h as plain numbers, so TypeScript reads it instead of copying it.
static Napi::Object RecordLayout(Napi::Env env) {
  Napi::Object layout = Napi::Object::New(env);
  layout.Set("sqeWords", static_cast<double>(kSqeWords));
  layout.Set("iovecWords", static_cast<double>(kIovecWords));
  layout.Set("maxIovecs", static_cast<double>(kMaxIovecs));
  Napi::Object sqe = Napi::Object::New(env);
  sqe.Set("opcode", static_cast<double>(kOpcode));
  sqe.Set("fd", static_cast<double>(kFd));
  sqe.Set("offsetLow", static_cast<double>(kOffsetLow));
  sqe.Set("offsetHigh", static_cast<double>(kOffsetHigh));
  sqe.Set("userData", static_cast<double>(kUserData));
  sqe.Set("iovecCount", static_cast<double>(kIovecCount));
  sqe.Set("firstIovec", static_cast<double>(kFirstIovec));
  sqe.Set("length", static_cast<double>(kLength));
  layout.Set("sqe", sqe);
  Napi::Object iovec = Napi::Object::New(env);
  iovec.Set("region", static_cast<double>(kRegion));
  iovec.Set("offsetLow", static_cast<double>(kRegionOffsetLow));
  iovec.Set("offsetHigh", static_cast<double>(kRegionOffsetHigh));
  iovec.Set("length", static_cast<double>(kIovecLength));
  layout.Set("iovec", iovec);
  Napi::Object opcode = Napi::Object::New(env);
  opcode.Set("NOP", static_cast<double>(kNop));
  opcode.Set("READV", static_cast<double>(kReadv));
  opcode.Set("WRITEV", static_cast<double>(kWritev));
  opcode.Set("FSYNC", static_cast<double>(kFsync));
  opcode.Set("FDATASYNC", static_cast<double>(kFdatasync));
  opcode.Set("PUNCH_HOLE", static_cast<double>(kPunchHole));
  opcode.Set("ZERO_RANGE", static_cast<double>(kZeroRange));
  layout.Set("opcode", opcode);
  return layout;
}

}  // namespace ring

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ring::InitSocket(env, exports);
  ring::InitMemory(env, exports);
  ring::InitEventfd(env, exports);
  ring::InitThread(env, exports);
  ring::InitUring(env, exports);
  ring::InitBlockIo(env, exports);
  ring::InitTap(env, exports);
  ring::InitIovecs(env, exports);
  exports.Set("recordLayout", ring::RecordLayout(env));
  return exports;
}

NODE_API_MODULE(ring, Init)
