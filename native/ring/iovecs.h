// Guest buffers described as iovec records (records.h) over a list of region SharedArrayBuffers:
// resolving them to pointers, checked against each region's length. Shared by the tap I/O
// (tap.cc) and the batch copies (iovecs.cc). Not thread-safe across calls: the tables are
// thread-local and reused, so nothing is allocated per call once they have grown.
#pragma once

#include "ring.h"

#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ring {

// Resolves `buffers` (SharedArrayBuffers) for the current call, holding each backing store
// until ReleaseRegions(). False after throwing (not a SharedArrayBuffer, a throwing getter).
bool LoadRegions(Napi::Env env, Napi::Array buffers);
void ReleaseRegions();

// Appends iovec records [first, first + count) of `words` (records records) to `iov`, each
// checked against its region: 0, -EFAULT (outside a region, or past the records) or -EINVAL
// (more than kMaxIovecs - 1 entries in all: one is kept for the caller).
int AppendIovecs(std::vector<iovec>* iov, const uint32_t* words, size_t records, uint32_t first,
                 uint32_t count);

}  // namespace ring
