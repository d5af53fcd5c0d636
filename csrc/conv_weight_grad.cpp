// Training's convolutions on channels-last float32 CPU maps, with their weight's and bias's
// gradients as matrix products over blocks of output positions. oneDNN's AVX2 backward-weights
// kernel ran at half the rate of its forward one on the same shapes (45-80 GFLOP/s against 130
// on two Zen 3 cores for VGG's, ResNet's and DenseNet's 3x3 convolutions, 3 GFLOP/s for VGG's
// one-channel first one), and it was the largest single kernel of their training steps. The
// forward and the input's gradient stay oneDNN's, except for the 3x3 stride-1 layers Winograd's
// algorithm takes (csrc/winograd.cpp), all three of whose products it computes.
//
// The weight's gradient is dW = dy^T windows, summed over output positions: dy's row of output
// channels at each position (a channels-last map's rows as they are) times the input's window
// under it (kernel x kernel x in_channels values, zero where the window passes the padding).
// Each block of positions gathers its windows into a buffer of about 1 MiB, which stays in the
// cache for the one matrix product (MKL's) that adds the block in; a 1x1 convolution with
// stride 1 and no padding needs no gathering, its windows are the input's rows.
//
// The blocks are cut the same way whatever the thread count and summed in a fixed order (a fixed
// number of groups, each adding its blocks in turn, the groups added in order), so the gradients
// are the same bits from run to run. (Not quite whatever the thread count: MKL chooses how it
// computes a product by the threads it may use, and the last bits follow.) And sums of a block's
// products, added up, round less than one long chain, so they are closer to exact sums than
// oneDNN's.
#include "cpu_capabilities.h"
#include "guard.h"
#include "vector_clones.h"
#include "winograd.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/csrc/autograd/custom_function.h>

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace {

// Bytes of gathered windows per block.
constexpr int64_t BLOCK_BYTES = int64_t{1} << 20;
// The most partial weight gradients kept at once, and the most bytes they may take.
constexpr int64_t MAX_GROUPS = 16;
constexpr int64_t GROUP_BYTES = int64_t{64} << 20;

KernelPolicy policy;

// Adds `rows` rows of `channels` values into sums, a row at a time.
VECTOR_CLONES void add_rows(const float *rows_data, int64_t rows, int64_t channels, double *sums) {
  for (int64_t r = 0; r < rows; ++r) {
    const float *row = rows_data + r * channels;
#pragma omp simd
    for (int64_t c = 0; c < channels; ++c) sums[c] += row[c];
  }
}

struct Shape {
  int64_t images, in_channels, height, width, out_channels, out_h, out_w, kernel, stride, padding;
  // A window's values: kernel rows of kernel x in_channels.
  int64_t window() const { return kernel * kernel * in_channels; }
  // Whether the windows are the input's rows as they are.
  bool pointwise() const { return kernel == 1 && stride == 1 && padding == 0; }
};

// The input's windows under output positions [first, last) (image-major, then row, then
// column), one row of s.window() values each, into `windows`.
void gather_windows(const Shape &s, const float *x, int64_t first, int64_t last, float *windows) {
  const int64_t c = s.in_channels, k = s.kernel, row_values = k * c;
  for (int64_t q = first; q < last; ++q) {
    const int64_t image = q / (s.out_h * s.out_w), oh = q / s.out_w % s.out_h, ow = q % s.out_w;
    const int64_t left = ow * s.stride - s.padding;
    // The kernel's columns that fall inside the image: [j0, j1).
    const int64_t j0 = std::clamp<int64_t>(-left, 0, k), j1 = std::clamp<int64_t>(s.width - left, j0, k);
    float *out = windows + (q - first) * s.window();
    for (int64_t i = 0; i < k; ++i, out += row_values) {
      const int64_t in_row = oh * s.stride - s.padding + i;
      if (in_row < 0 || in_row >= s.height) {
        std::memset(out, 0, sizeof(float) * row_values);
        continue;
      }
      std::memset(out, 0, sizeof(float) * j0 * c);
      std::memcpy(out + j0 * c, x + ((image * s.height + in_row) * s.width + left + j0) * c,
                  sizeof(float) * (j1 - j0) * c);
      std::memset(out + j1 * c, 0, sizeof(float) * (k - j1) * c);
    }
  }
}

// The weight's gradient (out_channels x kernel x kernel x in_channels, a channels-last weight's
// layout) and, where `with_bias`, the bias's.
std::pair<at::Tensor, at::Tensor> weight_grad(const at::Tensor &x, const at::Tensor &dy, const Shape &s,
                                              bool with_bias) {
  const int64_t oc = s.out_channels, window = s.window();
  const int64_t positions = s.images * s.out_h * s.out_w;
  const int64_t block = std::clamp<int64_t>(BLOCK_BYTES / (window * static_cast<int64_t>(sizeof(float))), 16, 4096);
  const int64_t blocks = (positions + block - 1) / block;
  const int64_t weight_bytes = oc * window * static_cast<int64_t>(sizeof(float));
  const int64_t groups = std::max<int64_t>(1, std::min({MAX_GROUPS, blocks, GROUP_BYTES / weight_bytes}));
  auto options = x.options();
  auto partial = at::empty({groups, oc, window}, options);
  std::vector<double> bias_partial(with_bias ? groups * oc : 0, 0.0);
  const float *x_data = x.const_data_ptr<float>(), *dy_data = dy.const_data_ptr<float>();
  // dy's rows (positions x out_channels), and for pointwise windows, the input's.
  auto dy_rows = at::from_blob(const_cast<float *>(dy_data), {positions, oc}, options);
  auto x_rows = s.pointwise() ? at::from_blob(const_cast<float *>(x_data), {positions, window}, options) : at::Tensor();
  at::parallel_for(0, groups, 1, [&](int64_t first_group, int64_t last_group) {
    auto gathered = s.pointwise() ? at::Tensor() : at::empty({block, window}, options);
    for (int64_t g = first_group; g < last_group; ++g) {
      auto sum = partial[g];
      const int64_t first_block = blocks * g / groups, last_block = blocks * (g + 1) / groups;
      for (int64_t b = first_block; b < last_block; ++b) {
        const int64_t first = b * block, count = std::min(positions, first + block) - first;
        at::Tensor windows;
        if (s.pointwise()) {
          windows = x_rows.narrow(0, first, count);
        } else {
          gather_windows(s, x_data, first, first + count, gathered.mutable_data_ptr<float>());
          windows = gathered.narrow(0, 0, count);
        }
        auto grads = dy_rows.narrow(0, first, count).t();
        if (b == first_block)
          at::mm_out(sum, grads, windows);
        else
          sum.addmm_(grads, windows);
        if (with_bias) add_rows(dy_data + first * oc, count, oc, bias_partial.data() + g * oc);
      }
    }
  });
  auto weight = at::empty({oc, s.in_channels, s.kernel, s.kernel}, options, at::MemoryFormat::ChannelsLast);
  // Same memory order (out, kernel rows, kernel columns, in): the groups' sum, in group order.
  auto total = at::from_blob(weight.mutable_data_ptr<float>(), {oc, window}, options);
  total.copy_(partial[0]);
  for (int64_t g = 1; g < groups; ++g) total.add_(partial[g]);
  at::Tensor bias;
  if (with_bias) {
    bias = at::empty({oc}, options);
    float *out = bias.mutable_data_ptr<float>();
    for (int64_t c = 0; c < oc; ++c) {
      double total_c = 0;
      for (int64_t g = 0; g < groups; ++g) total_c += bias_partial[g * oc + c];
      out[c] = static_cast<float>(total_c);
    }
  }
  return {weight, bias};
}

// The forward and backward of the two autograd functions below, a convolution with a bias and
// one without (an autograd function's inputs cannot be undefined tensors).
at::Tensor training_forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const std::optional<at::Tensor> &bias, int64_t stride, int64_t padding) {
  ctx->save_for_backward({x, weight});
  ctx->saved_data["stride"] = stride;
  ctx->saved_data["padding"] = padding;
  // Decided once for the forward and the weight's gradient, which sums over the same tiles.
  const bool winograd = winograd_enabled() && winograd_shape(x.size(1), weight.size(0), x.size(2), x.size(3),
                                                             weight.size(2), stride, padding);
  ctx->saved_data["winograd"] = winograd;
  if (winograd) return winograd_conv2d(x, winograd_weight(weight, 2), 2, bias ? &*bias : nullptr, nullptr, false);
  return at::convolution(x, weight, bias, {stride, stride}, {padding, padding}, {1, 1}, false, {0, 0}, 1);
}

// dx (oneDNN's, where x needs it), dW and, where `bias_grad`, db.
std::tuple<at::Tensor, at::Tensor, at::Tensor> training_backward(torch::autograd::AutogradContext *ctx,
                                                                const torch::autograd::variable_list &grads,
                                                                bool bias_grad) {
  auto saved = ctx->get_saved_variables();
  const auto &x = saved[0], &weight = saved[1];
  const int64_t stride = ctx->saved_data["stride"].toInt(), padding = ctx->saved_data["padding"].toInt();
  const bool winograd = ctx->saved_data["winograd"].toBool();
  auto dy = grads[0].contiguous(at::MemoryFormat::ChannelsLast);
  at::Tensor dx;
  // For stride 1 and padding 1, dx is the convolution of dy with the weight turned and in and out
  // swapped: Winograd's algorithm takes it where it takes that shape (which differs from the
  // forward's where in and out channels differ), in the largest tiles that fit, as evaluation's
  // forward. The forward keeps 2x2 tiles: with 4x4 ones its outputs were 1.4-2.8 times as far
  // from exact sums as oneDNN's, enough to flip a ReLU near 0 in a whole network's test.
  if (ctx->needs_input_grad(0) && winograd_enabled() &&
      winograd_shape(dy.size(1), x.size(1), dy.size(2), dy.size(3), weight.size(2), stride, padding)) {
    const int64_t tile = winograd_forward_tile(dy.size(1), x.size(1), dy.size(2), dy.size(3), 3, 1, 1);
    dx = winograd_conv2d(dy, winograd_input_grad_weight(weight, tile), tile, nullptr, nullptr, false);
  } else if (ctx->needs_input_grad(0))
    dx = std::get<0>(at::convolution_backward(dy, x, weight, std::nullopt, {stride, stride}, {padding, padding},
                                              {1, 1}, false, {0, 0}, 1, {true, false, false}));
  const Shape s{x.size(0),  x.size(1),  x.size(2),      x.size(3), dy.size(1),
                dy.size(2), dy.size(3), weight.size(2), stride,    padding};
  auto [dw, db] = winograd ? winograd_weight_grad(x, dy, bias_grad) : weight_grad(x, dy, s, bias_grad);
  return {dx, dw, db};
}

struct BiasedConv2d : torch::autograd::Function<BiasedConv2d> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const at::Tensor &bias, int64_t stride, int64_t padding) {
    return training_forward(ctx, x, weight, bias, stride, padding);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto [dx, dw, db] = training_backward(ctx, grads, ctx->needs_input_grad(2));
    return {dx, dw, db, at::Tensor(), at::Tensor()};
  }
};

struct UnbiasedConv2d : torch::autograd::Function<UnbiasedConv2d> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            int64_t stride, int64_t padding) {
    return training_forward(ctx, x, weight, std::nullopt, stride, padding);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grads) {
    auto [dx, dw, db] = training_backward(ctx, grads, false);
    return {dx, dw, at::Tensor(), at::Tensor()};
  }
};

bool float_cpu(const at::Tensor &t) { return t.device().is_cpu() && t.scalar_type() == at::kFloat; }

// What the kernel takes: a channels-last 4-d float32 CPU map and weight, a square kernel, a
// weight that needs its gradient, and no autocast (which would run the convolution in bfloat16).
bool fits(const at::Tensor &x, const at::Tensor &weight, const at::Tensor *bias) {
  if (!at::GradMode::is_enabled() || !weight.requires_grad()) return false;
  if (at::autocast::is_autocast_enabled(at::kCPU)) return false;
  if (x.dim() != 4 || weight.dim() != 4 || !float_cpu(x) || !float_cpu(weight) || x.numel() == 0) return false;
  if (!x.is_contiguous(at::MemoryFormat::ChannelsLast) || !weight.is_contiguous(at::MemoryFormat::ChannelsLast))
    return false;
  if (weight.size(1) != x.size(1) || weight.size(2) != weight.size(3)) return false;
  return bias == nullptr || (float_cpu(*bias) && bias->dim() == 1 && bias->size(0) == weight.size(0));
}

} // namespace

extern "C" {

// conv2d(x, weight, bias, stride, padding) for training, differentiable, its weight's and bias's
// gradients by the matrix products above, into *out; leaves *out NULL where the kernel does not
// apply (another layout, type or device, no gradient wanted, autocast, or a layer where oneDNN's
// own kernel is the faster one on this CPU), for the caller to call libtorch's.
char *convnets_conv2d_train(const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias, int64_t stride,
                            int64_t padding, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    if (!fits(*x, *weight, bias)) return nullptr;
    // With AVX-512 the products over blocks were 0.9-1.0x oneDNN's backward-weights kernel, so
    // there the function runs only for the layers Winograd's algorithm takes the forward or the
    // input's gradient of (DenseNet's 32-channel layers: only the latter).
    auto winograd_takes = [&](int64_t in_channels, int64_t out_channels) {
      return winograd_shape(in_channels, out_channels, x->size(2), x->size(3), weight->size(2), stride, padding);
    };
    const int64_t in_channels = x->size(1), out_channels = weight->size(0);
    const bool winograd =
        winograd_enabled() && (winograd_takes(in_channels, out_channels) || winograd_takes(out_channels, in_channels));
    if (!policy.allows(winograd)) return nullptr;
    *out = new at::Tensor(bias != nullptr ? BiasedConv2d::apply(*x, *weight, *bias, stride, padding)
                                          : UnbiasedConv2d::apply(*x, *weight, stride, padding));
  })
}

// Where convnets_conv2d_train applies: 0 where oneDNN's kernel is the AVX2 one, or Winograd's
// algorithm takes the layer, 1 everywhere, 2 nowhere (for tests and measurements).
char *convnets_set_conv_weight_grad_policy(int mode) {
  GUARD({
    policy.set(mode);
  })
}

} // extern "C"
