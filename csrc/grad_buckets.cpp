// Gradient buckets all-reduced while the backward pass still runs, as DistributedDataParallel
// overlaps them: a hook after each parameter's gradient accumulation marks it ready, and a
// bucket whose parameters are all ready starts its (asynchronous) c10d all-reduce at once, so
// that the last layers' gradients travel while the first layers' are still being computed.
//
// Buckets start in a fixed order on every rank (a ready bucket waits for those before it), since
// Gloo matches the collectives of the ranks by the order in which they were issued. The
// parameters go into buckets in reverse order, the order backward produces their gradients,
// and the first bucket is small, so that communication starts early.
//
// The hooks only act while armed (on the last micro-batch of an update); `finish` then starts the
// buckets still waiting (parameters without a gradient), waits for every bucket, divides by the
// number of ranks and copies the means back into the gradients. The loss rides in the first
// bucket, so every rank reads the same mean loss without another collective.
#include "dist.h"
#include "guard.h"

#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/utils/lambda_post_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <mutex>
#include <vector>

namespace {

class GradBuckets {
public:
  GradBuckets(Group *group, std::vector<at::Tensor> params, int64_t first_bucket_bytes, int64_t bucket_bytes)
      : group_(group), params_(std::move(params)) {
    int64_t filled = 0;
    for (size_t k = params_.size(); k-- > 0;) {
      int64_t bytes = params_[k].numel() * params_[k].element_size();
      int64_t limit = buckets_.size() == 1 ? first_bucket_bytes : bucket_bytes;
      if (buckets_.empty() || (filled > 0 && filled + bytes > limit)) {
        buckets_.emplace_back();
        filled = 0;
      }
      buckets_.back().push_back(k);
      filled += bytes;
    }
    bucket_of_.resize(params_.size());
    for (size_t b = 0; b < buckets_.size(); ++b)
      for (size_t k : buckets_[b]) bucket_of_[k] = b;
    for (size_t k = 0; k < params_.size(); ++k) {
      auto accumulator = torch::autograd::impl::grad_accumulator(params_[k]);
      TORCH_CHECK(accumulator != nullptr, "parameter ", k, " does not take a gradient");
      auto key = accumulator->add_post_hook(std::make_unique<torch::autograd::utils::LambdaPostHook>(
          [this, k](const torch::autograd::variable_list &outputs, const torch::autograd::variable_list &) {
            ready(k);
            return outputs;
          }));
      hooks_.emplace_back(key, std::move(accumulator));
    }
    reset();
  }

  ~GradBuckets() {
    for (auto &[key, accumulator] : hooks_) accumulator->del_post_hook(key);
  }

  size_t bucket_count() const { return buckets_.size(); }

  // The next backward pass completes an update whose mean loss is to be `loss`.
  void arm(const at::Tensor &loss) {
    std::lock_guard<std::mutex> lock(mutex_);
    reset();
    at::NoGradGuard no_grad;
    loss_ = loss.detach().to(at::kCPU, at::kFloat).reshape({1});
    armed_ = true;
  }

  // Waits for every bucket and leaves the ranks' mean in each gradient; returns the mean loss,
  // and how many buckets had started before backward ended.
  at::Tensor finish(int64_t *started_in_backward) {
    std::unique_lock<std::mutex> lock(mutex_);
    TORCH_CHECK(armed_, "no backward pass was armed");
    *started_in_backward = static_cast<int64_t>(next_);
    armed_ = false;
    while (next_ < buckets_.size()) start(next_++);
    lock.unlock();
    at::NoGradGuard no_grad;
    at::Tensor loss_mean;
    double world = group_->size;
    for (size_t b = 0; b < buckets_.size(); ++b) {
      wait(works_[b]);
      auto &flat = flats_[b];
      flat.div_(world);
      int64_t offset = 0;
      for (size_t k : buckets_[b]) {
        int64_t n = params_[k].numel();
        auto grad = params_[k].grad();
        if (grad.defined()) grad.copy_(flat.narrow(0, offset, n).view(grad.sizes()));
        offset += n;
      }
      if (b == 0) loss_mean = flat.narrow(0, offset, 1).reshape({}).clone();
    }
    lock.lock();
    reset();
    return loss_mean;
  }

private:
  // A parameter's gradient is accumulated: its bucket may start, and the ready ones after it.
  void ready(size_t k) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!armed_ || is_ready_[k]) return;
    is_ready_[k] = true;
    --pending_[bucket_of_[k]];
    while (next_ < buckets_.size() && pending_[next_] == 0) start(next_++);
  }

  // Starts bucket b's all-reduce (a parameter without a gradient contributes zeros and keeps
  // none: every rank runs the same graph, so it has none on any rank).
  void start(size_t b) {
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> parts;
    for (size_t k : buckets_[b]) {
      auto grad = params_[k].grad();
      parts.push_back(grad.defined() ? grad.reshape({-1}).to(at::kFloat)
                                     : at::zeros({params_[k].numel()}, at::kFloat));
    }
    if (b == 0) parts.push_back(loss_);
    flats_[b] = at::cat(parts);
    std::vector<at::Tensor> tensors{flats_[b]};
    works_[b] = group_->backend->allreduce(tensors, c10d::AllreduceOptions{});
  }

  void reset() {
    armed_ = false;
    next_ = 0;
    is_ready_.assign(params_.size(), false);
    pending_.clear();
    for (auto &bucket : buckets_) pending_.push_back(bucket.size());
    flats_.assign(buckets_.size(), at::Tensor());
    works_.assign(buckets_.size(), nullptr);
  }

  Group *group_;
  std::vector<at::Tensor> params_;
  std::vector<std::vector<size_t>> buckets_; // parameter indices, in starting order
  std::vector<size_t> bucket_of_;
  std::vector<std::pair<uintptr_t, std::shared_ptr<torch::autograd::Node>>> hooks_;

  std::mutex mutex_; // the hooks run on autograd's thread
  bool armed_ = false;
  at::Tensor loss_;
  std::vector<bool> is_ready_;
  std::vector<size_t> pending_; // per bucket: parameters not yet ready
  size_t next_ = 0;             // the first bucket not started
  std::vector<at::Tensor> flats_;
  std::vector<c10::intrusive_ptr<c10d::Work>> works_;
};

} // namespace

extern "C" {

// Buckets for the `n` parameters (leaves that take gradients) of a replica in `group`: the first
// (the last parameters) of about `first_bucket_bytes`, the others of `bucket_bytes`; *count
// says how many.
char *convnets_grad_buckets_new(void *group, at::Tensor **params, int n, int64_t first_bucket_bytes,
                                int64_t bucket_bytes, void **out, int64_t *count) {
  GUARD({
    std::vector<at::Tensor> list;
    for (int k = 0; k < n; ++k) list.push_back(*params[k]);
    auto *buckets = new GradBuckets(static_cast<Group *>(group), std::move(list), first_bucket_bytes, bucket_bytes);
    *count = static_cast<int64_t>(buckets->bucket_count());
    *out = buckets;
  })
}

void convnets_grad_buckets_free(void *buckets) { delete static_cast<GradBuckets *>(buckets); }

char *convnets_grad_buckets_arm(void *buckets, const at::Tensor *loss) {
  GUARD({ static_cast<GradBuckets *>(buckets)->arm(*loss); })
}

char *convnets_grad_buckets_finish(void *buckets, at::Tensor **loss_mean, int64_t *started_in_backward) {
  GUARD({
    auto mean = static_cast<GradBuckets *>(buckets)->finish(started_in_backward);
    *loss_mean = new at::Tensor(mean);
  })
}

} // extern "C"
