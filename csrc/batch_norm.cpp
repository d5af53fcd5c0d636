// Training-mode batch norm of contiguous NCHW float32 and bfloat16 maps on the CPU (LeNet's
// BatchNorm2d, and the chapter's from-scratch BatchNorm, whose moving variance follows the biased
// batch variance), forward and backward. libtorch's kernel for this layout sums each channel's
// values one at a time into a double, so every pass over the map waits on one addition after
// another; with LeNet's six channels of 24x24 that was the slowest layer of the forward pass. Here
// each plane (one image's channel) is summed into doubles by vector lanes, in loops compiled for
// AVX-512, AVX2 and the baseline (the CPU picks one when the program loads), and the blocks of
// images are combined in a fixed order, so the result does not depend on the number of threads.
// The rest is libtorch's arithmetic: the statistics (the biased variance normalises, the unbiased
// one updates the running variance), the scale and shift, and the gradients' formula, in float,
// in its order. A bfloat16 map (`--precision bf16`) is read as bfloat16 and computed in float,
// with its statistics and the weight and bias gradients in float, its output and input gradient
// in bfloat16 as libtorch's mixed-type kernel keeps them; the from-scratch layer's output is
// float32, as its formula's product with its float32 gamma is.
#include "guard.h"
#include "training_batch_norm.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <vector>

namespace {

// Each loop below is a template over the map's element type T (float, or bfloat16 as Bf16Bits,
// computed in float) and the output's U (T, or float for the from-scratch layer's bfloat16 maps).

template <typename T> VECTOR_CLONES_TEMPLATE double plane_sum(const T *x, int64_t size) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < size; ++i) s += to_float(x[i]);
  return s;
}

template <typename T> VECTOR_CLONES_TEMPLATE double plane_squared_deviations(const T *x, int64_t size, float mean) {
  double s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t i = 0; i < size; ++i) {
    const float deviation = to_float(x[i]) - mean;
    s += deviation * deviation;
  }
  return s;
}

// The sum of dy, and of dy times x's deviation from the mean.
template <typename T, typename U>
VECTOR_CLONES_TEMPLATE void plane_grad_sums(const T *x, const U *dy, int64_t size, float mean, double *sums) {
  double s = 0, d = 0;
#pragma omp simd reduction(+ : s, d)
  for (int64_t i = 0; i < size; ++i) {
    const float dy_i = to_float(dy[i]);
    s += dy_i;
    d += (to_float(x[i]) - mean) * dy_i;
  }
  sums[0] += s;
  sums[1] += d;
}

template <typename T, typename U>
VECTOR_CLONES_TEMPLATE void plane_affine(const T *x, U *y, int64_t size, float scale, float shift) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i) y[i] = from_float<U>(to_float(x[i]) * scale + shift);
}

template <typename T, typename U>
VECTOR_CLONES_TEMPLATE void plane_input_grad(const T *x, const U *dy, T *dx, int64_t size, float mean, float k,
                                             float grad_mean, float invstd, float weight) {
#pragma omp simd
  for (int64_t i = 0; i < size; ++i)
    dx[i] = from_float<T>((to_float(dy[i]) - grad_mean - (to_float(x[i]) - mean) * k) * invstd * weight);
}

// Calls plane(n, c, sums) for every image n and channel c of a (N, C, ...) map, where sums are K
// double accumulators of channel c, and returns the channels' totals (C x K). Blocks of images
// run in parallel into accumulators of their own, added up in block order afterwards.
template <int K, typename Plane>
std::vector<double> per_channel(int64_t images, int64_t channels, int64_t plane_size, const Plane &plane) {
  const int64_t blocks = std::min<int64_t>(images, 32);
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, images / blocks * channels * plane_size));
  return ordered_block_sums(images, blocks, channels * K, grain, [&](int64_t first, int64_t last, double *sums) {
    for (int64_t n = first; n < last; ++n)
      for (int64_t c = 0; c < channels; ++c) plane(n, c, sums + c * K);
  });
}

// Calls plane(p, c) for every plane p (image and channel) of a (N, C, S) map, c its channel, in
// parallel.
template <typename Plane>
void per_plane(int64_t images, int64_t channels, int64_t size, const Plane &plane) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(1, size));
  at::parallel_for(0, images * channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) plane(p, p % channels);
  });
}

// Calls body(T{}, U{}) with T the element type of a float32 or bfloat16 map x and U its
// output's: T, or float where `float_output`.
template <typename Body> void by_types(const at::Tensor &x, bool float_output, const Body &body) {
  if (x.scalar_type() != at::kBFloat16) {
    body(float{}, float{});
  } else if (float_output) {
    body(Bf16Bits{}, float{});
  } else {
    body(Bf16Bits{}, Bf16Bits{});
  }
}

struct TrainingBatchNorm : torch::autograd::Function<TrainingBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const at::Tensor &bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
                            double eps, bool unbiased_running_var, bool float_output) {
    const int64_t images = x.size(0), channels = x.size(1), size = x.numel() / (images * channels);
    const double count = static_cast<double>(images * size);
    std::vector<double> sums, squares;
    std::vector<float> mean(channels);
    by_element_type(x, [&](auto type) {
      const auto *in = values<decltype(type)>(x);
      sums = per_channel<1>(images, channels, size, [&](int64_t n, int64_t c, double *acc) {
        acc[0] += plane_sum(in + (n * channels + c) * size, size);
      });
      for (int64_t c = 0; c < channels; ++c) mean[c] = static_cast<float>(sums[c] / count);
      squares = per_channel<1>(images, channels, size, [&](int64_t n, int64_t c, double *acc) {
        acc[0] += plane_squared_deviations(in + (n * channels + c) * size, size, mean[c]);
      });
    });
    // The per-channel statistics in float whatever the map's type, as libtorch keeps them.
    auto options = x.options().dtype(at::kFloat);
    auto saved_mean = at::empty({channels}, options), saved_invstd = at::empty({channels}, options);
    float *mean_out = saved_mean.mutable_data_ptr<float>(), *invstd_out = saved_invstd.mutable_data_ptr<float>();
    std::vector<float> scale(channels), shift(channels);
    {
      auto w = weight.contiguous(), b = bias.contiguous();
      const float *wp = w.const_data_ptr<float>(), *bp = b.const_data_ptr<float>();
      // Through the data: the from-scratch layer keeps its statistics as (1, C, 1, 1).
      float *rm = running_mean.mutable_data_ptr<float>(), *rv = running_var.mutable_data_ptr<float>();
      const double running_count = unbiased_running_var ? count - 1 : count;
      // In float, as libtorch's kernel computes the scale and shift.
      for (int64_t c = 0; c < channels; ++c) {
        const float invstd = static_cast<float>(1.0 / std::sqrt(squares[c] / count + eps));
        mean_out[c] = mean[c];
        invstd_out[c] = invstd;
        scale[c] = invstd * wp[c];
        shift[c] = bp[c] - mean[c] * scale[c];
        rm[c] = static_cast<float>(momentum * mean[c] + (1 - momentum) * rm[c]);
        rv[c] = static_cast<float>(momentum * squares[c] / running_count + (1 - momentum) * rv[c]);
      }
    }
    // y = x * scale + shift, as libtorch's kernel computes it.
    auto y = at::empty_like(x, float_output ? options : x.options());
    by_types(x, float_output, [&](auto in_type, auto out_type) {
      const auto *in = values<decltype(in_type)>(x);
      auto *out = values<decltype(out_type)>(y);
      per_plane(images, channels, size, [&](int64_t p, int64_t c) {
        plane_affine(in + p * size, out + p * size, size, scale[c], shift[c]);
      });
    });
    ctx->save_for_backward({x, weight, saved_mean, saved_invstd});
    ctx->saved_data["float_output"] = float_output;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const auto &x = saved[0];
    const bool float_output = ctx->saved_data["float_output"].toBool();
    auto weight = saved[1].contiguous();
    const float *mean = saved[2].const_data_ptr<float>(), *invstd = saved[3].const_data_ptr<float>();
    auto dy = grads[0].to(float_output ? at::kFloat : x.scalar_type()).contiguous();
    const int64_t images = x.size(0), channels = x.size(1), size = x.numel() / (images * channels);
    const double count = static_cast<double>(images * size);
    auto dx = at::empty_like(x);
    std::vector<double> sums;
    by_types(x, float_output, [&](auto in_type, auto out_type) {
      using T = decltype(in_type);
      const T *in = values<T>(x);
      const auto *grad = values<decltype(out_type)>(dy);
      // Per channel: the sum of dy, and of dy times x's deviation from the mean.
      sums = per_channel<2>(images, channels, size, [&](int64_t n, int64_t c, double *acc) {
        const int64_t offset = (n * channels + c) * size;
        plane_grad_sums(in + offset, grad + offset, size, mean[c], acc);
      });
    });
    auto norm_grads = batch_norm_grads(channels, count, invstd, x.options().dtype(at::kFloat), [&](int64_t c) {
      return std::pair(sums[2 * c], sums[2 * c + 1]);
    });
    const float *wp = weight.const_data_ptr<float>(), *k = norm_grads.k.data();
    const float *grad_mean = norm_grads.grad_mean.data();
    by_types(x, float_output, [&](auto in_type, auto out_type) {
      using T = decltype(in_type);
      const T *in = values<T>(x);
      const auto *grad = values<decltype(out_type)>(dy);
      T *out = values<T>(dx);
      per_plane(images, channels, size, [&](int64_t p, int64_t c) {
        plane_input_grad(in + p * size, grad + p * size, out + p * size, size, mean[c], k[c], grad_mean[c],
                         invstd[c], wp[c]);
      });
    });
    // In the weight's and bias's own shape: (C), or the from-scratch layer's (1, C, 1, 1).
    const auto shape = saved[1].sizes();
    auto none = at::Tensor();
    return {dx, norm_grads.weight.view(shape), norm_grads.bias.view(shape), none, none, none, none, none, none};
  }
};

// The calls below: the training-mode batch norm into *out, or NULL where the kernel declines.
char *batch_norm_train(const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias,
                       const at::Tensor *running_mean, const at::Tensor *running_var, double momentum, double eps,
                       bool unbiased_running_var, bool float_output, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    if (!batch_norm_fits(*x, *weight, *bias, *running_mean, *running_var, at::MemoryFormat::Contiguous))
      return nullptr;
    *out = new at::Tensor(TrainingBatchNorm::apply(*x, *weight, *bias, *running_mean, *running_var, momentum, eps,
                                                   unbiased_running_var, float_output));
  })
}

} // namespace

extern "C" {

// batch_norm(x, weight, bias, running_mean, running_var, training=True, momentum, eps) of a
// contiguous 4-d float32 or bfloat16 CPU map, differentiable, updating the running statistics, into *out;
// leaves *out NULL for anything else (another layout, type or device, or 2-d inputs, which
// libtorch's kernel handles well), for the caller to call libtorch's.
char *convnets_batch_norm_train(const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias,
                                const at::Tensor *running_mean, const at::Tensor *running_var, double momentum,
                                double eps, at::Tensor **out) {
  return batch_norm_train(x, weight, bias, running_mean, running_var, momentum, eps, true, false, out);
}

// The same with the running variance following the biased batch variance: the chapter's
// from-scratch BatchNorm, whose (1, C, 1, 1) tensors it takes as they are.
char *convnets_batch_norm_train_biased_running_var(const at::Tensor *x, const at::Tensor *weight,
                                                   const at::Tensor *bias, const at::Tensor *running_mean,
                                                   const at::Tensor *running_var, double momentum, double eps,
                                                   at::Tensor **out) {
  return batch_norm_train(x, weight, bias, running_mean, running_var, momentum, eps, false, true, out);
}

} // extern "C"
