// Max pooling of channels-last (NHWC) float32 and bfloat16 maps on the CPU where no gradient is
// needed: evaluation (GoogLeNet's 3x3 windows, the stems', AlexNet's, VGG's and NiN's). libtorch's
// kernel for this layout also records the position of every maximum, in an int64 map twice the
// output's size (four times a bfloat16 output's), whether or not a gradient will need it, and it
// took a sixth of GoogLeNet's evaluation. Here only the maxima are written, each output row's
// windows a step at a time along the whole row, so that the loop over channels vectorises even
// for VGG's 16. The values are libtorch's bit for bit: each window starts at -inf and takes its
// pixels row by row, left to right, where one is greater or NaN. Training keeps libtorch's kernel:
// its positions serve the backward pass, and a version that found them again from the input
// changed VGG's large allocations enough to cost more in page faults than it saved.
#include "guard.h"
#include "vector_clones.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/native/Pool.h>
#include <c10/core/GradMode.h>
#include <c10/util/BFloat16.h>

#include <cstdint>
#include <limits>
#include <vector>

namespace {

inline float as_float(float v) { return v; }
// A bfloat16 is the top half of the float32 with the same value.
inline float as_float(uint16_t bits) { return c10::detail::f32_from_bits(bits); }

// libtorch's test for taking a window's next value: greater than the maximum so far, or NaN.
inline bool takes(float v, float max) { return v > max || v != v; }

struct Window {
  int64_t kernel, stride, padding;
};

// One output row's windows: input rows [top, bottom) of an image `width` pixels wide, for
// `out_w` outputs of `channels` values each.
struct Row {
  int64_t top, bottom, width, out_w, channels;
};

// The outputs whose window holds column `j` (0 <= j < kernel) at an input column inside the
// image: [first, last]; empty where first > last.
inline void outputs_at_column(const Window &w, const Row &r, int64_t j, int64_t &first, int64_t &last) {
  const int64_t before = w.padding - j; // input column of output 0, negated
  first = before > 0 ? (before + w.stride - 1) / w.stride : 0;
  const int64_t reach = r.width - 1 + before; // the last input column, seen from output 0's
  last = reach < 0 ? -1 : std::min(reach / w.stride, r.out_w - 1);
}

// The maxima of one output row's windows into `max` (out_w x channels). As libtorch does for each
// window: start at -inf, then take each pixel in turn, row by row and left to right, where it is
// greater or NaN. Here each step runs along the whole row, all outputs at once.
template <typename E>
__attribute__((always_inline)) inline void row_max(const E *image, const Window &w, const Row &r, float *max) {
  const int64_t channels = r.channels, values = r.out_w * channels;
#pragma omp simd
  for (int64_t i = 0; i < values; ++i) max[i] = -std::numeric_limits<float>::infinity();
  for (int64_t ih = r.top; ih < r.bottom; ++ih) {
    for (int64_t j = 0; j < w.kernel; ++j) {
      int64_t first, last;
      outputs_at_column(w, r, j, first, last);
      for (int64_t ow = first; ow <= last; ++ow) {
        const E *pixel = image + (ih * r.width + ow * w.stride - w.padding + j) * channels;
        float *m = max + ow * channels;
#pragma omp simd
        for (int64_t c = 0; c < channels; ++c) {
          const float v = as_float(pixel[c]);
          m[c] = takes(v, m[c]) ? v : m[c];
        }
      }
    }
  }
}

VECTOR_CLONES void row_max_f32(const float *image, const Window &w, const Row &r, float *out) {
  row_max<float>(image, w, r, out);
}

VECTOR_CLONES void row_max_bf16(const uint16_t *image, const Window &w, const Row &r, float *max, uint16_t *out) {
  row_max<uint16_t>(image, w, r, max);
  // Each maximum is one of the inputs (or -inf), a bfloat16: its float's top half is exactly it.
  const int64_t values = r.out_w * r.channels;
#pragma omp simd
  for (int64_t i = 0; i < values; ++i) out[i] = c10::detail::bits_from_f32(max[i]);
}

// Output row oh's window rows in an image of `height` rows.
Row row_of(const Window &w, int64_t oh, int64_t height, int64_t width, int64_t out_w, int64_t channels) {
  const int64_t top = oh * w.stride - w.padding;
  return Row{std::max<int64_t>(top, 0), std::min(top + w.kernel, height), width, out_w, channels};
}

at::Tensor pool(const at::Tensor &x, const Window &w, int64_t out_h, int64_t out_w) {
  const int64_t images = x.size(0), channels = x.size(1), height = x.size(2), width = x.size(3);
  auto y = at::empty({images, channels, out_h, out_w}, x.options().memory_format(at::MemoryFormat::ChannelsLast));
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  const int64_t image_size = height * width * channels, row_size = out_w * channels;
  // Output rows (image, oh), enough per task to be worth handing out (about 16k outputs).
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_size));
  const float *in_f32 = bf16 ? nullptr : x.const_data_ptr<float>();
  float *out_f32 = bf16 ? nullptr : y.mutable_data_ptr<float>();
  const uint16_t *in_bf16 = bf16 ? reinterpret_cast<const uint16_t *>(x.const_data_ptr<at::BFloat16>()) : nullptr;
  uint16_t *out_bf16 = bf16 ? reinterpret_cast<uint16_t *>(y.mutable_data_ptr<at::BFloat16>()) : nullptr;
  at::parallel_for(0, images * out_h, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> max(bf16 ? row_size : 0);
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / out_h;
      const Row r = row_of(w, i % out_h, height, width, out_w, channels);
      if (bf16)
        row_max_bf16(in_bf16 + n * image_size, w, r, max.data(), out_bf16 + i * row_size);
      else
        row_max_f32(in_f32 + n * image_size, w, r, out_f32 + i * row_size);
    }
  });
  return y;
}

} // namespace

extern "C" {

// max_pool2d(x, kernel, stride, padding, dilation=1, ceil_mode) of a channels-last 4-d float32 or
// bfloat16 CPU tensor that no gradient will flow back to, into *out; leaves *out NULL for anything
// else (a tensor that needs a gradient, another layout, type or device, or a window libtorch
// would refuse), for the caller to call libtorch's.
char *convnets_max_pool_nhwc(const at::Tensor *x, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode,
                             at::Tensor **out) {
  GUARD({
    *out = nullptr;
    bool fits = !(c10::GradMode::is_enabled() && x->requires_grad()) && x->device().is_cpu() && x->dim() == 4 &&
                x->suggest_memory_format() == at::MemoryFormat::ChannelsLast &&
                x->is_contiguous(at::MemoryFormat::ChannelsLast) &&
                (x->scalar_type() == at::kFloat || x->scalar_type() == at::kBFloat16) && kernel >= 1 &&
                stride >= 1 && padding >= 0 && padding <= kernel / 2;
    if (!fits) return nullptr;
    Window w{kernel, stride, padding};
    // libtorch's own output size, ceil mode's rule for a last window included.
    auto pooled = [&](int64_t size) {
      return at::native::pooling_output_shape<int64_t>(size, kernel, padding, stride, 1, ceil_mode);
    };
    const int64_t out_h = pooled(x->size(2)), out_w = pooled(x->size(3));
    if (out_h < 1 || out_w < 1 || x->numel() == 0) return nullptr;
    *out = new at::Tensor(pool(*x, w, out_h, out_w));
  })
}

} // extern "C"
