// CUDA kernels of kernels/router.h. One warp per token; lane l holds experts l, l+32, ... (PL of
// them, coalesced loads). Top-k is k rounds of a warp arg-max over the unchosen experts with
// torch's order (NaN largest, then value, then lower index). Lane j keeps the j-th choice, so
// the renormalisation and the outputs need no shared memory. Counts go through a shared-memory
// histogram per block, flushed with one global atomic per expert and block.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/router.h"

namespace ftd::kernels {
namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kMaxExperts = 1024;

// Whether (va, ia) ranks before (vb, ib) in a descending top-k (NaN first, as torch).
__device__ __forceinline__ bool RanksBefore(float va, int ia, float vb, int ib) {
  const bool na = isnan(va), nb = isnan(vb);
  if (na != nb) return na;
  if (!na && va != vb) return va > vb;
  return ia < ib;
}

__device__ __forceinline__ float Sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// Scores of the lane's experts: softmax over the row (max and sum across the warp) or sigmoid.
template <int PL>
__device__ __forceinline__ void ComputeScores(const float (&l)[PL], int lane, int E, bool softmax, float (&p)[PL]) {
  if (softmax) {
    float m = -INFINITY;
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      if (i * 32 + lane < E) m = fmaxf(m, l[i]);
    }
    for (int offset = 16; offset > 0; offset >>= 1) m = fmaxf(m, __shfl_xor_sync(0xffffffffu, m, offset));
    float s = 0.f;
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      p[i] = i * 32 + lane < E ? expf(l[i] - m) : 0.f;
      s += p[i];
    }
    s = cuda::WarpSum(s);
#pragma unroll
    for (int i = 0; i < PL; ++i) p[i] = p[i] / s;
  } else {
#pragma unroll
    for (int i = 0; i < PL; ++i) p[i] = Sigmoid(l[i]);
  }
}

template <int PL, typename W>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) RouterForwardKernel(
    const float* __restrict__ logits, const float* __restrict__ bias, int64_t T, int E, int k, bool softmax,
    bool renormalize, float scale, W* __restrict__ weights, int64_t* __restrict__ experts,
    unsigned long long* __restrict__ counts) {
  extern __shared__ int hist[];  // [E]
  for (int e = threadIdx.x + threadIdx.y * 32; e < E; e += 32 * kWarpsPerBlock) hist[e] = 0;
  __syncthreads();
  const int lane = threadIdx.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; t < T;
       t += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    float l[PL], p[PL], sel[PL];
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      const int e = i * 32 + lane;
      l[i] = e < E ? logits[t * E + e] : 0.f;
    }
    ComputeScores<PL>(l, lane, E, softmax, p);
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      const int e = i * 32 + lane;
      sel[i] = (bias != nullptr && e < E) ? p[i] + bias[e] : p[i];
    }
    unsigned taken = 0;  // bit i: expert i*32+lane chosen (or out of range)
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      if (i * 32 + lane >= E) taken |= 1u << i;
    }
    int my_expert = 0;
    float my_score = 0.f;
    for (int j = 0; j < k; ++j) {
      // The lane's best unchosen expert (ascending index, so ties keep the lower one).
      float bv = 0.f, bp = 0.f;
      int bi = -1;
#pragma unroll
      for (int i = 0; i < PL; ++i) {
        if (!(taken & (1u << i)) && (bi < 0 || RanksBefore(sel[i], i * 32 + lane, bv, bi))) {
          bv = sel[i];
          bp = p[i];
          bi = i * 32 + lane;
        }
      }
      for (int offset = 16; offset > 0; offset >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, offset);
        const float op = __shfl_xor_sync(0xffffffffu, bp, offset);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, offset);
        if (oi >= 0 && (bi < 0 || RanksBefore(ov, oi, bv, bi))) {
          bv = ov;
          bp = op;
          bi = oi;
        }
      }
      // k <= E guarantees a winner (bi >= 0) in every round.
      if ((bi & 31) == lane) taken |= 1u << (bi >> 5);
      if (lane == j) {
        my_expert = bi;
        my_score = bp;
      }
    }
    float w = my_score;
    if (renormalize) {
      const float z = cuda::WarpSum(lane < k ? my_score : 0.f);
      w = my_score / z;
    }
    w *= scale;
    if (lane < k) {
      weights[t * k + lane] = static_cast<W>(w);
      experts[t * k + lane] = my_expert;
      atomicAdd(&hist[my_expert], 1);
    }
  }
  __syncthreads();
  for (int e = threadIdx.x + threadIdx.y * 32; e < E; e += 32 * kWarpsPerBlock) {
    if (hist[e] != 0) atomicAdd(counts + e, static_cast<unsigned long long>(hist[e]));
  }
}

template <int PL, typename W>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) RouterBackwardKernel(
    const W* __restrict__ dweights, const float* __restrict__ logits, const int64_t* __restrict__ experts,
    int64_t T, int E, int k, bool softmax, bool renormalize, float scale, float* __restrict__ dlogits) {
  const int lane = threadIdx.x;
  for (int64_t t = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; t < T;
       t += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    float l[PL], p[PL];
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      const int e = i * 32 + lane;
      l[i] = e < E ? logits[t * E + e] : 0.f;
    }
    ComputeScores<PL>(l, lane, E, softmax, p);
    // Lane j < k: the j-th chosen expert, its score v and its weight gradient.
    int ej = 0;
    float v = 0.f, dw = 0.f;
    if (lane < k) {
      ej = static_cast<int>(experts[t * k + lane]);
      dw = static_cast<float>(dweights[t * k + lane]);
    }
    // v_j = p[ej], held by lane ej % 32 in slot ej / 32: fetched by shuffles in k rounds.
    for (int j = 0; j < k; ++j) {
      const int e = __shfl_sync(0xffffffffu, ej, j);
      float mine = 0.f;
#pragma unroll
      for (int i = 0; i < PL; ++i) {
        if (i * 32 + lane == e) mine = p[i];
      }
      const float got = __shfl_sync(0xffffffffu, mine, e & 31);
      if (lane == j) v = got;
    }
    float dv;
    if (renormalize) {
      const float z = cuda::WarpSum(lane < k ? v : 0.f);
      const float dot_wv = cuda::WarpSum(lane < k ? dw * v : 0.f);
      dv = scale / z * (dw - dot_wv / z);
    } else {
      dv = scale * dw;
    }
    if (lane >= k) dv = 0.f;
    float dp[PL];
#pragma unroll
    for (int i = 0; i < PL; ++i) dp[i] = 0.f;
    for (int j = 0; j < k; ++j) {
      const int e = __shfl_sync(0xffffffffu, ej, j);
      const float d = __shfl_sync(0xffffffffu, dv, j);
#pragma unroll
      for (int i = 0; i < PL; ++i) {
        if (i * 32 + lane == e) dp[i] = d;
      }
    }
    const float dot = softmax ? cuda::WarpSum(lane < k ? dv * v : 0.f) : 0.f;
#pragma unroll
    for (int i = 0; i < PL; ++i) {
      const int e = i * 32 + lane;
      if (e < E) dlogits[t * E + e] = softmax ? p[i] * (dp[i] - dot) : dp[i] * p[i] * (1.f - p[i]);
    }
  }
}

template <typename F>
void WithPerLane(int E, F&& f) {
  if (E <= 32) {
    f(std::integral_constant<int, 1>{});
  } else if (E <= 64) {
    f(std::integral_constant<int, 2>{});
  } else if (E <= 128) {
    f(std::integral_constant<int, 4>{});
  } else if (E <= 256) {
    f(std::integral_constant<int, 8>{});
  } else if (E <= 512) {
    f(std::integral_constant<int, 16>{});
  } else {
    f(std::integral_constant<int, 32>{});
  }
}

void CheckCuda(const at::Tensor& logits, const at::Tensor& bias, const RouterOptions& o) {
  TORCH_CHECK(logits.is_cuda() && logits.dim() == 2 && logits.scalar_type() == at::kFloat,
              "RouterTopKCuda: logits must be CUDA fp32 [T, E]");
  const int64_t E = logits.size(1);
  TORCH_CHECK(E >= 1 && E <= kMaxExperts, "RouterTopKCuda: E must be in [1, ", kMaxExperts, "], got ", E);
  TORCH_CHECK(o.top_k >= 1 && o.top_k <= std::min<int64_t>(E, 32), "RouterTopKCuda: top_k must be in [1, min(E, 32)]");
  if (bias.defined()) {
    TORCH_CHECK(bias.is_cuda() && bias.scalar_type() == at::kFloat && bias.numel() == E,
                "RouterTopKCuda: bias must be CUDA fp32 [E]");
  }
}

int64_t GridFor(int64_t T) {
  return std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(T, kWarpsPerBlock), 4LL * cuda::NumSms()));
}

}  // namespace

RouterOutput RouterTopKForwardCuda(const at::Tensor& logits_in, const at::Tensor& bias_in, const RouterOptions& o) {
  CheckCuda(logits_in, bias_in, o);
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous();
  const at::Tensor bias = bias_in.defined() ? bias_in.contiguous() : at::Tensor();
  const int64_t T = logits.size(0);
  const int E = static_cast<int>(logits.size(1)), k = static_cast<int>(o.top_k);
  RouterOutput r;
  r.weights = at::empty({T, k}, logits.options().dtype(o.weight_dtype));
  r.experts = at::empty({T, k}, logits.options().dtype(at::kLong));
  r.counts = at::zeros({E}, logits.options().dtype(at::kLong));
  if (T == 0) return r;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool softmax = o.score == RouterScore::kSoftmax;
  cuda::DispatchFloatTypes(o.weight_dtype, "router_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    WithPerLane(E, [&](auto pl) {
      RouterForwardKernel<decltype(pl)::value, scalar_t><<<GridFor(T), dim3(32, kWarpsPerBlock), E * sizeof(int), stream>>>(
          logits.data_ptr<float>(), bias.defined() ? bias.data_ptr<float>() : nullptr, T, E, k, softmax,
          o.renormalize, static_cast<float>(o.scale), r.weights.data_ptr<scalar_t>(), r.experts.data_ptr<int64_t>(),
          reinterpret_cast<unsigned long long*>(r.counts.data_ptr<int64_t>()));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return r;
}

at::Tensor RouterTopKBackwardCuda(const at::Tensor& dweights_in, const at::Tensor& logits_in,
                                  const at::Tensor& experts_in, const RouterOptions& o) {
  CheckCuda(logits_in, at::Tensor(), o);
  const int64_t T = logits_in.size(0);
  TORCH_CHECK(dweights_in.is_cuda() && dweights_in.dim() == 2 && dweights_in.size(0) == T &&
                  dweights_in.size(1) == o.top_k,
              "RouterTopKBackwardCuda: dweights must be CUDA [T, k]");
  TORCH_CHECK(experts_in.scalar_type() == at::kLong && experts_in.sizes() == dweights_in.sizes(),
              "RouterTopKBackwardCuda: experts must be int64 [T, k]");
  c10::cuda::CUDAGuard guard(logits_in.device());
  const at::Tensor logits = logits_in.contiguous(), dweights = dweights_in.contiguous(), experts = experts_in.contiguous();
  const int E = static_cast<int>(logits.size(1)), k = static_cast<int>(o.top_k);
  at::Tensor dlogits = at::empty_like(logits);
  if (T == 0) return dlogits;
  auto stream = at::cuda::getCurrentCUDAStream();
  const bool softmax = o.score == RouterScore::kSoftmax;
  cuda::DispatchFloatTypes(dweights.scalar_type(), "router_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    WithPerLane(E, [&](auto pl) {
      RouterBackwardKernel<decltype(pl)::value, scalar_t><<<GridFor(T), dim3(32, kWarpsPerBlock), 0, stream>>>(
          dweights.data_ptr<scalar_t>(), logits.data_ptr<float>(), experts.data_ptr<int64_t>(), T, E, k, softmax,
          o.renormalize, static_cast<float>(o.scale), dlogits.data_ptr<float>());
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return dlogits;
}

}  // namespace ftd::kernels
