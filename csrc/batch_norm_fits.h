// What the shim's training-mode batch norm kernels take (csrc/batch_norm.cpp for NCHW maps,
// csrc/norm_relu.cpp for channels-last ones): they decline anything else, for libtorch's layers.
#pragma once

#include <ATen/ATen.h>

#include <initializer_list>

// A 4-d float32 CPU map laid out as `layout` with more than one value per channel, and float32
// CPU weight, bias and running statistics of its channel count, the statistics contiguous (the
// kernels write them through their data).
inline bool batch_norm_fits(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &bias,
                            const at::Tensor &running_mean, const at::Tensor &running_var,
                            at::MemoryFormat layout) {
  auto float_cpu = [](const at::Tensor &t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; };
  if (x.dim() != 4 || !x.is_contiguous(layout) || !float_cpu(x) || x.numel() <= x.size(1)) return false;
  for (const at::Tensor *t : {&weight, &bias, &running_mean, &running_var})
    if (!float_cpu(*t) || t->numel() != x.size(1)) return false;
  return running_mean.is_contiguous() && running_var.is_contiguous();
}
