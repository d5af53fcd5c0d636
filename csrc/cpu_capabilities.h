// Whether libtorch's cpuinfo lists `name` (e.g. "avx512_f", "avx512_bf16") as a capability of this
// CPU: the one lookup the shim's files share.
#pragma once

#include <ATen/cpu/Utils.h>

inline bool cpu_has(const char *name) {
  auto capabilities = at::cpu::get_cpu_capabilities();
  auto found = capabilities.find(name);
  return found != capabilities.end() && found->second.isBool() && found->second.toBool();
}

// The policy of a shim kernel that stands in for one of oneDNN's on CPUs without AVX-512, where
// oneDNN runs its AVX2 kernels (the only ones the shim's were measured against): 0 there, 1
// everywhere, 2 nowhere (tests and measurements set the other two).
inline bool kernel_policy_allows(int mode) {
  static const bool avx512 = cpu_has("avx512_f");
  return mode == 1 || (mode == 0 && !avx512);
}
