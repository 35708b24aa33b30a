// Native CPU kernels for jax_asc, as XLA FFI handlers (float32):
//   * depthwise k×k convolution (NHWC, zero padding): forward, input gradient, kernel gradient;
//     forward and the whole backward pass (both gradients in one) also with relu(x·a + b)
//     applied to the input on the fly (the batch norm and ReLU before the convolution, one
//     image at a time in a cached buffer);
//   * the 1×1 convolution's weight gradient Xᵀ·dY, and the 1×1 convolution (forward and weight
//     gradient) with relu(x·a + b) applied to its input tile by tile; the 1×1 convolution with
//     its output's batch statistics, and its backward pass (the statistics' share, the input
//     and the weight gradient) in one pass; the stem convolutions;
//   * batch-norm statistics (one pass) and the two sums of its gradient;
//   * the power spectrogram (framing, window, real FFT, |·|²) with a banded mel projection.
//
// Why: XLA's CPU backend runs a grouped convolution (and the reductions of its kernel gradient
// when written with shifted slices) one to two orders of magnitude slower than the arithmetic
// needs, its FFT uses one thread, and a dense mel matrix multiplies mostly zeros. Here every
// pass reads its inputs once, vectorised over the minor axis.
//
// Depthwise convolution:
// Shapes: x (B, H, W, C); kernel (KH, KW, C); y (B, OH, OW, C) with
//   OH = (H + pad_top + pad_bottom - KH) / stride_h + 1 (likewise OW), pad_top = (KH - 1) / 2.
// Work is split over the batch on XLA's intra-op thread pool. The kernel gradient sums fixed
// batch chunks in a fixed order, so results do not depend on thread timing.
//
// Built by jax_asc/native/__init__.py (c++ -O3 -march=$JAX_ASC_KERNEL_MARCH -shared; `make install`
// does it); the vector width follows the target (see kLanes).

#include <algorithm>
#include <cmath>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <tuple>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>   // the gathers of LoadFrames (AVX-512, AVX2)
#endif

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Geometry {
  int64_t batch, height, width, channels, kh, kw, out_h, out_w, stride_h, stride_w, pad_h, pad_w;
};

// Runs fn(0..n-1) on the caller and the pool. Each index is claimed by exactly one thread; the
// caller waits only for claimed indices, never for a task that has not started, so a pool busy
// with other work cannot deadlock this call.
struct ParallelState {
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  int64_t total = 0;
  std::function<void(int64_t)> fn;
};

void RunClaimed(const std::shared_ptr<ParallelState>& state) {
  for (;;) {
    int64_t i = state->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= state->total) return;
    state->fn(i);
    state->done.fetch_add(1, std::memory_order_release);
  }
}

void ParallelFor(ffi::ThreadPool& pool, int64_t n, std::function<void(int64_t)> fn) {
  if (n <= 0) return;
  auto state = std::make_shared<ParallelState>();
  state->total = n;
  state->fn = std::move(fn);
  int64_t helpers = std::min<int64_t>(pool.num_threads(), n) - 1;
  for (int64_t t = 0; t < helpers; ++t) pool.Schedule([state] { RunClaimed(state); });
  RunClaimed(state);
  while (state->done.load(std::memory_order_acquire) < n) std::this_thread::yield();
}

// The vector width of the target: one `Lanes` value is exactly one vector register, so no
// function passes or returns a value the ABI would split across registers or spill to the
// stack. kVectorRegisters sizes the register tiles (accumulators + operands must fit).
//   AVX-512 (x86-64-v4): 16 floats, 32 registers;  AVX2/FMA (x86-64-v3): 8 floats, 16;
//   ARM NEON (aarch64): 4 floats, 32;  SSE2 and anything else: 4 floats, 16.
#if defined(__AVX512F__)
constexpr int64_t kLanes = 16;
constexpr int kVectorRegisters = 32;
#define JAX_ASC_VECTOR_ISA "avx512"
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int64_t kLanes = 8;
constexpr int kVectorRegisters = 16;
#define JAX_ASC_VECTOR_ISA "avx2"
#elif defined(__ARM_NEON) || defined(__aarch64__)
constexpr int64_t kLanes = 4;
constexpr int kVectorRegisters = 32;
#define JAX_ASC_VECTOR_ISA "neon"
#else
constexpr int64_t kLanes = 4;
constexpr int kVectorRegisters = 16;
#define JAX_ASC_VECTOR_ISA "sse"
#endif
constexpr int64_t kMaxTaps = 49;   // depthwise kernels up to 7×7
// kLanes floats as one value (GCC/Clang vector extension); the compiler emits the target's
// vector instructions directly.
typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float)), aligned(4)));
// Rows of a matmul register tile (rows × 2 vectors of accumulators, 2 operand vectors and a
// broadcast): 8 × 2 + 3 = 19 of 32 registers, 6 × 2 + 3 = 15 of 16.
constexpr int kTileRows = kVectorRegisters >= 32 ? 8 : 6;

// Requests the cache line at p into the second-level cache (x86 prefetcht1, ARM PLDL2KEEP).
inline void PrefetchL2(const void* p) { __builtin_prefetch(p, 0, 2); }

// Unaligned loads and stores, one instruction each: a packed struct tells the compiler the
// address may have any alignment (a memcpy through a local made GCC go through the stack).
template <typename V>
struct __attribute__((packed, may_alias)) Unaligned {
  V value;
};

template <typename V>
inline V LoadVec(const float* p) { return reinterpret_cast<const Unaligned<V>*>(p)->value; }

template <typename V>
inline void StoreVec(float* p, V v) { reinterpret_cast<Unaligned<V>*>(p)->value = v; }

inline Lanes LoadLanes(const float* p) { return LoadVec<Lanes>(p); }

inline void StoreLanes(float* p, Lanes v) { StoreVec<Lanes>(p, v); }

ffi::Error CheckShapes(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel, int64_t out_h,
                       int64_t out_w, int64_t stride_h, int64_t stride_w, Geometry* g) {
  auto xd = x.dimensions();
  auto kd = kernel.dimensions();
  if (xd.size() != 4 || kd.size() != 3 || kd[2] != xd[3])
    return ffi::Error::InvalidArgument("depthwise: expected x (B,H,W,C) and kernel (KH,KW,C)");
  if (kd[0] * kd[1] > kMaxTaps)
    return ffi::Error::InvalidArgument("depthwise: kernels up to 7×7");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], out_h, out_w, stride_h, stride_w,
                (kd[0] - 1) / 2, (kd[1] - 1) / 2};
  return ffi::Error::Success();
}

// y[b, oh, ow, :] = Σ_ij x[b, oh·sh + i − ph, ow·sw + j − pw, :] · k[i, j, :]
// Channels go kLanes at a time as one vector, the remainder one by one.
void ForwardRows(const Geometry& g, const float* x, const float* k, float* y, int64_t b) {
  const int64_t c_n = g.channels;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      float* out = y + ((b * g.out_h + oh) * g.out_w + ow) * c_n;
      const float* taps[kMaxTaps];
      const float* weights[kMaxTaps];
      int64_t n_taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.stride_h + i - g.pad_h;
        if (ih < 0 || ih >= g.height) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.stride_w + j - g.pad_w;
          if (iw < 0 || iw >= g.width) continue;
          taps[n_taps] = x + ((b * g.height + ih) * g.width + iw) * c_n;
          weights[n_taps++] = k + (i * g.kw + j) * c_n;
        }
      }
      int64_t c = 0;
      for (; c + kLanes <= c_n; c += kLanes) {
        Lanes acc = {};
        for (int64_t t = 0; t < n_taps; ++t) acc += LoadLanes(taps[t] + c) * LoadLanes(weights[t] + c);
        StoreLanes(out + c, acc);
      }
      for (; c < c_n; ++c) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n_taps; ++t) acc += taps[t][c] * weights[t][c];
        out[c] = acc;
      }
    }
  }
}

// dx[b, ih, iw, :] = Σ over (i, j, oh, ow) with oh·sh + i − ph = ih, ow·sw + j − pw = iw of
// dy[b, oh, ow, :] · k[i, j, :]  (the transposed convolution, written as a gather).
void InputGradRows(const Geometry& g, const float* dy, const float* k, float* dx, int64_t b) {
  const int64_t c_n = g.channels;
  for (int64_t ih = 0; ih < g.height; ++ih) {
    for (int64_t iw = 0; iw < g.width; ++iw) {
      float* out = dx + ((b * g.height + ih) * g.width + iw) * c_n;
      const float* taps[kMaxTaps];
      const float* weights[kMaxTaps];
      int64_t n_taps = 0;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t oh_s = ih + g.pad_h - i;
        if (oh_s < 0 || oh_s % g.stride_h) continue;
        const int64_t oh = oh_s / g.stride_h;
        if (oh >= g.out_h) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t ow_s = iw + g.pad_w - j;
          if (ow_s < 0 || ow_s % g.stride_w) continue;
          const int64_t ow = ow_s / g.stride_w;
          if (ow >= g.out_w) continue;
          taps[n_taps] = dy + ((b * g.out_h + oh) * g.out_w + ow) * c_n;
          weights[n_taps++] = k + (i * g.kw + j) * c_n;
        }
      }
      int64_t c = 0;
      for (; c + kLanes <= c_n; c += kLanes) {
        Lanes acc = {};
        for (int64_t t = 0; t < n_taps; ++t) acc += LoadLanes(taps[t] + c) * LoadLanes(weights[t] + c);
        StoreLanes(out + c, acc);
      }
      for (; c < c_n; ++c) {
        float acc = 0.0f;
        for (int64_t t = 0; t < n_taps; ++t) acc += taps[t][c] * weights[t][c];
        out[c] = acc;
      }
    }
  }
}

// ----------------------------------------------------------------------------- depthwise, 3×3 fast paths
// For 3×3 kernels, strides 1 or 2 and at least kLanes channels, the three passes below replace
// the general ones: per output row and vector of channels the nine tap weights stay in registers,
// and columns whose taps all lie inside the image (all but the edges) run without bounds checks.
// A last partial vector of channels overlaps the one before it: the forward and gathered passes
// recompute those outputs with identical values, the accumulating passes mask the repeated lanes.
inline int64_t VectorStart(int64_t v, int64_t c_n) { return std::min(v * kLanes, c_n - kLanes); }

// 1 for the lanes this vector adds first, 0 for the lanes the previous vector already covered.
inline Lanes FreshLanes(int64_t v, int64_t c_n) {
  const int64_t repeated = v * kLanes - VectorStart(v, c_n);
  Lanes mask;
  for (int64_t l = 0; l < kLanes; ++l) mask[l] = l < repeated ? 0.0f : 1.0f;
  return mask;
}

// Columns ow in [lo, hi) have every tap ow·S − pad + j (j < K) inside [0, width).
template <int K, int S>
inline void InteriorColumns(int64_t out_w, int64_t width, int64_t pad, int64_t* lo, int64_t* hi) {
  *lo = std::min<int64_t>((pad + S - 1) / S, out_w);
  *hi = *lo;
  while (*hi < out_w && *hi * S - pad + K <= width) ++*hi;
}

// For output row oh: its first input row ih0 = oh·S − pad and the kernel rows [lo, hi) that fall
// inside [0, height).
template <int K, int S>
inline std::tuple<int64_t, int, int> TapRows(int64_t oh, int64_t height, int64_t pad) {
  const int64_t ih0 = oh * S - pad;
  return {ih0, static_cast<int>(std::max<int64_t>(0, -ih0)),
          static_cast<int>(std::min<int64_t>(K, height - ih0))};
}

// y = x ⋆ k (cross-correlation) for one image; `g` the geometry of this correlation.
template <int KH, int KW, int SH, int SW>
void CorrelateImage3(const Geometry& g, const float* x, const float* k, float* y, int64_t b) {
  const int64_t c_n = g.channels, vectors = (c_n + kLanes - 1) / kLanes;
  const float* xb = x + b * g.height * g.width * c_n;
  float* yb = y + b * g.out_h * g.out_w * c_n;
  int64_t ow_lo, ow_hi;
  InteriorColumns<KW, SW>(g.out_w, g.width, g.pad_w, &ow_lo, &ow_hi);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t ih0;
    int i_lo, i_hi;
    std::tie(ih0, i_lo, i_hi) = TapRows<KH, SH>(oh, g.height, g.pad_h);
    for (int64_t v = 0; v < vectors; ++v) {
      const int64_t c = VectorStart(v, c_n);
      Lanes w[KH * KW];
      for (int t = 0; t < KH * KW; ++t) w[t] = LoadLanes(k + t * c_n + c);
      float* out = yb + oh * g.out_w * c_n + c;
      auto tap = [&](int64_t ih, int64_t iw) { return xb + (ih * g.width + iw) * c_n + c; };
      auto edge = [&](int64_t ow) {
        const int64_t iw0 = ow * SW - g.pad_w;
        Lanes acc = {};
        for (int i = i_lo; i < i_hi; ++i)
          for (int j = 0; j < KW; ++j)
            if (iw0 + j >= 0 && iw0 + j < g.width)
              acc += LoadLanes(tap(ih0 + i, iw0 + j)) * w[i * KW + j];
        StoreLanes(out + ow * c_n, acc);
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) edge(ow);
      if (i_lo == 0 && i_hi == KH) {
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          const float* in = tap(ih0, ow * SW - g.pad_w);
          Lanes acc = {};
          for (int i = 0; i < KH; ++i)
            for (int j = 0; j < KW; ++j)
              acc += LoadLanes(in + (i * g.width + j) * c_n) * w[i * KW + j];
          StoreLanes(out + ow * c_n, acc);
        }
      } else {
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          const float* in = tap(ih0, ow * SW - g.pad_w);
          Lanes acc = {};
          for (int i = i_lo; i < i_hi; ++i)
            for (int j = 0; j < KW; ++j)
              acc += LoadLanes(in + (i * g.width + j) * c_n) * w[i * KW + j];
          StoreLanes(out + ow * c_n, acc);
        }
      }
      for (int64_t ow = ow_hi; ow < g.out_w; ++ow) edge(ow);
    }
  }
}

// dx of one image for a strided forward pass, as a scatter: dx[oh·S + i − pad] += dy[oh]·k[i].
template <int KH, int KW, int SH, int SW>
void ScatterInputGradImage3(const Geometry& g, const float* dy, const float* k, float* dx,
                            int64_t b) {
  const int64_t c_n = g.channels, vectors = (c_n + kLanes - 1) / kLanes;
  const float* dyb = dy + b * g.out_h * g.out_w * c_n;
  float* dxb = dx + b * g.height * g.width * c_n;
  std::memset(dxb, 0, g.height * g.width * c_n * sizeof(float));
  int64_t ow_lo, ow_hi;
  InteriorColumns<KW, SW>(g.out_w, g.width, g.pad_w, &ow_lo, &ow_hi);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t ih0;
    int i_lo, i_hi;
    std::tie(ih0, i_lo, i_hi) = TapRows<KH, SH>(oh, g.height, g.pad_h);
    for (int64_t v = 0; v < vectors; ++v) {
      const int64_t c = VectorStart(v, c_n);
      const Lanes fresh = FreshLanes(v, c_n);
      Lanes w[KH * KW];
      for (int t = 0; t < KH * KW; ++t) w[t] = LoadLanes(k + t * c_n + c) * fresh;
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const Lanes grad = LoadLanes(dyb + (oh * g.out_w + ow) * c_n + c);
        const int64_t iw0 = ow * SW - g.pad_w;
        const bool inside = ow >= ow_lo && ow < ow_hi;
        for (int i = i_lo; i < i_hi; ++i) {
          float* row = dxb + ((ih0 + i) * g.width + iw0) * c_n + c;
          for (int j = 0; j < KW; ++j) {
            if (!inside && (iw0 + j < 0 || iw0 + j >= g.width)) continue;
            StoreLanes(row + j * c_n, LoadLanes(row + j * c_n) + grad * w[i * KW + j]);
          }
        }
      }
    }
  }
}

// acc[i, j, :] += Σ_{oh, ow} x[oh·S + i − pad, ow·S + j − pad, :] · dy[oh, ow, :] for one image;
// the nine sums of one output row stay in registers.
template <int KH, int KW, int SH, int SW>
void KernelGradImage3(const Geometry& g, const float* x, const float* dy, float* acc, int64_t b) {
  const int64_t c_n = g.channels, vectors = (c_n + kLanes - 1) / kLanes;
  const float* xb = x + b * g.height * g.width * c_n;
  const float* dyb = dy + b * g.out_h * g.out_w * c_n;
  int64_t ow_lo, ow_hi;
  InteriorColumns<KW, SW>(g.out_w, g.width, g.pad_w, &ow_lo, &ow_hi);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t ih0;
    int i_lo, i_hi;
    std::tie(ih0, i_lo, i_hi) = TapRows<KH, SH>(oh, g.height, g.pad_h);
    for (int64_t v = 0; v < vectors; ++v) {
      const int64_t c = VectorStart(v, c_n);
      const Lanes fresh = FreshLanes(v, c_n);
      Lanes sums[KH * KW] = {};
      auto add = [&](int64_t ow, bool inside) {
        const Lanes grad = LoadLanes(dyb + (oh * g.out_w + ow) * c_n + c);
        const int64_t iw0 = ow * SW - g.pad_w;
        const float* in = xb + (ih0 * g.width + iw0) * c_n + c;
        for (int i = i_lo; i < i_hi; ++i)
          for (int j = 0; j < KW; ++j)
            if (inside || (iw0 + j >= 0 && iw0 + j < g.width))
              sums[i * KW + j] += LoadLanes(in + (i * g.width + j) * c_n) * grad;
      };
      for (int64_t ow = 0; ow < ow_lo; ++ow) add(ow, false);
      if (i_lo == 0 && i_hi == KH) {
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
          const Lanes grad = LoadLanes(dyb + (oh * g.out_w + ow) * c_n + c);
          const float* in = xb + (ih0 * g.width + ow * SW - g.pad_w) * c_n + c;
          for (int i = 0; i < KH; ++i)
            for (int j = 0; j < KW; ++j)
              sums[i * KW + j] += LoadLanes(in + (i * g.width + j) * c_n) * grad;
        }
      } else {
        for (int64_t ow = ow_lo; ow < ow_hi; ++ow) add(ow, true);
      }
      for (int64_t ow = ow_hi; ow < g.out_w; ++ow) add(ow, false);
      for (int t = 0; t < KH * KW; ++t)
        StoreLanes(acc + t * c_n + c, LoadLanes(acc + t * c_n + c) + sums[t] * fresh);
    }
  }
}

// Calls run(std::integral_constant<int, SH>, std::integral_constant<int, SW>) for strides in
// {1, 2}²; false (nothing run) for other strides.
template <typename F>
bool DispatchStrides(int64_t sh, int64_t sw, F&& run) {
  using One = std::integral_constant<int, 1>;
  using Two = std::integral_constant<int, 2>;
  if (sh == 1 && sw == 1) run(One(), One());
  else if (sh == 1 && sw == 2) run(One(), Two());
  else if (sh == 2 && sw == 1) run(Two(), One());
  else if (sh == 2 && sw == 2) run(Two(), Two());
  else return false;
  return true;
}

inline bool FastDepthwise(const Geometry& g) {
  return g.kh == 3 && g.kw == 3 && g.channels >= kLanes;
}

// acc[i, j, :] += Σ_{oh, ow} x[b, oh·sh + i − ph, ow·sw + j − pw, :] · dy[b, oh, ow, :]
// For each vector of kLanes channels the KH·KW tap sums of one output row stay in registers
// (row sums also keep the float sums short); remaining channels go one by one.
template <int KH, int KW>
void KernelGradRowsFixed(const Geometry& g, const float* x, const float* dy, float* acc,
                         int64_t b) {
  const int64_t c_n = g.channels;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t c = 0;
    for (; c + kLanes <= c_n; c += kLanes) {
      Lanes sums[KH * KW] = {};
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const Lanes grad = LoadLanes(dy + ((b * g.out_h + oh) * g.out_w + ow) * c_n + c);
        for (int i = 0; i < KH; ++i) {
          const int64_t ih = oh * g.stride_h + i - g.pad_h;
          if (ih < 0 || ih >= g.height) continue;
          for (int j = 0; j < KW; ++j) {
            const int64_t iw = ow * g.stride_w + j - g.pad_w;
            if (iw < 0 || iw >= g.width) continue;
            sums[i * KW + j] += LoadLanes(x + ((b * g.height + ih) * g.width + iw) * c_n + c) * grad;
          }
        }
      }
      for (int t = 0; t < KH * KW; ++t)
        StoreLanes(acc + t * c_n + c, LoadLanes(acc + t * c_n + c) + sums[t]);
    }
    for (; c < c_n; ++c) {
      for (int64_t ow = 0; ow < g.out_w; ++ow) {
        const float grad = dy[((b * g.out_h + oh) * g.out_w + ow) * c_n + c];
        for (int i = 0; i < KH; ++i) {
          const int64_t ih = oh * g.stride_h + i - g.pad_h;
          if (ih < 0 || ih >= g.height) continue;
          for (int j = 0; j < KW; ++j) {
            const int64_t iw = ow * g.stride_w + j - g.pad_w;
            if (iw < 0 || iw >= g.width) continue;
            acc[(i * KW + j) * c_n + c] += x[((b * g.height + ih) * g.width + iw) * c_n + c] * grad;
          }
        }
      }
    }
  }
}

void KernelGradRows(const Geometry& g, const float* x, const float* dy, float* acc, float* row,
                    int64_t b) {
  if (FastDepthwise(g) && DispatchStrides(g.stride_h, g.stride_w, [&](auto sh, auto sw) {
        KernelGradImage3<3, 3, decltype(sh)::value, decltype(sw)::value>(g, x, dy, acc, b);
      }))
    return;
  if (g.kh == 3 && g.kw == 3) return KernelGradRowsFixed<3, 3>(g, x, dy, acc, b);
  const int64_t c_n = g.channels, taps = g.kh * g.kw;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    std::fill(row, row + taps * c_n, 0.0f);
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const float* grad = dy + ((b * g.out_h + oh) * g.out_w + ow) * c_n;
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.stride_h + i - g.pad_h;
        if (ih < 0 || ih >= g.height) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.stride_w + j - g.pad_w;
          if (iw < 0 || iw >= g.width) continue;
          const float* in = x + ((b * g.height + ih) * g.width + iw) * c_n;
          float* r = row + (i * g.kw + j) * c_n;
          int64_t c = 0;
          for (; c + kLanes <= c_n; c += kLanes)
            StoreLanes(r + c, LoadLanes(r + c) + LoadLanes(in + c) * LoadLanes(grad + c));
          for (; c < c_n; ++c) r[c] += in[c] * grad[c];
        }
      }
    }
    int64_t t = 0;
    for (; t + kLanes <= taps * c_n; t += kLanes)
      StoreLanes(acc + t, LoadLanes(acc + t) + LoadLanes(row + t));
    for (; t < taps * c_n; ++t) acc[t] += row[t];
  }
}

// relu(x·a + b) per channel for `pixels` rows of c_n channels, into dst: the batch-norm
// apply and ReLU of the layer before, done on one image at a time in a cache-resident buffer
// instead of as a separate pass that writes and re-reads the whole activation.
void AffineRelu(const float* src, const float* a, const float* b, int64_t pixels, int64_t c_n,
                float* dst) {
  for (int64_t p = 0; p < pixels; ++p) {
    const float* in = src + p * c_n;
    float* out = dst + p * c_n;
#pragma GCC ivdep
    for (int64_t c = 0; c < c_n; ++c) out[c] = std::max(in[c] * a[c] + b[c], 0.0f);
  }
}

// The input of image b: x itself, or relu(x·a + b) in a per-thread buffer when `a` is given.
const float* ImageInput(const Geometry& g, const float* x, const float* a, const float* bias,
                        int64_t b) {
  const int64_t size = g.height * g.width * g.channels;
  if (a == nullptr) return x + b * size;
  thread_local std::vector<float> buffer;
  buffer.resize(size);
  AffineRelu(x + b * size, a, bias, g.height * g.width, g.channels, buffer.data());
  return buffer.data();
}

// y = x ⋆ k, or relu(x·a + b) ⋆ k when `a` is not null (a, b per channel).
// `done(b)`, when given, runs after image b is written, while it is in cache.
void ForwardImages(ffi::ThreadPool& pool, const Geometry& g, const float* xp, const float* a,
                   const float* bias, const float* kp, float* yp,
                   const std::function<void(int64_t)>& done = nullptr) {
  const int64_t out_size = g.out_h * g.out_w * g.channels;
  auto run = [&](auto&& image) {
    ParallelFor(pool, g.batch, [&](int64_t b) {
      image(ImageInput(g, xp, a, bias, b), yp + b * out_size);
      if (done) done(b);
    });
  };
  if (FastDepthwise(g) && DispatchStrides(g.stride_h, g.stride_w, [&](auto sh, auto sw) {
        run([&](const float* in, float* out) {
          CorrelateImage3<3, 3, decltype(sh)::value, decltype(sw)::value>(g, in, kp, out, 0);
        });
      }))
    return;
  run([&](const float* in, float* out) { ForwardRows(g, in, kp, out, 0); });
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                   ffi::ResultBuffer<ffi::F32> y, int64_t stride_h, int64_t stride_w) {
  Geometry g;
  auto yd = y->dimensions();
  if (auto e = CheckShapes(x, kernel, yd[1], yd[2], stride_h, stride_w, &g); e.failure()) return e;
  ForwardImages(pool, g, x.typed_data(), nullptr, nullptr, kernel.typed_data(), y->typed_data());
  return ffi::Error::Success();
}

ffi::Error CheckAffine(const Geometry& g, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b) {
  if (a.dimensions().size() != 1 || b.dimensions().size() != 1 ||
      a.dimensions()[0] != g.channels || b.dimensions()[0] != g.channels)
    return ffi::Error::InvalidArgument("depthwise: expected a, b of shape (C,)");
  return ffi::Error::Success();
}

ffi::Error AffineReluForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                             ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                             ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                             int64_t stride_h, int64_t stride_w) {
  Geometry g;
  auto yd = y->dimensions();
  if (auto e = CheckShapes(x, kernel, yd[1], yd[2], stride_h, stride_w, &g); e.failure()) return e;
  if (auto e = CheckAffine(g, a, b); e.failure()) return e;
  ForwardImages(pool, g, x.typed_data(), a.typed_data(), b.typed_data(), kernel.typed_data(),
                y->typed_data());
  return ffi::Error::Success();
}

// The same with y's batch statistics over (B, OH, OW) taken while each image is in cache: per
// image its mean and centred sum of squares (two passes over the cached image), merged in image
// order in double (Chan et al.): exact for large means, deterministic.
ffi::Error AffineReluMomentsForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                    ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                                    ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> y,
                                    ffi::ResultBuffer<ffi::F32> mean,
                                    ffi::ResultBuffer<ffi::F32> var, int64_t stride_h,
                                    int64_t stride_w) {
  Geometry g;
  auto yd = y->dimensions();
  if (auto e = CheckShapes(x, kernel, yd[1], yd[2], stride_h, stride_w, &g); e.failure()) return e;
  if (auto e = CheckAffine(g, a, b); e.failure()) return e;
  if (mean->dimensions().size() != 1 || mean->dimensions()[0] != g.channels ||
      var->dimensions().size() != 1 || var->dimensions()[0] != g.channels)
    return ffi::Error::InvalidArgument("depthwise moments: expected mean and var of shape (C,)");
  const int64_t c_n = g.channels, pixels = g.out_h * g.out_w;
  float* yp = y->typed_data();
  std::vector<float> image_mean(g.batch * c_n), image_m2(g.batch * c_n);
  ForwardImages(pool, g, x.typed_data(), a.typed_data(), b.typed_data(), kernel.typed_data(), yp,
                [&](int64_t image) {
                  const float* out = yp + image * pixels * c_n;
                  float* m = image_mean.data() + image * c_n;
                  float* m2 = image_m2.data() + image * c_n;
                  std::fill(m, m + c_n, 0.0f);
                  std::fill(m2, m2 + c_n, 0.0f);
                  for (int64_t p = 0; p < pixels; ++p)
#pragma GCC ivdep
                    for (int64_t c = 0; c < c_n; ++c) m[c] += out[p * c_n + c];
                  for (int64_t c = 0; c < c_n; ++c) m[c] /= static_cast<float>(pixels);
                  for (int64_t p = 0; p < pixels; ++p)
#pragma GCC ivdep
                    for (int64_t c = 0; c < c_n; ++c) {
                      const float d = out[p * c_n + c] - m[c];
                      m2[c] += d * d;
                    }
                });
  for (int64_t c = 0; c < c_n; ++c) {
    double n = 0.0, mu = 0.0, m2 = 0.0;
    for (int64_t image = 0; image < g.batch; ++image) {
      const double nb = static_cast<double>(pixels), mb = image_mean[image * c_n + c];
      const double delta = mb - mu, total = n + nb;
      mu += delta * nb / total;
      m2 += image_m2[image * c_n + c] + delta * delta * n * nb / total;
      n = total;
    }
    mean->typed_data()[c] = static_cast<float>(mu);
    var->typed_data()[c] = static_cast<float>(m2 / n);
  }
  return ffi::Error::Success();
}

// The depthwise input gradient, image by image: dz = the transposed convolution of dy.
struct InputGradJob {
  Geometry g;                   // of the forward convolution: x has dx's shape, y has dy's
  const float* dy;
  const float* kernel;          // (KH, KW, C)
  std::vector<float> flipped;   // the 3×3 kernel reversed, for the stride-1 fast path

  InputGradJob(const Geometry& g, const float* dy, const float* kernel)
      : g(g), dy(dy), kernel(kernel) {
    if (FastDepthwise(g) && g.stride_h == 1 && g.stride_w == 1) {
      flipped.resize(9 * g.channels);
      for (int64_t t = 0; t < 9; ++t)
        std::memcpy(flipped.data() + (8 - t) * g.channels, kernel + t * g.channels,
                    g.channels * sizeof(float));
    }
  }

  // dx[b] from dy (both indexed by image b).
  void Image(const float* dy, float* dx, int64_t b) const {
    if (!flipped.empty()) {
      // A stride-1 input gradient is the correlation of dy with the flipped kernel.
      const Geometry gt{g.batch, g.out_h, g.out_w, g.channels, 3, 3, g.height, g.width, 1, 1,
                        2 - g.pad_h, 2 - g.pad_w};
      CorrelateImage3<3, 3, 1, 1>(gt, dy, flipped.data(), dx, b);
      return;
    }
    if (FastDepthwise(g) && DispatchStrides(g.stride_h, g.stride_w, [&](auto sh, auto sw) {
          ScatterInputGradImage3<3, 3, decltype(sh)::value, decltype(sw)::value>(g, dy, kernel,
                                                                               dx, b);
        }))
      return;
    InputGradRows(g, dy, kernel, dx, b);
  }
};

Geometry InputGradGeometry(ffi::Span<const int64_t> dyd, ffi::Span<const int64_t> dxd,
                           ffi::Span<const int64_t> kd, int64_t stride_h, int64_t stride_w) {
  return Geometry{dxd[0], dxd[1], dxd[2], dxd[3], kd[0], kd[1], dyd[1], dyd[2], stride_h,
                  stride_w, (kd[0] - 1) / 2, (kd[1] - 1) / 2};
}

ffi::Error InputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
                     ffi::ResultBuffer<ffi::F32> dx, int64_t stride_h, int64_t stride_w) {
  if (dy.dimensions().size() != 4 || dx->dimensions().size() != 4)
    return ffi::Error::InvalidArgument("depthwise input gradient: expected 4-D arrays");
  const InputGradJob job(InputGradGeometry(dy.dimensions(), dx->dimensions(),
                                           kernel.dimensions(), stride_h, stride_w),
                         dy.typed_data(), kernel.typed_data());
  float* dxp = dx->typed_data();
  ParallelFor(pool, job.g.batch, [&](int64_t b) { job.Image(job.dy, dxp, b); });
  return ffi::Error::Success();
}

// The statistics' share of a gradient dy of y (N, C) when y's batch mean and biased variance
// are outputs too: dy' = dy + dmean/N + (y − mean)·2·dvar/N = dy + offset + scale·y per channel.
struct MomentsShare {
  std::vector<float> scale, offset;

  MomentsShare(const float* mean, const float* dmean, const float* dvar, int64_t c_n, int64_t n)
      : scale(c_n), offset(c_n) {
    for (int64_t c = 0; c < c_n; ++c) {
      scale[c] = static_cast<float>(2.0 * dvar[c] / n);
      offset[c] = static_cast<float>(dmean[c] / static_cast<double>(n)) - scale[c] * mean[c];
    }
  }

  // out = dy' for `rows` rows of dy and y (C floats each).
  void Complete(const float* dy, const float* y, int64_t rows, float* out) const {
    const int64_t c_n = static_cast<int64_t>(scale.size());
    const float *sc = scale.data(), *of = offset.data();
    for (int64_t p = 0; p < rows * c_n; p += c_n)
#pragma GCC ivdep
      for (int64_t c = 0; c < c_n; ++c) out[p + c] = dy[p + c] + of[c] + sc[c] * y[p + c];
  }
};

// The backward pass of y = depthwise(relu(x·a + shift)), image by image while the image's dy,
// x and dz are in cache: the kernel gradient dk = Σ relu(x·a + shift) ⋆ dy, and
// dz = the transposed convolution of dy (written into dx), then
//   g = dz · [x·a + shift > 0],  dx = a·g,  sum_g = Σ g,  sum_gc = Σ g·(x − center)
// (dk and the float sums per image, added in image order in double: deterministic). Replaces
// a kernel-gradient pass that reads x and dy again and two passes that read dz back with x.
// With `share`, dy is first completed with the statistics' share of y (`yp`, the forward
// output), per image in cache.
ffi::Error AffineReluBackwardImages(ffi::ThreadPool& pool, const InputGradJob& job,
                                    const float* xp, const float* ap, const float* sp,
                                    const float* cp, const MomentsShare* share,
                                    const float* yp, float* dxp,
                                    float* o1, float* o2, float* ok) {
  const Geometry& g = job.g;
  const int64_t c_n = g.channels, pixels = g.height * g.width;
  const int64_t k_size = g.kh * g.kw * c_n, out_size = g.out_h * g.out_w * c_n;
  std::vector<float> partial(g.batch * 2 * c_n, 0.0f), partial_dk(g.batch * k_size, 0.0f);
  ParallelFor(pool, g.batch, [&](int64_t b) {
    thread_local std::vector<float> row, completed;
    row.resize(k_size);
    const float* dy = job.dy + b * out_size;
    if (share != nullptr) {
      completed.resize(out_size);
      share->Complete(dy, yp + b * out_size, out_size / c_n, completed.data());
      dy = completed.data();
    }
    KernelGradRows(g, ImageInput(g, xp, ap, sp, b), dy, partial_dk.data() + b * k_size,
                   row.data(), 0);
    job.Image(dy, dxp + b * pixels * c_n, 0);
    float* s1 = partial.data() + b * 2 * c_n;
    float* s2 = s1 + c_n;
    for (int64_t p = 0; p < pixels; ++p) {
      const float* in = xp + (b * pixels + p) * c_n;
      float* d = dxp + (b * pixels + p) * c_n;
#pragma GCC ivdep
      for (int64_t c = 0; c < c_n; ++c) {
        const float grad = in[c] * ap[c] + sp[c] > 0.0f ? d[c] : 0.0f;
        d[c] = ap[c] * grad;
        s1[c] += grad;
        s2[c] += grad * (in[c] - cp[c]);
      }
    }
  });
  for (int64_t c = 0; c < c_n; ++c) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t b = 0; b < g.batch; ++b) {
      t1 += partial[b * 2 * c_n + c];
      t2 += partial[b * 2 * c_n + c_n + c];
    }
    o1[c] = static_cast<float>(t1);
    o2[c] = static_cast<float>(t2);
  }
  for (int64_t t = 0; t < k_size; ++t) {
    double total = 0.0;
    for (int64_t b = 0; b < g.batch; ++b) total += partial_dk[b * k_size + t];
    ok[t] = static_cast<float>(total);
  }
  return ffi::Error::Success();
}

// Checks the backward pass's arguments and builds its job.
ffi::Error AffineReluBackwardJob(ffi::Buffer<ffi::F32>& dy, ffi::Buffer<ffi::F32>& kernel,
                                 ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& a,
                                 ffi::Buffer<ffi::F32>& shift, ffi::Buffer<ffi::F32>& center,
                                 ffi::ResultBuffer<ffi::F32>& dx, ffi::ResultBuffer<ffi::F32>& dk,
                                 int64_t stride_h, int64_t stride_w,
                                 std::unique_ptr<InputGradJob>* job) {
  auto xd = x.dimensions();
  auto kd = kernel.dimensions();
  if (dy.dimensions().size() != 4 || xd.size() != 4 || dx->dimensions().size() != 4 ||
      kd.size() != 3 || dk->dimensions().size() != 3 || dk->dimensions()[0] != kd[0] ||
      dk->dimensions()[1] != kd[1] || dk->dimensions()[2] != kd[2])
    return ffi::Error::InvalidArgument(
        "depthwise backward: expected 4-D dy, x, dx and a kernel and dk of one shape (KH, KW, C)");
  *job = std::make_unique<InputGradJob>(InputGradGeometry(dy.dimensions(), dx->dimensions(),
                                                          kd, stride_h, stride_w),
                                        dy.typed_data(), kernel.typed_data());
  if (auto e = CheckAffine((*job)->g, a, shift); e.failure()) return e;
  return CheckAffine((*job)->g, center, center);
}

ffi::Error AffineReluBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                              ffi::Buffer<ffi::F32> kernel, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
                              ffi::Buffer<ffi::F32> center, ffi::ResultBuffer<ffi::F32> dx,
                              ffi::ResultBuffer<ffi::F32> sum_g,
                              ffi::ResultBuffer<ffi::F32> sum_gc, ffi::ResultBuffer<ffi::F32> dk,
                              int64_t stride_h, int64_t stride_w) {
  std::unique_ptr<InputGradJob> job;
  if (auto e = AffineReluBackwardJob(dy, kernel, x, a, shift, center, dx, dk, stride_h, stride_w,
                                     &job);
      e.failure())
    return e;
  return AffineReluBackwardImages(pool, *job, x.typed_data(), a.typed_data(), shift.typed_data(),
                                  center.typed_data(), nullptr, nullptr, dx->typed_data(),
                                  sum_g->typed_data(), sum_gc->typed_data(), dk->typed_data());
}

// The backward pass of (y, mean, var) = the depthwise convolution with its output's statistics:
// the same, with dy completed by the statistics' share (never written).
ffi::Error AffineReluMomentsBackward(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> kernel,
    ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
    ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> mean,
    ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar, ffi::ResultBuffer<ffi::F32> dx,
    ffi::ResultBuffer<ffi::F32> sum_g, ffi::ResultBuffer<ffi::F32> sum_gc,
    ffi::ResultBuffer<ffi::F32> dk, int64_t stride_h, int64_t stride_w) {
  std::unique_ptr<InputGradJob> job;
  if (auto e = AffineReluBackwardJob(dy, kernel, x, a, shift, center, dx, dk, stride_h, stride_w,
                                     &job);
      e.failure())
    return e;
  const int64_t c_n = job->g.channels;
  bool ok = y.dimensions().size() == 4;
  for (int i = 0; ok && i < 4; ++i) ok = y.dimensions()[i] == dy.dimensions()[i];
  for (auto* v : {&mean, &dmean, &dvar})
    ok = ok && v->dimensions().size() == 1 && v->dimensions()[0] == c_n;
  if (!ok)
    return ffi::Error::InvalidArgument(
        "depthwise moments backward: expected y of dy's shape, mean, dmean and dvar (C,)");
  const MomentsShare share(mean.typed_data(), dmean.typed_data(), dvar.typed_data(), c_n,
                           job->g.batch * job->g.out_h * job->g.out_w);
  return AffineReluBackwardImages(pool, *job, x.typed_data(), a.typed_data(), shift.typed_data(),
                                  center.typed_data(), &share, y.typed_data(), dx->typed_data(),
                                  sum_g->typed_data(), sum_gc->typed_data(), dk->typed_data());
}

// dk for x and dy.
void KernelGradImages(ffi::ThreadPool& pool, const Geometry& g, const float* xp, const float* dyp,
                      float* out) {
  const int64_t size = g.kh * g.kw * g.channels, in_size = g.height * g.width * g.channels;
  const int64_t out_size = g.out_h * g.out_w * g.channels;
  // Fixed chunks of the batch, summed in order: the result is independent of thread timing.
  const int64_t chunks = std::min<int64_t>(g.batch, 16);
  std::vector<float> partial(chunks * size, 0.0f);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    std::vector<float> row(size);
    float* acc = partial.data() + chunk * size;
    for (int64_t b = chunk * g.batch / chunks; b < (chunk + 1) * g.batch / chunks; ++b)
      KernelGradRows(g, xp + b * in_size, dyp + b * out_size, acc, row.data(), 0);
  });
  std::memcpy(out, partial.data(), size * sizeof(float));
  for (int64_t chunk = 1; chunk < chunks; ++chunk) {
    const float* p = partial.data() + chunk * size;
    for (int64_t t = 0; t < size; ++t) out[t] += p[t];
  }
}

ffi::Error KernelGradGeometry(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                              ffi::ResultBuffer<ffi::F32>& dk, int64_t stride_h,
                              int64_t stride_w, Geometry* g) {
  auto xd = x.dimensions();
  auto dyd = dy.dimensions();
  auto kd = dk->dimensions();
  if (xd.size() != 4 || dyd.size() != 4 || kd.size() != 3)
    return ffi::Error::InvalidArgument("depthwise kernel gradient: expected x, dy 4-D, dk 3-D");
  *g = Geometry{xd[0], xd[1], xd[2], xd[3], kd[0], kd[1], dyd[1], dyd[2], stride_h, stride_w,
                (kd[0] - 1) / 2, (kd[1] - 1) / 2};
  return ffi::Error::Success();
}

ffi::Error KernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                      ffi::ResultBuffer<ffi::F32> dk, int64_t stride_h, int64_t stride_w) {
  Geometry g;
  if (auto e = KernelGradGeometry(x, dy, dk, stride_h, stride_w, &g); e.failure()) return e;
  KernelGradImages(pool, g, x.typed_data(), dy.typed_data(), dk->typed_data());
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- batch norm
// Batch statistics of x (N, C) in one pass: mean and biased variance per channel. Sums are
// taken relative to the first row (a shift close to the mean) in double precision, so the
// variance keeps its digits when the mean is large beside the spread.
constexpr int64_t kStatChunks = 16;

ffi::Error Moments(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::ResultBuffer<ffi::F32> mean,
                   ffi::ResultBuffer<ffi::F32> var) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || xd[0] < 1)
    return ffi::Error::InvalidArgument("moments: expected x (N, C) with N >= 1");
  const int64_t n = xd[0], c_n = xd[1];
  const float* xp = x.typed_data();
  const int64_t chunks = std::min<int64_t>(n, kStatChunks);
  std::vector<double> sums(chunks * 2 * c_n, 0.0);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    double* s1 = sums.data() + chunk * 2 * c_n;
    double* s2 = s1 + c_n;
    std::vector<float> r1(c_n), r2(c_n);
    const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
    constexpr int64_t kBlock = 64;   // float partial sums over short runs of rows
    for (int64_t start = begin; start < end; start += kBlock) {
      std::fill(r1.begin(), r1.end(), 0.0f);
      std::fill(r2.begin(), r2.end(), 0.0f);
      for (int64_t row = start; row < std::min(end, start + kBlock); ++row) {
        const float* in = xp + row * c_n;
#pragma GCC ivdep
        for (int64_t c = 0; c < c_n; ++c) {
          const float d = in[c] - xp[c];
          r1[c] += d;
          r2[c] += d * d;
        }
      }
      for (int64_t c = 0; c < c_n; ++c) {
        s1[c] += r1[c];
        s2[c] += r2[c];
      }
    }
  });
  float* mp = mean->typed_data();
  float* vp = var->typed_data();
  for (int64_t c = 0; c < c_n; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      s1 += sums[chunk * 2 * c_n + c];
      s2 += sums[chunk * 2 * c_n + c_n + c];
    }
    const double m = s1 / n;
    mp[c] = static_cast<float>(xp[c] + m);
    vp[c] = static_cast<float>(std::max(0.0, s2 / n - m * m));
  }
  return ffi::Error::Success();
}

// The two sums of the batch-norm gradient in one pass over x (N, C) and dy (N, C):
//   dbias = Σ g,  dxc = Σ g·(x − mean),  g = dy · [x·a + b > 0] with relu, else dy.
ffi::Error NormGradSums(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                        ffi::Buffer<ffi::F32> mean, ffi::Buffer<ffi::F32> a,
                        ffi::Buffer<ffi::F32> b, ffi::ResultBuffer<ffi::F32> dbias,
                        ffi::ResultBuffer<ffi::F32> dxc, int64_t relu) {
  auto xd = x.dimensions();
  if (xd.size() != 2 || dy.dimensions().size() != 2 || dy.dimensions()[0] != xd[0] ||
      dy.dimensions()[1] != xd[1])
    return ffi::Error::InvalidArgument("norm gradient sums: expected x and dy of shape (N, C)");
  const int64_t n = xd[0], c_n = xd[1];
  const float *xp = x.typed_data(), *gp = dy.typed_data(), *mp = mean.typed_data(),
              *ap = a.typed_data(), *bp = b.typed_data();
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(n, 1), kStatChunks);
  std::vector<double> sums(chunks * 2 * c_n, 0.0);
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    double* s1 = sums.data() + chunk * 2 * c_n;
    double* s2 = s1 + c_n;
    std::vector<float> r1(c_n), r2(c_n);
    const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
    constexpr int64_t kBlock = 64;
    for (int64_t start = begin; start < end; start += kBlock) {
      std::fill(r1.begin(), r1.end(), 0.0f);
      std::fill(r2.begin(), r2.end(), 0.0f);
      for (int64_t row = start; row < std::min(end, start + kBlock); ++row) {
        const float* in = xp + row * c_n;
        const float* grad = gp + row * c_n;
        if (relu) {
#pragma GCC ivdep
          for (int64_t c = 0; c < c_n; ++c) {
            const float g = in[c] * ap[c] + bp[c] > 0.0f ? grad[c] : 0.0f;
            r1[c] += g;
            r2[c] += g * (in[c] - mp[c]);
          }
        } else {
#pragma GCC ivdep
          for (int64_t c = 0; c < c_n; ++c) {
            r1[c] += grad[c];
            r2[c] += grad[c] * (in[c] - mp[c]);
          }
        }
      }
      for (int64_t c = 0; c < c_n; ++c) {
        s1[c] += r1[c];
        s2[c] += r2[c];
      }
    }
  });
  float* o1 = dbias->typed_data();
  float* o2 = dxc->typed_data();
  for (int64_t c = 0; c < c_n; ++c) {
    double s1 = 0.0, s2 = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      s1 += sums[chunk * 2 * c_n + c];
      s2 += sums[chunk * 2 * c_n + c_n + c];
    }
    o1[c] = static_cast<float>(s1);
    o2[c] = static_cast<float>(s2);
  }
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- spectrogram
// mel[b, m, t] = Σ_{k = lo[m]}^{hi[m] − 1} fb_t[m, k] · |rfft(frame_bt · window)[k]|²,
// frame_bt = padded[b, t·hop : t·hop + n_fft], padded = the clip pre-emphasised (optional) and
// centre-padded (reflect or zeros), read from the raw clip on the way.
// The real FFT of n_fft points is a complex FFT of n_fft/2 points (even samples real, odd
// imaginary) and a post-processing step. kLanes frames are transformed together, one per SIMD
// lane (structure-of-arrays), so every butterfly is a vector operation.
struct FftPlan {
  int64_t m = 0;                                   // complex FFT size (n_fft / 2)
  std::vector<int64_t> bitrev;
  std::vector<float> cos_m, sin_m;                 // e^{−2πij/m}, j < m/2
  std::vector<float> cos_n, sin_n;                 // e^{−2πik/n_fft}, k ≤ m
  explicit FftPlan(int64_t n_fft) : m(n_fft / 2) {
    int64_t bits = 0;
    while ((int64_t{1} << bits) < m) ++bits;
    bitrev.resize(m);
    for (int64_t i = 0; i < m; ++i) {
      int64_t r = 0;
      for (int64_t b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
      bitrev[i] = r;
    }
    for (int64_t j = 0; j < m / 2; ++j) {
      cos_m.push_back(static_cast<float>(std::cos(2.0 * M_PI * j / m)));
      sin_m.push_back(static_cast<float>(-std::sin(2.0 * M_PI * j / m)));
    }
    for (int64_t k = 0; k <= m; ++k) {
      cos_n.push_back(static_cast<float>(std::cos(M_PI * k / m)));
      sin_n.push_back(static_cast<float>(-std::sin(M_PI * k / m)));
    }
  }
};

// One radix-2 stage over [begin, end) of the bit-reversed data, butterflies of size `len`.
inline void FftStage(const FftPlan& plan, float* re, float* im, int64_t len, int64_t begin,
                     int64_t end) {
  const int64_t half = len / 2, step = plan.m / len;
  for (int64_t start = begin; start < end; start += len) {
    for (int64_t j = 0; j < half; ++j) {
      const float wr = plan.cos_m[j * step], wi = plan.sin_m[j * step];
      float* ar = re + (start + j) * kLanes;
      float* ai = im + (start + j) * kLanes;
      float* br = ar + half * kLanes;
      float* bi = ai + half * kLanes;
      const Lanes xr = LoadLanes(ar), xi = LoadLanes(ai), yr = LoadLanes(br), yi = LoadLanes(bi);
      const Lanes tr = yr * wr - yi * wi, ti = yr * wi + yi * wr;
      StoreLanes(br, xr - tr);
      StoreLanes(bi, xi - ti);
      StoreLanes(ar, xr + tr);
      StoreLanes(ai, xi + ti);
    }
  }
}

// Two consecutive radix-2 stages (sizes len and 2·len) in one pass over [begin, end): four
// points are loaded, combined as the two stages would, and stored once (the same arithmetic as
// the two separate stages, half the memory traffic).
inline void FftStagePair(const FftPlan& plan, float* re, float* im, int64_t len, int64_t begin,
                         int64_t end) {
  const int64_t half = len / 2, step1 = plan.m / len, step2 = plan.m / (2 * len);
  for (int64_t start = begin; start < end; start += 2 * len) {
    for (int64_t j = 0; j < half; ++j) {
      float* p0r = re + (start + j) * kLanes;
      float* p0i = im + (start + j) * kLanes;
      float* p1r = p0r + half * kLanes;
      float* p1i = p0i + half * kLanes;
      float* p2r = p0r + len * kLanes;
      float* p2i = p0i + len * kLanes;
      float* p3r = p2r + half * kLanes;
      float* p3i = p2i + half * kLanes;
      Lanes ar = LoadLanes(p0r), ai = LoadLanes(p0i), br = LoadLanes(p1r), bi = LoadLanes(p1i);
      Lanes cr = LoadLanes(p2r), ci = LoadLanes(p2i), dr = LoadLanes(p3r), di = LoadLanes(p3i);
      // Stage len: (a, b) and (c, d) with w_len^j.
      const float w1r = plan.cos_m[j * step1], w1i = plan.sin_m[j * step1];
      Lanes tr = br * w1r - bi * w1i, ti = br * w1i + bi * w1r;
      br = ar - tr; bi = ai - ti; ar = ar + tr; ai = ai + ti;
      tr = dr * w1r - di * w1i; ti = dr * w1i + di * w1r;
      dr = cr - tr; di = ci - ti; cr = cr + tr; ci = ci + ti;
      // Stage 2·len: (a, c) with w_2len^j, (b, d) with w_2len^(j + len/2).
      const float w2r = plan.cos_m[j * step2], w2i = plan.sin_m[j * step2];
      const float w3r = plan.cos_m[(j + half) * step2], w3i = plan.sin_m[(j + half) * step2];
      tr = cr * w2r - ci * w2i; ti = cr * w2i + ci * w2r;
      StoreLanes(p2r, ar - tr); StoreLanes(p2i, ai - ti);
      StoreLanes(p0r, ar + tr); StoreLanes(p0i, ai + ti);
      tr = dr * w3r - di * w3i; ti = dr * w3i + di * w3r;
      StoreLanes(p3r, br - tr); StoreLanes(p3i, bi - ti);
      StoreLanes(p1r, br + tr); StoreLanes(p1i, bi + ti);
    }
  }
}

// Stages from size `first` up to `last` (powers of two) over [begin, end), two at a time.
inline void FftStages(const FftPlan& plan, float* re, float* im, int64_t first, int64_t last,
                      int64_t begin, int64_t end) {
  int64_t len = first;
  for (; len * 2 <= last; len *= 4) FftStagePair(plan, re, im, len, begin, end);
  if (len <= last) FftStage(plan, re, im, len, begin, end);
}

void Fft(const FftPlan& plan, float* re, float* im) {
  // Stages up to 64 points stay within 64-point blocks (in L1), the rest span the array.
  const int64_t block = std::min<int64_t>(64, plan.m);
  for (int64_t begin = 0; begin < plan.m; begin += block)
    FftStages(plan, re, im, 2, block, begin, begin + block);
  FftStages(plan, re, im, block * 2, plan.m, 0, plan.m);
}

// Where a frame's samples come from: the clip, pre-emphasised (y[q] = x[q+1] − c·x[q], of
// `length` − 1 samples when c ≠ 0) and centre-padded by `pad` samples (reflected or zero).
struct FrameSource {
  const float* wave;
  int64_t length;      // raw samples per clip
  int64_t emphasised;  // samples after pre-emphasis
  float preemphasis;
  int64_t pad;
  bool reflect;

  float Emphasised(const float* clip, int64_t q) const {
    return preemphasis != 0.0f ? clip[q + 1] - preemphasis * clip[q] : clip[q];
  }

  // dst[n] for n in [first, last) of the frame whose sample 0 is emphasised index `start`.
  void Fill(const float* clip, int64_t start, int64_t first, int64_t last, float* dst) const {
    const int64_t n_inner = std::clamp<int64_t>(-start, first, last);            // q ≥ 0 from here
    const int64_t n_outer = std::clamp<int64_t>(emphasised - start, n_inner, last);  // q < len
    for (int64_t n = first; n < n_inner; ++n)
      dst[n] = reflect ? Emphasised(clip, -(start + n)) : 0.0f;
    if (preemphasis != 0.0f) {
      for (int64_t n = n_inner; n < n_outer; ++n)
        dst[n] = clip[start + n + 1] - preemphasis * clip[start + n];
    } else {
      std::memcpy(dst + n_inner, clip + start + n_inner, (n_outer - n_inner) * sizeof(float));
    }
    for (int64_t n = n_outer; n < last; ++n)
      dst[n] = reflect ? Emphasised(clip, 2 * (emphasised - 1) - (start + n)) : 0.0f;
  }
};

// Lane l of the result = p[index[l]]: one gather instruction on AVX-512 and AVX2; elsewhere
// LoadFrames reads the lanes one by one.
#if defined(__AVX512F__)
#define JAX_ASC_GATHER 1
typedef __m512i GatherIndex;
inline GatherIndex LoadGatherIndex(const int32_t* offsets) {
  return _mm512_loadu_si512(offsets);
}
inline Lanes GatherLanes(const float* p, GatherIndex index) {
  const __m512 v = _mm512_i32gather_ps(index, p, 4);
  Lanes out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}
#elif defined(__AVX2__) && defined(__FMA__)
#define JAX_ASC_GATHER 1
typedef __m256i GatherIndex;
inline GatherIndex LoadGatherIndex(const int32_t* offsets) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(offsets));
}
inline Lanes GatherLanes(const float* p, GatherIndex index) {
  const __m256 v = _mm256_i32gather_ps(p, index, 4);
  Lanes out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}
#endif

// The windowed samples of kLanes frames in the FFT's input order: even samples to `re`, odd to
// `im`, bit-reversed, one row of kLanes lanes per sample pair. Lane l reads sample
// 2·pair_lo + i at base + offset[l] + i;
// `emphasise` applies the pre-emphasis on the way (else the samples are taken as they are).
// Pairs outside [pair_lo, pair_hi) have a zero window and are stored as zeros.
void LoadFrames(const FftPlan& plan, const float* win, const float* base, const int64_t* offset,
                bool emphasise, float c, int64_t pair_lo, int64_t pair_hi, float* re, float* im) {
  const Lanes zero = {};
  for (int64_t n = 0; n < pair_lo; ++n) {
    StoreLanes(re + plan.bitrev[n] * kLanes, zero);
    StoreLanes(im + plan.bitrev[n] * kLanes, zero);
  }
  for (int64_t n = pair_hi; n < plan.m; ++n) {
    StoreLanes(re + plan.bitrev[n] * kLanes, zero);
    StoreLanes(im + plan.bitrev[n] * kLanes, zero);
  }
#if defined(JAX_ASC_GATHER)
  int32_t offsets[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) offsets[l] = static_cast<int32_t>(offset[l]);
  const GatherIndex index = LoadGatherIndex(offsets);
  const float* p = base;
  if (emphasise) {
    Lanes x0 = GatherLanes(p, index);
    for (int64_t n = pair_lo; n < pair_hi; ++n, p += 2) {
      const Lanes x1 = GatherLanes(p + 1, index), x2 = GatherLanes(p + 2, index);
      const int64_t row = plan.bitrev[n] * kLanes;
      StoreLanes(re + row, (x1 - c * x0) * win[2 * n]);
      StoreLanes(im + row, (x2 - c * x1) * win[2 * n + 1]);
      x0 = x2;
    }
    return;
  }
  for (int64_t n = pair_lo; n < pair_hi; ++n, p += 2) {
    const int64_t row = plan.bitrev[n] * kLanes;
    StoreLanes(re + row, GatherLanes(p, index) * win[2 * n]);
    StoreLanes(im + row, GatherLanes(p + 1, index) * win[2 * n + 1]);
  }
#else
  for (int64_t n = pair_lo; n < pair_hi; ++n) {
    float* r = re + plan.bitrev[n] * kLanes;
    float* i = im + plan.bitrev[n] * kLanes;
    for (int64_t l = 0; l < kLanes; ++l) {
      const float* x = base + offset[l] + 2 * (n - pair_lo);
      const float even = emphasise ? x[1] - c * x[0] : x[0];
      const float odd = emphasise ? x[2] - c * x[1] : x[1];
      r[l] = even * win[2 * n];
      i[l] = odd * win[2 * n + 1];
    }
  }
#endif
}

// One call's spectrogram: its inputs, and the work for one block of kLanes consecutive frames
// (frame f = b·frames + t, so a block's mel rows are mostly kLanes contiguous outputs). A block
// with a frame that reaches into the padding, or with lane offsets beyond the gather's 32-bit
// indices, builds its frames in a buffer first.
struct MelJob {
  FrameSource source;
  FftPlan plan;
  const float* window;      // (n_fft)
  const float* bands;       // (n_mels, n_fft / 2 + 1)
  const int32_t *lo, *hi;   // (n_mels) nonzero bins of each band
  float* out;               // (batch, n_mels, frames)
  int64_t batch, frames, n_mels, hop;
  int64_t pair_lo = 0, pair_hi = 0;   // sample pairs with a nonzero window

  MelJob(const FrameSource& source, int64_t n_fft, const float* window, const float* bands,
         const int32_t* lo, const int32_t* hi, float* out, int64_t batch, int64_t frames,
         int64_t n_mels, int64_t hop)
      : source(source), plan(n_fft), window(window), bands(bands), lo(lo), hi(hi), out(out),
        batch(batch), frames(frames), n_mels(n_mels), hop(hop) {
    const int64_t m = plan.m;
    pair_hi = m;   // a window of win_length < n_fft is zero-padded: skip those pairs
    while (pair_lo < m && window[2 * pair_lo] == 0.0f && window[2 * pair_lo + 1] == 0.0f)
      ++pair_lo;
    while (pair_hi > pair_lo && window[2 * pair_hi - 2] == 0.0f && window[2 * pair_hi - 1] == 0.0f)
      --pair_hi;
  }

  int64_t Blocks() const { return (batch * frames + kLanes - 1) / kLanes; }

  void Block(int64_t block) const {
    const int64_t m = plan.m, total = batch * frames, n_fft = 2 * m;
    thread_local std::vector<float> re, im, power, edge;
    re.resize(m * kLanes);
    im.resize(m * kLanes);
    power.resize((m + 1) * kLanes);
    int64_t clip[kLanes], time[kLanes], offset[kLanes];
    bool inside = true;
    for (int64_t l = 0; l < kLanes; ++l) {
      const int64_t f = std::min(block * kLanes + l, total - 1);   // tail lanes repeat a frame
      clip[l] = f / frames;
      time[l] = f % frames;
      const int64_t start = time[l] * hop - source.pad + 2 * pair_lo;
      inside = inside && start >= 0 && start + 2 * (pair_hi - pair_lo) <= source.emphasised;
      offset[l] = (clip[l] - clip[0]) * source.length + (time[l] - time[0]) * hop;
      inside = inside && std::abs(offset[l]) < (int64_t{1} << 31);   // the gather's indices
    }
    if (inside) {
      const int64_t first = clip[0] * source.length + time[0] * hop - source.pad + 2 * pair_lo;
      LoadFrames(plan, window, source.wave + first, offset, source.preemphasis != 0.0f,
                 source.preemphasis, pair_lo, pair_hi, re.data(), im.data());
    } else {
      edge.resize(kLanes * n_fft);
      for (int64_t l = 0; l < kLanes; ++l) {
        source.Fill(source.wave + clip[l] * source.length, time[l] * hop - source.pad,
                    2 * pair_lo, 2 * pair_hi, edge.data() + l * n_fft);
        offset[l] = l * n_fft;
      }
      LoadFrames(plan, window, edge.data() + 2 * pair_lo, offset, false, 0.0f, pair_lo, pair_hi,
                 re.data(), im.data());
    }
    Fft(plan, re.data(), im.data());
    for (int64_t k = 0; k <= m; ++k) {
      // E = (Z_k + conj Z_{m−k}) / 2, O = (Z_k − conj Z_{m−k}) / (2i), X_k = E + w^k O.
      const Lanes zr = LoadLanes(re.data() + (k % m) * kLanes);
      const Lanes zi = LoadLanes(im.data() + (k % m) * kLanes);
      const Lanes cr = LoadLanes(re.data() + ((m - k) % m) * kLanes);
      const Lanes ci = LoadLanes(im.data() + ((m - k) % m) * kLanes);
      const float wr = plan.cos_n[k], wi = plan.sin_n[k];
      const Lanes er = 0.5f * (zr + cr), ei = 0.5f * (zi - ci);
      const Lanes or_ = 0.5f * (zi + ci), oi = -0.5f * (zr - cr);
      const Lanes xr = er + wr * or_ - wi * oi, xi = ei + wr * oi + wi * or_;
      StoreLanes(power.data() + k * kLanes, xr * xr + xi * xi);
    }
    const int64_t lanes = std::min(kLanes, total - block * kLanes);
    const bool one_clip = lanes == kLanes && clip[kLanes - 1] == clip[0];
    for (int64_t band = 0; band < n_mels; ++band) {
      const float* weights = bands + band * (m + 1);
      Lanes acc0 = {}, acc1 = {};   // two chains hide the add latency
      int64_t k = lo[band];
      for (; k + 1 < hi[band]; k += 2) {
        acc0 += weights[k] * LoadLanes(power.data() + k * kLanes);
        acc1 += weights[k + 1] * LoadLanes(power.data() + (k + 1) * kLanes);
      }
      if (k < hi[band]) acc0 += weights[k] * LoadLanes(power.data() + k * kLanes);
      const Lanes acc = acc0 + acc1;
      if (one_clip) {
        StoreLanes(out + (clip[0] * n_mels + band) * frames + time[0], acc);
        continue;
      }
      for (int64_t l = 0; l < lanes; ++l)
        out[(clip[l] * n_mels + band) * frames + time[l]] = acc[l];
    }
  }
};

ffi::Error MelSpectrogram(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> wave,
                          ffi::Buffer<ffi::F32> window, ffi::Buffer<ffi::F32> bands,
                          ffi::Buffer<ffi::S32> lo, ffi::Buffer<ffi::S32> hi,
                          ffi::ResultBuffer<ffi::F32> mel, int64_t n_fft, int64_t hop,
                          int64_t pad, int64_t reflect, float preemphasis) {
  auto wd = wave.dimensions();
  auto fd = bands.dimensions();
  auto md = mel->dimensions();
  if (n_fft < 4 || (n_fft & (n_fft - 1)) != 0)
    return ffi::Error::InvalidArgument("mel spectrogram: n_fft must be a power of two");
  if (wd.size() != 2 || fd.size() != 2 || md.size() != 3 || fd[1] != n_fft / 2 + 1 ||
      window.dimensions()[0] != n_fft || md[0] != wd[0] || md[1] != fd[0])
    return ffi::Error::InvalidArgument("mel spectrogram: inconsistent shapes");
  const int64_t batch = wd[0], length = wd[1], n_mels = fd[0], frames = md[2];
  const FrameSource source{wave.typed_data(), length, length - (preemphasis != 0.0f ? 1 : 0),
                           preemphasis, pad, reflect != 0};
  if (source.emphasised < 1 || pad < 0 || (source.reflect && pad >= source.emphasised))
    return ffi::Error::InvalidArgument("mel spectrogram: clip too short for the padding");
  if (frames < 1 || (frames - 1) * hop + n_fft > source.emphasised + 2 * pad)
    return ffi::Error::InvalidArgument("mel spectrogram: waveform shorter than the frames");
  const MelJob job(source, n_fft, window.typed_data(), bands.typed_data(), lo.typed_data(),
                   hi.typed_data(), mel->typed_data(), batch, frames, n_mels, hop);
  ParallelFor(pool, job.Blocks(), [&](int64_t block) { job.Block(block); });
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- X^T·Y
// out (K, M) = Σ_n x[n, :]ᵀ y[n, :] for x (N, K), y (N, M): the weight gradient of a 1×1
// convolution (N positions). XLA hands this long, thin contraction to a general matmul that
// transposes and packs both operands; here each row is read once. Rows are split into fixed
// chunks summed in order (deterministic); within a chunk, register tiles of x's columns by y's
// accumulate in registers.
// acc (k_pad, m_pad) += xtᵀ·yt for row tiles xt (rows, k_pad), yt (rows, m_pad) (k_pad a
// multiple of kTileRows, m_pad of kLanes): blocks of kTileRows × 2 vectors (or × 1 at the edge)
// of the product accumulate in registers.
void AccumulateTile(const float* xt, const float* yt, int64_t rows, int64_t k_pad, int64_t m_pad,
                    float* acc) {
  int64_t mb = 0;
  for (; mb + 2 * kLanes <= m_pad; mb += 2 * kLanes) {
    for (int64_t kb = 0; kb < k_pad; kb += kTileRows) {
      Lanes a[kTileRows] = {}, b[kTileRows] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const Lanes v0 = LoadLanes(yt + r * m_pad + mb);
        const Lanes v1 = LoadLanes(yt + r * m_pad + mb + kLanes);
        const float* u = xt + r * k_pad + kb;
        for (int q = 0; q < kTileRows; ++q) {
          a[q] += u[q] * v0;
          b[q] += u[q] * v1;
        }
      }
      for (int q = 0; q < kTileRows; ++q) {
        float* o = acc + (kb + q) * m_pad + mb;
        StoreLanes(o, LoadLanes(o) + a[q]);
        StoreLanes(o + kLanes, LoadLanes(o + kLanes) + b[q]);
      }
    }
  }
  for (; mb < m_pad; mb += kLanes) {
    for (int64_t kb = 0; kb < k_pad; kb += kTileRows) {
      Lanes a[kTileRows] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const Lanes v = LoadLanes(yt + r * m_pad + mb);
        const float* u = xt + r * k_pad + kb;
        for (int q = 0; q < kTileRows; ++q) a[q] += u[q] * v;
      }
      for (int q = 0; q < kTileRows; ++q) {
        float* o = acc + (kb + q) * m_pad + mb;
        StoreLanes(o, LoadLanes(o) + a[q]);
      }
    }
  }
}

// The same product read in place, for K ≥ kTileRows and M ≥ kLanes: blocks of kTileRows columns
// of x by 2 vectors (or 1) of y accumulate in registers over a run of rows. A last partial block
// overlaps the one before it and is kept in its own rows / columns of `acc` (kv·kTileRows,
// mv·kLanes), so nothing is counted twice;
// `BlockIndex` maps an output index to its place there.
inline int64_t PadRows(int64_t k) { return (k + kTileRows - 1) / kTileRows * kTileRows; }

inline int64_t BlockIndex(int64_t i, int64_t n, int64_t width) {
  const int64_t blocks = (n + width - 1) / width;
  return i < (blocks - 1) * width ? i : (blocks - 1) * width + i - (n - width);
}

// Requests the lines of bytes [part·size/parts, (part+1)·size/parts) of `base` into the
// second-level cache.
inline void PrefetchPart(const float* base, int64_t size, int64_t part, int64_t parts) {
  const char* p = reinterpret_cast<const char*>(base);
  for (int64_t at = part * size / parts / 64 * 64; at < (part + 1) * size / parts; at += 64)
    PrefetchL2(p + at);
}

// `next_rows` rows after these are requested into the second-level cache while the first block
// runs: the blocks read each row in pieces (every second to fourth line of a row at a time), a
// pattern the hardware prefetchers do not follow, and the operands usually come from memory.
// `next_x` may be null (x is a cached buffer): then only y's next rows are requested.
void AccumulateRowsTN(const float* x, const float* y, int64_t rows, int64_t k_n, int64_t m_n,
                      float* acc, const float* next_x_rows, const float* next_y_rows,
                      int64_t next_rows) {
  const int64_t kv = (k_n + kTileRows - 1) / kTileRows, mv = (m_n + kLanes - 1) / kLanes;
  const int64_t m_pad = mv * kLanes;
  auto k_start = [&](int64_t kb) { return std::min(kb * kTileRows, k_n - kTileRows); };
  auto m_start = [&](int64_t mb) { return std::min(mb * kLanes, m_n - kLanes); };
  const int64_t next_x = next_x_rows ? next_rows * k_n * 4 : 0, next_y = next_rows * m_n * 4;
  int64_t mb = 0;
  for (; mb + 2 <= mv; mb += 2) {
    const int64_t m0 = m_start(mb), m1 = m_start(mb + 1);
    for (int64_t kb = 0; kb < kv; ++kb) {
      const int64_t k0 = k_start(kb);
      Lanes a[kTileRows] = {}, b[kTileRows] = {};
      const bool prefetch = mb == 0 && kb == 0 && next_rows > 0;
      for (int64_t r = 0; r < rows; ++r) {
        if (prefetch) {
          PrefetchPart(next_x_rows, next_x, r, rows);
          PrefetchPart(next_y_rows, next_y, r, rows);
        }
        const Lanes v0 = LoadLanes(y + r * m_n + m0);
        const Lanes v1 = LoadLanes(y + r * m_n + m1);
        const float* u = x + r * k_n + k0;
        for (int q = 0; q < kTileRows; ++q) {
          a[q] += u[q] * v0;
          b[q] += u[q] * v1;
        }
      }
      for (int q = 0; q < kTileRows; ++q) {
        float* o = acc + (kb * kTileRows + q) * m_pad + mb * kLanes;
        StoreLanes(o, LoadLanes(o) + a[q]);
        StoreLanes(o + kLanes, LoadLanes(o + kLanes) + b[q]);
      }
    }
  }
  for (; mb < mv; ++mb) {
    const int64_t m0 = m_start(mb);
    for (int64_t kb = 0; kb < kv; ++kb) {
      const int64_t k0 = k_start(kb);
      Lanes a[kTileRows] = {};
      for (int64_t r = 0; r < rows; ++r) {
        const Lanes v0 = LoadLanes(y + r * m_n + m0);
        const float* u = x + r * k_n + k0;
        for (int q = 0; q < kTileRows; ++q) a[q] += u[q] * v0;
      }
      for (int q = 0; q < kTileRows; ++q) {
        float* o = acc + (kb * kTileRows + q) * m_pad + mb * kLanes;
        StoreLanes(o, LoadLanes(o) + a[q]);
      }
    }
  }
}

// out (K, M) = the sum over chunks, in chunk order, of the partial products (chunks, k_pad, m_pad)
// of AccumulateRowsTN (`in_place`: laid out by BlockIndex) or AccumulateTile.
void SumChunksTN(const std::vector<float>& partial, int64_t chunks, int64_t k_n, int64_t m_n,
                 bool in_place, float* op) {
  const int64_t m_pad = (m_n + kLanes - 1) / kLanes * kLanes, k_pad = PadRows(k_n);
  for (int64_t kk = 0; kk < k_n; ++kk) {
    const int64_t kr = in_place ? BlockIndex(kk, k_n, kTileRows) : kk;
    for (int64_t mm = 0; mm < m_n; ++mm) {
      const int64_t mc = in_place ? BlockIndex(mm, m_n, kLanes) : mm;
      float total = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        total += partial[(chunk * k_pad + kr) * m_pad + mc];
      op[kk * m_n + mm] = total;
    }
  }
}

// out = xᵀ·y, or relu(x·a + shift)ᵀ·y when `a` is not null (a, shift per column of x).
void MatmulTNRows(ffi::ThreadPool& pool, const float* xp, const float* a, const float* shift,
                  const float* yp, int64_t n, int64_t k_n, int64_t m_n, float* op) {
  const int64_t m_pad = (m_n + kLanes - 1) / kLanes * kLanes;
  const int64_t k_pad = PadRows(k_n);
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(n, 1), kStatChunks);
  std::vector<float> partial(chunks * k_pad * m_pad, 0.0f);
  const bool in_place = k_n >= kTileRows && m_n >= kLanes;
  if (in_place) {
    // Runs of rows small enough for the first-level cache (~24 KB of x and y).
    const int64_t run = std::max<int64_t>(8, 6144 / (k_n + m_n));
    ParallelFor(pool, chunks, [&](int64_t chunk) {
      thread_local std::vector<float> xt;
      if (a != nullptr) xt.resize(run * k_n);
      float* acc = partial.data() + chunk * k_pad * m_pad;
      const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
      for (int64_t start = begin; start < end; start += run) {
        const int64_t rows = std::min(run, end - start);
        const int64_t next = std::min(run, end - start - rows);
        const float* x_rows = xp + start * k_n;
        if (a != nullptr) {   // read in order (the hardware prefetches it), applied in cache
          AffineRelu(x_rows, a, shift, rows, k_n, xt.data());
          x_rows = xt.data();
        }
        AccumulateRowsTN(x_rows, yp + start * m_n, rows, k_n, m_n, acc,
                         a != nullptr ? nullptr : xp + (start + rows) * k_n,
                         yp + (start + rows) * m_n, next);
      }
    });
  } else {
    constexpr int64_t kRows = 64;
    ParallelFor(pool, chunks, [&](int64_t chunk) {
      float* acc = partial.data() + chunk * k_pad * m_pad;
      // A tile of rows, zero-padded to (kRows, k_pad) and (kRows, m_pad).
      std::vector<float> xt(kRows * k_pad, 0.0f), yt(kRows * m_pad, 0.0f);
      const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
      for (int64_t start = begin; start < end; start += kRows) {
        const int64_t rows = std::min(kRows, end - start);
        for (int64_t r = 0; r < rows; ++r) {
          const float* row = xp + (start + r) * k_n;
          if (a != nullptr) AffineRelu(row, a, shift, 1, k_n, xt.data() + r * k_pad);
          else std::memcpy(xt.data() + r * k_pad, row, k_n * sizeof(float));
          std::memcpy(yt.data() + r * m_pad, yp + (start + r) * m_n, m_n * sizeof(float));
        }
        AccumulateTile(xt.data(), yt.data(), rows, k_pad, m_pad, acc);
      }
    });
  }
  SumChunksTN(partial, chunks, k_n, m_n, in_place, op);
}

ffi::Error MatmulTN(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> y,
                    ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  auto yd = y.dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0])
    return ffi::Error::InvalidArgument("matmul_tn: expected x (N, K) and y (N, M)");
  MatmulTNRows(pool, x.typed_data(), nullptr, nullptr, y.typed_data(), xd[0], xd[1], yd[1],
               out->typed_data());
  return ffi::Error::Success();
}

ffi::Error AffineReluMatmulTN(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                              ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
                              ffi::Buffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> out) {
  auto xd = x.dimensions();
  auto yd = y.dimensions();
  if (xd.size() != 2 || yd.size() != 2 || xd[0] != yd[0] || a.dimensions().size() != 1 ||
      a.dimensions()[0] != xd[1] || shift.dimensions().size() != 1 ||
      shift.dimensions()[0] != xd[1])
    return ffi::Error::InvalidArgument("matmul_tn: expected x (N, K), a and shift (K,), y (N, M)");
  MatmulTNRows(pool, x.typed_data(), a.typed_data(), shift.typed_data(), y.typed_data(), xd[0],
               xd[1], yd[1], out->typed_data());
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- X·W
// wᵀ (M, K) of w (K, M).
std::vector<float> Transposed(const float* w, int64_t k_n, int64_t m_n) {
  std::vector<float> wt(m_n * k_n);
  for (int64_t k = 0; k < k_n; ++k)
    for (int64_t m = 0; m < m_n; ++m) wt[m * k_n + k] = w[k * m_n + m];
  return wt;
}

// y (R rows, M) = x (R, K) · w (K, M), M ≥ kLanes: R rows by 2 vectors (or 1) accumulate in
// registers over k (a last partial block of columns overlaps the one before it); w stays in
// the first- or second-level cache. Only the first `rows` rows are stored.
// Per-channel sums of (y − center) and (y − center)² of the output tiles, for the batch
// statistics of a matmul's output taken while the tile is in registers.
struct TileSums {
  const float* center;   // (M,)
  float* s1;             // (M,)
  float* s2;             // (M,)
};

template <int R>
inline void AddTileSums(const Lanes* acc, int64_t rows, int64_t m0, int64_t skip,
                        const TileSums& sums) {
  const Lanes c = LoadLanes(sums.center + m0);
  Lanes t1 = {}, t2 = {};
  for (int r = 0; r < R; ++r) {   // a constant trip count: the tile stays in registers
    if (r >= rows) break;
    const Lanes d = acc[r] - c;
    t1 += d;
    t2 += d * d;
  }
  // The last vector of a width that is not a multiple of kLanes overlaps the one before it: its
  // first `skip` lanes were counted there.
  if (skip == 0) {
    StoreLanes(sums.s1 + m0, LoadLanes(sums.s1 + m0) + t1);
    StoreLanes(sums.s2 + m0, LoadLanes(sums.s2 + m0) + t2);
    return;
  }
  for (int64_t l = skip; l < kLanes; ++l) {
    sums.s1[m0 + l] += t1[l];
    sums.s2[m0 + l] += t2[l];
  }
}

template <int R>
inline void RowTileNN(const float* x, const float* w, float* y, int64_t k_n, int64_t m_n,
                      int64_t rows, const TileSums* sums) {
  const int64_t mv = (m_n + kLanes - 1) / kLanes;
  auto m_start = [&](int64_t mb) { return std::min(mb * kLanes, m_n - kLanes); };
  int64_t mb = 0;
  for (; mb + 2 <= mv; mb += 2) {
    const int64_t m0 = m_start(mb), m1 = m_start(mb + 1);
    Lanes a[R] = {}, b[R] = {};
    for (int64_t k = 0; k < k_n; ++k) {
      const Lanes w0 = LoadLanes(w + k * m_n + m0), w1 = LoadLanes(w + k * m_n + m1);
      for (int r = 0; r < R; ++r) {
        const float u = x[r * k_n + k];
        a[r] += u * w0;
        b[r] += u * w1;
      }
    }
    for (int r = 0; r < R; ++r) {   // constant trip counts keep a and b in registers
      if (r >= rows) break;
      StoreLanes(y + r * m_n + m0, a[r]);
      StoreLanes(y + r * m_n + m1, b[r]);
    }
    if (sums) {
      AddTileSums<R>(a, rows, m0, 0, *sums);
      AddTileSums<R>(b, rows, m1, (mb + 1) * kLanes - m1, *sums);
    }
  }
  for (; mb < mv; ++mb) {
    const int64_t m0 = m_start(mb);
    Lanes a[R] = {};
    for (int64_t k = 0; k < k_n; ++k) {
      const Lanes w0 = LoadLanes(w + k * m_n + m0);
      for (int r = 0; r < R; ++r) a[r] += x[r * k_n + k] * w0;
    }
    for (int r = 0; r < R; ++r) {
      if (r >= rows) break;
      StoreLanes(y + r * m_n + m0, a[r]);
    }
    if (sums) AddTileSums<R>(a, rows, m0, mb * kLanes - m0, *sums);
  }
}

// y = relu(x·a + shift)·w for x (N, K), a and shift (K,), w (K, M), M ≥ kLanes (or y = x·w when
// `ap` is null): each tile of R rows is normalised into a small cached buffer first (zero rows
// past the end), so the normalised x is never written to memory. With `mean` and `var`, also
// y's batch statistics over the rows (sums centred on y's first row, in float per task and in
// double across tasks, in order).
void MatmulRowsNN(ffi::ThreadPool& pool, const float* xp, const float* ap, const float* sp,
                  const float* wp, int64_t n, int64_t k_n, int64_t m_n, float* yp, float* mean,
                  float* var) {
  constexpr int R = kTileRows;
  constexpr int64_t kBlock = 32 * R;   // rows per task
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const bool stats = mean != nullptr;
  std::vector<float> center(stats ? m_n : 0, 0.0f), partial(stats ? blocks * 2 * m_n : 0, 0.0f);
  if (stats) {   // y's first row, the centre of the sums
    for (int64_t k = 0; k < k_n; ++k) {
      const float u = ap ? std::max(xp[k] * ap[k] + sp[k], 0.0f) : xp[k];
      for (int64_t m = 0; m < m_n; ++m) center[m] += u * wp[k * m_n + m];
    }
  }
  ParallelFor(pool, blocks, [&](int64_t block) {
    const int64_t begin = block * kBlock, end = std::min(n, begin + kBlock);
    thread_local std::vector<float> tile;
    tile.assign(R * k_n, 0.0f);
    const TileSums sums{center.data(), partial.data() + block * 2 * m_n,
                        partial.data() + block * 2 * m_n + m_n};
    for (int64_t r = begin; r < end; r += R) {
      const int64_t rows = std::min<int64_t>(R, end - r);
      const float* in = xp + r * k_n;
      if (ap) {
        AffineRelu(in, ap, sp, rows, k_n, tile.data());
        in = tile.data();
      } else if (rows < R) {
        std::copy(in, in + rows * k_n, tile.begin());
        in = tile.data();
      }
      if (rows < R) std::fill(tile.begin() + rows * k_n, tile.end(), 0.0f);
      RowTileNN<R>(in, wp, yp + r * m_n, k_n, m_n, rows, stats ? &sums : nullptr);
    }
  });
  if (stats) {
    for (int64_t m = 0; m < m_n; ++m) {
      double s1 = 0.0, s2 = 0.0;
      for (int64_t block = 0; block < blocks; ++block) {
        s1 += partial[block * 2 * m_n + m];
        s2 += partial[block * 2 * m_n + m_n + m];
      }
      const double d = s1 / n;
      mean[m] = static_cast<float>(center[m] + d);
      var[m] = static_cast<float>(std::max(0.0, s2 / n - d * d));
    }
  }
}

// The input side of the backward pass of y = relu(x·a + shift)·w, in one pass over the rows:
//   dz = dy·wᵀ (a tile of R rows in registers, then in a cached buffer; never written),
//   g = dz · [x·a + shift > 0],  dx = a·g,  sum_g = Σ g,  sum_gc = Σ g·(x − center)
// for x (N, K), dy (N, M), w (K, M), K ≥ kLanes. The sums are float per task of rows and double
// across tasks, in order (deterministic). Replaces a matmul that writes dz and two passes that
// read it back with x.
void AffineReluMatmulInputGradRows(ffi::ThreadPool& pool, const float* xp, const float* ap,
                                   const float* sp, const float* cp, const float* dyp,
                                   const float* wp, int64_t n, int64_t k_n, int64_t m_n,
                                   float* dxp, float* sum_g, float* sum_gc) {
  constexpr int R = kTileRows;
  constexpr int64_t kBlock = 32 * R;   // rows per task
  const int64_t blocks = (n + kBlock - 1) / kBlock;
  const std::vector<float> wt = Transposed(wp, k_n, m_n);   // read row by row by the tiles
  std::vector<float> partial(blocks * 2 * k_n, 0.0f);
  ParallelFor(pool, blocks, [&](int64_t block) {
    const int64_t begin = block * kBlock, end = std::min(n, begin + kBlock);
    thread_local std::vector<float> in_tile, dz_tile;
    in_tile.assign(R * m_n, 0.0f);
    dz_tile.resize(R * k_n);
    float* s1 = partial.data() + block * 2 * k_n;
    float* s2 = s1 + k_n;
    for (int64_t r = begin; r < end; r += R) {
      const int64_t rows = std::min<int64_t>(R, end - r);
      const float* grad = dyp + r * m_n;
      if (rows < R) {   // zero rows past the end
        std::copy(grad, grad + rows * m_n, in_tile.begin());
        std::fill(in_tile.begin() + rows * m_n, in_tile.end(), 0.0f);
        grad = in_tile.data();
      }
      RowTileNN<R>(grad, wt.data(), dz_tile.data(), m_n, k_n, rows, nullptr);
      for (int64_t q = 0; q < rows; ++q) {
        const float* x = xp + (r + q) * k_n;
        const float* dz = dz_tile.data() + q * k_n;
        float* dx = dxp + (r + q) * k_n;
#pragma GCC ivdep
        for (int64_t c = 0; c < k_n; ++c) {
          const float g = x[c] * ap[c] + sp[c] > 0.0f ? dz[c] : 0.0f;
          dx[c] = ap[c] * g;
          s1[c] += g;
          s2[c] += g * (x[c] - cp[c]);
        }
      }
    }
  });
  for (int64_t c = 0; c < k_n; ++c) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t block = 0; block < blocks; ++block) {
      t1 += partial[block * 2 * k_n + c];
      t2 += partial[block * 2 * k_n + k_n + c];
    }
    sum_g[c] = static_cast<float>(t1);
    sum_gc[c] = static_cast<float>(t2);
  }
}

// x (N, K), w (K, M), y and dy (N, M), mean, dmean and dvar (M,), with K and M at least the
// vector width and K at least a register tile's rows: the backward kernels' operands.
bool MomentsBackwardShapes(ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w,
                           ffi::Buffer<ffi::F32>& y, ffi::Buffer<ffi::F32>& dy,
                           ffi::Buffer<ffi::F32>& mean, ffi::Buffer<ffi::F32>& dmean,
                           ffi::Buffer<ffi::F32>& dvar) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  auto yd = y.dimensions();
  auto dyd = dy.dimensions();
  bool ok = xd.size() == 2 && wd.size() == 2 && yd.size() == 2 && dyd.size() == 2 &&
            xd[0] >= 1 && xd[1] == wd[0] && yd[0] == xd[0] && yd[1] == wd[1] &&
            dyd[0] == yd[0] && dyd[1] == yd[1] && xd[1] >= kLanes && xd[1] >= kTileRows &&
            wd[1] >= kLanes;
  for (auto* v : {&mean, &dmean, &dvar})
    ok = ok && v->dimensions().size() == 1 && v->dimensions()[0] == wd[1];
  return ok;
}

// The backward pass of (y, mean, var) = affine_relu_matmul_moments(x, a, shift, w) in one pass
// over the rows, run by run in cache:
//   dy' = dy + dmean/N + (y − mean)·2·dvar/N        (the statistics' share)
//   z = relu(x·a + shift),  dw = zᵀ·dy'
//   dz = dy'·wᵀ,  g = dz · [z > 0],  dx = a·g,  sum_g = Σ g,  sum_gc = Σ g·(x − center)
// for x (N, K), w (K, M), y and dy (N, M), K and M at least the vector width. Replaces an
// elementwise pass that writes dy' and two passes that each read x and dy' (the weight
// gradient and the input gradient). Rows are split into fixed chunks whose partial dw and sums
// are added in chunk order (deterministic).
void AffineReluMatmulMomentsBackwardRows(
    ffi::ThreadPool& pool, const float* xp, const float* ap, const float* sp, const float* cp,
    const float* wp, const float* yp, const float* dyp, const float* mean, const float* dmean,
    const float* dvar, int64_t n, int64_t k_n, int64_t m_n, float* dxp, float* sum_g,
    float* sum_gc, float* dwp) {
  constexpr int R = kTileRows;
  const int64_t m_pad = (m_n + kLanes - 1) / kLanes * kLanes, k_pad = PadRows(k_n);
  const std::vector<float> wt = Transposed(wp, k_n, m_n);   // read row by row by the tiles
  const MomentsShare share(mean, dmean, dvar, m_n, n);
  const int64_t chunks = std::min<int64_t>(n, kStatChunks);
  std::vector<float> partial(chunks * k_pad * m_pad, 0.0f), sums(chunks * 2 * k_n, 0.0f);
  const int64_t run = std::max<int64_t>(1, 6144 / (k_n + m_n) / R) * R;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    thread_local std::vector<float> grad, z, dz;   // dy', relu(x·a + shift), dz of one run
    grad.resize(run * m_n);
    z.resize(run * k_n);
    dz.resize(R * k_n);
    float* acc = partial.data() + chunk * k_pad * m_pad;
    float* s1 = sums.data() + chunk * 2 * k_n;
    float* s2 = s1 + k_n;
    const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
    for (int64_t start = begin; start < end; start += run) {
      const int64_t rows = std::min(run, end - start);
      const int64_t next = std::min(run, end - start - rows);
      share.Complete(dyp + start * m_n, yp + start * m_n, rows, grad.data());
      const int64_t padded = (rows + R - 1) / R * R;
      std::fill(grad.begin() + rows * m_n, grad.begin() + padded * m_n, 0.0f);
      AffineRelu(xp + start * k_n, ap, sp, rows, k_n, z.data());
      AccumulateRowsTN(z.data(), grad.data(), rows, k_n, m_n, acc, nullptr,
                       dyp + (start + rows) * m_n, next);
      for (int64_t t = 0; t < rows; t += R) {
        const int64_t tile = std::min<int64_t>(R, rows - t);
        RowTileNN<R>(grad.data() + t * m_n, wt.data(), dz.data(), m_n, k_n, tile, nullptr);
        for (int64_t q = 0; q < tile; ++q) {
          const float* x = xp + (start + t + q) * k_n;
          const float* zr = z.data() + (t + q) * k_n;
          const float* d = dz.data() + q * k_n;
          float* dx = dxp + (start + t + q) * k_n;
#pragma GCC ivdep
          for (int64_t c = 0; c < k_n; ++c) {
            const float gc = zr[c] > 0.0f ? d[c] : 0.0f;
            dx[c] = ap[c] * gc;
            s1[c] += gc;
            s2[c] += gc * (x[c] - cp[c]);
          }
        }
      }
    }
  });
  SumChunksTN(partial, chunks, k_n, m_n, true, dwp);
  for (int64_t c = 0; c < k_n; ++c) {
    double t1 = 0.0, t2 = 0.0;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      t1 += sums[chunk * 2 * k_n + c];
      t2 += sums[chunk * 2 * k_n + k_n + c];
    }
    sum_g[c] = static_cast<float>(t1);
    sum_gc[c] = static_cast<float>(t2);
  }
}

ffi::Error AffineReluMatmulMomentsBackward(
    ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> a,
    ffi::Buffer<ffi::F32> shift, ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> w,
    ffi::Buffer<ffi::F32> y, ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
    ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar, ffi::ResultBuffer<ffi::F32> dx,
    ffi::ResultBuffer<ffi::F32> sum_g, ffi::ResultBuffer<ffi::F32> sum_gc,
    ffi::ResultBuffer<ffi::F32> dw) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  bool ok = MomentsBackwardShapes(x, w, y, dy, mean, dmean, dvar);
  for (auto* v : {&a, &shift, &center})
    ok = ok && v->dimensions().size() == 1 && v->dimensions()[0] == xd[1];
  if (!ok)
    return ffi::Error::InvalidArgument(
        "affine-relu matmul_moments backward: expected x (N, K), a, shift, center (K,), "
        "w (K, M), y and dy (N, M), mean, dmean, dvar (M,), K and M at least the vector width");
  AffineReluMatmulMomentsBackwardRows(
      pool, x.typed_data(), a.typed_data(), shift.typed_data(), center.typed_data(),
      w.typed_data(), y.typed_data(), dy.typed_data(), mean.typed_data(), dmean.typed_data(),
      dvar.typed_data(), xd[0], xd[1], wd[1], dx->typed_data(), sum_g->typed_data(),
      sum_gc->typed_data(), dw->typed_data());
  return ffi::Error::Success();
}

ffi::Error AffineReluMatmulInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                     ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
                                     ffi::Buffer<ffi::F32> center, ffi::Buffer<ffi::F32> dy,
                                     ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> dx,
                                     ffi::ResultBuffer<ffi::F32> sum_g,
                                     ffi::ResultBuffer<ffi::F32> sum_gc) {
  auto xd = x.dimensions();
  auto dyd = dy.dimensions();
  auto wd = w.dimensions();
  bool ok = xd.size() == 2 && dyd.size() == 2 && wd.size() == 2 && xd[0] == dyd[0] &&
            wd[0] == xd[1] && wd[1] == dyd[1] && xd[1] >= kLanes && xd[0] >= 1;
  for (auto* v : {&a, &shift, &center})
    ok = ok && v->dimensions().size() == 1 && v->dimensions()[0] == xd[1];
  if (!ok)
    return ffi::Error::InvalidArgument(
        "affine-relu matmul input gradient: expected x (N, K), K >= vector width, a, shift, "
        "center (K,), dy (N, M), w (K, M)");
  AffineReluMatmulInputGradRows(pool, x.typed_data(), a.typed_data(), shift.typed_data(),
                                center.typed_data(), dy.typed_data(), w.typed_data(), xd[0],
                                xd[1], dyd[1], dx->typed_data(), sum_g->typed_data(),
                                sum_gc->typed_data());
  return ffi::Error::Success();
}

ffi::Error CheckMatmulNN(ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         const ffi::Buffer<ffi::F32>* a, const ffi::Buffer<ffi::F32>* shift) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  bool ok = xd.size() == 2 && wd.size() == 2 && xd[1] == wd[0] && wd[1] >= kLanes && xd[0] >= 1;
  for (auto* v : {a, shift})
    ok = ok && (!v || (v->dimensions().size() == 1 && v->dimensions()[0] == xd[1]));
  if (!ok)
    return ffi::Error::InvalidArgument(
        "matmul: expected x (N, K) with N >= 1, a and shift (K,), w (K, M) with M >= 16");
  return ffi::Error::Success();
}

ffi::Error AffineReluMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                            ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
                            ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y) {
  if (auto error = CheckMatmulNN(x, w, &a, &shift); !error.success()) return error;
  MatmulRowsNN(pool, x.typed_data(), a.typed_data(), shift.typed_data(), w.typed_data(),
               x.dimensions()[0], x.dimensions()[1], w.dimensions()[1], y->typed_data(),
               nullptr, nullptr);
  return ffi::Error::Success();
}

ffi::Error AffineReluMatmulMoments(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                   ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> shift,
                                   ffi::Buffer<ffi::F32> w, ffi::ResultBuffer<ffi::F32> y,
                                   ffi::ResultBuffer<ffi::F32> mean,
                                   ffi::ResultBuffer<ffi::F32> var) {
  if (auto error = CheckMatmulNN(x, w, &a, &shift); !error.success()) return error;
  MatmulRowsNN(pool, x.typed_data(), a.typed_data(), shift.typed_data(), w.typed_data(),
               x.dimensions()[0], x.dimensions()[1], w.dimensions()[1], y->typed_data(),
               mean->typed_data(), var->typed_data());
  return ffi::Error::Success();
}

ffi::Error MatmulMoments(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                         ffi::ResultBuffer<ffi::F32> y, ffi::ResultBuffer<ffi::F32> mean,
                         ffi::ResultBuffer<ffi::F32> var) {
  if (auto error = CheckMatmulNN(x, w, nullptr, nullptr); !error.success()) return error;
  MatmulRowsNN(pool, x.typed_data(), nullptr, nullptr, w.typed_data(), x.dimensions()[0],
               x.dimensions()[1], w.dimensions()[1], y->typed_data(), mean->typed_data(),
               var->typed_data());
  return ffi::Error::Success();
}

// The backward pass of (y, mean, var) = matmul_moments(x, w) in one pass over the rows:
//   dy' = dy + dmean/N + (y − mean)·2·dvar/N   (the statistics' share, per run of rows in cache)
//   dx = dy'·wᵀ,  dw = xᵀ·dy'
// for x (N, K), w (K, M), y and dy (N, M), K ≥ kLanes, M ≥ kLanes. Replaces an elementwise pass
// that writes dy' and two matmuls that each read it back (and read x or write dx). Rows are
// split into fixed chunks whose partial dw are summed in chunk order (deterministic).
void MatmulMomentsBackwardRows(ffi::ThreadPool& pool, const float* xp, const float* wp,
                               const float* yp, const float* dyp, const float* mean,
                               const float* dmean, const float* dvar, int64_t n, int64_t k_n,
                               int64_t m_n, float* dxp, float* dwp) {
  constexpr int R = kTileRows;
  const int64_t m_pad = (m_n + kLanes - 1) / kLanes * kLanes, k_pad = PadRows(k_n);
  const std::vector<float> wt = Transposed(wp, k_n, m_n);   // read row by row by the tiles
  const MomentsShare share(mean, dmean, dvar, m_n, n);
  const int64_t chunks = std::min<int64_t>(n, kStatChunks);
  std::vector<float> partial(chunks * k_pad * m_pad, 0.0f);
  // Runs of whole register tiles of rows, small enough for the first-level cache with x.
  const int64_t run = std::max<int64_t>(1, 6144 / (k_n + m_n) / R) * R;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    thread_local std::vector<float> grad;   // dy' of one run, zero rows up to a whole tile
    grad.resize(run * m_n);
    float* acc = partial.data() + chunk * k_pad * m_pad;
    const int64_t begin = chunk * n / chunks, end = (chunk + 1) * n / chunks;
    for (int64_t start = begin; start < end; start += run) {
      const int64_t rows = std::min(run, end - start);
      const int64_t next = std::min(run, end - start - rows);
      share.Complete(dyp + start * m_n, yp + start * m_n, rows, grad.data());
      const int64_t padded = (rows + R - 1) / R * R;
      std::fill(grad.begin() + rows * m_n, grad.begin() + padded * m_n, 0.0f);
      for (int64_t t = 0; t < rows; t += R)
        RowTileNN<R>(grad.data() + t * m_n, wt.data(), dxp + (start + t) * k_n, m_n, k_n,
                     std::min<int64_t>(R, rows - t), nullptr);
      AccumulateRowsTN(xp + start * k_n, grad.data(), rows, k_n, m_n, acc,
                       xp + (start + rows) * k_n, dyp + (start + rows) * m_n, next);
    }
  });
  SumChunksTN(partial, chunks, k_n, m_n, true, dwp);
}

ffi::Error MatmulMomentsBackward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                 ffi::Buffer<ffi::F32> w, ffi::Buffer<ffi::F32> y,
                                 ffi::Buffer<ffi::F32> dy, ffi::Buffer<ffi::F32> mean,
                                 ffi::Buffer<ffi::F32> dmean, ffi::Buffer<ffi::F32> dvar,
                                 ffi::ResultBuffer<ffi::F32> dx, ffi::ResultBuffer<ffi::F32> dw) {
  auto xd = x.dimensions();
  auto wd = w.dimensions();
  const bool ok = MomentsBackwardShapes(x, w, y, dy, mean, dmean, dvar);
  if (!ok)
    return ffi::Error::InvalidArgument(
        "matmul_moments backward: expected x (N, K), w (K, M), y and dy (N, M), mean, dmean and "
        "dvar (M,), with K and M at least the vector width");
  MatmulMomentsBackwardRows(pool, x.typed_data(), w.typed_data(), y.typed_data(),
                            dy.typed_data(), mean.typed_data(), dmean.typed_data(),
                            dvar.typed_data(), xd[0], xd[1], wd[1], dx->typed_data(),
                            dw->typed_data());
  return ffi::Error::Success();
}

// ----------------------------------------------------------------------------- small convolution
// Dense k×k convolution (NHWC, HWIO kernel, zero padding (k−1)/2, stride) for few channels (the
// CP-Mobile stems: 1 → 8 and 8 → 32): the forward pass vectorised over the output channels, the
// kernel gradient as im2col tiles through AccumulateTile, and for 3×3 kernels with input
// channels in whole 8-float vectors the input gradient as a scatter (else it stays with XLA).
struct ConvGeometry {
  int64_t batch, height, width, cin, cout, kh, kw, out_h, out_w, stride_h, stride_w, pad_h, pad_w;
};

constexpr int64_t kMaxChannels = 64;   // on the vectorised side

template <int NB>
void ConvForwardImage(const ConvGeometry& g, const float* x, const float* kp, float* y, int64_t b) {
  const int64_t co_pad = NB * kLanes;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      Lanes acc[NB] = {};
      for (int64_t i = 0; i < g.kh; ++i) {
        const int64_t ih = oh * g.stride_h + i - g.pad_h;
        if (ih < 0 || ih >= g.height) continue;
        for (int64_t j = 0; j < g.kw; ++j) {
          const int64_t iw = ow * g.stride_w + j - g.pad_w;
          if (iw < 0 || iw >= g.width) continue;
          const float* in = x + ((b * g.height + ih) * g.width + iw) * g.cin;
          const float* w = kp + (i * g.kw + j) * g.cin * co_pad;
          for (int64_t ci = 0; ci < g.cin; ++ci)
            for (int v = 0; v < NB; ++v) acc[v] += in[ci] * LoadLanes(w + ci * co_pad + v * kLanes);
        }
      }
      float tmp[NB * kLanes];
      for (int v = 0; v < NB; ++v) StoreLanes(tmp + v * kLanes, acc[v]);
      std::memcpy(y + ((b * g.out_h + oh) * g.out_w + ow) * g.cout, tmp, g.cout * sizeof(float));
    }
  }
}

ConvGeometry MakeConvGeometry(ffi::Span<const int64_t> xd, ffi::Span<const int64_t> kd,
                              ffi::Span<const int64_t> yd, int64_t stride_h, int64_t stride_w) {
  return ConvGeometry{xd[0], xd[1], xd[2], xd[3], kd[3], kd[0], kd[1], yd[1], yd[2], stride_h,
                      stride_w, (kd[0] - 1) / 2, (kd[1] - 1) / 2};
}

// Calls run(NB) with NB = ⌈channels / kLanes⌉ vectors, for channels ≤ kMaxChannels.
template <int NB = 1, typename F>
ffi::Error DispatchVectors(int64_t channels, F&& run) {
  if constexpr (NB * kLanes > kMaxChannels) {
    return ffi::Error::InvalidArgument("small convolution: at most 64 channels");
  } else {
    if ((channels + kLanes - 1) / kLanes == NB) {
      run(std::integral_constant<int, NB>());
      return ffi::Error::Success();
    }
    return DispatchVectors<NB + 1>(channels, std::forward<F>(run));
  }
}

// Fast paths of the small convolution, for 3×3 kernels, strides 1 or 2, and output channels
// filling whole vectors (8 to 64; see DispatchOutputVectors). The forward pass holds a position's
// outputs in registers; the kernel gradient, per output row and tap, the products of CB input
// channels with the output vectors. Columns whose taps lie inside the image run unchecked.
typedef float Lanes8 __attribute__((vector_size(8 * sizeof(float)), aligned(4)));


// Independent sums per output vector in the forward pass: A·NB accumulators in registers.
constexpr int ConvForwardSums(int nb) {
  return kVectorRegisters >= 32 ? (nb <= 2 ? 4 : 2) : std::max(1, std::min(4, 8 / nb));
}

// Input channels per register block of the kernel gradient: CB·NB sums and NB gradient vectors
// in registers.
constexpr int ConvGradChannels(int nb) {
  return kVectorRegisters >= 32 ? (nb <= 2 ? 8 : 4) : nb == 1 ? 8 : nb == 2 ? 4 : nb <= 4 ? 2 : 1;
}

// CIN > 0: that many input channels, known at compile time (the stems: 1 and 8); 0: g.cin.
template <typename V, int NB, int SH, int SW, int CIN>
void ConvForwardImage3(const ConvGeometry& g, const float* x, const float* k, float* y,
                       int64_t b) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  const int64_t cin = CIN > 0 ? CIN : g.cin, cout = NB * L;
  int64_t ow_lo, ow_hi;
  InteriorColumns<3, SW>(g.out_w, g.width, g.pad_w, &ow_lo, &ow_hi);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t ih0;
    int i_lo, i_hi;
    std::tie(ih0, i_lo, i_hi) = TapRows<3, SH>(oh, g.height, g.pad_h);
    const float* rows = x + (b * g.height + ih0) * g.width * cin;
    float* out = y + (b * g.out_h + oh) * g.out_w * cout;
    // A independent sums per output vector (by tap column and input channel) keep the
    // multiply-adds from waiting on each other's latency.
    constexpr int A = ConvForwardSums(NB);
    auto position = [&](int64_t ow, auto inside) {
      const int64_t iw0 = ow * SW - g.pad_w;
      V acc[A][NB] = {};
      for (int i = i_lo; i < i_hi; ++i) {
        for (int j = 0; j < 3; ++j) {
          if (!decltype(inside)::value && (iw0 + j < 0 || iw0 + j >= g.width)) continue;
          const float* in = rows + (i * g.width + iw0 + j) * cin;
          const float* w = k + (i * 3 + j) * cin * cout;
          for (int64_t ci = 0; ci < cin; ++ci)
            for (int v = 0; v < NB; ++v)
              acc[(j * cin + ci) % A][v] += in[ci] * LoadVec<V>(w + ci * cout + v * L);
        }
      }
      for (int v = 0; v < NB; ++v) {
        V total = acc[0][v];
        for (int a = 1; a < A; ++a) total += acc[a][v];
        StoreVec(out + ow * cout + v * L, total);
      }
    };
    for (int64_t ow = 0; ow < ow_lo; ++ow) position(ow, std::false_type());
    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) position(ow, std::true_type());
    for (int64_t ow = ow_hi; ow < g.out_w; ++ow) position(ow, std::false_type());
  }
}

// acc (9·cin, cout) += the kernel gradient of one image.
template <typename V, int NB, int CB, int SH, int SW>
void ConvKernelGradImage3(const ConvGeometry& g, const float* x, const float* dy, float* acc,
                          int64_t b) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  const int64_t cin = g.cin, cout = NB * L;
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    const int64_t ih0 = oh * SH - g.pad_h;
    const float* grads = dy + (b * g.out_h + oh) * g.out_w * cout;
    for (int i = 0; i < 3; ++i) {
      if (ih0 + i < 0 || ih0 + i >= g.height) continue;
      const float* row = x + (b * g.height + ih0 + i) * g.width * cin;
      for (int j = 0; j < 3; ++j) {
        // Columns ow with 0 ≤ ow·SW − pad + j < width.
        const int64_t ow_lo = std::max<int64_t>(0, (g.pad_w - j + SW - 1) / SW);
        const int64_t last = g.width - 1 + g.pad_w - j;   // ow·SW ≤ last
        const int64_t ow_hi = last < 0 ? 0 : std::min<int64_t>(g.out_w, last / SW + 1);
        for (int64_t c0 = 0; c0 < cin; c0 += CB) {
          const int cb = static_cast<int>(std::min<int64_t>(CB, cin - c0));
          V sums[CB][NB] = {};
          for (int64_t ow = ow_lo; ow < ow_hi; ++ow) {
            const float* in = row + (ow * SW - g.pad_w + j) * cin + c0;
            V grad[NB];
            for (int v = 0; v < NB; ++v) grad[v] = LoadVec<V>(grads + ow * cout + v * L);
            if (cb == CB) {
              for (int q = 0; q < CB; ++q)
                for (int v = 0; v < NB; ++v) sums[q][v] += in[q] * grad[v];
            } else {
              for (int q = 0; q < cb; ++q)
                for (int v = 0; v < NB; ++v) sums[q][v] += in[q] * grad[v];
            }
          }
          for (int q = 0; q < cb; ++q) {
            float* o = acc + ((i * 3 + j) * cin + c0 + q) * cout;
            for (int v = 0; v < NB; ++v)
              StoreVec(o + v * L, LoadVec<V>(o + v * L) + sums[q][v]);
          }
        }
      }
    }
  }
}

// The same for one input channel and one output vector (the first stem): per output row the
// nine tap sums stay in registers, position after position.
template <typename V, int SH, int SW>
void ConvKernelGradImage3Single(const ConvGeometry& g, const float* x, const float* dy,
                                float* acc, int64_t b) {
  constexpr int64_t L = sizeof(V) / sizeof(float);
  int64_t ow_lo, ow_hi;
  InteriorColumns<3, SW>(g.out_w, g.width, g.pad_w, &ow_lo, &ow_hi);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    int64_t ih0;
    int i_lo, i_hi;
    std::tie(ih0, i_lo, i_hi) = TapRows<3, SH>(oh, g.height, g.pad_h);
    const float* rows = x + (b * g.height + ih0) * g.width;
    const float* grads = dy + (b * g.out_h + oh) * g.out_w * L;
    V sums[9] = {};
    auto add = [&](int64_t ow, auto inside) {
      const V grad = LoadVec<V>(grads + ow * L);
      const int64_t iw0 = ow * SW - g.pad_w;
      for (int i = i_lo; i < i_hi; ++i)
        for (int j = 0; j < 3; ++j)
          if (decltype(inside)::value || (iw0 + j >= 0 && iw0 + j < g.width))
            sums[i * 3 + j] += rows[i * g.width + iw0 + j] * grad;
    };
    for (int64_t ow = 0; ow < ow_lo; ++ow) add(ow, std::false_type());
    for (int64_t ow = ow_lo; ow < ow_hi; ++ow) add(ow, std::true_type());
    for (int64_t ow = ow_hi; ow < g.out_w; ++ow) add(ow, std::false_type());
    for (int t = 0; t < 9; ++t) StoreVec(acc + t * L, LoadVec<V>(acc + t * L) + sums[t]);
  }
}

// Calls run(V, NB) for output channels 8, 16, 32, 48 or 64: V = Lanes and NB = cout / kLanes
// when cout fills whole vectors, else (8 channels on AVX-512) V = Lanes8, NB = 1; false for
// other counts.
template <int COUT, typename F>
void RunOutputVectors(F&& run) {
  if constexpr (COUT % kLanes == 0) run(Lanes(), std::integral_constant<int, COUT / kLanes>());
  else run(Lanes8(), std::integral_constant<int, COUT / 8>());
}

template <typename F>
bool DispatchOutputVectors(int64_t cout, F&& run) {
  switch (cout) {
    case 8: RunOutputVectors<8>(run); return true;
    case 16: RunOutputVectors<16>(run); return true;
    case 32: RunOutputVectors<32>(run); return true;
    case 48: RunOutputVectors<48>(run); return true;
    case 64: RunOutputVectors<64>(run); return true;
    default: return false;
  }
}

ffi::Error ConvForward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> kernel,
                       ffi::ResultBuffer<ffi::F32> y, int64_t stride_h, int64_t stride_w) {
  const ConvGeometry g = MakeConvGeometry(x.dimensions(), kernel.dimensions(), y->dimensions(),
                                          stride_h, stride_w);
  if (g.kh == 3 && g.kw == 3) {
    const float* xp = x.typed_data();
    const float* kp = kernel.typed_data();
    float* yp = y->typed_data();
    bool done = false;
    DispatchOutputVectors(g.cout, [&](auto vec, auto nb) {
      done = DispatchStrides(stride_h, stride_w, [&](auto sh, auto sw) {
        constexpr int NB = decltype(nb)::value, SH = decltype(sh)::value,
                      SW = decltype(sw)::value;
        ParallelFor(pool, g.batch, [&](int64_t b) {
          using V = decltype(vec);
          if (g.cin == 1) ConvForwardImage3<V, NB, SH, SW, 1>(g, xp, kp, yp, b);
          else if (g.cin == 8) ConvForwardImage3<V, NB, SH, SW, 8>(g, xp, kp, yp, b);
          else ConvForwardImage3<V, NB, SH, SW, 0>(g, xp, kp, yp, b);
        });
      });
    });
    if (done) return ffi::Error::Success();
  }
  const int64_t co_pad = (g.cout + kLanes - 1) / kLanes * kLanes;
  // Kernel rows (i, j, ci) with the output channels zero-padded to whole vectors.
  std::vector<float> kp(g.kh * g.kw * g.cin * co_pad, 0.0f);
  const float* k = kernel.typed_data();
  for (int64_t row = 0; row < g.kh * g.kw * g.cin; ++row)
    std::memcpy(kp.data() + row * co_pad, k + row * g.cout, g.cout * sizeof(float));
  const float* xp = x.typed_data();
  float* yp = y->typed_data();
  return DispatchVectors(g.cout, [&](auto nb) {
    ParallelFor(pool, g.batch, [&](int64_t b) {
      ConvForwardImage<decltype(nb)::value>(g, xp, kp.data(), yp, b);
    });
  });
}

// dx of one image for a 3×3 convolution with input channels in whole 8-float vectors, as a
// scatter: for each output position, the nine taps' products kt[t]·dy[oh, ow] (a vector of input
// channels each, summed over the output channels in registers) are added into dx.
// kt (9, cout, cin): the kernel with its channel axes swapped.
template <int SH, int SW>
void ConvInputGradImage3(const ConvGeometry& g, const float* dy, const float* kt, float* dx,
                         int64_t b) {
  const int64_t cin = g.cin, cout = g.cout, image = g.height * g.width * cin;
  float* out = dx + b * image;
  std::fill(out, out + image, 0.0f);
  for (int64_t oh = 0; oh < g.out_h; ++oh) {
    for (int64_t ow = 0; ow < g.out_w; ++ow) {
      const float* grad = dy + ((b * g.out_h + oh) * g.out_w + ow) * cout;
      for (int64_t c0 = 0; c0 < cin; c0 += 8) {
        Lanes8 acc[9] = {};
        for (int64_t co = 0; co < cout; ++co) {
          const float d = grad[co];
          const float* k = kt + co * cin + c0;
          for (int t = 0; t < 9; ++t) acc[t] += d * LoadVec<Lanes8>(k + t * cout * cin);
        }
        for (int i = 0; i < 3; ++i) {
          const int64_t ih = oh * SH + i - g.pad_h;
          if (ih < 0 || ih >= g.height) continue;
          for (int j = 0; j < 3; ++j) {
            const int64_t iw = ow * SW + j - g.pad_w;
            if (iw < 0 || iw >= g.width) continue;
            float* o = out + (ih * g.width + iw) * cin + c0;
            StoreVec(o, LoadVec<Lanes8>(o) + acc[i * 3 + j]);
          }
        }
      }
    }
  }
}

// The input gradient of a 3×3 convolution, strides 1 or 2, input channels a multiple of 8
// (the second CP-Mobile stem, 8 → 32), image by image. XLA runs this transposed convolution as
// a convolution over the zero-dilated gradient, four times the arithmetic at stride 2.
ffi::Error ConvInputGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> dy,
                         ffi::Buffer<ffi::F32> kernel, ffi::ResultBuffer<ffi::F32> dx,
                         int64_t stride_h, int64_t stride_w) {
  auto dxd = dx->dimensions();
  auto kd = kernel.dimensions();
  auto dyd = dy.dimensions();
  if (dxd.size() != 4 || kd.size() != 4 || dyd.size() != 4 || kd[0] != 3 || kd[1] != 3 ||
      kd[2] != dxd[3] || kd[3] != dyd[3] || dxd[3] % 8 != 0 || dyd[0] != dxd[0])
    return ffi::Error::InvalidArgument(
        "conv input gradient: expected dy (B, OH, OW, Cout), a 3×3 kernel (3, 3, Cin, Cout) "
        "and dx (B, H, W, Cin) with Cin a multiple of 8");
  const ConvGeometry g = MakeConvGeometry(dxd, kd, dyd, stride_h, stride_w);
  if (g.out_h != (g.height + 2 * g.pad_h - 3) / stride_h + 1 ||
      g.out_w != (g.width + 2 * g.pad_w - 3) / stride_w + 1)
    return ffi::Error::InvalidArgument("conv input gradient: dy's size does not match dx's");
  std::vector<float> kt(9 * g.cin * g.cout);
  const float* k = kernel.typed_data();
  for (int64_t t = 0; t < 9; ++t)
    for (int64_t ci = 0; ci < g.cin; ++ci)
      for (int64_t co = 0; co < g.cout; ++co)
        kt[(t * g.cout + co) * g.cin + ci] = k[(t * g.cin + ci) * g.cout + co];
  const float* dyp = dy.typed_data();
  float* dxp = dx->typed_data();
  if (!DispatchStrides(stride_h, stride_w, [&](auto sh, auto sw) {
        ParallelFor(pool, g.batch, [&](int64_t b) {
          ConvInputGradImage3<decltype(sh)::value, decltype(sw)::value>(g, dyp, kt.data(), dxp,
                                                                         b);
        });
      }))
    return ffi::Error::InvalidArgument("conv input gradient: strides must be 1 or 2");
  return ffi::Error::Success();
}

ffi::Error ConvKernelGrad(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> dy,
                          ffi::ResultBuffer<ffi::F32> dk, int64_t stride_h, int64_t stride_w) {
  const ConvGeometry g = MakeConvGeometry(x.dimensions(), dk->dimensions(), dy.dimensions(),
                                          stride_h, stride_w);
  if (g.kh == 3 && g.kw == 3) {
    const int64_t size = 9 * g.cin * g.cout;
    const int64_t chunks = std::min<int64_t>(g.batch, 16);   // fixed, summed in order
    std::vector<float> partial(chunks * size, 0.0f);
    const float* xp = x.typed_data();
    const float* dyp = dy.typed_data();
    bool done = false;
    DispatchOutputVectors(g.cout, [&](auto vec, auto nb) {
      constexpr int NB = decltype(nb)::value;
      constexpr int CB = ConvGradChannels(NB);
      done = DispatchStrides(stride_h, stride_w, [&](auto sh, auto sw) {
        ParallelFor(pool, chunks, [&](int64_t chunk) {
          using V = decltype(vec);
          constexpr int SH = decltype(sh)::value, SW = decltype(sw)::value;
          float* acc = partial.data() + chunk * size;
          for (int64_t b = chunk * g.batch / chunks; b < (chunk + 1) * g.batch / chunks; ++b) {
            if (NB == 1 && g.cin == 1) ConvKernelGradImage3Single<V, SH, SW>(g, xp, dyp, acc, b);
            else ConvKernelGradImage3<V, NB, CB, SH, SW>(g, xp, dyp, acc, b);
          }
        });
      });
    });
    if (done) {
      float* out = dk->typed_data();
      std::memcpy(out, partial.data(), size * sizeof(float));
      for (int64_t chunk = 1; chunk < chunks; ++chunk)
        for (int64_t t = 0; t < size; ++t) out[t] += partial[chunk * size + t];
      return ffi::Error::Success();
    }
  }
  const int64_t k_n = g.kh * g.kw * g.cin, k_pad = PadRows(k_n);
  const int64_t m_pad = (g.cout + kLanes - 1) / kLanes * kLanes;
  const int64_t positions = g.batch * g.out_h * g.out_w;
  const int64_t chunks = std::min<int64_t>(std::max<int64_t>(positions, 1), kStatChunks);
  std::vector<float> partial(chunks * k_pad * m_pad, 0.0f);
  const float* xp = x.typed_data();
  const float* dyp = dy.typed_data();
  constexpr int64_t kRows = 64;
  ParallelFor(pool, chunks, [&](int64_t chunk) {
    float* acc = partial.data() + chunk * k_pad * m_pad;
    std::vector<float> xt(kRows * k_pad), yt(kRows * m_pad, 0.0f);
    const int64_t begin = chunk * positions / chunks, end = (chunk + 1) * positions / chunks;
    for (int64_t start = begin; start < end; start += kRows) {
      const int64_t rows = std::min(kRows, end - start);
      std::fill(xt.begin(), xt.end(), 0.0f);
      for (int64_t r = 0; r < rows; ++r) {
        const int64_t pos = start + r, b = pos / (g.out_h * g.out_w);
        const int64_t oh = pos / g.out_w % g.out_h, ow = pos % g.out_w;
        float* patch = xt.data() + r * k_pad;
        for (int64_t i = 0; i < g.kh; ++i) {
          const int64_t ih = oh * g.stride_h + i - g.pad_h;
          if (ih < 0 || ih >= g.height) continue;
          for (int64_t j = 0; j < g.kw; ++j) {
            const int64_t iw = ow * g.stride_w + j - g.pad_w;
            if (iw < 0 || iw >= g.width) continue;
            std::memcpy(patch + (i * g.kw + j) * g.cin,
                        xp + ((b * g.height + ih) * g.width + iw) * g.cin, g.cin * sizeof(float));
          }
        }
        std::memcpy(yt.data() + r * m_pad, dyp + pos * g.cout, g.cout * sizeof(float));
      }
      AccumulateTile(xt.data(), yt.data(), rows, k_pad, m_pad, acc);
    }
  });
  float* op = dk->typed_data();
  for (int64_t kk = 0; kk < k_n; ++kk) {
    for (int64_t mm = 0; mm < g.cout; ++mm) {
      float total = 0.0f;
      for (int64_t chunk = 0; chunk < chunks; ++chunk)
        total += partial[(chunk * k_pad + kk) * m_pad + mm];
      op[kk * g.cout + mm] = total;
    }
  }
  return ffi::Error::Success();
}

}  // namespace

// The vector target this library was compiled for (recorded by jax_asc.native.describe()).
extern "C" const char* JaxAscKernelTarget() {
  static const std::string target = std::string(JAX_ASC_VECTOR_ISA) + ": " +
                                    std::to_string(kLanes) + " floats, " +
                                    std::to_string(kVectorRegisters) + " registers";
  return target.c_str();
}

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscDepthwiseForward, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscDepthwiseInputGrad, InputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluDepthwiseMomentsBackward,
                              AffineReluMomentsBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluDepthwiseMomentsForward,
                              AffineReluMomentsForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluDepthwiseBackward, AffineReluBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscDepthwiseKernelGrad, KernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluDepthwiseForward, AffineReluForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscMoments, Moments,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscNormGradSums, NormGradSums,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("relu"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscMelSpectrogram, MelSpectrogram,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("n_fft")
                                  .Attr<int64_t>("hop")
                                  .Attr<int64_t>("pad")
                                  .Attr<int64_t>("reflect")
                                  .Attr<float>("preemphasis"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluMatmul, AffineReluMatmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluMatmulMoments, AffineReluMatmulMoments,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscMatmulMoments, MatmulMoments,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscMatmulMomentsBackward, MatmulMomentsBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluMatmulMomentsBackward,
                              AffineReluMatmulMomentsBackward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluMatmulTN, AffineReluMatmulTN,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscAffineReluMatmulInputGrad, AffineReluMatmulInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscMatmulTN, MatmulTN,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscConvForward, ConvForward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscConvInputGrad, ConvInputGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(JaxAscConvKernelGrad, ConvKernelGrad,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("stride_h")
                                  .Attr<int64_t>("stride_w"));
