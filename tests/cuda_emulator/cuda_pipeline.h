// Host stand-in for CUDA's pipeline primitives (cp.async): __pipeline_memcpy_async queues a
// copy, __pipeline_commit closes the calling thread's current group of copies, and
// __pipeline_wait_prior(n) carries out the thread's committed groups but the newest n. When a
// copy lands is the emulator's choice (emu::eager_async_copies): when issued, or only when its
// thread waits for it, as late as CUDA allows. The tests run each kernel both ways (harness.h):
// a stage read before its copies were waited for (or before the barrier after every thread's
// wait) shows with late copies; a stage overwritten while other threads still read it shows
// with early ones. Copies still queued when a block ends abort the test.

#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <vector>

#include "cuda_runtime.h"

namespace emu {

struct AsyncCopy {
  void* dst;
  const void* src;
  size_t bytes;
};

struct ThreadPipeline {
  std::vector<AsyncCopy> open;                    // issued, not yet committed
  std::deque<std::vector<AsyncCopy>> committed;  // oldest first
};

inline std::vector<ThreadPipeline> pipelines(1024);

inline void no_copies_pending() {
  for (size_t t = 0; t < pipelines.size(); ++t)
    if (!pipelines[t].open.empty() || !pipelines[t].committed.empty()) {
      std::fprintf(stderr, "cp.async copies of thread %zu left pending at the end of a block\n", t);
      std::abort();
    }
}

inline const bool pipeline_check_installed = (block_finished = &no_copies_pending, true);

inline ThreadPipeline& pipeline() { return pipelines.at(thread_index.x); }

}  // namespace emu

inline void __pipeline_memcpy_async(void* dst, const void* src, size_t size_and_align, size_t zfill = 0) {
  const auto misaligned = [&](const void* p) { return reinterpret_cast<uintptr_t>(p) % size_and_align != 0; };
  if ((size_and_align != 4 && size_and_align != 8 && size_and_align != 16) || zfill != 0 || misaligned(dst) ||
      misaligned(src)) {
    std::fprintf(stderr, "cp.async rule broken: %zu bytes, dst %% 16 = %u, src %% 16 = %u\n", size_and_align,
                 unsigned(reinterpret_cast<uintptr_t>(dst) % 16), unsigned(reinterpret_cast<uintptr_t>(src) % 16));
    std::abort();
  }
  if (emu::eager_async_copies) std::memcpy(dst, src, size_and_align);
  else emu::pipeline().open.push_back({dst, src, size_and_align});
}

inline void __pipeline_commit() {
  emu::ThreadPipeline& p = emu::pipeline();
  p.committed.push_back(std::move(p.open));
  p.open.clear();
}

inline void __pipeline_wait_prior(size_t prior) {
  emu::ThreadPipeline& p = emu::pipeline();
  while (p.committed.size() > prior) {
    for (const emu::AsyncCopy& c : p.committed.front()) std::memcpy(c.dst, c.src, c.bytes);
    p.committed.pop_front();
  }
}
