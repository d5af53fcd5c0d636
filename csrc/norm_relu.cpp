// A training-mode batch norm and the ReLU after it, in one layer, for channels-last float32 and
// bfloat16 maps on the CPU (DenseNet's pre-activation blocks, ResNet's first convolution of each
// block and its stem). Each is a memory-bound pass or two over the whole map, one after the other
// in libtorch: the batch norm reads the map twice for its statistics and once more to write its
// output, the ReLU reads and writes that again; backward, the ReLU's writes a masked gradient,
// which the batch norm's reads twice. Here the forward reads the map once for its statistics (sums
// and sums of squares in double, so the variance loses nothing to the mean) and once to write the
// ReLU's output, and the backward recomputes the ReLU's mask from the input, reading the map and
// the gradient once for the sums and once to write the input's gradient: 8 passes where there were
// 14, and no intermediate map. A channels-last map is rows of channels, so the channels are the
// vector lanes. Rows are summed in blocks of a fixed count, added up in block order, so the result
// does not depend on the number of threads. A bfloat16 map (`--precision bf16`, where the
// convolutions before it compute in bfloat16) is read and written as bfloat16 and computed in
// float, its statistics and the layer's gradients in float, as libtorch's mixed-type kernel keeps
// them. In evaluation the two are one pass over the map, whose rows may be strided (a channel slice
// of a dense block's map).
#include "bf16_bits.h"
#include "guard.h"
#include "training_batch_norm.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cmath>
#include <vector>

// The backward pass recomputes x * scale + shift to know where the ReLU passed its input; it must
// round exactly as the forward pass did, so no multiply-add may be fused into one rounding in one
// loop and not the other. And GCC keeps a loop's select (the ReLU's mask) as a branch, which it
// cannot vectorise, unless comparisons may be assumed not to trap (nothing here reads the
// floating-point exception flags).
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off", "no-trapping-math")
#endif

namespace {

// Each loop below is a template over the map's element type: float, or bfloat16 as Bf16Bits,
// computed in float.

// Adds each channel's values over `rows` rows, and their squares, into sums and squares.
template <typename T>
VECTOR_CLONES_TEMPLATE void row_sums(const T *x, int64_t rows, int64_t channels, double *sums, double *squares) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *row = x + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const double v = to_float(row[c]);
      sums[c] += v;
      squares[c] += v * v;
    }
  }
}

// relu(x * scale + shift) over `rows` rows of `channels` values; the input's rows are `stride`
// values apart (in evaluation, a channel slice of a wider channels-last map, as a dense block's
// concatenation holds its layers' inputs), the output's packed.
template <typename T>
VECTOR_CLONES_TEMPLATE void rows_normalized_relu(const T *x, int64_t stride, T *y, int64_t rows, int64_t channels,
                                                 const float *scale, const float *shift) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *row = x + r * stride;
    T *out = y + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float v = to_float(row[c]) * scale[c] + shift[c];
      out[c] = from_float<T>(v < 0.f ? 0.f : v);
    }
  }
}

// The sums of the gradient the ReLU passes on (dy where its input was above 0, as libtorch's
// threshold_backward has it), and of that times x's deviation from the mean.
template <typename T>
VECTOR_CLONES_TEMPLATE void row_grad_sums(const T *x, const T *dy, int64_t rows, int64_t channels, const float *scale,
                                          const float *shift, const float *mean, double *sums, double *dots) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *row = x + r * channels, *grad = dy + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float x_c = to_float(row[c]), v = x_c * scale[c] + shift[c], dy_c = to_float(grad[c]);
      const float g = v <= 0.f ? 0.f : dy_c;
      sums[c] += g;
      dots[c] += (x_c - mean[c]) * g;
    }
  }
}

// dx = (g - mean(g) - (x - mean) * k) * invstd * weight, g the ReLU's gradient, in libtorch's
// order (as csrc/batch_norm.cpp computes it).
template <typename T>
VECTOR_CLONES_TEMPLATE void rows_input_grad(const T *x, const T *dy, T *dx, int64_t rows, int64_t channels,
                                            const float *scale, const float *shift, const float *mean, const float *k,
                                            const float *grad_mean, const float *invstd, const float *weight) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *row = x + r * channels, *grad = dy + r * channels;
    T *out = dx + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      const float x_c = to_float(row[c]), v = x_c * scale[c] + shift[c], dy_c = to_float(grad[c]);
      const float g = v <= 0.f ? 0.f : dy_c;
      out[c] = from_float<T>((g - grad_mean[c] - (x_c - mean[c]) * k[c]) * invstd[c] * weight[c]);
    }
  }
}

// Calls block(first_row, rows, sums) for 64 fixed blocks of the `rows` rows (fewer if there are
// fewer rows), in parallel, where sums are 2 x channels doubles of the block's own, and returns
// their totals, added in block order.
template <typename Block>
std::vector<double> per_channel_sums(int64_t rows, int64_t channels, const Block &block) {
  return ordered_block_sums(rows, std::min<int64_t>(rows, 64), 2 * channels, 1,
                            [&](int64_t first, int64_t last, double *sums) { block(first, last - first, sums); });
}

// Calls rows(first_row, count) over all `rows` rows in parallel, in pieces of about 32k values.
template <typename Rows> void per_rows(int64_t rows, int64_t channels, const Rows &body) {
  const int64_t grain = std::max<int64_t>(1, 32768 / channels);
  at::parallel_for(0, rows, grain, [&](int64_t begin, int64_t end) { body(begin, end - begin); });
}

const float *floats(const at::Tensor &t) { return t.const_data_ptr<float>(); }

// relu(x * scale + shift) per channel of a 4-d map whose positions are rows of channels `stride`
// values apart, into a new channels-last map.
at::Tensor normalized_relu(const at::Tensor &x, int64_t stride, const float *scale, const float *shift) {
  const int64_t channels = x.size(1), rows = x.numel() / channels;
  auto y = at::empty(x.sizes(), x.options(), at::MemoryFormat::ChannelsLast);
  by_element_type(x, [&](auto type) {
    using T = decltype(type);
    const T *in = values<T>(x);
    T *out = values<T>(y);
    per_rows(rows, channels, [&](int64_t first, int64_t n) {
      rows_normalized_relu(in + first * stride, stride, out + first * channels, n, channels, scale, shift);
    });
  });
  return y;
}

struct TrainingBatchNormReLU : torch::autograd::Function<TrainingBatchNormReLU> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const at::Tensor &bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
                            double eps) {
    const int64_t channels = x.size(1), rows = x.numel() / channels;
    const double count = static_cast<double>(rows);
    auto sums = by_element_type(x, [&](auto type) {
      const auto *in = values<decltype(type)>(x);
      return per_channel_sums(rows, channels, [&](int64_t first, int64_t n, double *acc) {
        row_sums(in + first * channels, n, channels, acc, acc + channels);
      });
    });
    // The per-channel statistics in float whatever the map's type, as libtorch keeps them.
    auto options = x.options().dtype(at::kFloat);
    auto saved_mean = at::empty({channels}, options), saved_invstd = at::empty({channels}, options);
    auto scale_shift = at::empty({2, channels}, options);
    float *mean = saved_mean.mutable_data_ptr<float>(), *invstd = saved_invstd.mutable_data_ptr<float>();
    float *scale = scale_shift.mutable_data_ptr<float>(), *shift = scale + channels;
    {
      auto w = weight.contiguous(), b = bias.contiguous();
      const float *wp = floats(w), *bp = floats(b);
      auto rm = running_mean.accessor<float, 1>(), rv = running_var.accessor<float, 1>();
      for (int64_t c = 0; c < channels; ++c) {
        const double mean_c = sums[c] / count;
        const double variance = std::max(0.0, sums[channels + c] / count - mean_c * mean_c);
        mean[c] = static_cast<float>(mean_c);
        invstd[c] = static_cast<float>(1.0 / std::sqrt(variance + eps));
        // In float, as libtorch's kernel computes the scale and shift.
        scale[c] = invstd[c] * wp[c];
        shift[c] = bp[c] - mean[c] * scale[c];
        // The running variance takes the unbiased variance, as libtorch's does.
        rm[c] = static_cast<float>(momentum * mean_c + (1 - momentum) * rm[c]);
        rv[c] = static_cast<float>(momentum * variance * count / (count - 1) + (1 - momentum) * rv[c]);
      }
    }
    auto y = normalized_relu(x, channels, scale, shift);
    ctx->save_for_backward({x, weight, saved_mean, saved_invstd, scale_shift});
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0];
    auto weight = saved[1].contiguous();
    const float *mean = floats(saved[2]), *invstd = floats(saved[3]);
    const float *scale = floats(saved[4]), *shift = scale + x.size(1);
    auto dy = grads[0].to(x.scalar_type()).contiguous(at::MemoryFormat::ChannelsLast);
    const int64_t channels = x.size(1), rows = x.numel() / channels;
    const double count = static_cast<double>(rows);
    auto sums = by_element_type(x, [&](auto type) {
      using T = decltype(type);
      const T *in = values<T>(x), *grad = values<T>(dy);
      return per_channel_sums(rows, channels, [&](int64_t first, int64_t n, double *acc) {
        const int64_t offset = first * channels;
        row_grad_sums(in + offset, grad + offset, n, channels, scale, shift, mean, acc, acc + channels);
      });
    });
    auto norm_grads = batch_norm_grads(channels, count, invstd, x.options().dtype(at::kFloat), [&](int64_t c) {
      return std::pair(sums[c], sums[channels + c]);
    });
    auto dx = at::empty(x.sizes(), x.options(), at::MemoryFormat::ChannelsLast);
    by_element_type(x, [&](auto type) {
      using T = decltype(type);
      const T *in = values<T>(x), *grad = values<T>(dy);
      T *out = values<T>(dx);
      per_rows(rows, channels, [&](int64_t first, int64_t n) {
        const int64_t offset = first * channels;
        rows_input_grad(in + offset, grad + offset, out + offset, n, channels, scale, shift, mean,
                        norm_grads.k.data(), norm_grads.grad_mean.data(), invstd, floats(weight));
      });
    });
    return {dx, norm_grads.weight, norm_grads.bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The row stride of a 4-d CPU map whose rows (one position's channels) are each contiguous and
// evenly spaced, as in a channels-last map or a channel slice of one; 0 for any other layout.
int64_t channels_last_row_stride(const at::Tensor &x) {
  const int64_t channels = x.size(1), height = x.size(2), width = x.size(3), stride = x.stride(3);
  bool rows = (x.stride(1) == 1 || channels == 1) && stride >= channels && x.stride(2) == width * stride &&
              x.stride(0) == height * width * stride;
  return rows ? stride : 0;
}

// Eval-mode relu(batch_norm(x)) with libtorch's per-channel terms (in float, as it computes
// them): scale = weight / sqrt(var + eps), shift = bias - mean * scale. NULL where it declines.
at::Tensor *eval_batch_norm_relu(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &bias,
                                 const at::Tensor &mean, const at::Tensor &var, double eps) {
  const bool typed = x.scalar_type() == at::kFloat || x.scalar_type() == at::kBFloat16;
  if (x.dim() != 4 || !x.device().is_cpu() || !typed || x.numel() == 0) return nullptr;
  const int64_t channels = x.size(1), stride = channels_last_row_stride(x);
  if (stride == 0) return nullptr;
  for (const at::Tensor *t : {&weight, &bias, &mean, &var})
    if (!t->device().is_cpu() || t->scalar_type() != at::kFloat || t->numel() != channels) return nullptr;
  if (at::GradMode::is_enabled() && (x.requires_grad() || weight.requires_grad() || bias.requires_grad()))
    return nullptr;
  std::vector<float> scale(channels), shift(channels);
  {
    auto w = weight.contiguous(), b = bias.contiguous(), m = mean.contiguous(), v = var.contiguous();
    const float *wp = floats(w), *bp = floats(b), *mp = floats(m), *vp = floats(v);
    for (int64_t c = 0; c < channels; ++c) {
      const float invstd = 1.f / std::sqrt(vp[c] + static_cast<float>(eps));
      scale[c] = invstd * wp[c];
      shift[c] = bp[c] - mp[c] * scale[c];
    }
  }
  return new at::Tensor(normalized_relu(x, stride, scale.data(), shift.data()));
}

} // namespace

extern "C" {

// relu(batch_norm(x, weight, bias, running_mean, running_var, training=True, momentum, eps)) of
// a channels-last 4-d float32 or bfloat16 CPU map, differentiable, updating the running statistics, into
// *out; leaves *out NULL for anything else (another layout, type or device), for the caller to
// compute the two layers with libtorch.
char *convnets_batch_norm_relu_train(const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias,
                                     const at::Tensor *running_mean, const at::Tensor *running_var, double momentum,
                                     double eps, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    if (!batch_norm_fits(*x, *weight, *bias, *running_mean, *running_var, at::MemoryFormat::ChannelsLast))
      return nullptr;
    *out = new at::Tensor(
        TrainingBatchNormReLU::apply(*x, *weight, *bias, *running_mean, *running_var, momentum, eps));
  })
}

// relu(batch_norm(x, weight, bias, mean, var, training=False, eps)) of a 4-d float32 or bfloat16
// CPU map whose positions' channels are contiguous rows (channels-last, or a channel slice of a
// channels-last map), with float32 per-channel tensors of its channel count, into a new
// channels-last *out, in one pass; leaves *out NULL for anything else, and where autograd would
// need to track it, for the caller to compute the two layers with libtorch.
char *convnets_batch_norm_relu_eval(const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias,
                                    const at::Tensor *mean, const at::Tensor *var, double eps, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    *out = eval_batch_norm_relu(*x, *weight, *bias, *mean, *var, eps);
  })
}

} // extern "C"
