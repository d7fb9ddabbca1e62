// The request records JS hands to the io_uring ring (uring.cc) and to blockIo (blockio.cc):
// fixed-size u32 words in typed arrays, one layout for both, exported to JS as
// `recordLayout` so TypeScript never re-declares it. The layout itself is documented at the top
// of uring.cc.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ring {

constexpr size_t kSqeWords = 8;
constexpr size_t kIovecWords = 4;
enum SqeWord {
  kOpcode,
  kFd,
  kOffsetLow,
  kOffsetHigh,
  kUserData,
  kIovecCount,
  kFirstIovec,
  kLength
};
enum IovecWord { kRegion, kRegionOffsetLow, kRegionOffsetHigh, kIovecLength };
enum Opcode : uint32_t { kNop, kReadv, kWritev, kFsync, kFdatasync, kPunchHole, kZeroRange };
constexpr uint32_t kMaxIovecs = 1024;  // IOV_MAX: the kernel's own limit per request

}  // namespace ring
