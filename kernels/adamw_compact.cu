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

// The weights of one lane's 8 elements as fp32 masters, and back.
template <typename P>
struct Weights;

template <>
struct Weights<c10::BFloat16> {  // bf16 parameter + int16 low half = exact fp32 master
  static __device__ __forceinline__ void Load8(const c10::BFloat16* p, const int16_t* low, int64_t o, int valid,
                                               float* w) {
    if (valid == kPerLane) {
      const Vec<uint16_t, 8> hi = cuda::Load<uint16_t, 8>(reinterpret_cast<const uint16_t*>(p) + o);
      const Vec<int16_t, 8> lo = cuda::Load<int16_t, 8>(low + o);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) w[j] = Join(hi.v[j], lo.v[j]);
      return;
    }
    for (int j = 0; j < valid; ++j) w[j] = Join(reinterpret_cast<const uint16_t*>(p)[o + j], low[o + j]);
  }
  static __device__ __forceinline__ void Store8(c10::BFloat16* p, int16_t* low, int64_t o, int valid, const float* w) {
    Vec<uint16_t, 8> hi;
    Vec<int16_t, 8> lo;
#pragma unroll
    for (int j = 0; j < kPerLane; ++j) Split(w[j], &hi.v[j], &lo.v[j]);
    if (valid == kPerLane) {
      cuda::Store<uint16_t, 8>(reinterpret_cast<uint16_t*>(p) + o, hi);
      cuda::Store<int16_t, 8>(low + o, lo);
      return;
    }
    for (int j = 0; j < valid; ++j) {
      reinterpret_cast<uint16_t*>(p)[o + j] = hi.v[j];
      low[o + j] = lo.v[j];
    }
  }
  static __device__ __forceinline__ float Join(uint16_t hi, int16_t lo) {
    return __uint_as_float((static_cast<uint32_t>(hi) << 16) + static_cast<uint32_t>(static_cast<int32_t>(lo)));
  }
  // Rounded half away from zero in magnitude, so that the remainder fits in int16.
  static __device__ __forceinline__ void Split(float w, uint16_t* hi, int16_t* lo) {
    const uint32_t bits = __float_as_uint(w);
    const uint32_t h = (bits + 0x8000u) >> 16;
    *hi = static_cast<uint16_t>(h);
    *lo = static_cast<int16_t>(static_cast<int32_t>(bits - (h << 16)));
  }
};

template <>
struct Weights<float> {  // an fp32 parameter is its own master
  static __device__ __forceinline__ void Load8(const float* p, const int16_t*, int64_t o, int valid, float* w) {
    if (valid == kPerLane) {
      const Vec<float, 4> a = Load<float, 4>(p + o), b = Load<float, 4>(p + o + 4);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        w[j] = a.v[j];
        w[j + 4] = b.v[j];
      }
      return;
    }
    for (int j = 0; j < valid; ++j) w[j] = p[o + j];
  }
  static __device__ __forceinline__ void Store8(float* p, int16_t*, int64_t o, int valid, const float* w) {
    if (valid == kPerLane) {
      Vec<float, 4> a, b;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        a.v[j] = w[j];
        b.v[j] = w[j + 4];
      }
      cuda::Store<float, 4>(p + o, a);
      cuda::Store<float, 4>(p + o + 4, b);
      return;
    }
    for (int j = 0; j < valid; ++j) p[o + j] = w[j];
  }
};

template <typename G>
__device__ __forceinline__ void LoadGrad8(const G* g, int64_t o, int valid, float* out) {
  if (valid == kPerLane) {
    if constexpr (sizeof(G) == 2) {
      const Vec<G, 8> v = Load<G, 8>(g + o);
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) out[j] = ToFloat(v.v[j]);
    } else {
      const Vec<G, 4> a = Load<G, 4>(g + o), b = Load<G, 4>(g + o + 4);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        out[j] = ToFloat(a.v[j]);
        out[j + 4] = ToFloat(b.v[j]);
      }
    }
    return;
  }
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) out[j] = j < valid ? ToFloat(g[o + j]) : 0.0f;
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

// One block of 256 elements by one warp, `grad` the lane's 8 gradient values (0 past n).
// Updates weights and moments in place; the weights are stored before the moments' block
// maxima are taken, so only m and sqrt(v) stay in registers across the shuffles.
template <typename P>
__device__ __forceinline__ void UpdateBlock(P* __restrict__ p, int16_t* __restrict__ low, const float* grad,
                                            int8_t* __restrict__ r_codes, uint8_t* __restrict__ s_codes,
                                            float* __restrict__ r_scale, float* __restrict__ s_max, int64_t block,
                                            int64_t n, const Hyper& h, const StepValues& sv, const CodeTables& t) {
  const int lane = threadIdx.x & 31;
  const int64_t o = block * kCompactBlock + lane * kPerLane;
  const int valid = ValidLanes(n, o);
  const float s_max_old = s_max[block], r_scale_old = r_scale[block];
  Vec<int8_t, 8> rc{};
  Vec<uint8_t, 8> sc{};
  if (valid == kPerLane) {
    rc = Load<int8_t, 8>(r_codes + o);
    sc = Load<uint8_t, 8>(s_codes + o);
  } else {
    for (int j = 0; j < valid; ++j) {
      rc.v[j] = r_codes[o + j];
      sc.v[j] = s_codes[o + j];
    }
  }
  float w[kPerLane] = {}, m[kPerLane], s[kPerLane];
  Weights<P>::Load8(p, low, o, valid, w);
  float lane_s_max = 0.0f, lane_g_sq = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    const float s_old = t.pow[sc.v[j]] * s_max_old;
    const float m_old = static_cast<float>(rc.v[j]) * r_scale_old * s_old;
    const float g = grad[j] * sv.grad_scale;
    lane_g_sq += g * g;  // zero past n
    w[j] -= sv.lr * h.decay * w[j];
    m[j] = m_old * h.beta1 + g * h.one_minus_beta1;
    const float v = (s_old * s_old) * h.beta2 + g * g * h.one_minus_beta2;
    s[j] = j < valid ? sqrtf(v) : 0.0f;
    w[j] -= sv.step_size * m[j] / (s[j] * sv.inv_bc2_sqrt + h.eps);
    lane_s_max = fmaxf(lane_s_max, s[j]);
  }
  Weights<P>::Store8(p, low, o, valid, w);
  if (h.grad_sq_sum != nullptr) {
    const float block_g_sq = cuda::WarpSum(lane_g_sq);
    if (lane == 0) atomicAdd(h.grad_sq_sum, block_g_sq);
  }
  const float block_s_max = WarpMax(lane_s_max);
  const float inv_s_max = block_s_max > 0.0f ? 1.0f / block_s_max : 0.0f;
  float lane_r_max = 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    uint8_t code = 0;
    if (s[j] > 0.0f) {
      const float c = rintf(255.0f + 16.0f * log2f(s[j] * inv_s_max));
      code = static_cast<uint8_t>(fminf(fmaxf(c, 1.0f), 255.0f));
    }
    sc.v[j] = code;
    m[j] *= t.inv[code] * inv_s_max;  // r = m / sqrt(v) as stored (0 where sqrt(v) is 0)
    lane_r_max = fmaxf(lane_r_max, fabsf(m[j]));
  }
  const float block_r_max = WarpMax(lane_r_max);
  const float inv_r_scale = block_r_max > 0.0f ? 127.0f / block_r_max : 0.0f;
#pragma unroll
  for (int j = 0; j < kPerLane; ++j) {
    rc.v[j] = static_cast<int8_t>(fminf(fmaxf(rintf(m[j] * inv_r_scale), -127.0f), 127.0f));
  }
  if (valid == kPerLane) {
    cuda::Store<int8_t, 8>(r_codes + o, rc);
    cuda::Store<uint8_t, 8>(s_codes + o, sc);
  } else {
    for (int j = 0; j < valid; ++j) {
      r_codes[o + j] = rc.v[j];
      s_codes[o + j] = sc.v[j];
    }
  }
  if (lane == 0) {
    s_max[block] = block_s_max;
    r_scale[block] = block_r_max / 127.0f;
  }
}

// Grid-stride over blocks, one warp each. With skip_idle (no weight decay), a block whose
// moments are zero and whose gradient is zero is exactly unchanged: it is left unwritten.
template <typename P, typename G>
__global__ void __launch_bounds__(256) CompactAdamWKernel(P* __restrict__ p, int16_t* __restrict__ low,
                                                          const G* __restrict__ g, int8_t* __restrict__ r_codes,
                                                          uint8_t* __restrict__ s_codes, float* __restrict__ r_scale,
                                                          float* __restrict__ s_max, const float* __restrict__ step,
                                                          int64_t n, Hyper h, bool skip_idle) {
  __shared__ CodeTables tables;
  FillCodeTables(tables);
  const StepValues sv = Values(step, h);
  const int lane = threadIdx.x & 31;
  const int64_t blocks = (n + kCompactBlock - 1) / kCompactBlock;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < blocks; b += warps) {
    const int64_t o = b * kCompactBlock + lane * kPerLane;
    const int valid = ValidLanes(n, o);
    float grad[kPerLane];
    LoadGrad8<G>(g, o, valid, grad);
    if (skip_idle && s_max[b] == 0.0f) {
      bool nonzero = false;
#pragma unroll
      for (int j = 0; j < kPerLane; ++j) nonzero |= grad[j] != 0.0f;
      if (!__any_sync(kFull, nonzero)) continue;
    }
    UpdateBlock<P>(p, low, grad, r_codes, s_codes, r_scale, s_max, b, n, h, sv, tables);
  }
}

// One thread block per table row; its warps take the row's blocks of 256. The gradient of row
// `row` is rows[slot_of[row]] when the token was in the batch, else zero.
template <typename P, typename G>
__global__ void __launch_bounds__(1024) CompactAdamWRowsKernel(P* __restrict__ p, int16_t* __restrict__ low,
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
  const int64_t n = static_cast<int64_t>(gridDim.x) * cols;
  const int64_t row_blocks = cols / kCompactBlock;
  for (int64_t i = threadIdx.x >> 5; i < row_blocks; i += blockDim.x >> 5) {
    const int64_t b = row * row_blocks + i;
    if (skip_idle && slot < 0 && s_max[b] == 0.0f) continue;  // uniform over the warp
    float grad[kPerLane] = {};
    if (slot >= 0) LoadGrad8<G>(rows + static_cast<int64_t>(slot) * cols + i * kCompactBlock, lane * kPerLane, 8, grad);
    UpdateBlock<P>(p, low, grad, r_codes, s_codes, r_scale, s_max, b, n, h, sv, tables);
  }
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
  const int64_t ctas = std::min<int64_t>(cuda::CeilDiv(blocks, 8), int64_t{cuda::NumSms()} * 8);
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
  const int threads = static_cast<int>(std::min<int64_t>(32, cols / kCompactBlock) * 32);
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
