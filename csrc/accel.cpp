// What tch 0.24 does not expose and convnets needs: libtorch's autocast in bfloat16, on the CPU
// too (tch's `autocast` is CUDA-only and float16), the channels-last memory format, `add` with a
// scale (for the optimizers), and,
// in a CUDA build, graph capture/replay, host-to-device copies on a side stream and the CUDA
// allocator's peak statistics.
//
// Every function returns NULL on success or a malloc'ed error message (freed by the caller), so
// no C++ exception crosses into Rust.
#include "cpu_capabilities.h"
#include "guard.h"

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/cpu/Utils.h>
#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#ifdef CONVNETS_CUDA
#include <ATen/cuda/CUDAGraph.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAEvent.h>
#endif

extern "C" {

// Turns autocast on or off for `cuda` (else the CPU) on this thread, with bfloat16 as the lower
// precision. The weight-cast cache stays off: weights change in place every step, and CUDA
// graphs forbid it.
char *convnets_autocast_bf16(int cuda, int enabled) {
  GUARD({
    auto device = cuda ? at::kCUDA : at::kCPU;
    at::autocast::set_autocast_cache_enabled(false);
    at::autocast::set_autocast_dtype(device, at::kBFloat16);
    at::autocast::set_autocast_enabled(device, enabled != 0);
  })
}

// Whether this CPU does bfloat16 arithmetic in hardware (AVX512-BF16 or AMX-BF16), as libtorch's
// cpuinfo sees it: without it oneDNN emulates bfloat16 and mixed precision is slower than float32.
// AMX also needs the kernel's permission, which `init_amx` asks for.
char *convnets_cpu_has_bf16(int *out) {
  GUARD({
    *out = cpu_has("avx512_bf16") || (cpu_has("amx_bf16") && at::cpu::init_amx());
  })
}

// Whether oneDNN's bfloat16 convolutions run at least 1.2 times as fast as its float32 ones on this
// CPU, by timing one (a 3x3 layer of 64 channels on a channels-last 28x28 map, 16 images): the
// flags alone do not say. Two Zen 5 cores with AVX512-BF16 trained the image networks 1.7-2.7x as
// fast in bf16. On two Emerald Rapids cores with AVX512-BF16 (AMX not enabled) oneDNN's bf16
// convolution of this shape took 1.5 times its fp32 one, and every network ran slower in bf16:
// PyTorch's best variants at 0.54-0.95 of their fp32 speed, convnets at 0.35-0.91. The two run in
// turn, 8 times each after one that sets the kernels up, and each keeps its best: a moment of
// load from another process slows one run of either, not one precision.
char *convnets_cpu_bf16_convolutions_faster(int *out) {
  GUARD({
    at::NoGradGuard no_grad;
    // Constant values: drawing random ones would move libtorch's generator, and with it what a
    // seeded run draws after auto has chosen.
    auto options = at::TensorOptions().dtype(at::kFloat);
    auto x = at::full({16, 64, 28, 28}, 0.5, options).contiguous(at::MemoryFormat::ChannelsLast);
    auto w = at::full({64, 64, 3, 3}, 0.01, options).contiguous(at::MemoryFormat::ChannelsLast);
    const std::array<std::pair<at::Tensor, at::Tensor>, 2> inputs{
        {{x, w}, {x.to(at::kBFloat16), w.to(at::kBFloat16)}}};
    std::array<double, 2> best{1e30, 1e30};
    for (int round = 0; round < 9; ++round)
      for (size_t i = 0; i < inputs.size(); ++i) {
        const auto start = std::chrono::steady_clock::now();
        auto y = at::conv2d(inputs[i].first, inputs[i].second, {}, 1, 1);
        const std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
        if (round > 0) best[i] = std::min(best[i], took.count());
      }
    *out = best[1] * 1.2 <= best[0];
  })
}

// How many threads the shim's own kernels share their work among: `at::parallel_for` hands a
// task to each of libtorch's threads only where the shim was compiled with OpenMP (see build.rs),
// else 1.
char *convnets_shim_threads(int *out) {
  GUARD({
    std::atomic<int> most{1};
    at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
      int mine = at::get_thread_num() + 1;
      for (int seen = most.load(); mine > seen && !most.compare_exchange_weak(seen, mine);) {
      }
    });
    *out = most.load();
  })
}

// `t` with channels-last strides, as PyTorch's `.to(memory_format=torch.channels_last)` makes
// them. Not `.contiguous(channels_last)`: with one channel (the images, the first convolution's
// weights) that accepts NCHW strides as they are, and the first layers then run NCHW kernels.
static at::Tensor with_channels_last(const at::Tensor &t) {
  return t.to(t.options(), /*non_blocking=*/false, /*copy=*/false, at::MemoryFormat::ChannelsLast);
}

// Re-lays a 4-d tensor out as channels-last (NHWC) in place, keeping its identity (a parameter
// stays the same leaf of the autograd graph and the same variable of the optimizer).
char *convnets_set_channels_last(at::Tensor *t) {
  GUARD({
    if (t->dim() == 4) t->set_data(with_channels_last(*t));
  })
}

// A channels-last copy of a 4-d tensor (others are returned as they are) in *out.
char *convnets_channels_last(const at::Tensor *t, at::Tensor **out) {
  GUARD({ *out = new at::Tensor(t->dim() == 4 ? with_channels_last(*t) : *t); })
}

// `t + alpha * other`, as `Tensor::add(other, alpha)` computes it (one fused multiply-add per
// value where the CPU has FMA): the optimizers' updates then round as libtorch's own do. tch
// 0.24 exposes `add` without `alpha`, whose two roundings drift from libtorch's by an ulp a step.
char *convnets_add_scaled(const at::Tensor *t, const at::Tensor *other, double alpha, at::Tensor **out) {
  GUARD({ *out = new at::Tensor(t->add(*other, alpha)); })
}

// The same, in place: `t += alpha * other`.
char *convnets_add_scaled_(at::Tensor *t, const at::Tensor *other, double alpha) {
  GUARD({ t->add_(*other, alpha); })
}

#ifdef CONVNETS_CUDA
// One capture stream per device for the whole process: libtorch keeps a cuBLAS workspace per
// stream, so a fresh pool stream per capture would leave one more workspace behind each time.
// Likewise one stream per device for host-to-device copies that overlap the running step.
struct StreamPerDevice {
  std::mutex lock;
  std::array<c10::optional<c10::cuda::CUDAStream>, 64> streams;

  c10::cuda::CUDAStream get(c10::DeviceIndex device) {
    std::lock_guard<std::mutex> guard(lock);
    auto &stream = streams.at(static_cast<size_t>(device));
    if (!stream) stream = c10::cuda::getStreamFromPool(false, device);
    return *stream;
  }
};

static c10::cuda::CUDAStream capture_stream() {
  static StreamPerDevice streams;
  return streams.get(c10::cuda::current_device());
}

static c10::cuda::CUDAStream copy_stream(c10::DeviceIndex device) {
  static StreamPerDevice streams;
  return streams.get(device);
}

// An uninitialised uint8 CPU tensor in page-locked memory (from libtorch's caching host
// allocator), which the GPU can copy from while the host goes on.
char *convnets_empty_pinned_u8(const int64_t *sizes, int ndim, at::Tensor **out) {
  GUARD({
    auto options = at::TensorOptions().dtype(at::kByte).pinned_memory(true);
    *out = new at::Tensor(at::empty(at::IntArrayRef(sizes, static_cast<size_t>(ndim)), options));
  })
}

// Starts copying `host` to GPU `device` on the copy stream and returns at once; the result must
// go through convnets_wait_copied before use.
char *convnets_copy_to_cuda_async(const at::Tensor *host, int device, at::Tensor **out) {
  GUARD({
    auto index = static_cast<c10::DeviceIndex>(device);
    c10::cuda::CUDAStreamGuard on_copy_stream(copy_stream(index));
    *out = new at::Tensor(host->to(at::Device(at::kCUDA, index), /*non_blocking=*/true));
  })
}

// Makes the current stream wait for the copies queued so far, and tells the allocator that `t`
// (allocated on the copy stream) is used on the current stream, as PyTorch's record_stream.
char *convnets_wait_copied(at::Tensor *t) {
  GUARD({
    auto index = t->device().index();
    auto current = c10::cuda::getCurrentCUDAStream(index);
    c10::cuda::CUDAEvent copied;
    copied.record(copy_stream(index));
    copied.block(current);
    t->record_stream(current.unwrap());
  })
}

struct Graph {
  at::cuda::CUDAGraph graph;
  c10::optional<c10::cuda::CUDAStream> previous;
};

char *convnets_graph_new(void **out) { GUARD({ *out = new Graph(); }) }

void convnets_graph_free(void *g) { delete static_cast<Graph *>(g); }

// Starts capturing on a side stream (capture cannot use the default stream), after the work
// already queued on the current stream.
char *convnets_graph_begin(void *g) {
  GUARD({
    auto *graph = static_cast<Graph *>(g);
    // As torch.cuda.graph does: nothing from before may still be in flight.
    c10::cuda::device_synchronize();
    auto current = c10::cuda::getCurrentCUDAStream();
    auto side = capture_stream();
    c10::cuda::CUDAEvent ready;
    ready.record(current);
    ready.block(side);
    graph->previous = current;
    c10::cuda::setCurrentCUDAStream(side);
    // Thread-local capture, not PyTorch's default (global): the data pipeline's thread keeps
    // running during a capture, and each page-locked batch it allocates goes through libtorch's
    // caching host allocator, which queries CUDA events (cudaEventQuery) of earlier copies. In
    // global mode CUDA forbids such calls on *any* thread while a capture is under way and
    // invalidates the capture: the capture's next operation then fails with "operation failed
    // due to a previous error during capture", or cuDNN with CUDNN_STATUS_BAD_PARAM_STREAM_MISMATCH
    // (issue 11: ResNet-18 crashed in epoch 5 or 10 of 10, at a random eval or train capture).
    // Thread-local mode still forbids those calls on this thread, where nothing makes them.
    graph->graph.capture_begin(/*pool=*/{0, 0}, cudaStreamCaptureModeThreadLocal);
  })
}

// Ends the capture and returns to the stream that was current before.
char *convnets_graph_end(void *g) {
  auto *graph = static_cast<Graph *>(g);
  std::string failure;
  try {
    graph->graph.capture_end();
  } catch (const std::exception &e) {
    failure = e.what();
  }
  if (graph->previous) {
    auto side = c10::cuda::getCurrentCUDAStream();
    c10::cuda::CUDAEvent done;
    done.record(side);
    done.block(*graph->previous);
    c10::cuda::setCurrentCUDAStream(*graph->previous);
    graph->previous.reset();
  }
  return failure.empty() ? nullptr : error_message(failure.c_str());
}

char *convnets_graph_replay(void *g) { GUARD({ static_cast<Graph *>(g)->graph.replay(); }) }

// Peak bytes held by tensors on `device` since the last reset.
char *convnets_cuda_peak_allocated(int device, int64_t *out) {
  GUARD({
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    *out = stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
  })
}

char *convnets_cuda_reset_peak(int device) {
  GUARD({ c10::cuda::CUDACachingAllocator::resetPeakStats(static_cast<c10::DeviceIndex>(device)); })
}
#endif
}
