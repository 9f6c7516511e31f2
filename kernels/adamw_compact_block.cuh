// The compact AdamW update of one block of kCompactUpdateBlock (256) elements by one warp
// (kernels/adamw_compact.h describes the state), as device code free of LibTorch headers: the
// element-wise kernels of kernels/adamw_compact.cu and the grouped weight-gradient GEMM whose
// epilogue steps the experts' weights (kernels/grouped_gemm_sm90_wgrad_adamw.cu) share it, so
// both apply the same arithmetic bit for bit.
#pragma once

#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/adamw_compact_args.h"
#include "kernels/stochastic_round.h"

namespace ftd::kernels::compact_update {

constexpr int kPerLane = 8;
static_assert(kPerLane * 32 == kCompactUpdateBlock, "one warp per block");
constexpr unsigned kFull = 0xffffffffu;

struct StepValues {
  float lr, grad_scale, step_size, inv_bc2_sqrt;
  uint32_t round_key;  // stochastic rounding (bf16 parameters without a low half)
};

__device__ __forceinline__ StepValues Values(const float* step, const CompactUpdateHyper& h) {
  const float lr = h.dev ? h.dev[0] : h.lr;
  const float grad_scale = h.dev ? h.dev[1] : h.grad_scale;
  const double st = static_cast<double>(*step);
  const double bc1 = 1.0 - pow(h.beta1_d, st);
  const double bc2 = 1.0 - pow(h.beta2_d, st);
  return {lr, grad_scale, static_cast<float>(static_cast<double>(lr) / bc1), static_cast<float>(1.0 / sqrt(bc2)),
          stochastic_round::StepKey(h.round_salt, static_cast<uint32_t>(*step))};
}

// The update's square root, division and logarithm take the hardware approximations
// (sqrt.approx: within 1 ulp, subnormals kept; __fdividef: 2 ulp; __log2f: 2^-21.4 absolute)
// instead of the correctly rounded sequences: the element-wise kernel moves 3% more bytes a
// second on an H100 (2.74 TB/s against 2.65, 90% of a device copy), and the stored codes move
// only where a value lies within ~1e-5 of a code boundary.
__device__ __forceinline__ float FastSqrt(float v) {
  float s;
  asm("sqrt.approx.f32 %0, %1;" : "=f"(s) : "f"(v));
  return s;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, offset));
  return v;
}

// One lane's 8 elements of one block as loaded: the weights (a bf16 parameter and its low half,
// zero when there is none (compact_sr), or fp32), the gradient, the moment codes and the block's
// scales. Kept raw so that the next block's loads can be in flight while this one is computed.
template <typename P, typename G>
struct LaneData {
  uint4 w0, w1;     // bf16: the parameter (w0) and its low half (w1); fp32: elements 0-3, 4-7
  uint4 g0, g1;     // bf16: g0; fp32: g0, g1
  uint2 rc, sc;     // 8 one-byte codes each
  float s_max, r_scale;

  // The lane's elements at o; the gradient at g (this lane's 8), or zero when g is null.
  __device__ __forceinline__ void LoadFull(const P* p, const int16_t* low, const G* g, const int8_t* r_codes,
                                           const uint8_t* s_codes, const float* s_maxes, const float* r_scales,
                                           int64_t block, int64_t o) {
    if constexpr (sizeof(P) == 2) {
      w0 = *reinterpret_cast<const uint4*>(p + o);
      w1 = low != nullptr ? *reinterpret_cast<const uint4*>(low + o) : make_uint4(0, 0, 0, 0);
    } else {
      w0 = *reinterpret_cast<const uint4*>(p + o);
      w1 = *reinterpret_cast<const uint4*>(p + o + 4);
    }
    if (g != nullptr) {
      g0 = *reinterpret_cast<const uint4*>(g);
      if constexpr (sizeof(G) == 4) g1 = *reinterpret_cast<const uint4*>(g + 4);
    } else {
      g0 = g1 = make_uint4(0, 0, 0, 0);
    }
    rc = *reinterpret_cast<const uint2*>(r_codes + o);
    sc = *reinterpret_cast<const uint2*>(s_codes + o);
    s_max = s_maxes[block];
    r_scale = r_scales[block];
  }

  // The first `valid` elements at o (the rest zero), element by element.
  __device__ __forceinline__ void LoadPartial(const P* p, const int16_t* low, const G* g, const int8_t* r_codes,
                                              const uint8_t* s_codes, const float* s_maxes, const float* r_scales,
                                              int64_t block, int64_t o, int valid) {
    w0 = w1 = g0 = g1 = make_uint4(0, 0, 0, 0);
    rc = sc = make_uint2(0, 0);
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j >= valid) continue;
      if constexpr (sizeof(P) == 2) {
        reinterpret_cast<uint16_t*>(&w0)[j] = reinterpret_cast<const uint16_t*>(p)[o + j];
        reinterpret_cast<int16_t*>(&w1)[j] = low != nullptr ? low[o + j] : int16_t{0};
      } else {
        reinterpret_cast<float*>(j < 4 ? &w0 : &w1)[j & 3] = p[o + j];
      }
      if constexpr (sizeof(G) == 2) {
        reinterpret_cast<G*>(&g0)[j] = g[o + j];
      } else {
        reinterpret_cast<G*>(j < 4 ? &g0 : &g1)[j & 3] = g[o + j];
      }
      reinterpret_cast<int8_t*>(&rc)[j] = r_codes[o + j];
      reinterpret_cast<uint8_t*>(&sc)[j] = s_codes[o + j];
    }
    s_max = s_maxes[block];
    r_scale = r_scales[block];
  }

  __device__ __forceinline__ float Grad(int j) const {
    // bf16 (any 2-byte bf16 type): its bits are the upper half of the fp32 value.
    if constexpr (sizeof(G) == 2) return __uint_as_float(static_cast<uint32_t>(reinterpret_cast<const uint16_t*>(&g0)[j]) << 16);
    return reinterpret_cast<const float*>(j < 4 ? &g0 : &g1)[j & 3];
  }
  __device__ __forceinline__ float Weight(int j) const {
    if constexpr (sizeof(P) == 2) {
      const uint16_t hi = reinterpret_cast<const uint16_t*>(&w0)[j];
      const int16_t lo = reinterpret_cast<const int16_t*>(&w1)[j];
      return __uint_as_float((static_cast<uint32_t>(hi) << 16) + static_cast<uint32_t>(static_cast<int32_t>(lo)));
    }
    return reinterpret_cast<const float*>(j < 4 ? &w0 : &w1)[j & 3];
  }
  __device__ __forceinline__ bool GradIsZero() const {
    bool zero = true;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) zero &= Grad(j) == 0.0f;
    return zero;
  }
};

// With skip_idle (no weight decay), a block whose moments and gradient are zero would be
// rewritten unchanged: it is left alone. Warp-uniform.
template <typename P, typename G>
__device__ __forceinline__ bool IdleBlock(const LaneData<P, G>& d, bool skip_idle) {
  return skip_idle && d.s_max == 0.0f && !__any_sync(kFull, !d.GradIsZero());
}

// Writes 8 fp32 masters back: bf16 parameter + int16 low half (the parameter rounded half away
// from zero in magnitude, so that the remainder fits in int16), or fp32; the first `valid` only.
// A bf16 parameter without a low half (low null: compact_sr) is rounded stochastically, element
// o + j drawing the bits of index index_base + o + j under key (kernels/stochastic_round.h).
template <typename P>
__device__ __forceinline__ void StoreWeights(P* p, int16_t* low, int64_t o, int valid, const float* w,
                                             int64_t index_base = 0, uint32_t key = 0) {
  if constexpr (sizeof(P) == 2) {
    if (low == nullptr) {
      uint4 hi4;
      const int64_t first = index_base + o;
      if ((first & 1) == 0) {  // the usual case: one hash a pair of elements
#pragma unroll
        for (int k = 0; k < kPerLane / 2; ++k) {
          const uint32_t r = stochastic_round::PairBits(key, static_cast<uint64_t>(first >> 1) + k);
          reinterpret_cast<uint16_t*>(&hi4)[2 * k] = stochastic_round::RoundBits(__float_as_uint(w[2 * k]), r & 0xffffu);
          reinterpret_cast<uint16_t*>(&hi4)[2 * k + 1] = stochastic_round::RoundBits(__float_as_uint(w[2 * k + 1]), r >> 16);
        }
      } else {
#pragma unroll
        for (int j = 0; j < kPerLane; ++j) {
          const uint32_t r = stochastic_round::RandomBits(key, first + j);
          reinterpret_cast<uint16_t*>(&hi4)[j] = stochastic_round::RoundBits(__float_as_uint(w[j]), r);
        }
      }
      if (valid == kPerLane) {
        *reinterpret_cast<uint4*>(p + o) = hi4;
        return;
      }
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) {
        if (j < valid) reinterpret_cast<uint16_t*>(p)[o + j] = reinterpret_cast<const uint16_t*>(&hi4)[j];
      }
      return;
    }
    uint4 hi4, lo4;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      const uint32_t bits = __float_as_uint(w[j]);
      const uint32_t h = (bits + 0x8000u) >> 16;
      reinterpret_cast<uint16_t*>(&hi4)[j] = static_cast<uint16_t>(h);
      reinterpret_cast<int16_t*>(&lo4)[j] = static_cast<int16_t>(static_cast<int32_t>(bits - (h << 16)));
    }
    if (valid == kPerLane) {
      *reinterpret_cast<uint4*>(p + o) = hi4;
      *reinterpret_cast<uint4*>(low + o) = lo4;
      return;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j >= valid) continue;
      reinterpret_cast<uint16_t*>(p)[o + j] = reinterpret_cast<const uint16_t*>(&hi4)[j];
      low[o + j] = reinterpret_cast<const int16_t*>(&lo4)[j];
    }
  } else {
    if (valid == kPerLane) {
      *reinterpret_cast<float4*>(p + o) = make_float4(w[0], w[1], w[2], w[3]);
      *reinterpret_cast<float4*>(p + o + 4) = make_float4(w[4], w[5], w[6], w[7]);
      return;
    }
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j < valid) p[o + j] = w[j];
    }
  }
}

// Elements of the lane's 8 at `o` that lie inside the tensor of n.
__device__ __forceinline__ int ValidLanes(int64_t n, int64_t o) {
  const int64_t left = n - o;
  return left <= 0 ? 0 : (left >= kPerLane ? kPerLane : static_cast<int>(left));
}

// 2^((c - 255) / 16) for code c > 0 and its inverse (0 for c = 0): the code's value relative
// to the block's largest sqrt(v), filled once per thread block.
struct CodeTables {
  float pow[256];
  float inv[256];
};

// By threads [0, threads) of the block; the caller synchronises them before reading.
__device__ __forceinline__ void FillCodeTablesUnsynced(CodeTables& t, int thread, int threads) {
  for (int c = thread; c < 256; c += threads) {
    t.pow[c] = c == 0 ? 0.0f : exp2f((static_cast<float>(c) - 255.0f) / 16.0f);
    t.inv[c] = c == 0 ? 0.0f : exp2f((255.0f - static_cast<float>(c)) / 16.0f);
  }
}

__device__ __forceinline__ void FillCodeTables(CodeTables& t) {
  FillCodeTablesUnsynced(t, threadIdx.x, blockDim.x);
  __syncthreads();
}

// One block of 256 elements by one warp from the lanes' loaded data: the update, then the new
// moments encoded against their block maxima. The weights are stored before the maxima are
// taken, so only m and sqrt(v) stay in registers across the shuffles. Returns this lane's sum of
// squares of the scaled gradient.
template <typename P, typename G>
__device__ __forceinline__ float UpdateBlock(const LaneData<P, G>& d, P* __restrict__ p, int16_t* __restrict__ low,
                                             int8_t* __restrict__ r_codes, uint8_t* __restrict__ s_codes,
                                             float* __restrict__ r_scale, float* __restrict__ s_max, int64_t block,
                                             int valid, const CompactUpdateHyper& h, const StepValues& sv, const CodeTables& t) {
  const int lane = threadIdx.x & 31;
  const int64_t o = block * kCompactUpdateBlock + lane * kPerLane;
  float w[kPerLane], m[kPerLane], s[kPerLane];
  float lane_s_max = 0.0f, lane_g_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const float s_old = t.pow[reinterpret_cast<const uint8_t*>(&d.sc)[j]] * d.s_max;
    const float m_old = static_cast<float>(reinterpret_cast<const int8_t*>(&d.rc)[j]) * d.r_scale * s_old;
    const float g = d.Grad(j) * sv.grad_scale;
    lane_g_sq += g * g;  // zero past n
    w[j] = d.Weight(j);
    w[j] -= sv.lr * h.decay * w[j];
    m[j] = m_old * h.beta1 + g * h.one_minus_beta1;
    const float v = (s_old * s_old) * h.beta2 + g * g * h.one_minus_beta2;
    s[j] = j < valid ? FastSqrt(v) : 0.0f;
    w[j] -= __fdividef(sv.step_size * m[j], s[j] * sv.inv_bc2_sqrt + h.eps);
    lane_s_max = fmaxf(lane_s_max, s[j]);
  }
  StoreWeights<P>(p, low, o, valid, w, h.round_index_base, sv.round_key);
  const float block_s_max = WarpMax(lane_s_max);
  const float inv_s_max = block_s_max > 0.0f ? 1.0f / block_s_max : 0.0f;
  uint2 sc, rc;
  float lane_r_max = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    uint8_t code = 0;
    if (s[j] > 0.0f) {
      const float c = rintf(255.0f + 16.0f * __log2f(s[j] * inv_s_max));
      code = static_cast<uint8_t>(fminf(fmaxf(c, 1.0f), 255.0f));
    }
    reinterpret_cast<uint8_t*>(&sc)[j] = code;
    m[j] *= t.inv[code] * inv_s_max;  // r = m / sqrt(v) as stored (0 where sqrt(v) is 0)
    lane_r_max = fmaxf(lane_r_max, fabsf(m[j]));
  }
  const float block_r_max = WarpMax(lane_r_max);
  const float inv_r_scale = block_r_max > 0.0f ? 127.0f / block_r_max : 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    reinterpret_cast<int8_t*>(&rc)[j] = static_cast<int8_t>(fminf(fmaxf(rintf(m[j] * inv_r_scale), -127.0f), 127.0f));
  }
  if (valid == kPerLane) {
    *reinterpret_cast<uint2*>(r_codes + o) = rc;
    *reinterpret_cast<uint2*>(s_codes + o) = sc;
  } else {
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) {
      if (j >= valid) continue;
      r_codes[o + j] = reinterpret_cast<const int8_t*>(&rc)[j];
      s_codes[o + j] = reinterpret_cast<const uint8_t*>(&sc)[j];
    }
  }
  if (lane == 0) {
    s_max[block] = block_s_max;
    r_scale[block] = block_r_max / 127.0f;
  }
  return lane_g_sq;
}

// Adds a warp's sum of squares to the accumulator (one atomic per warp).
__device__ __forceinline__ void AddGradSquares(float lane_g_sq, float* grad_sq_sum) {
  if (grad_sq_sum == nullptr) return;
  float warp_sum = lane_g_sq;
  for (int offset = 16; offset > 0; offset >>= 1) warp_sum += __shfl_xor_sync(kFull, warp_sum, offset);
  if ((threadIdx.x & 31) == 0 && warp_sum != 0.0f) atomicAdd(grad_sq_sum, warp_sum);
}

}  // namespace ftd::kernels::compact_update
