// Average pooling over 2x2 windows with stride 2 (LeNet's `nn.AvgPool2d(2, 2)`) on contiguous
// NCHW maps on the CPU, forward and backward. libtorch's NCHW kernel computes each output with
// the general window's bounds and divisor and no vector instructions; on LeNet's 24x24 maps that
// was a fifth of the training step. Here the outputs are computed 16 at a time in a loop the
// compiler vectorises (see pool_planes for LeNet's short rows), bfloat16 as the bit operations
// its conversions are. The sums run in libtorch's order (row by row, left to right, from zero, in
// float, or double for double), so the outputs and gradients are bit for bit libtorch's.
#include "guard.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace {

// Values as their sums take them: bfloat16 bits widen exactly to floats, and sums round back to
// nearest even, as libtorch's casts do.
inline float widen(float v) { return v; }
inline double widen(double v) { return v; }
inline float widen(uint16_t bits) { return c10::detail::f32_from_bits(bits); }
inline float narrow(float v, float) { return v; }
inline double narrow(double v, double) { return v; }
inline uint16_t narrow(float v, uint16_t) { return c10::detail::round_to_nearest_even(v); }

// The mean of the 2x2 window from `top` in a map `width` pixels wide: its four pixels summed
// from zero, row by row and left to right, then divided by 4.
template <typename E>
__attribute__((always_inline)) inline E window_mean(const E *top, int64_t width) {
  decltype(widen(E())) sum = 0;
  sum += widen(top[0]);
  sum += widen(top[1]);
  sum += widen(top[width]);
  sum += widen(top[width + 1]);
  return narrow(sum / 4, E());
}

// Outputs are computed 16 at a time (one AVX-512 register of floats, two AVX2 ones).
constexpr int64_t LANES = 16;

// The outputs of `planes` consecutive planes. LeNet's output rows are short (12 and 4 outputs),
// and a loop along one row spent its time in partial vectors and scalar tails. With even sides,
// the planes are one tall map whose output row i has its windows at in[2m], m = 2 i out_w + j:
// one index along the row, and past its end. So each row is computed LANES outputs at a time,
// running on into the next rows' outputs, which those rows write again after it. Only the last
// rows, whose lanes would read or write past these planes, keep the loop along the row.
template <typename E>
__attribute__((always_inline)) inline void pool_planes(const E *in, E *out, int64_t planes, int64_t height,
                                                      int64_t width) {
  const int64_t out_h = height / 2, out_w = width / 2;
  auto exact_row = [&](const E *top, E *row) __attribute__((always_inline)) {
#pragma omp simd
    for (int64_t j = 0; j < out_w; ++j) row[j] = window_mean(top + 2 * j, width);
  };
  if (height % 2 != 0 || width % 2 != 0) {
    for (int64_t p = 0; p < planes; ++p)
      for (int64_t i = 0; i < out_h; ++i) exact_row(in + (p * height + 2 * i) * width, out + (p * out_h + i) * out_w);
    return;
  }
  const int64_t rows = planes * out_h, span = (out_w + LANES - 1) / LANES * LANES;
  int64_t i = 0;
  for (; i < rows; ++i) {
    // The row's last lane: its output, and its window's last pixel.
    const int64_t last_out = i * out_w + span - 1, last_in = 2 * (2 * i * out_w + span - 1) + width + 1;
    if (last_out >= rows * out_w || last_in >= planes * height * width) break;
    for (int64_t j0 = 0; j0 < out_w; j0 += LANES) {
      const E *top = in + 2 * (2 * i * out_w + j0);
      E *dst = out + i * out_w + j0;
#pragma omp simd
      for (int64_t l = 0; l < LANES; ++l) dst[l] = window_mean(top + 2 * l, width);
    }
  }
  for (; i < rows; ++i) exact_row(in + 2 * i * width, out + i * out_w);
}

// Output gradient g's share of each pixel of its window, 2 x `count` pixels of a row from `row`.
template <typename E>
__attribute__((always_inline)) inline void spread_row(const E *g, E *row, int64_t count) {
#pragma omp simd
  for (int64_t j = 0; j < count; ++j) {
    const E share = narrow(widen(g[j]) / 4, E());
    row[2 * j] = share;
    row[2 * j + 1] = share;
  }
}

// The input gradient of `planes` consecutive planes: each output's gradient over 4 to its
// window's pixels, the last row and column of an odd side (in no window) zero. With even sides,
// the planes are one tall map and each output row's two input rows are written LANES window
// pairs at a time, as pool_planes reads them: running on into the rows after them, which are
// written again after (the second of the two rows after the first, the next output row's after
// both), except for the last rows, whose lanes would leave these planes.
template <typename E>
__attribute__((always_inline)) inline void unpool_planes(const E *grad_out, E *grad_in, int64_t planes,
                                                        int64_t height, int64_t width) {
  const int64_t out_h = height / 2, out_w = width / 2;
  if (height % 2 != 0 || width % 2 != 0) {
    for (int64_t p = 0; p < planes; ++p) {
      E *plane = grad_in + p * height * width;
      for (int64_t i = 0; i < out_h; ++i) {
        E *top = plane + 2 * i * width;
        for (E *row : {top, top + width}) {
          spread_row(grad_out + (p * out_h + i) * out_w, row, out_w);
          if (width % 2 != 0) row[width - 1] = E(0);
        }
      }
      if (height % 2 != 0) std::fill(plane + (height - 1) * width, plane + height * width, E(0));
    }
    return;
  }
  const int64_t rows = planes * out_h, span = (out_w + LANES - 1) / LANES * LANES;
  int64_t i = 0;
  for (; i < rows; ++i) {
    // The row's last lane: its output gradient, and the last pixel it writes (in the second row).
    const int64_t last_out = i * out_w + span - 1, last_in = (2 * i + 1) * width + 2 * span - 1;
    if (last_out >= rows * out_w || last_in >= planes * height * width) break;
    for (E *row : {grad_in + 2 * i * width, grad_in + (2 * i + 1) * width}) {
      for (int64_t j0 = 0; j0 < out_w; j0 += LANES) spread_row(grad_out + i * out_w + j0, row + 2 * j0, LANES);
    }
  }
  for (; i < rows; ++i) {
    for (E *row : {grad_in + 2 * i * width, grad_in + (2 * i + 1) * width}) spread_row(grad_out + i * out_w, row, out_w);
  }
}

// The vectorised builds (see vector_clones.h) for float32 and bfloat16: the loops above take
// pairs of columns apart, which the baseline's vectors do poorly, and bfloat16's conversions
// vectorise only as the bit operations they are. float64 (tests) keeps the baseline.
VECTOR_CLONES void pool_planes_f32(const float *in, float *out, int64_t planes, int64_t height, int64_t width) {
  pool_planes(in, out, planes, height, width);
}
VECTOR_CLONES void pool_planes_bf16(const uint16_t *in, uint16_t *out, int64_t planes, int64_t height,
                                    int64_t width) {
  pool_planes(in, out, planes, height, width);
}
VECTOR_CLONES void unpool_planes_f32(const float *g, float *grad_in, int64_t planes, int64_t height, int64_t width) {
  unpool_planes(g, grad_in, planes, height, width);
}
VECTOR_CLONES void unpool_planes_bf16(const uint16_t *g, uint16_t *grad_in, int64_t planes, int64_t height,
                                      int64_t width) {
  unpool_planes(g, grad_in, planes, height, width);
}
void pool_planes_any(const float *in, float *out, int64_t n, int64_t h, int64_t w) { pool_planes_f32(in, out, n, h, w); }
void pool_planes_any(const double *in, double *out, int64_t n, int64_t h, int64_t w) { pool_planes(in, out, n, h, w); }
void pool_planes_any(const uint16_t *in, uint16_t *out, int64_t n, int64_t h, int64_t w) {
  pool_planes_bf16(in, out, n, h, w);
}
void unpool_planes_any(const float *g, float *p, int64_t n, int64_t h, int64_t w) { unpool_planes_f32(g, p, n, h, w); }
void unpool_planes_any(const double *g, double *p, int64_t n, int64_t h, int64_t w) { unpool_planes(g, p, n, h, w); }
void unpool_planes_any(const uint16_t *g, uint16_t *p, int64_t n, int64_t h, int64_t w) {
  unpool_planes_bf16(g, p, n, h, w);
}

// A tensor's data as the element type the loops take (bfloat16 as its bits).
template <typename T> auto elements(const at::Tensor &t) {
  if constexpr (std::is_same_v<T, at::BFloat16>) return reinterpret_cast<const uint16_t *>(t.const_data_ptr<T>());
  else return t.const_data_ptr<T>();
}
template <typename T> auto mutable_elements(at::Tensor &t) {
  if constexpr (std::is_same_v<T, at::BFloat16>) return reinterpret_cast<uint16_t *>(t.mutable_data_ptr<T>());
  else return t.mutable_data_ptr<T>();
}

at::Tensor pool(const at::Tensor &x) {
  auto sizes = x.sizes();
  const int64_t planes = sizes[0] * sizes[1], height = sizes[2], width = sizes[3];
  auto y = at::empty({sizes[0], sizes[1], height / 2, width / 2}, x.options());
  // Enough planes per task that handing it out is worth it (about 16k outputs).
  const int64_t out_size = (height / 2) * (width / 2), grain = std::max<int64_t>(1, 16384 / out_size);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "convnets_avg_pool2x2", [&] {
    auto in = elements<scalar_t>(x);
    auto out = mutable_elements<scalar_t>(y);
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      pool_planes_any(in + begin * height * width, out + begin * out_size, end - begin, height, width);
    });
  });
  return y;
}

at::Tensor unpool(const at::Tensor &grad_out, at::IntArrayRef input_sizes) {
  auto g = grad_out.contiguous();
  auto grad_in = at::empty(input_sizes, g.options());
  const int64_t planes = input_sizes[0] * input_sizes[1], height = input_sizes[2], width = input_sizes[3];
  const int64_t out_size = (height / 2) * (width / 2), grain = std::max<int64_t>(1, 16384 / (height * width));
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, g.scalar_type(), "convnets_avg_unpool2x2", [&] {
    auto grads = elements<scalar_t>(g);
    auto grad_in_data = mutable_elements<scalar_t>(grad_in);
    at::parallel_for(0, planes, grain, [&](int64_t begin, int64_t end) {
      unpool_planes_any(grads + begin * out_size, grad_in_data + begin * height * width, end - begin, height, width);
    });
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
