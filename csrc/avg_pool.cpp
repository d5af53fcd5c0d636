// Average pooling over 2x2 windows with stride 2 (LeNet's `nn.AvgPool2d(2, 2)`) on contiguous
// NCHW maps on the CPU, forward and backward. libtorch's NCHW kernel computes each output with
// the general window's bounds and divisor and no vector instructions; on LeNet's 24x24 maps that
// was a fifth of the training step. Here each output row is two input rows summed pairwise, in a
// loop the compiler vectorizes. The sums run in libtorch's order (row by row, left to right,
// from zero, in float, or double for double), so the outputs and gradients are bit for bit libtorch's.
#include "guard.h"

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

namespace {

template <typename T>
void pool_rows(const T *in, T *out, int64_t planes, int64_t height, int64_t width) {
  using Acc = at::opmath_type<T>;
  const int64_t out_h = height / 2, out_w = width / 2;
  // Enough planes per thread that a task is worth handing out (about 16k outputs).
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out_h * out_w));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < out_h; ++i) {
        const T *top = in + (p * height + 2 * i) * width;
        const T *bottom = top + width;
        T *row = out + (p * out_h + i) * out_w;
        for (int64_t j = 0; j < out_w; ++j) {
          Acc sum = 0;
          sum += static_cast<Acc>(top[2 * j]);
          sum += static_cast<Acc>(top[2 * j + 1]);
          sum += static_cast<Acc>(bottom[2 * j]);
          sum += static_cast<Acc>(bottom[2 * j + 1]);
          row[j] = static_cast<T>(sum / 4);
        }
      }
    }
  });
}

template <typename T>
void unpool_rows(const T *grad_out, T *grad_in, int64_t planes, int64_t height, int64_t width) {
  using Acc = at::opmath_type<T>;
  const int64_t out_h = height / 2, out_w = width / 2;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, height * width));
  at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      T *plane = grad_in + p * height * width;
      for (int64_t i = 0; i < out_h; ++i) {
        const T *g = grad_out + (p * out_h + i) * out_w;
        T *top = plane + 2 * i * width;
        T *bottom = top + width;
        for (int64_t j = 0; j < out_w; ++j) {
          T share = static_cast<T>(static_cast<Acc>(g[j]) / 4);
          top[2 * j] = share;
          top[2 * j + 1] = share;
          bottom[2 * j] = share;
          bottom[2 * j + 1] = share;
        }
        // An odd width's last column is in no window.
        if (width % 2 != 0) top[width - 1] = bottom[width - 1] = T(0);
      }
      // An odd height's last row is in no window.
      if (height % 2 != 0) std::fill(plane + (height - 1) * width, plane + height * width, T(0));
    }
  });
}

at::Tensor pool(const at::Tensor &x) {
  auto sizes = x.sizes();
  auto y = at::empty({sizes[0], sizes[1], sizes[2] / 2, sizes[3] / 2}, x.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "convnets_avg_pool2x2", [&] {
    pool_rows(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), sizes[0] * sizes[1], sizes[2], sizes[3]);
  });
  return y;
}

at::Tensor unpool(const at::Tensor &grad_out, at::IntArrayRef input_sizes) {
  auto g = grad_out.contiguous();
  auto grad_in = at::empty(input_sizes, g.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "convnets_avg_unpool2x2", [&] {
    unpool_rows(g.const_data_ptr<scalar_t>(), grad_in.mutable_data_ptr<scalar_t>(),
                input_sizes[0] * input_sizes[1], input_sizes[2], input_sizes[3]);
  });
  return grad_in;
}

struct AvgPool2x2 : torch::autograd::Function<AvgPool2x2> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x) {
    ctx->saved_data["sizes"] = x.sizes();
    return pool(x);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto sizes = ctx->saved_data["sizes"].toIntVector();
    return {unpool(grads[0], sizes)};
  }
};

} // namespace

extern "C" {

// avg_pool2d(x, 2, 2) of a contiguous 4-d float32, float64 or bfloat16 CPU tensor, differentiable,
// into *out; leaves *out NULL for anything else (the caller then calls libtorch's).
char *convnets_avg_pool2x2(const at::Tensor *x, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    bool fits = x->device().is_cpu() && x->dim() == 4 && x->is_contiguous() && x->size(2) >= 2 && x->size(3) >= 2 &&
                (x->scalar_type() == at::kFloat || x->scalar_type() == at::kDouble ||
                 x->scalar_type() == at::kBFloat16);
    if (!fits) return nullptr;
    *out = new at::Tensor(AvgPool2x2::apply(*x));
  })
}

} // extern "C"
