// bfloat16 as its 16 bits, for the shim's vectorised loops: c10::BFloat16's conversions are calls,
// one per value, that keep a loop from being vectorised; these are inline bit operations. A
// bfloat16 is the high half of a float32, and a float rounds to the nearest one, ties to even, a
// NaN staying a NaN, as c10 rounds. Always inlined: a file may compile its loops with other
// optimisation options (csrc/norm_relu.cpp's pragma), and GCC does not inline across a mismatch.
#pragma once

#include <cstdint>
#include <cstring>

struct Bf16Bits {
  uint16_t bits;
};

#define BF16_INLINE inline __attribute__((always_inline))

BF16_INLINE float to_float(float v) { return v; }

BF16_INLINE float to_float(Bf16Bits v) {
  const uint32_t u = static_cast<uint32_t>(v.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T> BF16_INLINE T from_float(float v);

template <> BF16_INLINE float from_float<float>(float v) { return v; }

template <> BF16_INLINE Bf16Bits from_float<Bf16Bits>(float v) {
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  const uint32_t rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  return Bf16Bits{static_cast<uint16_t>(v != v ? 0x7fc0u : rounded)};
}
