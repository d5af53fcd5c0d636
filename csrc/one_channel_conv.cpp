// The first convolution of a network on grey images: one input channel, stride 1, contiguous
// NCHW float32 or bfloat16 maps on the CPU (LeNet's `nn.Conv2d(1, 6, 5)`), forward and the
// gradients of its weight and bias (its input, the images, needs none). oneDNN takes such a
// convolution through im2col and a matrix product with one-channel rows, and in bfloat16 its
// weight and bias gradient at LeNet's batch of 256 took 4.6 ms (0.64 in float32), half of
// LeNet-BN's whole training step. Here each output row is the sum of the kernel's taps, each tap
// a shifted input row times one weight, in vector lanes along the row, several rows side by side;
// the weight gradient sums each tap's products in lanes the same way, several taps side by side.
// Sums are in float, as oneDNN's; bfloat16 inputs widen exactly and outputs round to nearest
// even, as libtorch's casts do. Blocks of images are added in a fixed order, so the gradients do
// not depend on the number of threads.
#include "one_channel_conv.h"

#include "guard.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <c10/util/BFloat16.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

namespace {

// The weight's gradient sums 16 columns at a time (the forward, below, 8); lanes past a row's end
// compute what is never stored or summed, so every buffer they read has LANES floats of slack
// after its last row.
constexpr int64_t LANES = 16;

// The shapes of one image's convolution: a padded plane of padded_h x padded_w, a square kernel,
// `outputs` channels of out_h x out_w.
struct Shape {
  int64_t padded_h, padded_w, kernel, outputs, out_h, out_w;
  int64_t chunks() const { return (out_w + LANES - 1) / LANES; }
};

// Eight floats as one value of GCC's and Clang's vector extension: one AVX2 register (two SSE
// ones in the baseline build), so that the accumulators below are registers and each tap a
// broadcast (vectors of 16 split into halves on AVX2 broadcast every tap through the stack and
// spilled accumulators: a tenth of the cores' multiply-add rate).
constexpr int64_t VECTOR = 8;
typedef float Vector __attribute__((vector_size(VECTOR * sizeof(float))));

__attribute__((always_inline)) inline Vector load_vector(const float *p) {
  Vector v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// A block of ROWS output rows of channel o from row r by CHUNKS x 8 columns from x0, each vector
// a chain of multiply-adds of its own: a loaded row is a multiply-add's operand, a tap is
// broadcast once for the block's ROWS x CHUNKS multiply-adds, and ROWS x CHUNKS + 1 registers
// stay within AVX2's 16. Each output is the sum of the kernel's taps (i, j) in order, plus the
// bias. KERNEL is the kernel's side where known when compiling (LeNet's 5: every tap's loop
// unrolled), else 0.
template <int ROWS, int CHUNKS, int KERNEL>
__attribute__((always_inline)) inline void convolve_block(const float *plane, const float *w, float bias,
                                                         const Shape &s, int64_t o, int64_t r, int64_t x0,
                                                         float *out) {
  const int64_t k = KERNEL > 0 ? KERNEL : s.kernel;
  Vector acc[ROWS][CHUNKS] = {};
  for (int64_t i = 0; i < k; ++i) {
    for (int64_t j = 0; j < k; ++j) {
      const Vector tap = Vector{} + w[(o * k + i) * k + j];
      const float *row = plane + (r + i) * s.padded_w + x0 + j;
      for (int rr = 0; rr < ROWS; ++rr)
        for (int c = 0; c < CHUNKS; ++c) acc[rr][c] += tap * load_vector(row + rr * s.padded_w + c * VECTOR);
    }
  }
  for (int rr = 0; rr < ROWS; ++rr) {
    for (int c = 0; c < CHUNKS; ++c) {
      float *dst = out + (o * s.out_h + r + rr) * s.out_w + x0 + c * VECTOR;
      const Vector y = acc[rr][c] + bias;
      const int64_t valid = std::min(VECTOR, s.out_w - x0 - c * VECTOR);
      if (valid == VECTOR) {
        std::memcpy(dst, &y, sizeof y);
      } else {
        for (int64_t l = 0; l < valid; ++l) dst[l] = y[l];
      }
    }
  }
}

// The rows of channel o, CHUNKS x 8 columns from x0: blocks of 12 / CHUNKS rows (12
// accumulators), then one row at a time.
template <int CHUNKS, int KERNEL>
__attribute__((always_inline)) inline void convolve_columns(const float *plane, const float *w, float bias,
                                                           const Shape &s, int64_t o, int64_t x0, float *out) {
  constexpr int ROWS = 12 / CHUNKS;
  int64_t r = 0;
  for (; r + ROWS <= s.out_h; r += ROWS) convolve_block<ROWS, CHUNKS, KERNEL>(plane, w, bias, s, o, r, x0, out);
  for (; r < s.out_h; ++r) convolve_block<1, CHUNKS, KERNEL>(plane, w, bias, s, o, r, x0, out);
}

// All of one image's outputs into `out` (outputs x out_h x out_w), 24 columns at a time and the
// rest in one narrower pass (LeNet's rows of 24 in one).
template <int KERNEL>
__attribute__((always_inline)) inline void convolve_image_with(const float *plane, const float *w, const float *b,
                                                              const Shape &s, float *out) {
  for (int64_t o = 0; o < s.outputs; ++o) {
    int64_t x0 = 0;
    for (; x0 + 3 * VECTOR <= s.out_w; x0 += 3 * VECTOR) convolve_columns<3, KERNEL>(plane, w, b[o], s, o, x0, out);
    switch ((s.out_w - x0 + VECTOR - 1) / VECTOR) {
    case 0: break;
    case 1: convolve_columns<1, KERNEL>(plane, w, b[o], s, o, x0, out); break;
    case 2: convolve_columns<2, KERNEL>(plane, w, b[o], s, o, x0, out); break;
    default: convolve_columns<3, KERNEL>(plane, w, b[o], s, o, x0, out); break;
    }
  }
}

VECTOR_CLONES void convolve_image(const float *plane, const float *w, const float *b, const Shape &s, float *out) {
  if (s.kernel == 5)
    convolve_image_with<5>(plane, w, b, s, out);
  else
    convolve_image_with<0>(plane, w, b, s, out);
}

// The sums over output rows of dy's row times the padded plane's row i below it from column
// j0 + t, for TAPS taps t side by side (each a chain of its own, even and odd rows apart), into
// `sums` (TAPS x LANES), 16 columns from x0. `g` is output channel o's dy, rows dy_w apart.
template <int TAPS>
__attribute__((always_inline)) inline void tap_sums(const float *plane, const float *g, int64_t dy_w, const Shape &s,
                                                   int64_t i, int64_t j0, int64_t x0, float *sums) {
  float even[TAPS][LANES] = {}, odd[TAPS][LANES] = {};
  auto add_row = [&](float (&acc)[TAPS][LANES], int64_t r) __attribute__((always_inline)) {
    const float *grad = g + r * dy_w + x0;
    const float *row = plane + (r + i) * s.padded_w + x0 + j0;
    for (int t = 0; t < TAPS; ++t) {
#pragma omp simd
      for (int64_t l = 0; l < LANES; ++l) acc[t][l] += grad[l] * row[t + l];
    }
  };
  int64_t r = 0;
  for (; r + 2 <= s.out_h; r += 2) {
    add_row(even, r);
    add_row(odd, r + 1);
  }
  if (r < s.out_h) add_row(even, r);
  for (int t = 0; t < TAPS; ++t) {
#pragma omp simd
    for (int64_t l = 0; l < LANES; ++l) sums[t * LANES + l] += even[t][l] + odd[t][l];
  }
}

// One image's share of the gradients, per lane (column within a 16-column chunk of the output
// row): weight_lanes (outputs x kernel x kernel x chunks x LANES) adds, for each tap (i, j), dy's
// rows times the padded plane's rows i below them from column j; bias_lanes (outputs x chunks x
// LANES) adds dy's rows. `dy` has rows of chunks x LANES floats (out_h per output channel).
VECTOR_CLONES void accumulate_image_grads(const float *plane, const float *dy, const Shape &s, float *weight_lanes,
                                          float *bias_lanes) {
  const int64_t k = s.kernel, chunks = s.chunks(), dy_w = chunks * LANES;
  // A kernel row's taps summed side by side, up to 7 at a time (14 accumulators, with even and
  // odd rows apart, of AVX-512's 32 registers).
  constexpr int64_t MAX_TAPS = 7;
  std::vector<float> sums(k * LANES);
  for (int64_t o = 0; o < s.outputs; ++o) {
    const float *g = dy + o * s.out_h * dy_w;
    for (int64_t c = 0; c < chunks; ++c) {
      float acc[LANES] = {};
      for (int64_t r = 0; r < s.out_h; ++r) {
#pragma omp simd
        for (int64_t l = 0; l < LANES; ++l) acc[l] += g[r * dy_w + c * LANES + l];
      }
      float *sum = bias_lanes + (o * chunks + c) * LANES;
#pragma omp simd
      for (int64_t l = 0; l < LANES; ++l) sum[l] += acc[l];
      for (int64_t i = 0; i < k; ++i) {
        std::fill(sums.begin(), sums.end(), 0.0f);
        for (int64_t j = 0; j < k; j += MAX_TAPS) {
          float *out = sums.data() + j * LANES;
          switch (std::min<int64_t>(k - j, MAX_TAPS)) {
          case 1: tap_sums<1>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          case 2: tap_sums<2>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          case 3: tap_sums<3>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          case 4: tap_sums<4>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          case 5: tap_sums<5>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          case 6: tap_sums<6>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          default: tap_sums<7>(plane, g, dy_w, s, i, j, c * LANES, out); break;
          }
        }
        for (int64_t j = 0; j < k; ++j) {
          float *lanes = weight_lanes + (((o * k + i) * k + j) * chunks + c) * LANES;
#pragma omp simd
          for (int64_t l = 0; l < LANES; ++l) lanes[l] += sums[j * LANES + l];
        }
      }
    }
  }
}

// bfloat16 bits widened exactly to floats (libtorch's conversion, in vector lanes).
VECTOR_CLONES void widen_bf16(const uint16_t *in, float *out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = c10::detail::f32_from_bits(in[i]);
}

// Floats rounded to bfloat16 bits as libtorch rounds them: to nearest, ties to even, NaN to its
// quiet NaN.
VECTOR_CLONES void round_to_bf16(const float *in, uint16_t *out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = c10::detail::round_to_nearest_even(in[i]);
}

// `n` values of a float32 or bfloat16 tensor's data as floats.
void to_floats(const at::Tensor &t, int64_t offset, int64_t n, float *out) {
  if (t.scalar_type() == at::kFloat) {
    std::memcpy(out, t.const_data_ptr<float>() + offset, n * sizeof(float));
  } else {
    widen_bf16(reinterpret_cast<const uint16_t *>(t.const_data_ptr<at::BFloat16>()) + offset, out, n);
  }
}

std::vector<float> floats(const at::Tensor &t) {
  std::vector<float> out(t.numel());
  to_floats(t.contiguous(), 0, t.numel(), out.data());
  return out;
}

// Image n of x (N x 1 x H x W) into `plane`, with `padding` zeros around it.
void pad_image(const at::Tensor &x, int64_t n, int64_t padding, const Shape &s, float *plane) {
  const int64_t h = x.size(2), w = x.size(3);
  if (padding == 0) {
    to_floats(x, n * h * w, h * w, plane);
    return;
  }
  std::fill(plane, plane + s.padded_h * s.padded_w, 0.0f);
  for (int64_t r = 0; r < h; ++r) to_floats(x, (n * h + r) * w, w, plane + (r + padding) * s.padded_w + padding);
}

Shape shape_of(const at::Tensor &x, int64_t outputs, int64_t kernel, int64_t padding) {
  const int64_t padded_h = x.size(2) + 2 * padding, padded_w = x.size(3) + 2 * padding;
  return {padded_h, padded_w, kernel, outputs, padded_h - kernel + 1, padded_w - kernel + 1};
}

// Enough images per task that handing it out is worth it (about 32k multiply-adds).
int64_t image_grain(const Shape &s) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, s.outputs * s.out_h * s.out_w * s.kernel * s.kernel));
}

at::Tensor convolve(const at::Tensor &x, const at::Tensor &weight, const at::Tensor &bias, int64_t padding) {
  const int64_t images = x.size(0);
  const Shape s = shape_of(x, weight.size(0), weight.size(2), padding);
  const std::vector<float> w = floats(weight);
  const std::vector<float> b = floats(bias);
  auto y = at::empty({images, s.outputs, s.out_h, s.out_w}, x.options());
  const int64_t out_size = s.outputs * s.out_h * s.out_w;
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  at::parallel_for(0, images, image_grain(s), [&](int64_t begin, int64_t end) {
    std::vector<float> plane(s.padded_h * s.padded_w + LANES), out(bf16 ? out_size : 0);
    for (int64_t n = begin; n < end; ++n) {
      pad_image(x, n, padding, s, plane.data());
      if (bf16) {
        convolve_image(plane.data(), w.data(), b.data(), s, out.data());
        auto *dst = reinterpret_cast<uint16_t *>(y.mutable_data_ptr<at::BFloat16>()) + n * out_size;
        round_to_bf16(out.data(), dst, out_size);
      } else {
        convolve_image(plane.data(), w.data(), b.data(), s, y.mutable_data_ptr<float>() + n * out_size);
      }
    }
  });
  return y;
}

// The weight's and bias's gradients (in their types) given dy, the gradient of the output.
std::pair<at::Tensor, at::Tensor> gradients(const at::Tensor &x, const at::Tensor &dy, const at::Tensor &weight,
                                            bool bias_grad, int64_t padding) {
  const int64_t images = x.size(0);
  const Shape s = shape_of(x, weight.size(0), weight.size(2), padding);
  const int64_t taps = s.outputs * s.kernel * s.kernel, out_size = s.outputs * s.out_h * s.out_w;
  // A fixed number of blocks, whatever the threads, each summed into doubles of its own and added
  // in block order afterwards.
  const int64_t blocks = std::min<int64_t>(images, 32);
  std::vector<double> partial(blocks * (taps + s.outputs), 0.0);
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t chunks = s.chunks(), dy_w = chunks * LANES;
    std::vector<float> plane(s.padded_h * s.padded_w + LANES), grad(s.outputs * s.out_h * dy_w);
    std::vector<float> weight_lanes(taps * dy_w), bias_lanes(s.outputs * dy_w);
    for (int64_t block = begin; block < end; ++block) {
      std::fill(weight_lanes.begin(), weight_lanes.end(), 0.0f);
      std::fill(bias_lanes.begin(), bias_lanes.end(), 0.0f);
      for (int64_t n = block * images / blocks; n < (block + 1) * images / blocks; ++n) {
        pad_image(x, n, padding, s, plane.data());
        for (int64_t row = 0; row < s.outputs * s.out_h; ++row)
          to_floats(dy, n * out_size + row * s.out_w, s.out_w, grad.data() + row * dy_w);
        accumulate_image_grads(plane.data(), grad.data(), s, weight_lanes.data(), bias_lanes.data());
      }
      // The lanes past the output row's end hold products of columns outside it: left out.
      double *sums = partial.data() + block * (taps + s.outputs);
      for (int64_t t = 0; t < taps; ++t)
        for (int64_t lane = 0; lane < s.out_w; ++lane) sums[t] += weight_lanes[t * dy_w + lane];
      for (int64_t o = 0; o < s.outputs; ++o)
        for (int64_t lane = 0; lane < s.out_w; ++lane) sums[taps + o] += bias_lanes[o * dy_w + lane];
    }
  });
  auto total = at::zeros({taps + s.outputs}, at::kDouble);
  double *t = total.mutable_data_ptr<double>();
  for (int64_t block = 0; block < blocks; ++block)
    for (int64_t i = 0; i < taps + s.outputs; ++i) t[i] += partial[block * (taps + s.outputs) + i];
  auto grad_weight = total.narrow(0, 0, taps).to(weight.scalar_type()).view(weight.sizes());
  at::Tensor grad_bias;
  if (bias_grad) grad_bias = total.narrow(0, taps, s.outputs).to(weight.scalar_type());
  return {grad_weight, grad_bias};
}

struct OneChannelConv : torch::autograd::Function<OneChannelConv> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const at::Tensor &bias, int64_t padding) {
    ctx->saved_data["padding"] = padding;
    ctx->save_for_backward({x, weight});
    return convolve(x, weight, bias, padding);
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto saved = ctx->get_saved_variables();
    if (!grads[0].defined()) return {at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
    auto [grad_weight, grad_bias] = gradients(saved[0], grads[0].contiguous().to(saved[0].scalar_type()), saved[1],
                                              ctx->needs_input_grad(2), ctx->saved_data["padding"].toInt());
    return {at::Tensor(), grad_weight, grad_bias, at::Tensor()};
  }
};

bool float_or_bf16(at::ScalarType t) { return t == at::kFloat || t == at::kBFloat16; }

} // namespace

std::optional<at::Tensor> one_channel_conv2d(const at::Tensor &x, const at::Tensor &w, const at::Tensor *b,
                                             int64_t stride, int64_t padding) {
  const bool shapes = x.dim() == 4 && x.size(1) == 1 && x.is_contiguous() && w.dim() == 4 && w.size(1) == 1 &&
                      w.size(2) == w.size(3) && stride == 1 && padding >= 0 && x.size(2) + 2 * padding >= w.size(2) &&
                      x.size(3) + 2 * padding >= w.size(3) && x.size(0) > 0 &&
                      (b == nullptr || (b->dim() == 1 && b->size(0) == w.size(0)));
  const bool cpu = x.device().is_cpu() && w.device().is_cpu() && (b == nullptr || b->device().is_cpu());
  // A one-channel map laid out channels-last is contiguous too (a channel's stride does not
  // matter), but libtorch's convolution gives it, or channels-last weights, a channels-last
  // output, which the layers after it expect (VGG's first block on grey images).
  const bool nchw = x.suggest_memory_format() == at::MemoryFormat::Contiguous &&
                    w.suggest_memory_format() == at::MemoryFormat::Contiguous;
  if (!shapes || !cpu || !nchw || (at::GradMode::is_enabled() && x.requires_grad())) return std::nullopt;
  const bool autocast = at::autocast::is_autocast_enabled(at::kCPU);
  auto dtype = x.scalar_type();
  if (autocast && dtype == at::kFloat) dtype = at::autocast::get_autocast_dtype(at::kCPU);
  if (!float_or_bf16(dtype) || !float_or_bf16(w.scalar_type()) || (b != nullptr && !float_or_bf16(b->scalar_type())))
    return std::nullopt;
  // Without autocast libtorch's convolution wants one type throughout; keep its error for that.
  if (!autocast && (w.scalar_type() != dtype || (b != nullptr && b->scalar_type() != dtype))) return std::nullopt;
  // A layer without a bias adds zeros (autograd's functions take no undefined inputs).
  at::Tensor bias = b == nullptr ? at::zeros({w.size(0)}, x.options().dtype(dtype)) : b->to(dtype);
  return OneChannelConv::apply(x.to(dtype), w.to(dtype), bias, padding);
}

extern "C" {

// conv2d(x, w, b, stride, padding) of a contiguous N x 1 x H x W CPU map with stride 1 and a square
// kernel, in float32 or bfloat16 (autocast's, where it is on for the CPU: the inputs are cast as
// its convolution casts them), differentiable in w and b, into *out; `b` may be NULL. Leaves
// *out NULL for anything else, and where a gradient of x would be needed (the caller then calls
// libtorch's).
char *convnets_conv2d_one_channel(const at::Tensor *x, const at::Tensor *w, const at::Tensor *b, int64_t stride,
                                  int64_t padding, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    if (auto y = one_channel_conv2d(*x, *w, b, stride, padding)) *out = new at::Tensor(std::move(*y));
  })
}

} // extern "C"
