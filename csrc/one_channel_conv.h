// The shim's convolution for a first layer on grey images (csrc/one_channel_conv.cpp), for the
// shim's other files: conv2d(x, w, b, stride, padding), or nothing where it does not apply.
#pragma once

#include <ATen/ATen.h>

#include <optional>

std::optional<at::Tensor> one_channel_conv2d(const at::Tensor &x, const at::Tensor &w, const at::Tensor *b,
                                             int64_t stride, int64_t padding);
