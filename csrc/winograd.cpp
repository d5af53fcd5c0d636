// Winograd's F(2x2, 3x3) convolution (Lavin and Gray, "Fast Algorithms for Convolutional Neural
// Networks", 2016) for channels-last float32 CPU maps, forward and backward. On two Zen 3 cores
// oneDNN's AVX2 kernels ran ResNet-18's 3x3 convolutions at 70-90% of the cores' multiply-add
// peak, so no direct convolution could be much faster; this one does 2.25 times fewer
// multiplications.
//
// The output is cut into 2x2 tiles. Each tile's 4x4 input window d (per input channel) becomes
// U = B^T d B, the weight's 3x3 taps g (per input and output channel) V = G g G^T, and the 16
// elements of a tile's output transform are 16 independent matrix products over channels:
// M[e] = U[e] (tiles x in) times V[e] (in x out). The tile's output is A^T M A, where the bias, a
// residual and the ReLU are applied while it is in registers. A block of tiles (their U and M
// about 2 MiB) goes through the three steps together, so what one step writes the next reads from
// the cache; the 16 products are one batched call (MKL's, through libtorch). The input's gradient
// is the same algorithm on dy with each window turned and in and out swapped; the weight's is
// the transposed one: dM = A dY A^T per tile, dV[e] = dM[e]^T U[e] summed over the tiles, and
// dg = G^T dV G.
//
// F(2x2, 3x3)'s transforms add and subtract values of similar size and scale some by 1/2
// (exactly), and each product sums over the input channels only, not over channels and taps in
// one chain.
// Measured against float64 sums (tests/speed.rs): outputs and input gradients 0.26-0.45 of
// oneDNN's error, weight gradients 0.7-1.1 of the shim's direct sums' (csrc/conv_weight_grad.cpp).
//
// For evaluation three more use the same steps, the largest tiles that fit first: F(4x4, 3x3) (6x6
// windows, 36 products for 16 outputs: 2.25 multiplications an output, F(2x2, 3x3)'s 4) on maps
// whose sides are multiples of 4; F(3x3, 3x3) (5x5 windows, 25 products for 9) on those of 3, such
// as ResNet-18's and GoogLeNet's 6x6 and 3x3 maps at 96 pixels; and F(2x2, 5x5) (6x6 windows;
// AlexNet's 5x5 layer). Training's input gradient takes the first two as well. Their transforms
// scale by up to 8 and down to 1/24, and their outputs are 0.6-2.3 times as far from exact sums
// as oneDNN's (input gradients up to 2.6 times; tests/speed.rs).
#include "winograd.h"

#include "cpu_capabilities.h"
#include "guard.h"
#include "vector_clones.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <stdexcept>
#include <vector>

namespace {

KernelPolicy policy;
std::atomic<uint64_t> calls{0};

// Bytes of one block's transformed inputs and products together.
constexpr int64_t BLOCK_BYTES = int64_t{2} << 20;
// The weight's gradient: the most partial sums kept at once (each thread adds its blocks into
// one; fixed, whatever the thread count, so the sums are the same from run to run), and the most
// bytes they may take.
constexpr int64_t MAX_GROUPS = 16;
constexpr int64_t GROUP_BYTES = int64_t{64} << 20;
// Each F(2x2, 3x3) tile's 16 transformed elements (the weight's gradient is computed for 3x3
// kernels only).
constexpr int64_t ELEMENTS = 16;

// Eight floats, one AVX2 register (two SSE ones in the baseline build): channels go eight at a
// time, which is why both channel counts must be multiples of 8.
typedef float Lanes __attribute__((vector_size(8 * sizeof(float))));
constexpr int64_t LANES = 8;

__attribute__((always_inline)) inline Lanes load(const float *p) {
  Lanes v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

__attribute__((always_inline)) inline void store(float *p, const Lanes &v) { std::memcpy(p, &v, sizeof v); }

// A convolution's tile x tile output tiles: F(2x2, 3x3) (4x4 windows, 16 elements), F(3x3, 3x3)
// (5x5, 25) or F(2x2, 5x5) (6x6, 36).
struct Tiles {
  int64_t images, height, width, in_channels, out_channels, kernel, tile;
  int64_t window() const { return tile + kernel - 1; }
  int64_t elements() const { return window() * window(); }
  int64_t rows() const { return height / tile; }
  int64_t cols() const { return width / tile; }
  int64_t count() const { return images * rows() * cols(); }
};

// U = B^T d B for tiles [first, first + count), into u (element e's rows at u + e * element_stride,
// one row of in_channels per tile). B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]; the window's
// values outside the map are the padding's zeros.
VECTOR_CLONES void transform_inputs(const float *x, const Tiles &s, int64_t first, int64_t count,
                                    int64_t element_stride, float *u) {
  const int64_t c_all = s.in_channels;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = first + t, image = tile / (s.rows() * s.cols());
    const int64_t top = tile / s.cols() % s.rows() * 2 - 1, left = tile % s.cols() * 2 - 1;
    const float *rows[4][4];
    for (int a = 0; a < 4; ++a)
      for (int b = 0; b < 4; ++b) {
        const int64_t y = top + a, x_col = left + b;
        rows[a][b] = y >= 0 && y < s.height && x_col >= 0 && x_col < s.width
                         ? x + ((image * s.height + y) * s.width + x_col) * c_all
                         : nullptr;
      }
    for (int64_t c = 0; c < c_all; c += LANES) {
      Lanes d[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) d[a][b] = rows[a][b] != nullptr ? load(rows[a][b] + c) : Lanes{};
      Lanes bd[4][4]; // B^T d
      for (int b = 0; b < 4; ++b) {
        bd[0][b] = d[0][b] - d[2][b];
        bd[1][b] = d[1][b] + d[2][b];
        bd[2][b] = d[2][b] - d[1][b];
        bd[3][b] = d[1][b] - d[3][b];
      }
      for (int a = 0; a < 4; ++a) {
        float *out = u + a * 4 * element_stride + t * c_all + c;
        store(out, bd[a][0] - bd[a][2]);
        store(out + element_stride, bd[a][1] + bd[a][2]);
        store(out + 2 * element_stride, bd[a][2] - bd[a][1]);
        store(out + 3 * element_stride, bd[a][1] - bd[a][3]);
      }
    }
  }
}

// y = A^T M A (+ bias, + residual, ReLU) for tiles [first, first + count), M's element e at
// m + e * element_stride (a row of out_channels per tile). A^T = [1 1 1 0; 0 1 -1 -1].
VECTOR_CLONES void transform_outputs(const float *m, const Tiles &s, int64_t first, int64_t count,
                                     int64_t element_stride, const float *bias, const float *residual, bool relu,
                                     float *y) {
  const int64_t k_all = s.out_channels;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = first + t, image = tile / (s.rows() * s.cols());
    const int64_t top = tile / s.cols() % s.rows() * 2, left = tile % s.cols() * 2;
    for (int64_t k = 0; k < k_all; k += LANES) {
      Lanes e[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) e[a][b] = load(m + (a * 4 + b) * element_stride + t * k_all + k);
      Lanes am[2][4]; // A^T M
      for (int b = 0; b < 4; ++b) {
        am[0][b] = e[0][b] + e[1][b] + e[2][b];
        am[1][b] = e[1][b] - e[2][b] - e[3][b];
      }
      const Lanes shift = bias != nullptr ? load(bias + k) : Lanes{};
      for (int i = 0; i < 2; ++i) {
        const Lanes out[2] = {am[i][0] + am[i][1] + am[i][2] + shift, am[i][1] - am[i][2] - am[i][3] + shift};
        for (int j = 0; j < 2; ++j) {
          const int64_t at = ((image * s.height + top + i) * s.width + left + j) * k_all + k;
          Lanes v = out[j];
          if (residual != nullptr) v += load(residual + at);
          if (relu) v = v > 0 ? v : Lanes{};
          store(y + at, v);
        }
      }
    }
  }
}

// dM = A dY A^T (the transpose of the output transform, for the weight's gradient) for tiles
// [first, first + count) of dy, into dm as transform_inputs lays out its rows; where `bias_sums`,
// dy's values are added to them too (in double; every position is in one tile).
VECTOR_CLONES void transform_output_grads(const float *dy, const Tiles &s, int64_t first, int64_t count,
                                          int64_t element_stride, float *dm, double *bias_sums) {
  const int64_t k_all = s.out_channels;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = first + t, image = tile / (s.rows() * s.cols());
    const int64_t top = tile / s.cols() % s.rows() * 2, left = tile % s.cols() * 2;
    const float *at[2][2];
    for (int i = 0; i < 2; ++i)
      for (int j = 0; j < 2; ++j) at[i][j] = dy + ((image * s.height + top + i) * s.width + left + j) * k_all;
    for (int64_t k = 0; k < k_all; k += LANES) {
      Lanes g[2][2];
      for (int i = 0; i < 2; ++i)
        for (int j = 0; j < 2; ++j) g[i][j] = load(at[i][j] + k);
      // A = [1 0; 1 1; 1 -1; 0 -1]: rows of A dY, then (A dY) A^T.
      const Lanes rows[4][2] = {{g[0][0], g[0][1]},
                                {g[0][0] + g[1][0], g[0][1] + g[1][1]},
                                {g[0][0] - g[1][0], g[0][1] - g[1][1]},
                                {-g[1][0], -g[1][1]}};
      for (int a = 0; a < 4; ++a) {
        float *out = dm + a * 4 * element_stride + t * k_all + k;
        store(out, rows[a][0]);
        store(out + element_stride, rows[a][0] + rows[a][1]);
        store(out + 2 * element_stride, rows[a][0] - rows[a][1]);
        store(out + 3 * element_stride, -rows[a][1]);
      }
    }
    if (bias_sums != nullptr)
      for (int64_t k = 0; k < k_all; ++k)
        bias_sums[k] += static_cast<double>(at[0][0][k]) + at[0][1][k] + at[1][0][k] + at[1][1][k];
  }
}

// The evaluation-only algorithms' matrices, one struct per F(TILE x TILE, KERNEL x KERNEL) with
// windows of W = TILE + KERNEL - 1: b_transposed (W x W, the input windows'), g (W x KERNEL, the
// weight's) and a_transposed (TILE x W, the products'), each applied to one column of lanes.
template <int TILE, int KERNEL> struct Matrices;

// F(2x2, 5x5) (AlexNet's 5x5 layer), with the points 0, 1, -1, 2, -2 and infinity.
// B^T = [4 0 -5 0 1 0; 0 -4 -4 1 1 0; 0 4 -4 -1 1 0; 0 -2 -1 2 1 0; 0 2 -1 -2 1 0; 0 4 0 -5 0 1],
// G = [1/4 0 0 0 0; -1/6 (1 1 1 1 1); -1/6 (1 -1 1 -1 1); 1/24 (1 2 4 8 16); 1/24 (1 -2 4 -8 16);
// 0 0 0 0 1], A^T = [1 1 1 1 1 0; 0 1 -1 2 -2 1].
template <> struct Matrices<2, 5> {
  __attribute__((always_inline)) static void b_transposed(const Lanes (&d)[6], Lanes (&out)[6]) {
    out[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
    out[1] = d[3] + d[4] - 4.0f * (d[1] + d[2]);
    out[2] = d[4] - d[3] + 4.0f * (d[1] - d[2]);
    out[3] = d[4] - d[2] + 2.0f * (d[3] - d[1]);
    out[4] = d[4] - d[2] + 2.0f * (d[1] - d[3]);
    out[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
  }

  __attribute__((always_inline)) static void g(const Lanes (&w)[5], Lanes (&out)[6]) {
    const Lanes even = w[0] + w[2] + w[4], odd = w[1] + w[3];
    const Lanes even4 = w[0] + 4.0f * w[2] + 16.0f * w[4], odd4 = 2.0f * w[1] + 8.0f * w[3];
    out[0] = 0.25f * w[0];
    out[1] = (-1.0f / 6) * (even + odd);
    out[2] = (-1.0f / 6) * (even - odd);
    out[3] = (1.0f / 24) * (even4 + odd4);
    out[4] = (1.0f / 24) * (even4 - odd4);
    out[5] = w[4];
  }

  __attribute__((always_inline)) static void a_transposed(const Lanes (&m)[6], Lanes (&out)[2]) {
    out[0] = m[0] + m[1] + m[2] + m[3] + m[4];
    out[1] = m[1] - m[2] + 2.0f * (m[3] - m[4]) + m[5];
  }
};

// F(3x3, 3x3) (maps whose sides are multiples of 3 where 4x4 tiles do not fit: ResNet-18's and
// GoogLeNet's 6x6 and 3x3 maps at 96 pixels), with the points 0, 1, -1, 2 and infinity. B^T = [2 -1 -2 1 0;
// 0 -2 -1 1 0; 0 2 -3 1 0; 0 -1 0 1 0; 0 2 -1 -2 1], G = [1/2 0 0; -1/2 -1/2 -1/2;
// -1/6 1/6 -1/6; 1/6 1/3 2/3; 0 0 1], A^T = [1 1 1 1 0; 0 1 -1 2 0; 0 1 1 4 1].
template <> struct Matrices<3, 3> {
  __attribute__((always_inline)) static void b_transposed(const Lanes (&d)[5], Lanes (&out)[5]) {
    out[0] = 2.0f * (d[0] - d[2]) + d[3] - d[1];
    out[1] = d[3] - d[2] - 2.0f * d[1];
    out[2] = d[3] - 3.0f * d[2] + 2.0f * d[1];
    out[3] = d[3] - d[1];
    out[4] = d[4] - d[2] + 2.0f * (d[1] - d[3]);
  }

  __attribute__((always_inline)) static void g(const Lanes (&w)[3], Lanes (&out)[5]) {
    out[0] = 0.5f * w[0];
    out[1] = -0.5f * (w[0] + w[1] + w[2]);
    out[2] = (-1.0f / 6) * (w[0] - w[1] + w[2]);
    out[3] = (1.0f / 6) * (w[0] + 2.0f * w[1] + 4.0f * w[2]);
    out[4] = w[2];
  }

  __attribute__((always_inline)) static void a_transposed(const Lanes (&m)[5], Lanes (&out)[3]) {
    out[0] = m[0] + m[1] + m[2] + m[3];
    out[1] = m[1] - m[2] + 2.0f * m[3];
    out[2] = m[1] + m[2] + 4.0f * m[3] + m[4];
  }
};

// F(4x4, 3x3) (3x3 layers on maps whose sides are multiples of 4), with the points 0, 1, -1, 1/2,
// -2 and infinity: the most accurate of seven sets in a float32 simulation, 2.7 times closer to
// exact sums than F(2x2, 5x5)'s 0, +-1, +-2 (with which the tests measured 3-4 times oneDNN's
// error, with these 0.6-1.6 times). B^T = [1 -3/2 -2 3/2 1 0;
// 0 -1 1/2 5/2 1 0; 0 1 -5/2 1/2 1 0; 0 -2 -1 2 1 0; 0 1/2 -1 -1/2 1 0; 0 1 -3/2 -2 3/2 1],
// G = [1 0 0; 1/3 1/3 1/3; -1/3 1/3 -1/3; -4/15 (4 2 1); 1/15 (1 -2 4); 0 0 1],
// A^T = [1 1 1 1 1 0; 0 1 -1 1/2 -2 0; 0 1 1 1/4 4 0; 0 1 -1 1/8 -8 1].
template <> struct Matrices<4, 3> {
  __attribute__((always_inline)) static void b_transposed(const Lanes (&d)[6], Lanes (&out)[6]) {
    out[0] = d[0] + d[4] - 2.0f * d[2] + 1.5f * (d[3] - d[1]);
    out[1] = d[4] - d[1] + 0.5f * d[2] + 2.5f * d[3];
    out[2] = d[4] + d[1] - 2.5f * d[2] + 0.5f * d[3];
    out[3] = d[4] - d[2] + 2.0f * (d[3] - d[1]);
    out[4] = d[4] - d[2] + 0.5f * (d[1] - d[3]);
    out[5] = d[1] + d[5] - 2.0f * d[3] + 1.5f * (d[4] - d[2]);
  }

  __attribute__((always_inline)) static void g(const Lanes (&w)[3], Lanes (&out)[6]) {
    const Lanes even = w[0] + w[2];
    out[0] = w[0];
    out[1] = (1.0f / 3) * (even + w[1]);
    out[2] = (1.0f / 3) * (w[1] - even);
    out[3] = (-4.0f / 15) * (4.0f * w[0] + 2.0f * w[1] + w[2]);
    out[4] = (1.0f / 15) * (w[0] - 2.0f * w[1] + 4.0f * w[2]);
    out[5] = w[2];
  }

  __attribute__((always_inline)) static void a_transposed(const Lanes (&m)[6], Lanes (&out)[4]) {
    const Lanes sum = m[1] + m[2], difference = m[1] - m[2];
    out[0] = m[0] + sum + m[3] + m[4];
    out[1] = difference + 0.5f * m[3] - 2.0f * m[4];
    out[2] = sum + 0.25f * m[3] + 4.0f * m[4];
    out[3] = difference + 0.125f * m[3] - 8.0f * m[4] + m[5];
  }
};

// The steps of the evaluation-only algorithms, with their Matrices and the layouts of the
// F(2x2, 3x3) steps.

// U = B^T d B for tiles [first, first + count), each window's values outside the map the
// padding's zeros.
template <int TILE, int KERNEL>
__attribute__((always_inline)) inline void transform_inputs_with(const float *x, const Tiles &s, int64_t first,
                                                                int64_t count, int64_t element_stride, float *u) {
  constexpr int W = TILE + KERNEL - 1, PAD = KERNEL / 2;
  const int64_t c_all = s.in_channels;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = first + t, image = tile / (s.rows() * s.cols());
    const int64_t top = tile / s.cols() % s.rows() * TILE - PAD, left = tile % s.cols() * TILE - PAD;
    const float *rows[W][W];
    for (int a = 0; a < W; ++a)
      for (int b = 0; b < W; ++b) {
        const int64_t y = top + a, x_col = left + b;
        rows[a][b] = y >= 0 && y < s.height && x_col >= 0 && x_col < s.width
                         ? x + ((image * s.height + y) * s.width + x_col) * c_all
                         : nullptr;
      }
    for (int64_t c = 0; c < c_all; c += LANES) {
      Lanes bd[W][W]; // B^T d, a column at a time
      for (int b = 0; b < W; ++b) {
        Lanes column[W], transformed[W];
        for (int a = 0; a < W; ++a) column[a] = rows[a][b] != nullptr ? load(rows[a][b] + c) : Lanes{};
        Matrices<TILE, KERNEL>::b_transposed(column, transformed);
        for (int a = 0; a < W; ++a) bd[a][b] = transformed[a];
      }
      for (int a = 0; a < W; ++a) {
        Lanes row[W];
        Matrices<TILE, KERNEL>::b_transposed(bd[a], row);
        for (int b = 0; b < W; ++b) store(u + (a * W + b) * element_stride + t * c_all + c, row[b]);
      }
    }
  }
}

// y = A^T M A (+ bias, + residual, ReLU) for tiles [first, first + count).
template <int TILE, int KERNEL>
__attribute__((always_inline)) inline void transform_outputs_with(const float *m, const Tiles &s, int64_t first,
                                                                 int64_t count, int64_t element_stride,
                                                                 const float *bias, const float *residual,
                                                                 bool relu, float *y) {
  constexpr int W = TILE + KERNEL - 1;
  const int64_t k_all = s.out_channels;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t tile = first + t, image = tile / (s.rows() * s.cols());
    const int64_t top = tile / s.cols() % s.rows() * TILE, left = tile % s.cols() * TILE;
    for (int64_t k = 0; k < k_all; k += LANES) {
      Lanes am[TILE][W]; // A^T M, a column at a time
      for (int b = 0; b < W; ++b) {
        Lanes column[W], transformed[TILE];
        for (int a = 0; a < W; ++a) column[a] = load(m + (a * W + b) * element_stride + t * k_all + k);
        Matrices<TILE, KERNEL>::a_transposed(column, transformed);
        for (int i = 0; i < TILE; ++i) am[i][b] = transformed[i];
      }
      const Lanes shift = bias != nullptr ? load(bias + k) : Lanes{};
      for (int i = 0; i < TILE; ++i) {
        Lanes out[TILE];
        Matrices<TILE, KERNEL>::a_transposed(am[i], out);
        for (int j = 0; j < TILE; ++j) {
          const int64_t at = ((image * s.height + top + i) * s.width + left + j) * k_all + k;
          Lanes v = out[j] + shift;
          if (residual != nullptr) v += load(residual + at);
          if (relu) v = v > 0 ? v : Lanes{};
          store(y + at, v);
        }
      }
    }
  }
}

// V = G g G^T for each out x in pair of a channels-last weight (out x KERNEL x KERNEL x in), in
// lanes of input channels, into v (W * W x out x in), for outputs [first, last); `turned` takes
// each window turned 180 degrees (the input gradient's weight).
template <int TILE, int KERNEL>
__attribute__((always_inline)) inline void transform_weight_rows_with(const float *w, int64_t outputs, int64_t inputs,
                                                                     bool turned, int64_t first, int64_t last,
                                                                     float *v) {
  constexpr int W = TILE + KERNEL - 1;
  for (int64_t k = first; k < last; ++k) {
    for (int64_t c = 0; c < inputs; c += LANES) {
      Lanes gg[W][KERNEL]; // G g, a column at a time
      for (int j = 0; j < KERNEL; ++j) {
        Lanes column[KERNEL], transformed[W];
        for (int i = 0; i < KERNEL; ++i) {
          const int tap = turned ? (KERNEL - 1 - i) * KERNEL + (KERNEL - 1 - j) : i * KERNEL + j;
          column[i] = load(w + (k * KERNEL * KERNEL + tap) * inputs + c);
        }
        Matrices<TILE, KERNEL>::g(column, transformed);
        for (int a = 0; a < W; ++a) gg[a][j] = transformed[a];
      }
      for (int a = 0; a < W; ++a) {
        Lanes row[W];
        Matrices<TILE, KERNEL>::g(gg[a], row);
        for (int b = 0; b < W; ++b) store(v + ((a * W + b) * outputs + k) * inputs + c, row[b]);
      }
    }
  }
}

// The three algorithms' steps, each built for the CPU's vector instructions: target_clones
// cannot be put on a template, so each instantiation is a named function.
#define EVALUATION_STEPS(NAME, TILE, KERNEL)                                                                         \
  VECTOR_CLONES void transform_inputs_##NAME(const float *x, const Tiles &s, int64_t first, int64_t count,          \
                                             int64_t element_stride, float *u) {                                    \
    transform_inputs_with<TILE, KERNEL>(x, s, first, count, element_stride, u);                                    \
  }                                                                                                                \
  VECTOR_CLONES void transform_outputs_##NAME(const float *m, const Tiles &s, int64_t first, int64_t count,         \
                                              int64_t element_stride, const float *bias, const float *residual,    \
                                              bool relu, float *y) {                                               \
    transform_outputs_with<TILE, KERNEL>(m, s, first, count, element_stride, bias, residual, relu, y);             \
  }                                                                                                                \
  VECTOR_CLONES void transform_weight_rows_##NAME(const float *w, int64_t outputs, int64_t inputs, bool turned,     \
                                                  int64_t first, int64_t last, float *v) {                         \
    transform_weight_rows_with<TILE, KERNEL>(w, outputs, inputs, turned, first, last, v);                          \
  }

EVALUATION_STEPS(5x5, 2, 5)
EVALUATION_STEPS(3x3_tiles, 3, 3)
EVALUATION_STEPS(4x4_tiles, 4, 3)

#undef EVALUATION_STEPS

// Tiles per block: their transformed inputs and products (or output gradients) about
// BLOCK_BYTES, from 64 to 128 tiles: the products of 20 tiles (3x3 maps of 512 channels, F(3x3,
// 3x3)) ran at about two thirds of the rate of 64 tiles' products.
int64_t block_tiles(const Tiles &s) {
  const int64_t tile_bytes = s.elements() * (s.in_channels + s.out_channels) * static_cast<int64_t>(sizeof(float));
  return std::clamp<int64_t>(BLOCK_BYTES / tile_bytes, 64, 128);
}

// V = G g G^T for each out x in pair of a channels-last weight (out x 3 x 3 x in), in lanes of
// input channels, into v (16 x out x in), for outputs [first, last); `turned` takes each 3x3
// window turned 180 degrees (the input gradient's weight). G = [1 0 0; 1/2 1/2 1/2;
// 1/2 -1/2 1/2; 0 0 1].
VECTOR_CLONES void transform_weight_rows(const float *w, int64_t outputs, int64_t inputs, bool turned, int64_t first,
                                         int64_t last, float *v) {
  for (int64_t k = first; k < last; ++k) {
    for (int64_t c = 0; c < inputs; c += LANES) {
      Lanes g[3][3];
      for (int i = 0; i < 3; ++i)
        for (int j = 0; j < 3; ++j) {
          const int tap = turned ? (2 - i) * 3 + (2 - j) : i * 3 + j;
          g[i][j] = load(w + (k * 9 + tap) * inputs + c);
        }
      Lanes gg[4][3]; // G g
      for (int j = 0; j < 3; ++j) {
        gg[0][j] = g[0][j];
        gg[1][j] = 0.5f * (g[0][j] + g[1][j] + g[2][j]);
        gg[2][j] = 0.5f * (g[0][j] - g[1][j] + g[2][j]);
        gg[3][j] = g[2][j];
      }
      for (int a = 0; a < 4; ++a) {
        const Lanes row[4] = {gg[a][0], 0.5f * (gg[a][0] + gg[a][1] + gg[a][2]),
                              0.5f * (gg[a][0] - gg[a][1] + gg[a][2]), gg[a][2]};
        for (int b = 0; b < 4; ++b) store(v + ((a * 4 + b) * outputs + k) * inputs + c, row[b]);
      }
    }
  }
}

// dg = G^T dV G (V = G g G^T is linear in g) for outputs [first, last) of dv (16 x out x in), in
// lanes of input channels, into a channels-last weight gradient (out x 3 x 3 x in).
VECTOR_CLONES void weight_grad_rows(const float *dv, int64_t outputs, int64_t inputs, int64_t first, int64_t last,
                                    float *dw) {
  for (int64_t k = first; k < last; ++k) {
    for (int64_t c = 0; c < inputs; c += LANES) {
      Lanes d[4][4];
      for (int a = 0; a < 4; ++a)
        for (int b = 0; b < 4; ++b) d[a][b] = load(dv + ((a * 4 + b) * outputs + k) * inputs + c);
      Lanes gd[3][4]; // G^T dV, G^T = [1 1/2 1/2 0; 0 1/2 -1/2 0; 0 1/2 1/2 1]
      for (int b = 0; b < 4; ++b) {
        gd[0][b] = d[0][b] + 0.5f * (d[1][b] + d[2][b]);
        gd[1][b] = 0.5f * (d[1][b] - d[2][b]);
        gd[2][b] = 0.5f * (d[1][b] + d[2][b]) + d[3][b];
      }
      for (int i = 0; i < 3; ++i) {
        float *out = dw + (k * 9 + i * 3) * inputs + c;
        store(out, gd[i][0] + 0.5f * (gd[i][1] + gd[i][2]));
        store(out + inputs, 0.5f * (gd[i][1] - gd[i][2]));
        store(out + 2 * inputs, 0.5f * (gd[i][1] + gd[i][2]) + gd[i][3]);
      }
    }
  }
}

// An algorithm's steps: the input and output transforms of a convolution's tiles and the weight's
// transform.
struct Steps {
  void (*inputs)(const float *x, const Tiles &s, int64_t first, int64_t count, int64_t element_stride, float *u);
  void (*outputs)(const float *m, const Tiles &s, int64_t first, int64_t count, int64_t element_stride,
                  const float *bias, const float *residual, bool relu, float *y);
  void (*weight_rows)(const float *w, int64_t outputs, int64_t inputs, bool turned, int64_t first, int64_t last,
                      float *v);
};

// F(tile x tile, kernel x kernel)'s steps; none (null pointers) for other sizes.
Steps steps_of(int64_t kernel, int64_t tile) {
  if (kernel == 3 && tile == 2) return {transform_inputs, transform_outputs, transform_weight_rows};
  if (kernel == 3 && tile == 3)
    return {transform_inputs_3x3_tiles, transform_outputs_3x3_tiles, transform_weight_rows_3x3_tiles};
  if (kernel == 3 && tile == 4)
    return {transform_inputs_4x4_tiles, transform_outputs_4x4_tiles, transform_weight_rows_4x4_tiles};
  if (kernel == 5 && tile == 2) return {transform_inputs_5x5, transform_outputs_5x5, transform_weight_rows_5x5};
  return {};
}

// A float32 weight (out x in x 3 x 3, or 5 x 5) transformed for output tiles of tile x tile, as
// elements x out x in, each window turned where `turned` (3x3 only).
at::Tensor transform_weight(const at::Tensor &weight, int64_t tile, bool turned) {
  at::NoGradGuard no_grad;
  const bool square = weight.dim() == 4 && weight.size(2) == weight.size(3);
  const int64_t kernel = square ? weight.size(2) : 0;
  const Steps steps = steps_of(kernel, tile);
  if (steps.weight_rows == nullptr || (turned && kernel != 3))
    throw std::invalid_argument("winograd: a weight it does not take");
  auto w = weight.to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t outputs = w.size(0), inputs = w.size(1), window = tile + kernel - 1;
  auto v = at::empty({window * window, outputs, inputs}, w.options());
  const float *w_data = w.const_data_ptr<float>();
  float *v_data = v.mutable_data_ptr<float>();
  at::parallel_for(0, outputs, 8, [&](int64_t first, int64_t last) {
    steps.weight_rows(w_data, outputs, inputs, turned, first, last, v_data);
  });
  return v;
}

// Channels the transforms take (eight at a time) and products wide enough to gain: under 64
// output channels they are too narrow (DenseNet's 32-channel layers gained nothing).
bool channels_fit(int64_t in_channels, int64_t out_channels) {
  return in_channels % LANES == 0 && out_channels % LANES == 0 && out_channels >= 64;
}

// Whether F(tile x tile, kernel x kernel) computes a stride-1 convolution with the kernel's
// "same" padding of these maps and channels.
bool tile_fits(int64_t tile, int64_t in_channels, int64_t out_channels, int64_t height, int64_t width, int64_t kernel,
               int64_t stride, int64_t padding) {
  if (stride != 1 || padding != kernel / 2 || !channels_fit(in_channels, out_channels) || height % tile != 0 ||
      width % tile != 0)
    return false;
  if (kernel == 3 && tile == 2)
    // No maps under 4x4: ResNet's last stage (3x3 maps, where tiles would compute 16 outputs for
    // 9) ran at 0.6-0.9 of oneDNN's speed.
    return height >= 4 && width >= 4;
  // 5x5 with at least 64 input channels: each of the 36 products sums over them.
  if (kernel == 5 && tile == 2) return in_channels >= 64 && height >= 4 && width >= 4;
  return kernel == 3 && (tile == 3 || tile == 4);
}

} // namespace

// Faster than oneDNN's AVX-512 kernels too: on two Emerald Rapids cores, 1.3-2.0x the
// evaluations of the networks it applies to, and with the weight's gradient below, 1.1-1.3x their
// training steps (docs/benchmarks.md).
bool winograd_enabled() { return policy.allows(true); }

bool winograd_shape(int64_t in_channels, int64_t out_channels, int64_t height, int64_t width, int64_t kernel,
                    int64_t stride, int64_t padding) {
  return kernel == 3 && tile_fits(2, in_channels, out_channels, height, width, kernel, stride, padding);
}

int64_t winograd_forward_tile(int64_t in_channels, int64_t out_channels, int64_t height, int64_t width,
                              int64_t kernel, int64_t stride, int64_t padding) {
  // The largest tiles that fit: per layer, F(4x4, 3x3) ran 1.3-1.7 times as fast as F(2x2, 3x3)
  // (ResNet-18's 24x24 to 4x4 maps, AlexNet's 12x12) and F(3x3, 3x3) 1.2-1.3 times (6x6 maps).
  for (const int64_t tile : {4, 3, 2})
    if (tile_fits(tile, in_channels, out_channels, height, width, kernel, stride, padding)) return tile;
  return 0;
}

// The products take V[e] as in x out: the transposed view of its out x in rows.
at::Tensor winograd_weight(const at::Tensor &weight, int64_t tile) {
  return transform_weight(weight, tile, false).transpose(1, 2);
}

// The input's gradient's in x out (the layer's out x in) are the rows as they are, turned.
at::Tensor winograd_input_grad_weight(const at::Tensor &weight, int64_t tile) {
  return transform_weight(weight, tile, true);
}

at::Tensor winograd_conv2d(const at::Tensor &x, const at::Tensor &transformed, int64_t tile, const at::Tensor *bias,
                           const at::Tensor *residual, bool relu) {
  // The kernel by the transformed weight's windows: F(2x2, 5x5) has 6x6 ones, as F(4x4, 3x3).
  const int64_t elements = transformed.dim() == 3 ? transformed.size(0) : 0;
  const int64_t kernel = tile == 2 && elements == 36 ? 5 : 3;
  const Tiles s{x.size(0), x.size(2), x.size(3), x.size(1), transformed.size(-1), kernel, tile};
  if (x.scalar_type() != at::kFloat || transformed.scalar_type() != at::kFloat ||
      transformed.sizes() != at::IntArrayRef({s.elements(), s.in_channels, s.out_channels}) ||
      !tile_fits(tile, s.in_channels, s.out_channels, s.height, s.width, kernel, 1, kernel / 2))
    throw std::invalid_argument("winograd_conv2d: a shape it does not take");
  auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto y = at::empty({s.images, s.out_channels, s.height, s.width}, x.options(), at::MemoryFormat::ChannelsLast);
  at::Tensor shift, skip;
  if (bias != nullptr) shift = bias->to(at::kFloat).contiguous();
  if (residual != nullptr) {
    if (residual->sizes() != y.sizes()) throw std::invalid_argument("winograd_conv2d: a residual of another shape");
    skip = residual->to(at::kFloat).contiguous(at::MemoryFormat::ChannelsLast);
  }
  const int64_t block = block_tiles(s), blocks = (s.count() + block - 1) / block;
  const float *x_data = input.const_data_ptr<float>();
  const float *bias_data = shift.defined() ? shift.const_data_ptr<float>() : nullptr;
  const float *skip_data = skip.defined() ? skip.const_data_ptr<float>() : nullptr;
  float *y_data = y.mutable_data_ptr<float>();
  const Steps steps = steps_of(s.kernel, s.tile);
  at::parallel_for(0, blocks, 1, [&](int64_t first_block, int64_t last_block) {
    // This thread's block buffers: each element's rows for `block` tiles.
    auto u = at::empty({s.elements(), block, s.in_channels}, x.options());
    auto m = at::empty({s.elements(), block, s.out_channels}, x.options());
    for (int64_t b = first_block; b < last_block; ++b) {
      const int64_t first = b * block, count = std::min(s.count(), first + block) - first;
      steps.inputs(x_data, s, first, count, block * s.in_channels, u.mutable_data_ptr<float>());
      auto products = m.narrow(1, 0, count);
      at::bmm_out(products, u.narrow(1, 0, count), transformed);
      steps.outputs(m.const_data_ptr<float>(), s, first, count, block * s.out_channels, bias_data, skip_data, relu,
                    y_data);
    }
  });
  calls.fetch_add(1, std::memory_order_relaxed);
  return y;
}

std::pair<at::Tensor, at::Tensor> winograd_weight_grad(const at::Tensor &x, const at::Tensor &dy, bool with_bias) {
  const Tiles s{x.size(0), x.size(2), x.size(3), x.size(1), dy.size(1), 3, 2};
  if (x.scalar_type() != at::kFloat || dy.scalar_type() != at::kFloat || dy.size(0) != s.images ||
      dy.size(2) != s.height || dy.size(3) != s.width ||
      !winograd_shape(s.in_channels, s.out_channels, s.height, s.width, 3, 1, 1))
    throw std::invalid_argument("winograd_weight_grad: a shape it does not take");
  at::NoGradGuard no_grad;
  auto input = x.contiguous(at::MemoryFormat::ChannelsLast);
  auto grad = dy.contiguous(at::MemoryFormat::ChannelsLast);
  const int64_t block = block_tiles(s), blocks = (s.count() + block - 1) / block;
  const int64_t partial_bytes = ELEMENTS * s.in_channels * s.out_channels * static_cast<int64_t>(sizeof(float));
  const int64_t groups = std::max<int64_t>(1, std::min({MAX_GROUPS, blocks, GROUP_BYTES / partial_bytes}));
  auto options = x.options();
  auto partial = at::empty({groups, ELEMENTS, s.out_channels, s.in_channels}, options);
  std::vector<double> bias_partial(with_bias ? groups * s.out_channels : 0, 0.0);
  const float *x_data = input.const_data_ptr<float>(), *dy_data = grad.const_data_ptr<float>();
  at::parallel_for(0, groups, 1, [&](int64_t first_group, int64_t last_group) {
    auto u = at::empty({ELEMENTS, block, s.in_channels}, options);
    auto dm = at::empty({ELEMENTS, block, s.out_channels}, options);
    for (int64_t g = first_group; g < last_group; ++g) {
      auto sum = partial[g];
      double *bias_sums = with_bias ? bias_partial.data() + g * s.out_channels : nullptr;
      const int64_t first_block = blocks * g / groups, last_block = blocks * (g + 1) / groups;
      for (int64_t b = first_block; b < last_block; ++b) {
        const int64_t first = b * block, count = std::min(s.count(), first + block) - first;
        transform_inputs(x_data, s, first, count, block * s.in_channels, u.mutable_data_ptr<float>());
        transform_output_grads(dy_data, s, first, count, block * s.out_channels, dm.mutable_data_ptr<float>(),
                               bias_sums);
        // dV[e] += dM[e]^T U[e]: out x tiles times tiles x in, rows of input channels as the
        // weight's gradient has them.
        auto grads = dm.narrow(1, 0, count).transpose(1, 2), inputs = u.narrow(1, 0, count);
        if (b == first_block)
          at::bmm_out(sum, grads, inputs);
        else
          sum.baddbmm_(grads, inputs);
      }
    }
  });
  auto total = partial[0].clone();
  for (int64_t g = 1; g < groups; ++g) total.add_(partial[g]);
  auto weight = at::empty({s.out_channels, s.in_channels, 3, 3}, options, at::MemoryFormat::ChannelsLast);
  const float *dv = total.const_data_ptr<float>();
  float *dw = weight.mutable_data_ptr<float>();
  at::parallel_for(0, s.out_channels, 8, [&](int64_t first, int64_t last) {
    weight_grad_rows(dv, s.out_channels, s.in_channels, first, last, dw);
  });
  at::Tensor bias;
  if (with_bias) {
    bias = at::empty({s.out_channels}, options);
    float *out = bias.mutable_data_ptr<float>();
    for (int64_t k = 0; k < s.out_channels; ++k) {
      double total_k = 0;
      for (int64_t group = 0; group < groups; ++group) total_k += bias_partial[group * s.out_channels + k];
      out[k] = static_cast<float>(total_k);
    }
  }
  calls.fetch_add(1, std::memory_order_relaxed);
  return {weight, bias};
}

extern "C" {

// Where the shim's convolutions take Winograd's algorithm: 0 on CPUs without AVX-512, 1
// everywhere, 2 nowhere (for tests and measurements).
char *convnets_set_winograd_policy(int mode) {
  GUARD({
    policy.set(mode);
  })
}

// How many convolutions this process has computed by Winograd's algorithm.
uint64_t convnets_winograd_calls() { return calls.load(std::memory_order_relaxed); }

} // extern "C"
