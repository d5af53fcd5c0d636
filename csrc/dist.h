// The process group as the shim's c10d files share it (csrc/dist.cpp creates it; the Rust side
// holds it as an opaque pointer).
#pragma once

#include <torch/csrc/distributed/c10d/Backend.hpp>

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  int rank;
  int size;
};

inline void wait(const c10::intrusive_ptr<c10d::Work> &work) { work->wait(); }
