// Winograd's F(2x2, 3x3) convolution for channels-last float32 CPU maps (csrc/winograd.cpp): the
// 3x3, stride-1, padding-1 convolutions of VGG, ResNet, GoogLeNet and AlexNet with 2.25 times
// fewer multiplications than the direct algorithm oneDNN runs; and, for evaluation and training's
// input gradients, F(4x4, 3x3) and F(3x3, 3x3) for 3x3 layers (4 and 3.24 times fewer), and, for
// evaluation, F(2x2, 5x5) for AlexNet's 5x5 layer (2.78 times fewer).
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

// The output tiles' side winograd_conv2d computes an evaluation's convolution (and training's
// input gradient) in, the largest that fits: 4 for 3x3 ones (stride 1, padding 1) of maps whose
// sides are multiples of 4, else 3 for those of multiples of 3, else 2 for those winograd_shape
// takes and for 5x5 ones with padding 2 of the same maps and channels, at least 64 in; 0 where it
// takes none.
int64_t winograd_forward_tile(int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                              int64_t kernel, int64_t stride, int64_t padding);

// A float32 CPU weight (out x in x 3 x 3, or 5 x 5), transformed for winograd_conv2d's tiles of
// `tile` x `tile` outputs: elements (16, 25 or 36) x in x out.
at::Tensor winograd_weight(const at::Tensor &weight, int64_t tile);

// The same for the gradient of a 3x3 convolution's input: its weight turned 180 degrees, with in
// and out swapped (for stride 1 and padding 1, dx is that convolution of dy).
at::Tensor winograd_input_grad_weight(const at::Tensor &weight, int64_t tile);

// The gradients of conv2d(x, weight, bias, stride 1, padding 1)'s weight (channels-last) and,
// where `with_bias`, bias (else undefined), given the output's gradient dy: the products summed
// over the tiles, the same bits from run to run.
std::pair<at::Tensor, at::Tensor> winograd_weight_grad(const at::Tensor &x, const at::Tensor &dy, bool with_bias);

// conv2d(x, weight, bias, stride 1, padding 1 (2 for 5x5)) [+ residual], then a ReLU where
// `relu`, into a new channels-last map, in tiles of `tile` x `tile` outputs; `transformed` is
// winograd_weight(weight, tile), `bias` and `residual` may be NULL. x is a channels-last float32
// CPU map that such tiles fit (winograd_shape's for 2, winograd_forward_tile's otherwise).
at::Tensor winograd_conv2d(const at::Tensor &x, const at::Tensor &transformed, int64_t tile, const at::Tensor *bias,
                           const at::Tensor *residual, bool relu);
