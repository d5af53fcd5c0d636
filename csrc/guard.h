// The shim's error convention, shared by its files: every exported function returns NULL on
// success or a malloc'ed copy of the C++ exception's message (the Rust side frees it), so no
// C++ exception crosses into Rust.
#pragma once

#include <cstdlib>
#include <cstring>
#include <exception>

static inline char *error_message(const char *what) {
  size_t n = std::strlen(what) + 1;
  char *copy = static_cast<char *>(std::malloc(n));
  if (copy != nullptr) std::memcpy(copy, what, n);
  return copy;
}

// Runs the body and returns NULL, or the message of what it threw. Variadic: a body with commas
// outside parentheses is still one body.
#define GUARD(...)                                    \
  try {                                               \
    __VA_ARGS__;                                      \
    return nullptr;                                   \
  } catch (const std::exception &e) {                 \
    return error_message(e.what());                   \
  } catch (...) {                                     \
    return error_message("unknown C++ exception");    \
  }
