// Evaluation on the CPU with a convolution's epilogue fused into it: an eval-mode batch norm
// after it folded into its weights, and the activation (and ResNet's shortcut sum) applied by
// oneDNN as post-ops while the output is still in cache, where separate steps read and write the
// whole activation again each. The operator is libtorch's own `mkldnn::_convolution_pointwise`
// (with its `.binary` form for the sum), the one Inductor's freezing pass emits. It has no
// derivative, so it only runs where nothing needs one. Its linear-layer sibling,
// `mkldnn::_linear_pointwise`, takes a linear layer with its activation the same way (the
// classifiers of AlexNet and VGG). NCHW maps (the LeNets) keep libtorch's own convolution (the
// shim's, csrc/one_channel_conv.cpp, for a one-channel input) and matrix product, with the batch
// norm folded in and the activation applied in place. Each layer keeps its folded weights from
// call to call (a ConvnetsFoldCache) while the tensors they came from are unchanged: folding
// took a dozen small tensor operations per layer and call (a few percent of LeNet's evaluation)
// and passes over the weights of the larger networks.
#include "cpu_capabilities.h"
#include "guard.h"
#include "one_channel_conv.h"
#include "winograd.h"

#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstring>
#include <initializer_list>
#include <mutex>
#include <optional>
#include <string_view>
#include <vector>

// An eval-mode batch norm: y = (x - mean) / sqrt(var + eps) * weight + bias, per channel.
struct ConvnetsNorm {
  const at::Tensor *weight;
  const at::Tensor *bias;
  const at::Tensor *mean;
  const at::Tensor *var;
  double eps;
};

namespace {

using Scalars = c10::List<std::optional<at::Scalar>>;
using PointwiseConv = at::Tensor(const at::Tensor &, const at::Tensor &, const std::optional<at::Tensor> &,
                                 c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef, int64_t, std::string_view,
                                 Scalars, std::optional<std::string_view>);
using PointwiseLinear = at::Tensor(const at::Tensor &, const at::Tensor &, const std::optional<at::Tensor> &,
                                   std::string_view, Scalars, std::optional<std::string_view>);
using BinaryConv = at::Tensor(const at::Tensor &, const at::Tensor &, const at::Tensor &,
                              const std::optional<at::Tensor> &, c10::IntArrayRef, c10::IntArrayRef, c10::IntArrayRef,
                              int64_t, std::string_view, std::optional<at::Scalar>, std::optional<std::string_view>,
                              Scalars, std::optional<std::string_view>);

// oneDNN's bfloat16 kernels need AVX-512 (F, BW, VL, DQ), as libtorch checks before it takes them.
bool bf16_kernels() {
  static const bool supported = [] {
    for (const char *flag : {"avx512_f", "avx512_bw", "avx512_vl", "avx512_dq"})
      if (!cpu_has(flag)) return false;
    return true;
  }();
  return supported;
}

bool tracked(const at::Tensor *t) { return t != nullptr && t->requires_grad(); }

// The type the fused layer computes in (autocast's lower precision when it is on, as autocast's
// convolution and linear layer would), or nothing where the fused operators do not apply.
std::optional<at::ScalarType> fusable(const at::Tensor &x, const at::Tensor &w, const at::Tensor *b,
                                      const ConvnetsNorm *norm, const at::Tensor *other) {
  if (!at::hasMKLDNN() || !x.device().is_cpu() || !w.device().is_cpu()) return std::nullopt;
  bool any_tracked = tracked(&x) || tracked(&w) || tracked(b) || tracked(other) ||
                     (norm != nullptr && (tracked(norm->weight) || tracked(norm->bias)));
  if (at::GradMode::is_enabled() && any_tracked) return std::nullopt;
  auto dtype = x.scalar_type();
  if (at::autocast::is_autocast_enabled(at::kCPU)) dtype = at::autocast::get_autocast_dtype(at::kCPU);
  if (dtype != at::kFloat && !(dtype == at::kBFloat16 && bf16_kernels())) return std::nullopt;
  if (w.scalar_type() != at::kFloat && w.scalar_type() != dtype) return std::nullopt;
  return dtype;
}

// The layer's weight and bias with the batch norm after it folded in (in float32), cast to dtype.
std::pair<at::Tensor, std::optional<at::Tensor>> folded(const at::Tensor &w, const at::Tensor *b,
                                                         const ConvnetsNorm *norm, at::ScalarType dtype) {
  at::NoGradGuard no_grad;
  std::optional<at::Tensor> bias;
  if (b != nullptr) bias = *b;
  if (norm == nullptr) return {w.to(dtype), bias ? std::optional(bias->to(dtype)) : std::nullopt};
  auto scale = norm->weight->flatten().to(at::kFloat) * (norm->var->flatten().to(at::kFloat) + norm->eps).rsqrt();
  std::vector<int64_t> per_output(w.dim(), 1);
  per_output[0] = -1;
  auto weight = w.to(at::kFloat) * scale.view(per_output);
  auto shift = norm->bias->flatten().to(at::kFloat) - norm->mean->flatten().to(at::kFloat) * scale;
  auto new_bias = bias ? bias->to(at::kFloat) * scale + shift : shift;
  return {weight.to(dtype), new_bias.to(dtype)};
}

} // namespace

// One fused layer's folded weight and bias, and what they were folded from. The layer's weight
// and bias count as unchanged while they are the same tensors (held here, so that no other can
// take their place) at the same data and version: libtorch bumps a tensor's version at each
// in-place change (an optimizer's step, a checkpoint copied in). A batch norm's four vectors are
// compared by value with copies kept here: libtorch's batch norm updates its running statistics
// without bumping their versions, and they are a few floats per channel.
struct ConvnetsFoldCache {
  std::mutex mutex;
  std::vector<at::Tensor> sources;
  std::vector<const void *> data;
  std::vector<int64_t> versions;
  std::vector<at::Tensor> norm_values;
  at::ScalarType dtype = at::kFloat;
  std::pair<at::Tensor, std::optional<at::Tensor>> folded;
  // The folded weight transformed for Winograd's algorithm, the folded weight it came from, and the
  // output tiles' side it was transformed for.
  at::Tensor winograd, winograd_of;
  int64_t winograd_tile = 0;
};

namespace {

bool same_values(const at::Tensor &t, const at::Tensor &copy) {
  return t.scalar_type() == copy.scalar_type() && t.sizes() == copy.sizes() && t.is_contiguous() &&
         std::memcmp(t.const_data_ptr(), copy.const_data_ptr(), t.nbytes()) == 0;
}

// folded(w, b, norm, dtype), from `cache` where it holds them for these tensors as they are now.
std::pair<at::Tensor, std::optional<at::Tensor>> folded_cached(ConvnetsFoldCache *cache, const at::Tensor &w,
                                                                const at::Tensor *b, const ConvnetsNorm *norm,
                                                                at::ScalarType dtype) {
  std::vector<at::Tensor> sources{w}, norm_tensors;
  if (b != nullptr) sources.push_back(*b);
  if (norm != nullptr) norm_tensors = {*norm->weight, *norm->bias, *norm->mean, *norm->var};
  bool cpu = true;
  for (const auto &t : norm_tensors) cpu = cpu && t.device().is_cpu();
  if (cache == nullptr || !cpu) return folded(w, b, norm, dtype);
  std::lock_guard<std::mutex> lock(cache->mutex);
  bool same = cache->dtype == dtype && cache->sources.size() == sources.size() &&
              cache->norm_values.size() == norm_tensors.size();
  for (size_t i = 0; same && i < sources.size(); ++i) {
    same = cache->sources[i].is_same(sources[i]) && cache->data[i] == sources[i].const_data_ptr() &&
           cache->versions[i] == sources[i]._version();
  }
  for (size_t i = 0; same && i < norm_tensors.size(); ++i) same = same_values(norm_tensors[i], cache->norm_values[i]);
  if (!same) {
    at::NoGradGuard no_grad; // for the copies of the batch norm's vectors (folded has its own)
    cache->folded = folded(w, b, norm, dtype);
    // Folding without a batch norm may return the layer's own weight, the same tensor as before
    // its change: the transformed weight is made again from it all the same.
    cache->winograd = cache->winograd_of = at::Tensor();
    cache->dtype = dtype;
    cache->data.clear();
    cache->versions.clear();
    for (const auto &t : sources) {
      cache->data.push_back(t.const_data_ptr());
      cache->versions.push_back(t._version());
    }
    cache->sources = std::move(sources);
    cache->norm_values.clear();
    for (const auto &t : norm_tensors) cache->norm_values.push_back(t.clone(at::MemoryFormat::Contiguous));
  }
  return cache->folded;
}

std::optional<std::string_view> post_op(const char *activation) {
  if (activation == nullptr || std::string_view(activation) == "none") return std::nullopt;
  return std::string_view(activation);
}

// winograd_weight(weight, tile), from `cache` where it holds it for this folded weight and tile
// (folded_cached forgets it when it folds again; a map of another size may take another tile).
at::Tensor winograd_cached(ConvnetsFoldCache *cache, const at::Tensor &weight, int64_t tile) {
  if (cache == nullptr) return winograd_weight(weight, tile);
  std::lock_guard<std::mutex> lock(cache->mutex);
  if (!cache->winograd_of.defined() || !cache->winograd_of.is_same(weight) || cache->winograd_tile != tile) {
    cache->winograd = winograd_weight(weight, tile);
    cache->winograd_of = weight;
    cache->winograd_tile = tile;
  }
  return cache->winograd;
}

// The output tiles' side in which Winograd's algorithm takes this fused layer (0 for none):
// float32, a shape it takes, and an activation its output transform applies (a ReLU or none).
int64_t winograd_tile(const at::Tensor &x, const at::Tensor &weight, int64_t stride, int64_t padding,
                      const char *activation, at::ScalarType dtype) {
  auto act = post_op(activation);
  if (dtype != at::kFloat || x.scalar_type() != at::kFloat || !winograd_enabled() || x.dim() != 4 ||
      weight.dim() != 4 || weight.size(1) != x.size(1) || weight.size(2) != weight.size(3) ||
      (act && *act != "relu"))
    return 0;
  return winograd_forward_tile(x.size(1), weight.size(0), x.size(2), x.size(3), weight.size(2), stride, padding);
}

// The activation applied to y in place (for the layers libtorch computes itself).
at::Tensor activate_(at::Tensor &y, const char *activation) {
  std::string_view name = activation == nullptr ? "none" : activation;
  if (name == "relu") return y.relu_();
  if (name == "sigmoid") return y.sigmoid_();
  return y;
}

} // namespace

extern "C" {

// A layer's cache of its folded weights, for the calls below; freed by convnets_fold_cache_free.
ConvnetsFoldCache *convnets_fold_cache_new() { return new (std::nothrow) ConvnetsFoldCache(); }

void convnets_fold_cache_free(ConvnetsFoldCache *cache) { delete cache; }

// Whether the calls below fuse layers computing in bfloat16: oneDNN's bfloat16 kernels need
// AVX-512, and on a CPU without it such layers run one by one.
int32_t convnets_fuses_bf16() {
  try {
    return at::hasMKLDNN() && bf16_kernels();
  } catch (...) {
    return 0;
  }
}

// activation(norm(conv2d(x, w, b)) [+ other]) with a square kernel, stride and padding, in one
// oneDNN call, into *out; `norm` and `other` may be NULL, `activation` is "relu", "sigmoid" or
// "none"; `cache` (NULL for none) keeps the layer's folded weights. Leaves *out NULL where the
// fused operators do not apply (a tensor off the CPU or of another type, a gradient to track, no
// oneDNN, bfloat16 without the instructions for it): the caller then computes it step by step.
char *convnets_conv2d_pointwise(const at::Tensor *x, const at::Tensor *w, const at::Tensor *b, int64_t stride,
                                int64_t padding, const ConvnetsNorm *norm, const at::Tensor *other,
                                const char *activation, ConvnetsFoldCache *cache, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    auto dtype = fusable(*x, *w, b, norm, other);
    if (!dtype) return nullptr;
    int64_t padding2[2] = {padding, padding}, stride2[2] = {stride, stride}, dilation[2] = {1, 1};
    // An NCHW map: oneDNN would convolve it in a blocked layout of its own, and the reorders to
    // and from it cost LeNet's small maps more than the post-ops save (its sum is no post-op
    // there either). So libtorch's own convolution (or the shim's one-channel one) takes the
    // folded weights (autocast casts them as it casts the layer's), and the sum and activation
    // follow in place: still no batch norm pass, and no new tensor after the convolution's.
    if (x->suggest_memory_format() != at::MemoryFormat::ChannelsLast) {
      auto [weight, bias] = folded_cached(cache, *w, b, norm, at::kFloat);
      auto one_channel = one_channel_conv2d(*x, weight, bias ? &*bias : nullptr, stride, padding);
      auto y = one_channel ? *one_channel : at::conv2d(*x, weight, bias, stride2, padding2);
      if (other != nullptr) y.add_(*other);
      *out = new at::Tensor(activate_(y, activation));
      return nullptr;
    }
    auto [weight, bias] = folded_cached(cache, *w, b, norm, *dtype);
    // Winograd's algorithm where it takes the layer (3x3 or 5x5, stride 1, on CPUs where oneDNN's
    // kernels are its AVX2 ones), with the bias, the sum and the ReLU in its output transform.
    if (const int64_t tile = winograd_tile(*x, weight, stride, padding, activation, *dtype)) {
      *out = new at::Tensor(winograd_conv2d(*x, winograd_cached(cache, weight, tile), tile, bias ? &*bias : nullptr,
                                            other, post_op(activation).has_value()));
      return nullptr;
    }
    // oneDNN cannot create the sum's memory for a 1x1 map ("could not create a memory", as
    // libtorch 2.11 calls it; ResNet's last stage at a 32-pixel input): such a sum follows the
    // convolution in place instead, then the activation.
    bool single_pixel = other != nullptr && other->size(2) * other->size(3) == 1;
    at::Tensor y;
    if (other == nullptr || single_pixel) {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("mkldnn::_convolution_pointwise", "")
                                 .typed<PointwiseConv>();
      auto act = single_pixel ? "none" : post_op(activation).value_or("none");
      y = op.call(x->to(*dtype), weight, bias, padding2, stride2, dilation, 1, act, Scalars(), std::nullopt);
      if (single_pixel) activate_(y.add_(other->to(*dtype)), activation);
    } else {
      static const auto op = c10::Dispatcher::singleton()
                                 .findSchemaOrThrow("mkldnn::_convolution_pointwise", "binary")
                                 .typed<BinaryConv>();
      y = op.call(x->to(*dtype), other->to(*dtype), weight, bias, padding2, stride2, dilation, 1, "add",
                  at::Scalar(1.0), post_op(activation), Scalars(), std::nullopt);
    }
    *out = new at::Tensor(std::move(y));
  })
}

// activation(norm(linear(x, w, b))) as convnets_conv2d_pointwise computes a convolution's
// (without a sum; `norm` and `cache` may be NULL): in one oneDNN call when `onednn` is set (the
// networks laid out channels-last, whose large classifiers gain from it), else libtorch's own
// matrix product with the batch norm folded in and the activation in place (LeNet's small layers,
// for which oneDNN's call was slower than MKL's product).
char *convnets_linear_pointwise(const at::Tensor *x, const at::Tensor *w, const at::Tensor *b,
                                const ConvnetsNorm *norm, const char *activation, int32_t onednn,
                                ConvnetsFoldCache *cache, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    auto dtype = fusable(*x, *w, b, norm, nullptr);
    if (!dtype) return nullptr;
    if (!onednn) {
      auto [weight, bias] = folded_cached(cache, *w, b, norm, at::kFloat);
      auto y = at::linear(*x, weight, bias);
      *out = new at::Tensor(activate_(y, activation));
      return nullptr;
    }
    auto [weight, bias] = folded_cached(cache, *w, b, norm, *dtype);
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
                               .typed<PointwiseLinear>();
    *out = new at::Tensor(
        op.call(x->to(*dtype), weight, bias, post_op(activation).value_or("none"), Scalars(), std::nullopt));
  })
}

// The start of a dense block's concatenation in evaluation: a new channels-last map of x's batch,
// height and width with `channels` channels, x copied into the first ones, in *out. The block's
// layers then read their inputs as channel slices of it and write their outputs after them, where
// concatenating after each layer would copy every channel so far again. Leaves *out NULL where x
// is not a channels-last 4-d CPU map, and where autograd is on: a layer's input saved for the
// backward pass would share its storage with the slices written after it.
char *convnets_dense_concatenation(const at::Tensor *x, int64_t channels, at::Tensor **out) {
  GUARD({
    *out = nullptr;
    if (at::GradMode::is_enabled() || x->dim() != 4 || !x->device().is_cpu() || channels < x->size(1) ||
        !x->is_contiguous(at::MemoryFormat::ChannelsLast))
      return nullptr;
    auto y = at::empty({x->size(0), channels, x->size(2), x->size(3)}, x->options(), at::MemoryFormat::ChannelsLast);
    y.narrow(1, 0, x->size(1)).copy_(*x);
    *out = new at::Tensor(std::move(y));
  })
}

} // extern "C"
