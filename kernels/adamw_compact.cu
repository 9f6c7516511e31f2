// CUDA kernels of kernels/adamw_compact.h: one warp per block of kCompactBlock (256) elements,
// 8 consecutive elements per lane (16-byte loads of the bf16 parameter, its low half and the
// gradient), the block maxima of the new moments by warp shuffles.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/adamw_compact.h"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kPerLane = 8;
static_assert(kPerLane * 32 == kCompactBlock, "one warp per block");
constexpr unsigned kFull = 0xffffffffu;

// 1 - beta is rounded to fp32 from double, as the reference does.
struct Hyper {
  float lr, grad_scale, beta1, beta2, one_minus_beta1, one_minus_beta2, decay, eps;
  double beta1_d, beta2_d;
  const float* dev;  // (lr, grad_scale) on the device, or null
  float* grad_sq_sum;  // where to add the sum of squares of the scaled gradients, or null
};

Hyper MakeHyper(const AdamWHyper& h) {
  return {static_cast<float>(h.lr),
          static_cast<float>(h.grad_scale),
          static_cast<float>(h.beta1),
          static_cast<float>(h.beta2),
          static_cast<float>(1 - h.beta1),
          static_cast<float>(1 - h.beta2),
          static_cast<float>(h.weight_decay),
          static_cast<float>(h.eps),
          h.beta1,
          h.beta2,
          h.scalars.defined() ? h.scalars.data_ptr<float>() : nullptr,
          h.grad_sq_sum.defined() ? h.grad_sq_sum.data_ptr<float>() : nullptr};
}

struct StepValues {
  float lr, grad_scale, step_size, inv_bc2_sqrt;
};

__device__ __forceinline__ StepValues Values(const float* step, const Hyper& h) {
  const float lr = h.dev ? h.dev[0] : h.lr;
  const float grad_scale = h.dev ? h.dev[1] : h.grad_scale;
  const double st = static_cast<double>(*step);
  const double bc1 = 1.0 - pow(h.beta1_d, st);
  const double bc2 = 1.0 - pow(h.beta2_d, st);
  return {lr, grad_scale, static_cast<float>(static_cast<double>(lr) / bc1), static_cast<float>(1.0 / sqrt(bc2))};
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) v = fmaxf(v, __shfl_xor_sync(kFull, v, offset));
  return v;
}

// One lane's 8 elements of one block as loaded: the weights (a bf16 parameter and its low half,
// or fp32), the gradient, the moment codes and the block's scales. Kept raw so that the next
// block's loads can be in flight while this one is computed.
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
      w1 = *reinterpret_cast<const uint4*>(low + o);
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
        reinterpret_cast<int16_t*>(&w1)[j] = low[o + j];
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
    if constexpr (sizeof(G) == 2) return ToFloat(reinterpret_cast<const G*>(&g0)[j]);
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

// Writes 8 fp32 masters back: bf16 parameter + int16 low half (the parameter rounded half away
// from zero in magnitude, so that the remainder fits in int16), or fp32; the first `valid` only.
template <typename P>
__device__ __forceinline__ void StoreWeights(P* p, int16_t* low, int64_t o, int valid, const float* w) {
  if constexpr (sizeof(P) == 2) {
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

__device__ __forceinline__ void FillCodeTables(CodeTables& t) {
  for (int c = threadIdx.x; c < 256; c += blockDim.x) {
    t.pow[c] = c == 0 ? 0.0f : exp2f((static_cast<float>(c) - 255.0f) / 16.0f);
    t.inv[c] = c == 0 ? 0.0f : exp2f((255.0f - static_cast<float>(c)) / 16.0f);
  }
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
                                             int valid, const Hyper& h, const StepValues& sv, const CodeTables& t) {
  const int lane = threadIdx.x & 31;
  const int64_t o = block * kCompactBlock + lane * kPerLane;
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
    s[j] = j < valid ? sqrtf(v) : 0.0f;
    w[j] -= sv.step_size * m[j] / (s[j] * sv.inv_bc2_sqrt + h.eps);
    lane_s_max = fmaxf(lane_s_max, s[j]);
  }
  StoreWeights<P>(p, low, o, valid, w);
  const float block_s_max = WarpMax(lane_s_max);
  const float inv_s_max = block_s_max > 0.0f ? 1.0f / block_s_max : 0.0f;
  uint2 sc, rc;
  float lane_r_max = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    uint8_t code = 0;
    if (s[j] > 0.0f) {
      const float c = rintf(255.0f + 16.0f * log2f(s[j] * inv_s_max));
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
  const float warp_sum = cuda::WarpSum(lane_g_sq);
  if ((threadIdx.x & 31) == 0 && warp_sum != 0.0f) atomicAdd(grad_sq_sum, warp_sum);
}

// Grid-stride over the full blocks, one warp each, the next block's loads issued before this one
// is computed; the short last block (if any) by the warp after the last full one. With skip_idle
// (no weight decay), a block whose moments are zero and whose gradient is zero is exactly
// unchanged: it is left unwritten.
template <typename P, typename G>
__global__ void __launch_bounds__(256, sizeof(P) == 2 ? 3 : 2) CompactAdamWKernel(P* __restrict__ p, int16_t* __restrict__ low,
                                                          const G* __restrict__ g, int8_t* __restrict__ r_codes,
                                                          uint8_t* __restrict__ s_codes, float* __restrict__ r_scale,
                                                          float* __restrict__ s_max, const float* __restrict__ step,
                                                          int64_t n, Hyper h, bool skip_idle) {
  __shared__ CodeTables tables;
  FillCodeTables(tables);
  const StepValues sv = Values(step, h);
  const int lane = threadIdx.x & 31;
  const int64_t full = n / kCompactBlock;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  const int64_t first = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  float g_sq = 0.0f;
  LaneData<P, G> next;
  int64_t b = first;
  auto offset = [&](int64_t block) { return block * kCompactBlock + lane * kPerLane; };
  if (b < full) next.LoadFull(p, low, g + offset(b), r_codes, s_codes, s_max, r_scale, b, offset(b));
  while (b < full) {
    const LaneData<P, G> cur = next;
    const int64_t cb = b;
    b += warps;
    if (b < full) next.LoadFull(p, low, g + offset(b), r_codes, s_codes, s_max, r_scale, b, offset(b));
    if (skip_idle && cur.s_max == 0.0f && !__any_sync(kFull, !cur.GradIsZero())) continue;
    g_sq += UpdateBlock<P, G>(cur, p, low, r_codes, s_codes, r_scale, s_max, cb, kPerLane, h, sv, tables);
  }
  if (full * kCompactBlock < n && first == full % warps) {  // the short last block
    const int64_t o = full * kCompactBlock + lane * kPerLane;
    const int valid = ValidLanes(n, o);
    LaneData<P, G> d;
    d.LoadPartial(p, low, g, r_codes, s_codes, s_max, r_scale, full, o, valid);
    g_sq += UpdateBlock<P, G>(d, p, low, r_codes, s_codes, r_scale, s_max, full, valid, h, sv, tables);
  }
  AddGradSquares(g_sq, h.grad_sq_sum);
}

// One thread block per table row; its warps take the row's blocks of 256. The gradient of row
// `row` is rows[slot_of[row]] when the token was in the batch, else zero.
template <typename P, typename G>
__global__ void __launch_bounds__(256) CompactAdamWRowsKernel(P* __restrict__ p, int16_t* __restrict__ low,
                                                               int8_t* __restrict__ r_codes,
                                                               uint8_t* __restrict__ s_codes,
                                                               float* __restrict__ r_scale, float* __restrict__ s_max,
                                                               const G* __restrict__ rows,
                                                               int32_t* __restrict__ slot_of,
                                                               const float* __restrict__ step, int64_t cols, Hyper h,
                                                               bool skip_idle) {
  __shared__ CodeTables tables;
  FillCodeTables(tables);
  const int64_t row = blockIdx.x;
  const int32_t slot = slot_of[row];
  const StepValues sv = Values(step, h);
  const int lane = threadIdx.x & 31;
  const int64_t row_blocks = cols / kCompactBlock;
  float g_sq = 0.0f;
  for (int64_t i = threadIdx.x >> 5; i < row_blocks; i += blockDim.x >> 5) {
    const int64_t b = row * row_blocks + i;
    if (skip_idle && slot < 0 && s_max[b] == 0.0f) continue;  // uniform over the warp
    const int64_t o = b * kCompactBlock + lane * kPerLane;
    // The weights and moments at the table's offsets; the gradient from the token's row.
    const G* grad = slot >= 0 ? rows + static_cast<int64_t>(slot) * cols + i * kCompactBlock + lane * kPerLane : nullptr;
    LaneData<P, G> d;
    d.LoadFull(p, low, grad, r_codes, s_codes, s_max, r_scale, b, o);
    g_sq += UpdateBlock<P, G>(d, p, low, r_codes, s_codes, r_scale, s_max, b, kPerLane, h, sv, tables);
  }
  AddGradSquares(g_sq, h.grad_sq_sum);
  __syncthreads();  // every warp has read slot_of[row]
  if (threadIdx.x == 0 && slot >= 0) slot_of[row] = -1;
}

bool Aligned(const at::Tensor& t) { return t.numel() == 0 || cuda::Aligned16(t.data_ptr()); }

}  // namespace

void CompactAdamWStepCuda(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                          const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h) {
  TORCH_CHECK(CompactAdamWCudaSupports(param, master_low, grad, moments, step, h),
              "CompactAdamWStepCuda: unsupported tensors (see CompactAdamWCudaSupports)");
  const int64_t n = param.numel();
  if (n == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  const bool aligned = Aligned(param) && Aligned(grad) && Aligned(moments.r_codes) && Aligned(moments.s_codes) &&
                       (!master_low.defined() || Aligned(master_low));
  if (!aligned) {  // vector loads need 16-byte (8 for the codes) alignment: the reference is exact too
    CompactAdamWStepReference(param, master_low, grad, moments, step, h);
    return;
  }
  const Hyper hyper = MakeHyper(h);
  const int64_t blocks = CompactBlocks(n);
  // One wave of resident thread blocks (3 an SM for bf16 weights, 2 for fp32: __launch_bounds__),
  // each warp then striding over several blocks with the next one's loads in flight.
  const int64_t per_sm = param.scalar_type() == at::kBFloat16 ? 3 : 2;
  const int64_t ctas = std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(blocks, 8), int64_t{cuda::NumSms()} * per_sm));
  const bool skip_idle = h.weight_decay == 0.0;
  int16_t* low = master_low.defined() ? master_low.data_ptr<int16_t>() : nullptr;
  auto launch = [&](auto ptag, auto gtag) {
    using P = decltype(ptag);
    using G = decltype(gtag);
    CompactAdamWKernel<P, G><<<ctas, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<P*>(param.data_ptr()), low, reinterpret_cast<const G*>(grad.data_ptr()),
        moments.r_codes.data_ptr<int8_t>(), moments.s_codes.data_ptr<uint8_t>(), moments.r_scale.data_ptr<float>(),
        moments.s_max.data_ptr<float>(), step.data_ptr<float>(), n, hyper, skip_idle);
  };
  const bool bf16_param = param.scalar_type() == at::kBFloat16, bf16_grad = grad.scalar_type() == at::kBFloat16;
  if (bf16_param && bf16_grad) {
    launch(c10::BFloat16{}, c10::BFloat16{});
  } else if (bf16_param) {
    launch(c10::BFloat16{}, float{});
  } else if (bf16_grad) {
    launch(float{}, c10::BFloat16{});
  } else {
    launch(float{}, float{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void CompactAdamWRowsStepCuda(const at::Tensor& param, const at::Tensor& master_low, const CompactMoments& moments,
                              const at::Tensor& step, const at::Tensor& rows, const at::Tensor& slot_of,
                              const AdamWHyper& h) {
  TORCH_CHECK(CompactAdamWRowsSupports(param, master_low, moments, step, h),
              "CompactAdamWRowsStepCuda: needs a 2-D table whose rows are whole blocks of ", kCompactBlock);
  const int64_t table_rows = param.size(0), cols = param.size(1);
  TORCH_CHECK(rows.dim() == 2 && rows.size(1) == cols && rows.is_contiguous() && rows.device() == param.device() &&
                  (rows.scalar_type() == at::kBFloat16 || rows.scalar_type() == at::kFloat) && Aligned(rows),
              "CompactAdamWRowsStepCuda: rows must be [T, ", cols, "] bf16/fp32 on the table's device");
  TORCH_CHECK(slot_of.scalar_type() == at::kInt && slot_of.numel() == table_rows && slot_of.device() == param.device(),
              "CompactAdamWRowsStepCuda: slot_of must be int32 [", table_rows, "]");
  if (table_rows == 0 || cols == 0) return;
  TORCH_CHECK(Aligned(param) && Aligned(moments.r_codes) && Aligned(moments.s_codes) &&
                  (!master_low.defined() || Aligned(master_low)),
              "CompactAdamWRowsStepCuda: the table and its state must be 16-byte aligned");
  const c10::cuda::CUDAGuard guard(param.device());
  const Hyper hyper = MakeHyper(h);
  const int threads = static_cast<int>(std::min<int64_t>(8, cols / kCompactBlock) * 32);  // warps loop over the row
  const bool skip_idle = h.weight_decay == 0.0;
  int16_t* low = master_low.defined() ? master_low.data_ptr<int16_t>() : nullptr;
  auto launch = [&](auto ptag, auto gtag) {
    using P = decltype(ptag);
    using G = decltype(gtag);
    CompactAdamWRowsKernel<P, G><<<table_rows, threads, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<P*>(param.data_ptr()), low, moments.r_codes.data_ptr<int8_t>(),
        moments.s_codes.data_ptr<uint8_t>(), moments.r_scale.data_ptr<float>(), moments.s_max.data_ptr<float>(),
        rows.numel() > 0 ? reinterpret_cast<const G*>(rows.data_ptr()) : nullptr, slot_of.data_ptr<int32_t>(),
        step.data_ptr<float>(), cols, hyper, skip_idle);
  };
  const bool bf16_param = param.scalar_type() == at::kBFloat16, bf16_rows = rows.scalar_type() == at::kBFloat16;
  if (bf16_param && bf16_rows) {
    launch(c10::BFloat16{}, c10::BFloat16{});
  } else if (bf16_param) {
    launch(c10::BFloat16{}, float{});
  } else if (bf16_rows) {
    launch(float{}, c10::BFloat16{});
  } else {
    launch(float{}, float{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ftd::kernels
