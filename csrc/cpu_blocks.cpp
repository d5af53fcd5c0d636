// A CPU allocator for libtorch that keeps large freed blocks and hands them out again.
//
// A training step allocates the same large tensors every step (VGG's first activations at d2l's
// batch are 392 MiB). glibc maps blocks above its mmap threshold afresh on each malloc and unmaps
// them on free, so every step pays a page fault and the zeroing of each 4 KiB page again: a fifth
// of VGG's step on a 2-core machine. `torch.compile` avoids that by reusing its buffers; this
// does the same for eager code.
//
// Blocks of at least `min_bytes` are rounded up to a 2 MiB size class. A freed one is kept, and
// the next request of its class takes it back, or failing that a request of up to half its size
// (held whole while in use). The blocks in use and kept together never exceed a quarter more than
// the most that were ever in use at once (or what the request at hand needs): a request that
// finds no kept block to take first frees kept blocks, longest unused first, until its fresh
// block fits under that mark. A step's forward and backward need different sets of sizes at
// their peaks, so with the mark at the peak itself (and exact classes only) VGG's step took 7 of
// its 16 large blocks fresh every time, 1.3 GB of page faults; with both changes no network of
// the book's takes one after the first steps. When memory runs out, every kept block is handed
// back before the request fails. Smaller blocks go to libtorch's default allocator (glibc's heap
// reuses them).
#include "guard.h"

#include <algorithm>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <cstdint>
#include <list>
#include <malloc.h>
#include <map>
#include <mutex>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

constexpr size_t kClass = size_t{2} << 20;

class LargeBlockCache final : public c10::Allocator {
 public:
  LargeBlockCache(c10::Allocator *small, size_t min_bytes) : small_(small), min_bytes_(min_bytes) {}

  c10::DataPtr allocate(size_t n) override {
    if (n < min_bytes_) return small_->allocate(n);
    size_t bytes = (n + kClass - 1) / kClass * kClass;
    void *data = take(bytes);
    if (data == nullptr) data = allocate_fresh(bytes);
    std::lock_guard<std::mutex> guard(lock_);
    in_use_.emplace(data, bytes);
    in_use_bytes_ += bytes;
    peak_in_use_bytes_ = std::max(peak_in_use_bytes_, in_use_bytes_);
    return {data, data, &release, c10::Device(c10::DeviceType::CPU)};
  }

  // oneDNN's scratch buffers come through raw_allocate, which needs the data pointer to be the
  // context and frees through this function.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void *dest, const void *src, size_t count) const override { default_copy_data(dest, src, count); }

  // Hands every kept block back to the system; with `restart_peak` the peak also starts afresh
  // from the blocks in use, so that what runs next (another network measured in the same
  // process) keeps blocks by its own peak, not an earlier one's. Returns how many it freed.
  size_t free_kept(bool restart_peak) {
    std::vector<void *> kept;
    {
      std::lock_guard<std::mutex> guard(lock_);
      for (auto &[data, size] : unused_) kept.push_back(data);
      unused_.clear();
      by_class_.clear();
      kept_bytes_ = 0;
      if (restart_peak) peak_in_use_bytes_ = in_use_bytes_;
    }
    for (void *data : kept) c10::free_cpu(data);
    return kept.size();
  }

  void stats(int64_t *kept_bytes, int64_t *peak_in_use_bytes, int64_t *reused, int64_t *fresh) {
    std::lock_guard<std::mutex> guard(lock_);
    *kept_bytes = static_cast<int64_t>(kept_bytes_);
    *peak_in_use_bytes = static_cast<int64_t>(peak_in_use_bytes_);
    *reused = static_cast<int64_t>(reused_);
    *fresh = static_cast<int64_t>(fresh_);
  }

 private:
  using Kept = std::list<std::pair<void *, size_t>>;

  // A kept block of `bytes`' class or, failing that, of the smallest class up to twice it (its
  // size replaces `bytes`); else NULL, after freeing the kept blocks that a fresh block of
  // `bytes` would not fit beside.
  void *take(size_t &bytes) {
    std::vector<void *> to_free;
    {
      std::lock_guard<std::mutex> guard(lock_);
      auto found = by_class_.lower_bound(bytes);
      if (found != by_class_.end() && found->first <= 2 * bytes) {
        void *data = found->second->first;
        bytes = found->first;
        unused_.erase(found->second);
        by_class_.erase(found);
        kept_bytes_ -= bytes;
        reused_ += 1;
        return data;
      }
      size_t limit = std::max(peak_in_use_bytes_ / 4 * 5, in_use_bytes_ + bytes);
      while (in_use_bytes_ + kept_bytes_ + bytes > limit && !unused_.empty()) {
        auto [data, size] = unused_.front();
        forget_class_entry(data, size);
        unused_.pop_front();
        kept_bytes_ -= size;
        to_free.push_back(data);
      }
      fresh_ += 1;
    }
    for (void *data : to_free) c10::free_cpu(data);
    return nullptr;
  }

  // A new block; when memory runs out, after handing every kept block back, since they may be
  // what stands in the way (the bound above lets them stay beside the request).
  void *allocate_fresh(size_t bytes) {
    try {
      return c10::alloc_cpu(bytes);
    } catch (const c10::Error &) {
      if (free_kept(/*restart_peak=*/false) == 0) throw;
      return c10::alloc_cpu(bytes);
    }
  }

  void forget_class_entry(void *data, size_t size) {
    auto range = by_class_.equal_range(size);
    for (auto it = range.first; it != range.second; ++it) {
      if (it->second->first == data) {
        by_class_.erase(it);
        return;
      }
    }
  }

  // Keeps a large block for reuse, or hands a small one back to the default allocator (only
  // raw_deallocate sends small ones here).
  void keep_or_pass_on(void *data) {
    std::unique_lock<std::mutex> guard(lock_);
    auto found = in_use_.find(data);
    if (found == in_use_.end()) {
      guard.unlock();
      small_->raw_deleter()(data);
      return;
    }
    size_t bytes = found->second;
    in_use_.erase(found);
    in_use_bytes_ -= bytes;
    unused_.emplace_back(data, bytes);
    by_class_.emplace(bytes, std::prev(unused_.end()));
    kept_bytes_ += bytes;
  }

  static void release(void *data);

  c10::Allocator *small_;
  size_t min_bytes_;
  std::mutex lock_;
  // The large blocks handed out, with their sizes.
  std::unordered_map<void *, size_t> in_use_;
  // Kept blocks, longest unused first, and the same blocks by size class.
  Kept unused_;
  std::multimap<size_t, Kept::iterator> by_class_;
  size_t in_use_bytes_ = 0;
  size_t peak_in_use_bytes_ = 0;
  size_t kept_bytes_ = 0;
  uint64_t reused_ = 0;
  uint64_t fresh_ = 0;
};

// Never destroyed: tensors may be freed during the process's exit, after static destructors.
LargeBlockCache *installed = nullptr;

void LargeBlockCache::release(void *data) { installed->keep_or_pass_on(data); }

}  // namespace

extern "C" {

// Makes libtorch's CPU tensors of at least `min_bytes` come from the cache above. Tensors that
// exist already keep their own deleters. A second call changes nothing.
char *convnets_reuse_large_cpu_blocks(int64_t min_bytes) {
  GUARD({
    static std::once_flag once;
    std::call_once(once, [&] {
      installed = new LargeBlockCache(c10::GetDefaultCPUAllocator(), static_cast<size_t>(min_bytes));
      c10::SetCPUAllocator(installed, /*priority=*/1);
    });
  })
}

// Frees the blocks the cache keeps, starts its peak afresh from the blocks in use, and returns
// the free memory of glibc's heap to the system: what a process that runs one workload after
// another calls in between, so that the next one's memory is its own.
char *convnets_release_large_cpu_blocks() {
  GUARD({
    if (installed != nullptr) installed->free_kept(/*restart_peak=*/true);
    malloc_trim(0);
  })
}

// The bytes the cache keeps unused now, the most bytes ever in use at once, how many requests it
// served from kept blocks and how many with fresh ones (zeros when it is not installed).
char *convnets_large_cpu_block_stats(int64_t *kept_bytes, int64_t *peak_in_use_bytes, int64_t *reused,
                                     int64_t *fresh) {
  GUARD({
    *kept_bytes = 0;
    *peak_in_use_bytes = 0;
    *reused = 0;
    *fresh = 0;
    if (installed != nullptr) installed->stats(kept_bytes, peak_in_use_bytes, reused, fresh);
  })
}
}
