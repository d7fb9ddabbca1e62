// Shared helpers of the native/ring addon: errno errors, argument checks, module parts.
#pragma once

#include <napi.h>

#include <cstdint>
#include <cstring>
#include <string>

#include <v8.h>

namespace ring {

// Largest integer a JS number holds exactly (Number.MAX_SAFE_INTEGER).
constexpr int64_t kMaxSafeInteger = (int64_t{1} << 53) - 1;

// Throws Error("ENOENT: No such file or directory, connect '/x'") with .code (errno name),
// .errno (positive errno number), .syscall and, when given, .path. Returns undefined so a
// binding can `return ThrowErrno(...)`.
Napi::Value ThrowErrno(Napi::Env env, int err, const char* syscall, const char* path = nullptr);
Napi::Value ThrowTypeError(Napi::Env env, const std::string& message);
Napi::Value ThrowRangeError(Napi::Env env, const std::string& message);

// Argument checks. Each returns false after throwing TypeError (wrong type) or RangeError
// (a number that is not an integer in [min, max]); the binding then returns at once.
bool ToInteger(Napi::Env env, Napi::Value value, const std::string& name, int64_t min, int64_t max,
               int64_t* out);
bool ArgInteger(const Napi::CallbackInfo& info, size_t index, const char* name, int64_t min,
                int64_t max, int64_t* out);
bool ArgFd(const Napi::CallbackInfo& info, size_t index, int* fd);
bool ArgBool(const Napi::CallbackInfo& info, size_t index, const char* name, bool* out);
bool ArgString(const Napi::CallbackInfo& info, size_t index, const char* name, std::string* out);
bool ArgArray(const Napi::CallbackInfo& info, size_t index, const char* name, Napi::Array* out);

template <typename T>
bool ArgTypedArray(const Napi::CallbackInfo& info, size_t index, const char* name,
                   napi_typedarray_type type, Napi::TypedArrayOf<T>* out) {
  Napi::Value value = info[index];
  if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != type) {
    ThrowTypeError(info.Env(), std::string(name) + " has the wrong typed array type");
    return false;
  }
  *out = value.As<Napi::TypedArrayOf<T>>();
  return true;
}

// napi_value and v8::Local<v8::Value> are the same pointer (Node's own N-API implementation
// converts them this way); needed where N-API has no call, e.g. SharedArrayBuffer backing stores.
inline v8::Local<v8::Value> ToV8(napi_value value) {
  v8::Local<v8::Value> local;
  static_assert(sizeof(local) == sizeof(value), "v8::Local and napi_value differ in size");
  std::memcpy(static_cast<void*>(&local), &value, sizeof(value));
  return local;
}

inline napi_value FromV8(v8::Local<v8::Value> local) {
  napi_value value;
  static_assert(sizeof(local) == sizeof(value), "v8::Local and napi_value differ in size");
  std::memcpy(&value, static_cast<void*>(&local), sizeof(value));
  return value;
}

// Module parts, each adding its bindings to `exports`.
void InitSocket(Napi::Env env, Napi::Object exports);
void InitMemory(Napi::Env env, Napi::Object exports);
void InitEventfd(Napi::Env env, Napi::Object exports);
void InitThread(Napi::Env env, Napi::Object exports);
void InitUring(Napi::Env env, Napi::Object exports);
void InitBlockIo(Napi::Env env, Napi::Object exports);
void InitTap(Napi::Env env, Napi::Object exports);
void InitIovecs(Napi::Env env, Napi::Object exports);

}  // namespace ring
