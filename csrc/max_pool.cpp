// Max pooling of channels-last (NHWC) float32 and bfloat16 maps on the CPU, forward and backward
// (GoogLeNet's 3x3 windows, the stems' and AlexNet's, VGG's and NiN's). libtorch's kernel for
// this layout records the position of every maximum in an int64 map twice the output's size (four
// times a bfloat16 output's), even where nothing will take a gradient, and its evaluation then
// writes three times the bytes it needs: it was a sixth of GoogLeNet's evaluation. Here the
// forward pass writes only the maxima, and the backward pass finds each maximum's position again
// from the input, which autograd keeps for it as it does for libtorch's (the position map is not
// kept at all). The values and gradients are libtorch's bit for bit: the same scan of each window
// (row by row, left to right, a later value taken only where it is greater or NaN), and the
// gradients added into the input's in the same order and type.
#include "guard.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/csrc/autograd/custom_function.h>

#include <cstdint>
#include <cstring>
#include <vector>

namespace {

inline float as_float(float v) { return v; }
// A bfloat16 is the top half of the float32 with the same value.
inline float as_float(uint16_t bits) {
  uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float v;
  std::memcpy(&v, &widened, sizeof v);
  return v;
}

// libtorch's test for taking a window's next value: greater than the maximum so far, or NaN.
inline bool takes(float v, float max) { return v > max || v != v; }

// The maxima over `count` window pixels (`pixels`, each `channels` values) into `max`.
template <typename E>
__attribute__((always_inline)) inline void window_max(const char *const *pixels, int64_t count, int64_t channels,
                                                      float *max) {
  const E *first = reinterpret_cast<const E *>(pixels[0]);
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) max[c] = as_float(first[c]);
  for (int64_t j = 1; j < count; ++j) {
    const E *pixel = reinterpret_cast<const E *>(pixels[j]);
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      float v = as_float(pixel[c]);
      max[c] = takes(v, max[c]) ? v : max[c];
    }
  }
}

// As window_max, and which of the window's pixels (`positions`, the pixels' indices in the image)
// holds each channel's maximum, into `argmax`.
template <typename E>
__attribute__((always_inline)) inline void window_argmax(const char *const *pixels, const int32_t *positions,
                                                         int64_t count, int64_t channels, float *max,
                                                         int32_t *argmax) {
  const E *first = reinterpret_cast<const E *>(pixels[0]);
  const int32_t first_position = positions[0];
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    max[c] = as_float(first[c]);
    argmax[c] = first_position;
  }
  for (int64_t j = 1; j < count; ++j) {
    const E *pixel = reinterpret_cast<const E *>(pixels[j]);
    const int32_t position = positions[j];
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) {
      float v = as_float(pixel[c]);
      bool take = takes(v, max[c]);
      max[c] = take ? v : max[c];
      argmax[c] = take ? position : argmax[c];
    }
  }
}

VECTOR_CLONES void window_max_f32(const char *const *pixels, int64_t count, int64_t channels, float *out) {
  window_max<float>(pixels, count, channels, out);
}

VECTOR_CLONES void window_max_bf16(const char *const *pixels, int64_t count, int64_t channels, float *max,
                                   uint16_t *out) {
  window_max<uint16_t>(pixels, count, channels, max);
  // Each maximum is one of the inputs, a bfloat16: its float's top half is exactly it.
#pragma omp simd
  for (int64_t c = 0; c < channels; ++c) {
    uint32_t bits;
    std::memcpy(&bits, &max[c], sizeof bits);
    out[c] = static_cast<uint16_t>(bits >> 16);
  }
}

VECTOR_CLONES void window_argmax_f32(const char *const *pixels, const int32_t *positions, int64_t count,
                                     int64_t channels, float *max, int32_t *argmax) {
  window_argmax<float>(pixels, positions, count, channels, max, argmax);
}

VECTOR_CLONES void window_argmax_bf16(const char *const *pixels, const int32_t *positions, int64_t count,
                                      int64_t channels, float *max, int32_t *argmax) {
  window_argmax<uint16_t>(pixels, positions, count, channels, max, argmax);
}

struct Window {
  int64_t kernel, stride, padding;
};

// The pixels of output (oh, ow)'s window inside a height x width image, in libtorch's scan order
// (rows, then columns; padding holds no pixel), as indices in the image.
int64_t window_pixels(const Window &w, int64_t height, int64_t width, int64_t oh, int64_t ow, int32_t *positions) {
  const int64_t h0 = oh * w.stride - w.padding, w0 = ow * w.stride - w.padding;
  const int64_t h1 = std::min(h0 + w.kernel, height), w1 = std::min(w0 + w.kernel, width);
  int64_t count = 0;
  for (int64_t ih = std::max<int64_t>(h0, 0); ih < h1; ++ih)
    for (int64_t iw = std::max<int64_t>(w0, 0); iw < w1; ++iw) positions[count++] = static_cast<int32_t>(ih * width + iw);
  return count;
}

// libtorch's output size for a side of `size` (`ceil_mode`: a last window that starts inside the
// input or its left padding counts).
int64_t pooled_size(int64_t size, const Window &w, bool ceil_mode) {
  const int64_t span = size + 2 * w.padding - w.kernel;
  if (span < 0) return 0;
  int64_t out = (ceil_mode ? (span + w.stride - 1) / w.stride : span / w.stride) + 1;
  if (ceil_mode && (out - 1) * w.stride >= size + w.padding) --out;
  return out;
}

at::Tensor pool(const at::Tensor &x, const Window &w, int64_t out_h, int64_t out_w) {
  const int64_t images = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  auto y = at::empty({images, channels, out_h, out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const char *in = static_cast<const char *>(x.const_data_ptr());
  char *out = static_cast<char *>(y.mutable_data_ptr());
  const int64_t bytes = x.element_size();
  // Output rows (image, oh), enough per task to be worth handing out (about 16k outputs).
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, out_w * channels));
  at::parallel_for(0, images * out_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> positions(w.kernel * w.kernel);
    std::vector<const char *> pixels(w.kernel * w.kernel);
    std::vector<float> max(bf16 ? channels : 0);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / out_h, oh = row % out_h;
      const char *image = in + n * height * width * channels * bytes;
      for (int64_t ow = 0; ow < out_w; ++ow) {
        const int64_t count = window_pixels(w, height, width, oh, ow, positions.data());
        for (int64_t j = 0; j < count; ++j) pixels[j] = image + positions[j] * channels * bytes;
        char *dst = out + (row * out_w + ow) * channels * bytes;
        if (bf16)
          window_max_bf16(pixels.data(), count, channels, max.data(),
                          reinterpret_cast<uint16_t *>(dst));
        else
          window_max_f32(pixels.data(), count, channels,
                         reinterpret_cast<float *>(dst));
      }
    }
  });
  return y;
}

template <typename T>
void add_gradients(const T *grad, const int32_t *argmax, int64_t channels, T *grad_image) {
  for (int64_t c = 0; c < channels; ++c) grad_image[argmax[c] * channels + c] += grad[c];
}

at::Tensor unpool(const at::Tensor &x, const at::Tensor &grad_out, const Window &w) {
  auto g = grad_out.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t images = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  const int64_t out_h = g.size(2), out_w = g.size(3);
  auto grad_in = at::zeros_like(x, at::MemoryFormat::ChannelsLast);
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const char *in = static_cast<const char *>(x.const_data_ptr());
  const int64_t bytes = x.element_size();
  // One image per task, as libtorch's kernel: overlapping windows add into the same input pixels.
  at::parallel_for(0, images, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> positions(w.kernel * w.kernel), argmax(channels);
    std::vector<const char *> pixels(w.kernel * w.kernel);
    std::vector<float> max(channels);
    for (int64_t n = begin; n < end; ++n) {
      const char *image = in + n * height * width * channels * bytes;
      for (int64_t oh = 0; oh < out_h; ++oh) {
        for (int64_t ow = 0; ow < out_w; ++ow) {
          const int64_t count = window_pixels(w, height, width, oh, ow, positions.data());
          for (int64_t j = 0; j < count; ++j) pixels[j] = image + positions[j] * channels * bytes;
          const int64_t at = ((n * out_h + oh) * out_w + ow) * channels;
          if (bf16) {
            window_argmax_bf16(pixels.data(), positions.data(), count,
                               channels, max.data(), argmax.data());
            add_gradients(g.const_data_ptr<at::BFloat16>() + at, argmax.data(), channels,
                          grad_in.mutable_data_ptr<at::BFloat16>() + n * height * width * channels);
          } else {
            window_argmax_f32(pixels.data(), positions.data(), count,
                              channels, max.data(), argmax.data());
            add_gradients(g.const_data_ptr<float>() + at, argmax.data(), channels,
                          grad_in.mutable_data_ptr<float>() + n * height * width * channels);
          }
        }
      }
    }
  });
  return grad_in;
}

struct MaxPoolNhwc : torch::autograd::Function<MaxPoolNhwc> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, int64_t kernel,
                            int64_t stride, int64_t padding, int64_t out_h, int64_t out_w) {
    ctx->save_for_backward({x});
    ctx->saved_data["window"] = std::vector<int64_t>{kernel, stride, padding};
    return pool(x, Window{kernel, stride, padding}, out_h, out_w);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto x = ctx->get_saved_variables()[0];
    auto window = ctx->saved_data["window"].toIntVector();
    auto grad_in = unpool(x, grads[0], Window{window[0], window[1], window[2]});
    return {grad_in, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" {

// max_pool2d(x, kernel, stride, padding, dilation=1, ceil_mode) of a channels-last 4-d float32 or
// bfloat16 CPU tensor, differentiable, into *out; leaves *out NULL for anything else (another
// layout, type or device, or a window libtorch would refuse), for the caller to call libtorch's.
char *convnets_max_pool_nhwc(const at::Tensor *x, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode,
                             at::Tensor **out) {
  GUARD({
    *out = nullptr;
    bool fits = x->device().is_cpu() && x->dim() == 4 &&
                x->suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
                x->is_contiguous(at::MemoryFormat::ChannelsLast) &&
                (x->scalar_type() == at::kFloat || x->scalar_type() == at::kBFloat16) && kernel >= 1 &&
                stride >= 1 && padding >= 0 && padding <= kernel / 2 && x->size(2) * x->size(3) < INT32_MAX;
    if (!fits) return nullptr;
    Window w{kernel, stride, padding};
    const int64_t out_h = pooled_size(x->size(2), w, ceil_mode), out_w = pooled_size(x->size(3), w, ceil_mode);
    if (out_h < 1 || out_w < 1 || x->numel() == 0) return nullptr;
    *out = new at::Tensor(MaxPoolNhwc::apply(*x, kernel, stride, padding, out_h, out_w));
  })
}

} // extern "C"
