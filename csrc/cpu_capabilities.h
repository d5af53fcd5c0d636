// Whether libtorch's cpuinfo lists `name` (e.g. "avx512_f", "avx512_bf16") as a capability of this
// CPU: the one lookup the shim's files share.
#pragma once

#include <ATen/cpu/Utils.h>

inline bool cpu_has(const char *name) {
  auto capabilities = at::cpu::get_cpu_capabilities();
  auto found = capabilities.find(name);
  return found != capabilities.end() && found->second.isBool() && found->second.toBool();
}
