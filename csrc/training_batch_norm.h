// What the shim's two training-mode batch norm kernels share (csrc/batch_norm.cpp for NCHW maps,
// csrc/norm_relu.cpp for channels-last ones): the inputs they take, their sums in a fixed order,
// the per-channel terms of the input's gradient, and access to a float32 or bfloat16 map's values.
#pragma once

#include "bf16_bits.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <initializer_list>
#include <vector>

// A 4-d float32 or bfloat16 CPU map laid out as `layout` with more than one value per channel,
// and float32 CPU weight, bias and running statistics of its channel count, the statistics
// contiguous (the kernels write them through their data). The kernels decline anything else, for
// libtorch's layers.
inline bool batch_norm_fits(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &bias,
                            const at::Tensor &running_mean, const at::Tensor &running_var, at::MemoryFormat layout) {
  auto float_cpu = [](const at::Tensor &t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; };
  const bool typed = float_cpu(x) || (x.device().is_cpu() && x.scalar_type() == at::kBFloat16);
  if (x.dim() != 4 || !x.is_contiguous(layout) || !typed || x.numel() <= x.size(1)) return false;
  for (const at::Tensor *t : {&weight, &bias, &running_mean, &running_var})
    if (!float_cpu(*t) || t->numel() != x.size(1)) return false;
  return running_mean.is_contiguous() && running_var.is_contiguous();
}

// Splits `items` (images, rows) into `blocks` consecutive blocks, calls block(first, last, sums)
// for each, in parallel (`grain` blocks at least per thread), where sums are `width` doubles of
// the block's own, and returns their totals, added in block order: the same bits on any number
// of threads.
template <typename Block>
std::vector<double> ordered_block_sums(int64_t items, int64_t blocks, int64_t width, int64_t grain,
                                       const Block &block) {
  std::vector<double> partial(blocks * width, 0.0);
  at::parallel_for(0, blocks, grain, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) block(b * items / blocks, (b + 1) * items / blocks, partial.data() + b * width);
  });
  std::vector<double> total(width, 0.0);
  for (int64_t b = 0; b < blocks; ++b)
    for (int64_t i = 0; i < width; ++i) total[i] += partial[b * width + i];
  return total;
}

// The batch norm's gradients of weight and bias, and the per-channel terms of its input's,
// dx = (dy - grad_mean - (x - mean) * k) * invstd * weight, from each channel's sum of dy and of
// dy times x's deviation from the mean over `count` values: in libtorch's order and in float as
// it computes them (the deviation from the mean first: folding the mean into a per-channel
// constant loses digits where the mean is large against the spread).
struct BatchNormGrads {
  at::Tensor weight, bias;
  std::vector<float> k, grad_mean;
};

template <typename Sums>
BatchNormGrads batch_norm_grads(int64_t channels, double count, const float *invstd, const at::TensorOptions &options,
                                const Sums &sum_and_dot) {
  BatchNormGrads g{at::empty({channels}, options), at::empty({channels}, options), std::vector<float>(channels),
                   std::vector<float>(channels)};
  float *weight_grad = g.weight.mutable_data_ptr<float>(), *bias_grad = g.bias.mutable_data_ptr<float>();
  for (int64_t c = 0; c < channels; ++c) {
    const auto [sum, dot] = sum_and_dot(c);
    weight_grad[c] = static_cast<float>(dot * invstd[c]);
    bias_grad[c] = static_cast<float>(sum);
    g.k[c] = static_cast<float>(dot) * invstd[c] * invstd[c] / static_cast<float>(count);
    g.grad_mean[c] = static_cast<float>(sum / count);
  }
  return g;
}

// Calls body(T{}) with T the element type of a float32 or bfloat16 map.
template <typename Body> auto by_element_type(const at::Tensor &map, const Body &body) {
  return map.scalar_type() == at::kBFloat16 ? body(Bf16Bits{}) : body(float{});
}

// The map's values as T (float, or bfloat16's bits).
template <typename T> const T *values(const at::Tensor &t) { return static_cast<const T *>(t.const_data_ptr()); }
template <typename T> T *values(at::Tensor &t) { return static_cast<T *>(t.mutable_data_ptr()); }
