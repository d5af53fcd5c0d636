// Winograd's F(2x2, 3x3) convolution for channels-last float32 CPU maps (csrc/winograd.cpp): the
// 3x3, stride-1, padding-1 convolutions of VGG, ResNet, GoogLeNet and AlexNet with 2.25 times
// fewer multiplications than the direct algorithm oneDNN runs; and F(2x2, 5x5), forward only, for
// AlexNet's 5x5 layer in evaluation (2.78 times fewer).
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <utility>

// Whether the policy (convnets_set_winograd_policy) has Winograd's algorithm on this CPU.
bool winograd_enabled();

// Whether a convolution of `in_channels` to `out_channels` over height x width maps, with a
// kernel x kernel window, `stride` and `padding`, is one it takes in all three products of
// training (and is faster at, as measured): 3x3 ones.
bool winograd_shape(int64_t in_channels, int64_t out_channels, int64_t height, int64_t width, int64_t kernel,
                    int64_t stride, int64_t padding);

// Whether winograd_conv2d takes a convolution: those winograd_shape takes, and 5x5 ones with
// padding 2 of the same maps and channels, at least 64 in.
bool winograd_forward_shape(int64_t in_channels, int64_t out_channels, int64_t height, int64_t width, int64_t kernel,
                            int64_t stride, int64_t padding);

// A float32 CPU weight (out x in x 3 x 3, or 5 x 5), transformed for winograd_conv2d: 16 (36) x in
// x out.
at::Tensor winograd_weight(const at::Tensor &weight);

// The same for the gradient of the convolution's input: its weight turned 180 degrees, with in
// and out swapped (for stride 1 and padding 1, dx is that convolution of dy).
at::Tensor winograd_input_grad_weight(const at::Tensor &weight);

// The gradients of conv2d(x, weight, bias, stride 1, padding 1)'s weight (channels-last) and,
// where `with_bias`, bias (else undefined), given the output's gradient dy: the products summed
// over the tiles, the same bits from run to run.
std::pair<at::Tensor, at::Tensor> winograd_weight_grad(const at::Tensor &x, const at::Tensor &dy, bool with_bias);

// conv2d(x, weight, bias, stride 1, padding 1 (2 for 5x5)) [+ residual], then a ReLU where
// `relu`, into a new channels-last map; `transformed` is winograd_weight(weight), `bias` and
// `residual` may be NULL. x is a channels-last float32 CPU map whose shape winograd_forward_shape
// takes.
at::Tensor winograd_conv2d(const at::Tensor &x, const at::Tensor &transformed, const at::Tensor *bias,
                           const at::Tensor *residual, bool relu);
