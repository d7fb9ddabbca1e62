// Entry point of the native/ring addon: syscalls only, no protocol logic.
#include <napi.h>

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  return exports;
}

NODE_API_MODULE(ring, Init)
