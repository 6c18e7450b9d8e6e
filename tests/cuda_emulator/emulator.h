// A CUDA block emulator for the CPU: runs a kernel as every thread of every block of its grid,
// one block at a time, each thread a coroutine (ucontext) that runs until it reaches
// __syncthreads or returns. A barrier releases when every thread that has not returned has
// reached it (CUDA's rule since Volta). Shared memory is filled with 0xFF bytes (a NaN in
// every floating type) before each block, so a read of anything not written shows.
//
// Between two barriers the threads run one after another, in increasing thread order or, with
// `reverse`, in decreasing order: a kernel without shared-memory races gives the same result
// both ways, so tests run both and compare (a missing barrier shows as a difference).

#pragma once

#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <vector>

#include "cuda_runtime.h"

namespace emu {

uint3 thread_index, block_index;
dim3 block_dim, grid_dim;
alignas(256) static unsigned char shared_bytes[kSharedBytes];
unsigned char* shared_memory = shared_bytes;

namespace detail {

constexpr size_t kStackBytes = 128 * 1024;

struct Thread {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  bool returned = false;
};

inline ucontext_t scheduler;
inline Thread* running = nullptr;
inline const std::function<void()>* body = nullptr;

inline void thread_entry() {
  (*body)();
  running->returned = true;  // uc_link resumes the scheduler
}

}  // namespace detail

inline void syncthreads() { swapcontext(&detail::running->context, &detail::scheduler); }

// Runs kernel() as threads x 1 x 1 threads per block over grid (x fastest).
inline void launch(dim3 grid, unsigned threads, const std::function<void()>& kernel, bool reverse = false) {
  using detail::Thread;
  std::vector<Thread> pool(threads);
  for (Thread& t : pool) t.stack.reset(new char[detail::kStackBytes]);
  detail::body = &kernel;
  block_dim = dim3(threads);
  grid_dim = grid;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::memset(shared_bytes, 0xFF, kSharedBytes);
        block_index = {bx, by, bz};
        for (Thread& t : pool) {
          getcontext(&t.context);
          t.context.uc_stack.ss_sp = t.stack.get();
          t.context.uc_stack.ss_size = detail::kStackBytes;
          t.context.uc_link = &detail::scheduler;
          makecontext(&t.context, detail::thread_entry, 0);
          t.returned = false;
        }
        for (unsigned live = threads; live > 0;) {  // one round: every live thread to its next barrier
          live = 0;
          for (unsigned i = 0; i < threads; ++i) {
            const unsigned id = reverse ? threads - 1 - i : i;
            Thread& t = pool[id];
            if (t.returned) continue;
            thread_index = {id, 0, 0};
            detail::running = &t;
            swapcontext(&detail::scheduler, &t.context);
            live += !t.returned;
          }
        }
        if (block_finished) block_finished();
      }
}

}  // namespace emu
