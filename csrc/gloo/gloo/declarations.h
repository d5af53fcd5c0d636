// The few gloo names that libtorch's ProcessGroupGloo.hpp uses, declared as gloo 0.5.0 (the
// version PyTorch 2.11 builds into libtorch_cpu.so) declares them. The PyPI wheel ships no gloo
// headers, and convnets only creates the process group and calls its collectives, so this is
// all the compiler needs: gloo's code itself is the copy inside libtorch.
//
// Only declarations the header refers to are here: a class used through a pointer is
// forward-declared; the store's virtual functions are listed in gloo's order, because
// ProcessGroupGloo::GlooStore overrides them.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

// ProcessGroupGloo.hpp compiles GlooStore's newer overrides only when this is defined; gloo
// 0.5.0 defines it, so the class has the same members as in libtorch.
#define GLOO_STORE_HAS_STORE_V2 1

namespace gloo {

namespace transport {
class Device;
class UnboundBuffer;
} // namespace transport

class Context {
 public:
  void setTimeout(std::chrono::milliseconds timeout);
};

namespace rendezvous {

class Store {
 public:
  virtual ~Store() = default;
  virtual void set(const std::string& key, const std::vector<char>& data) = 0;
  virtual std::vector<char> get(const std::string& key) = 0;
  virtual void wait(const std::vector<std::string>& keys) = 0;
  virtual void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) = 0;
  virtual bool has_v2_support() = 0;
  virtual std::vector<std::vector<char>> multi_get(const std::vector<std::string>& keys) = 0;
  virtual void multi_set(const std::vector<std::string>& keys, const std::vector<std::vector<char>>& values) = 0;
  virtual void append(const std::string& key, const std::vector<char>& data) = 0;
  virtual int64_t add(const std::string& key, int64_t value) = 0;
};

} // namespace rendezvous
} // namespace gloo
