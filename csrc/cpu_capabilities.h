// Whether libtorch's cpuinfo lists `name` (e.g. "avx512_f", "avx512_bf16") as a capability of this
// CPU: the one lookup the shim's files share.
#pragma once

#include <ATen/cpu/Utils.h>

#include <atomic>
#include <stdexcept>
#include <string>

inline bool cpu_has(const char *name) {
  auto capabilities = at::cpu::get_cpu_capabilities();
  auto found = capabilities.find(name);
  return found != capabilities.end() && found->second.isBool() && found->second.toBool();
}

// Where a shim kernel that stands in for one of oneDNN's runs: by default (0) where it was measured
// faster, that is on CPUs without AVX-512 (against oneDNN's AVX2 kernels) and, where the caller
// says so, on CPUs with it (against oneDNN's AVX-512 ones); 1 everywhere and 2 nowhere, for tests
// and measurements.
class KernelPolicy {
 public:
  bool allows(bool faster_with_avx512) const {
    static const bool avx512 = cpu_has("avx512_f");
    const int mode = mode_.load(std::memory_order_relaxed);
    return mode == 1 || (mode == 0 && (!avx512 || faster_with_avx512));
  }
  void set(int mode) {
    if (mode < 0 || mode > 2) throw std::invalid_argument("unknown kernel policy " + std::to_string(mode));
    mode_.store(mode, std::memory_order_relaxed);
  }

 private:
  std::atomic<int> mode_{0};
};
