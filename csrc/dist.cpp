// Data-parallel training on libtorch's own c10d, the engine under PyTorch's
// DistributedDataParallel: a TCPStore for rendezvous (behind a PrefixStore, so that keys cannot
// clash with those of a torchrun agent sharing the store), ProcessGroupGloo for the collectives,
// and synchronised batch normalisation as an autograd function whose forward and backward
// all-reduce their per-channel sums, as PyTorch's SyncBatchNorm does.
//
// Every function returns NULL on success or a malloc'ed error message (freed by the caller):
// c10d reports a dead peer, a timeout or a port in use with C++ exceptions, which must not cross
// into Rust.
#include "dist.h"
#include "guard.h"

#include <c10/util/Logging.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

void all_reduce_sum(Group *group, at::Tensor &t) {
  std::vector<at::Tensor> tensors{t};
  wait(group->backend->allreduce(tensors, c10d::AllreduceOptions{}));
}

// The dimensions batch normalisation reduces over: all but the channels (dimension 1).
std::vector<int64_t> reduced_dims(const at::Tensor &x) {
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  return dims;
}

// The shape that broadcasts a per-channel vector against x: (1, C, 1, 1) or (1, C).
std::vector<int64_t> channel_shape(const at::Tensor &x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

// nn.SyncBatchNorm in training mode: the mean and (biased) variance of each channel over every
// rank's batch; the running statistics updated from them (with the unbiased variance); in the
// backward pass, the sums of the gradient and of the gradient times the centred input, again
// over every rank, so that each rank's input gradient is that of the whole batch. The sums are
// accumulated in float64 on the CPU (exact enough that two ranks match one within rounding) and
// in float32 on a GPU.
struct SyncBatchNorm : public torch::autograd::Function<SyncBatchNorm> {
  static at::Tensor forward(torch::autograd::AutogradContext *ctx, const at::Tensor &x, const at::Tensor &weight,
                            const at::Tensor &bias, at::Tensor running_mean, at::Tensor running_var, double momentum,
                            double eps, int64_t group_handle) {
    auto *group = reinterpret_cast<Group *>(group_handle);
    auto dims = reduced_dims(x);
    auto acc = x.is_cuda() ? at::kFloat : at::kDouble;
    int64_t channels = x.size(1);
    double local_count = static_cast<double>(x.numel() / channels);
    // [sum x | sum x^2 | count], one all-reduce.
    auto stats = at::cat({x.sum(dims, false, acc), x.square().sum(dims, false, acc),
                          at::full({1}, local_count, x.options().dtype(acc))});
    all_reduce_sum(group, stats);
    double count = stats[2 * channels].item<double>();
    auto mean = stats.slice(0, 0, channels) / count;
    auto var = (stats.slice(0, channels, 2 * channels) / count - mean.square()).clamp_min(0);
    auto invstd = (var + eps).rsqrt();
    {
      at::NoGradGuard no_grad;
      running_mean.mul_(1 - momentum).add_(mean.to(running_mean.scalar_type()), momentum);
      auto unbiased = var * (count / std::max(count - 1, 1.0));
      running_var.mul_(1 - momentum).add_(unbiased.to(running_var.scalar_type()), momentum);
    }
    auto shape = channel_shape(x);
    auto mean_x = mean.to(x.scalar_type()).view(shape);
    auto invstd_x = invstd.to(x.scalar_type()).view(shape);
    auto y = (x - mean_x) * invstd_x * weight.view(shape) + bias.view(shape);
    ctx->save_for_backward({x, weight, mean_x, invstd_x});
    ctx->saved_data["group"] = group_handle;
    ctx->saved_data["count"] = count;
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext *ctx,
                                                 torch::autograd::variable_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    auto x = saved[0], weight = saved[1], mean = saved[2], invstd = saved[3];
    auto *group = reinterpret_cast<Group *>(ctx->saved_data["group"].toInt());
    double count = ctx->saved_data["count"].toDouble();
    auto dy = grad_outputs[0];
    auto dims = reduced_dims(x);
    auto acc = x.is_cuda() ? at::kFloat : at::kDouble;
    int64_t channels = x.size(1);
    auto xmu = x - mean;
    auto sums = at::cat({dy.sum(dims, false, acc), (dy * xmu).sum(dims, false, acc)});
    // This rank's parameter gradients, as SyncBatchNorm gives them (DDP then averages them).
    auto flat_invstd = invstd.flatten().to(acc);
    auto grad_weight = (sums.slice(0, channels, 2 * channels) * flat_invstd).to(weight.scalar_type());
    auto grad_bias = sums.slice(0, 0, channels).to(weight.scalar_type());
    all_reduce_sum(group, sums);
    auto shape = channel_shape(x);
    auto mean_dy = (sums.slice(0, 0, channels) / count).to(x.scalar_type()).view(shape);
    auto mean_dy_xmu = (sums.slice(0, channels, 2 * channels) / count).to(x.scalar_type()).view(shape);
    auto grad_x = (dy - mean_dy - xmu * invstd.square() * mean_dy_xmu) * invstd * weight.view(shape);
    return {grad_x, grad_weight, grad_bias, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

} // namespace

extern "C" {

// c10d logs a line for each wait on the rendezvous that times out, each failed connection
// attempt and each peer that drops (as warnings and errors); convnets reports such failures
// itself, in one line. They are left on when TORCH_CPP_LOG_LEVEL asks for them, as PyTorch
// documents.
void convnets_quiet_c10d_logs() {
  if (std::getenv("TORCH_CPP_LOG_LEVEL") == nullptr && FLAGS_caffe2_log_level < 3) FLAGS_caffe2_log_level = 3;
}

// A TCPStore at host:port, serving it (`serve`) or connecting to it, retrying until
// `timeout_ms`; keys prefixed with `prefix`. A server takes over `listen_fd`, a socket the
// caller bound to the one address it must listen on (c10d's own server would listen on every
// interface); *bound_port says which port it has.
char *convnets_store_new(const char *host, int port, int serve, int listen_fd, int timeout_ms, const char *prefix,
                         void **out, int *bound_port) {
  GUARD({
    c10d::TCPStoreOptions options;
    options.port = static_cast<uint16_t>(port);
    options.isServer = serve != 0;
    if (serve != 0) options.masterListenFd = listen_fd;
    options.waitWorkers = false;
    options.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(host, options);
    *bound_port = tcp->getPort();
    c10::intrusive_ptr<c10d::Store> store = tcp;
    if (prefix != nullptr && prefix[0] != '\0') store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    *out = new Store{store};
  })
}

void convnets_store_free(void *store) { delete static_cast<Store *>(store); }

char *convnets_store_set(void *store, const char *key, const uint8_t *data, size_t len) {
  GUARD({ static_cast<Store *>(store)->store->set(key, std::vector<uint8_t>(data, data + len)); })
}

// The value of `key`, waiting for it up to the store's timeout; *data is malloc'ed.
char *convnets_store_get(void *store, const char *key, uint8_t **data, size_t *len) {
  GUARD({
    auto value = static_cast<Store *>(store)->store->get(key);
    *len = value.size();
    *data = static_cast<uint8_t *>(std::malloc(value.size() + 1));
    if (*data == nullptr) throw std::bad_alloc();
    if (!value.empty()) std::memcpy(*data, value.data(), value.size());
  })
}

// Whether `key` is set, without waiting.
char *convnets_store_check(void *store, const char *key, int *present) {
  GUARD({ *present = static_cast<Store *>(store)->store->check({key}) ? 1 : 0; })
}

char *convnets_store_add(void *store, const char *key, int64_t value, int64_t *out) {
  GUARD({ *out = static_cast<Store *>(store)->store->add(key, value); })
}

// Joins the Gloo process group of `size` ranks as `rank`, meeting the others through `store`
// (GLOO_SOCKET_IFNAME picks the network interface, as in PyTorch). Collectives fail after
// `timeout_ms` instead of waiting forever for a stuck rank.
char *convnets_gloo_new(void *store, int rank, int size, int timeout_ms, void **out) {
  GUARD({
    auto options = c10d::ProcessGroupGloo::Options::create_default(std::chrono::milliseconds(timeout_ms));
    auto backend =
        c10::make_intrusive<c10d::ProcessGroupGloo>(static_cast<Store *>(store)->store, rank, size, options);
    *out = new Group{backend, rank, size};
  })
}

void convnets_group_free(void *group) { delete static_cast<Group *>(group); }

// Sums `t` over all ranks, in place.
char *convnets_all_reduce(void *group, at::Tensor *t) {
  GUARD({ all_reduce_sum(static_cast<Group *>(group), *t); })
}

// Overwrites `t` with rank `root`'s, in place.
char *convnets_broadcast(void *group, at::Tensor *t, int root) {
  GUARD({
    std::vector<at::Tensor> tensors{*t};
    c10d::BroadcastOptions options;
    options.rootRank = root;
    wait(static_cast<Group *>(group)->backend->broadcast(tensors, options));
  })
}

// Training-mode batch normalisation of x over every rank's batch (see SyncBatchNorm).
char *convnets_sync_batch_norm(void *group, const at::Tensor *x, const at::Tensor *weight, const at::Tensor *bias,
                               at::Tensor *running_mean, at::Tensor *running_var, double momentum, double eps,
                               at::Tensor **out) {
  GUARD({
    auto y = SyncBatchNorm::apply(*x, *weight, *bias, *running_mean, *running_var, momentum, eps,
                                  reinterpret_cast<int64_t>(group));
    *out = new at::Tensor(y);
  })
}

} // extern "C"
