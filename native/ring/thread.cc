// The calling thread's CPU affinity and kernel thread id (workers pin themselves).
#include "ring.h"

#include <sched.h>
#include <unistd.h>

#include <cerrno>

namespace ring {
namespace {

Napi::Value SetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Array cpus;
  if (!ArgArray(info, 0, "cpus", &cpus)) return env.Undefined();
  cpu_set_t set;
  CPU_ZERO(&set);
  for (uint32_t i = 0; i < cpus.Length(); i++) {
    int64_t cpu;
    if (!ToInteger(env, cpus.Get(i), "cpus[" + std::to_string(i) + "]", 0, CPU_SETSIZE - 1, &cpu)) {
      return env.Undefined();
    }
    CPU_SET(static_cast<int>(cpu), &set);
  }
  // pid 0 = the calling thread only, not the whole process.
  if (sched_setaffinity(0, sizeof(set), &set) != 0)
    return ThrowErrno(env, errno, "sched_setaffinity");
  return env.Undefined();
}

Napi::Value GetAffinity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) != 0)
    return ThrowErrno(env, errno, "sched_getaffinity");
  Napi::Array cpus = Napi::Array::New(env);
  uint32_t count = 0;
  for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
    if (CPU_ISSET(cpu, &set)) cpus.Set(count++, Napi::Number::New(env, cpu));
  }
  return cpus;
}

Napi::Value GetTid(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), gettid());
}

}  // namespace

void InitThread(Napi::Env env, Napi::Object exports) {
  exports.Set("setAffinity", Napi::Function::New<SetAffinity>(env, "setAffinity"));
  exports.Set("getAffinity", Napi::Function::New<GetAffinity>(env, "getAffinity"));
  exports.Set("gettid", Napi::Function::New<GetTid>(env, "gettid"));
}

}  // namespace ring
