// CUDA kernels of kernels/rope.h. Block = (tph lanes per head, hpb heads); a grid-stride loop
// over tokens. Thread tx of a head owns the vector pairs (lo = v*VEC, hi = D/2 + v*VEC) for
// v = tx, tx + tph, ... so both halves of a rotation live in the same thread.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/rope.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Round;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

// Vector pairs per thread and head: one 16-byte pair covers head_dim <= 256 (bf16: 512); the
// scalar path takes up to 4 (head_dim <= 256). More would spill registers.
template <int VEC>
constexpr int MaxVecs() {
  return VEC == 1 ? 4 : 1;
}
constexpr int kThreads = 256;

struct RopeDims {
  int64_t tokens;  // B * S
  int64_t S;
  int H;
  int D;
  int64_t cos_batch_stride;  // S * D, or 0 when cos/sin have batch 1
};

template <typename T, int VEC>
__device__ __forceinline__ void LoadF(const T* p, float (&out)[VEC]) {
  const Vec<T, VEC> v = Load<T, VEC>(p);
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = ToFloat(v.v[j]);
}

template <typename T, int VEC>
__device__ __forceinline__ void StoreF(T* p, const float (&in)[VEC]) {
  Vec<T, VEC> v;
#pragma unroll
  for (int j = 0; j < VEC; ++j) v.v[j] = static_cast<T>(in[j]);
  Store<T, VEC>(p, v);
}

template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kThreads) RopeForwardKernel(const T* __restrict__ x, const T* __restrict__ cos,
                                                              const T* __restrict__ sin, const T* __restrict__ w,
                                                              T* __restrict__ y, float* __restrict__ rstd,
                                                              RopeDims d, float eps) {
  constexpr int kMaxVecs = MaxVecs<VEC>();
  const int tph = blockDim.x, tx = threadIdx.x, hpb = blockDim.y;
  const int half = d.D / 2, nvh = half / VEC;
  float wlo[kMaxVecs][VEC], whi[kMaxVecs][VEC];
  if (NORM) {
#pragma unroll
    for (int i = 0; i < kMaxVecs; ++i) {
      const int v = i * tph + tx;
      if (v < nvh) {
        LoadF<T, VEC>(w + v * VEC, wlo[i]);
        LoadF<T, VEC>(w + half + v * VEC, whi[i]);
      }
    }
  }
  for (int64_t token = blockIdx.x; token < d.tokens; token += gridDim.x) {
    const int64_t b = token / d.S, s = token - b * d.S;
    const T* crow = cos + b * d.cos_batch_stride + s * d.D;
    const T* srow = sin + b * d.cos_batch_stride + s * d.D;
    float clo[kMaxVecs][VEC], chi[kMaxVecs][VEC], slo[kMaxVecs][VEC], shi[kMaxVecs][VEC];
#pragma unroll
    for (int i = 0; i < kMaxVecs; ++i) {
      const int v = i * tph + tx;
      if (v < nvh) {
        LoadF<T, VEC>(crow + v * VEC, clo[i]);
        LoadF<T, VEC>(crow + half + v * VEC, chi[i]);
        LoadF<T, VEC>(srow + v * VEC, slo[i]);
        LoadF<T, VEC>(srow + half + v * VEC, shi[i]);
      }
    }
    for (int h0 = 0; h0 < d.H; h0 += hpb) {  // uniform trip count: the group shuffles need every lane
      const int h = h0 + threadIdx.y;
      const bool active = h < d.H;
      const int64_t row = token * d.H + h;
      const T* xr = x + row * d.D;
      float xlo[kMaxVecs][VEC], xhi[kMaxVecs][VEC];
      float ss = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxVecs; ++i) {
        const int v = i * tph + tx;
        if (active && v < nvh) {
          LoadF<T, VEC>(xr + v * VEC, xlo[i]);
          LoadF<T, VEC>(xr + half + v * VEC, xhi[i]);
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) xlo[i][j] = xhi[i][j] = 0.f;
        }
        if (NORM) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) ss += xlo[i][j] * xlo[i][j] + xhi[i][j] * xhi[i][j];
        }
      }
      if (NORM) {
        ss = cuda::GroupSum(ss, tph);
        const float r = rsqrtf(ss / static_cast<float>(d.D) + eps);
        if (active && tx == 0) rstd[row] = r;
#pragma unroll
        for (int i = 0; i < kMaxVecs; ++i) {
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            // As RmsNorm: cast(x * r), then times w in T.
            xlo[i][j] = Round<T>(wlo[i][j] * Round<T>(xlo[i][j] * r));
            xhi[i][j] = Round<T>(whi[i][j] * Round<T>(xhi[i][j] * r));
          }
        }
      }
      if (!active) continue;
      T* yr = y + row * d.D;
#pragma unroll
      for (int i = 0; i < kMaxVecs; ++i) {
        const int v = i * tph + tx;
        if (v < nvh) {
          float olo[VEC], ohi[VEC];
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            olo[j] = xlo[i][j] * clo[i][j] - xhi[i][j] * slo[i][j];
            ohi[j] = xhi[i][j] * chi[i][j] + xlo[i][j] * shi[i][j];
          }
          StoreF<T, VEC>(yr + v * VEC, olo);
          StoreF<T, VEC>(yr + half + v * VEC, ohi);
        }
      }
    }
  }
}

// Plain RoPE backward: dx_lo = g_lo*c_lo + g_hi*s_hi, dx_hi = g_hi*c_hi - g_lo*s_lo. With NORM,
// that is the gradient of the normalised row, taken back through RmsNorm; dw accumulates
// per thread, then per block (shared memory), then across blocks (ColumnSumInto).
template <typename T, int VEC, bool NORM>
__global__ void __launch_bounds__(kThreads) RopeBackwardKernel(const T* __restrict__ dy, const T* __restrict__ cos,
                                                               const T* __restrict__ sin, const T* __restrict__ x,
                                                               const T* __restrict__ w, const float* __restrict__ rstd,
                                                               T* __restrict__ dx, float* __restrict__ dw_partial,
                                                               RopeDims d) {
  constexpr int kMaxVecs = MaxVecs<VEC>();
  extern __shared__ float slots[];  // NORM: [hpb][D]
  const int tph = blockDim.x, tx = threadIdx.x, hpb = blockDim.y;
  const int half = d.D / 2, nvh = half / VEC;
  float wlo[kMaxVecs][VEC], whi[kMaxVecs][VEC], dwlo[kMaxVecs][VEC], dwhi[kMaxVecs][VEC];
  if (NORM) {
#pragma unroll
    for (int i = 0; i < kMaxVecs; ++i) {
      const int v = i * tph + tx;
      if (v < nvh) {
        LoadF<T, VEC>(w + v * VEC, wlo[i]);
        LoadF<T, VEC>(w + half + v * VEC, whi[i]);
      }
#pragma unroll
      for (int j = 0; j < VEC; ++j) dwlo[i][j] = dwhi[i][j] = 0.f;
    }
  }
  for (int64_t token = blockIdx.x; token < d.tokens; token += gridDim.x) {
    const int64_t b = token / d.S, s = token - b * d.S;
    const T* crow = cos + b * d.cos_batch_stride + s * d.D;
    const T* srow = sin + b * d.cos_batch_stride + s * d.D;
    float clo[kMaxVecs][VEC], chi[kMaxVecs][VEC], slo[kMaxVecs][VEC], shi[kMaxVecs][VEC];
#pragma unroll
    for (int i = 0; i < kMaxVecs; ++i) {
      const int v = i * tph + tx;
      if (v < nvh) {
        LoadF<T, VEC>(crow + v * VEC, clo[i]);
        LoadF<T, VEC>(crow + half + v * VEC, chi[i]);
        LoadF<T, VEC>(srow + v * VEC, slo[i]);
        LoadF<T, VEC>(srow + half + v * VEC, shi[i]);
      }
    }
    for (int h0 = 0; h0 < d.H; h0 += hpb) {
      const int h = h0 + threadIdx.y;
      const bool active = h < d.H;
      const int64_t row = token * d.H + h;
      float glo[kMaxVecs][VEC], ghi[kMaxVecs][VEC];
#pragma unroll
      for (int i = 0; i < kMaxVecs; ++i) {
        const int v = i * tph + tx;
        if (active && v < nvh) {
          float dlo[VEC], dhi[VEC];
          LoadF<T, VEC>(dy + row * d.D + v * VEC, dlo);
          LoadF<T, VEC>(dy + row * d.D + half + v * VEC, dhi);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            glo[i][j] = dlo[j] * clo[i][j] + dhi[j] * shi[i][j];
            ghi[i][j] = dhi[j] * chi[i][j] - dlo[j] * slo[i][j];
          }
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) glo[i][j] = ghi[i][j] = 0.f;
        }
      }
      if (!NORM) {
        if (!active) continue;
#pragma unroll
        for (int i = 0; i < kMaxVecs; ++i) {
          const int v = i * tph + tx;
          if (v < nvh) {
            StoreF<T, VEC>(dx + row * d.D + v * VEC, glo[i]);
            StoreF<T, VEC>(dx + row * d.D + half + v * VEC, ghi[i]);
          }
        }
        continue;
      }
      // Through RmsNorm: gn = round(round(g) * w), dx = r * (gn - xhat * mean(gn * xhat)).
      const float r = active ? rstd[row] : 0.f;
      float xlo[kMaxVecs][VEC], xhi[kMaxVecs][VEC];
      float dot = 0.f;
#pragma unroll
      for (int i = 0; i < kMaxVecs; ++i) {
        const int v = i * tph + tx;
        if (active && v < nvh) {
          LoadF<T, VEC>(x + row * d.D + v * VEC, xlo[i]);
          LoadF<T, VEC>(x + row * d.D + half + v * VEC, xhi[i]);
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            xlo[i][j] *= r;
            xhi[i][j] *= r;
            glo[i][j] = Round<T>(glo[i][j]);
            ghi[i][j] = Round<T>(ghi[i][j]);
            dot += Round<T>(glo[i][j] * wlo[i][j]) * xlo[i][j] + Round<T>(ghi[i][j] * whi[i][j]) * xhi[i][j];
          }
        } else {
#pragma unroll
          for (int j = 0; j < VEC; ++j) xlo[i][j] = xhi[i][j] = 0.f;
        }
      }
      dot = cuda::GroupSum(dot, tph) / static_cast<float>(d.D);
      if (!active) continue;
#pragma unroll
      for (int i = 0; i < kMaxVecs; ++i) {
        const int v = i * tph + tx;
        if (v < nvh) {
          float olo[VEC], ohi[VEC];
#pragma unroll
          for (int j = 0; j < VEC; ++j) {
            olo[j] = r * (Round<T>(glo[i][j] * wlo[i][j]) - xlo[i][j] * dot);
            ohi[j] = r * (Round<T>(ghi[i][j] * whi[i][j]) - xhi[i][j] * dot);
            dwlo[i][j] += glo[i][j] * Round<T>(xlo[i][j]);
            dwhi[i][j] += ghi[i][j] * Round<T>(xhi[i][j]);
          }
          StoreF<T, VEC>(dx + row * d.D + v * VEC, olo);
          StoreF<T, VEC>(dx + row * d.D + half + v * VEC, ohi);
        }
      }
    }
  }
  if (!NORM) return;
#pragma unroll
  for (int i = 0; i < kMaxVecs; ++i) {
    const int v = i * tph + tx;
    if (v < nvh) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        slots[threadIdx.y * d.D + v * VEC + j] = dwlo[i][j];
        slots[threadIdx.y * d.D + half + v * VEC + j] = dwhi[i][j];
      }
    }
  }
  __syncthreads();
  for (int c = tx + threadIdx.y * tph; c < d.D; c += tph * hpb) {
    float sum = 0.f;
    for (int t = 0; t < hpb; ++t) sum += slots[t * d.D + c];
    dw_partial[static_cast<int64_t>(blockIdx.x) * d.D + c] = sum;
  }
}

struct Launch {
  bool vec;
  dim3 block;
  RopeDims dims;
};

// A tensor whose data pointer is 16-byte aligned (a copy only for odd views).
at::Tensor Aligned(const at::Tensor& t) {
  if (!t.defined() || cuda::Aligned16(t.data_ptr())) return t;
  return t.clone(at::MemoryFormat::Contiguous);
}

Launch Plan(const at::Tensor& x, const at::Tensor& cos) {
  Launch l;
  l.dims.tokens = x.size(0) * x.size(1);
  l.dims.S = x.size(1);
  l.dims.H = static_cast<int>(x.size(2));
  l.dims.D = static_cast<int>(x.size(3));
  l.dims.cos_batch_stride = cos.size(0) == 1 ? 0 : x.size(1) * x.size(3);
  const int64_t half = l.dims.D / 2, vec = 16 / x.element_size();
  l.vec = half % vec == 0;
  const int64_t nvh = l.vec ? half / vec : half;
  TORCH_CHECK(nvh <= 32 * (l.vec ? MaxVecs<8>() : MaxVecs<1>()), "RoPE CUDA: head_dim ", l.dims.D, " too large for the kernel");
  const int tph = std::min(32, cuda::NextPow2(nvh));
  const int hpb = std::max(32 / tph, std::min(kThreads / tph, cuda::NextPow2(l.dims.H)));
  l.block = dim3(tph, hpb);
  return l;
}

void CheckOperands(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin, const at::Tensor& w) {
  TORCH_CHECK(RopeCudaSupports(x, cos, sin, w), "RoPE CUDA: unsupported operands: x ", x.sizes(), " ",
              x.scalar_type(), ", cos ", cos.sizes(), " ", cos.scalar_type(), ", sin ", sin.sizes(),
              " (x [B, S, H, D] and cos/sin [B or 1, S, D] of one dtype, D even)");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> RopeForwardCuda(const at::Tensor& x_in, const at::Tensor& cos_in,
                                                   const at::Tensor& sin_in, const at::Tensor& w_in, double eps) {
  CheckOperands(x_in, cos_in, sin_in, w_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = Aligned(x_in.contiguous()), cos = Aligned(cos_in.contiguous()),
                   sin = Aligned(sin_in.contiguous());
  const at::Tensor w = w_in.defined() ? Aligned(w_in.contiguous()) : at::Tensor();
  const Launch l = Plan(x, cos);
  at::Tensor y = at::empty_like(x);
  at::Tensor rstd = w.defined() ? at::empty({l.dims.tokens * l.dims.H}, x.options().dtype(at::kFloat)) : at::Tensor();
  if (x.numel() == 0) return {y, rstd};
  const int64_t per_sm = 2048 / (l.block.x * l.block.y);
  const int64_t grid = std::min<int64_t>(l.dims.tokens, per_sm * cuda::NumSms());
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(x.scalar_type(), "rope_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int V = cuda::kVec16<scalar_t>;
    auto* kernel = l.vec ? (w.defined() ? RopeForwardKernel<scalar_t, V, true> : RopeForwardKernel<scalar_t, V, false>)
                         : (w.defined() ? RopeForwardKernel<scalar_t, 1, true> : RopeForwardKernel<scalar_t, 1, false>);
    kernel<<<grid, l.block, 0, stream>>>(x.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                                         w.defined() ? w.data_ptr<scalar_t>() : nullptr, y.data_ptr<scalar_t>(),
                                         w.defined() ? rstd.data_ptr<float>() : nullptr, l.dims,
                                         static_cast<float>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, rstd};
}

std::tuple<at::Tensor, at::Tensor> RopeBackwardCuda(const at::Tensor& dy_in, const at::Tensor& cos_in,
                                                    const at::Tensor& sin_in, const at::Tensor& x_in,
                                                    const at::Tensor& w_in, const at::Tensor& rstd) {
  CheckOperands(dy_in, cos_in, sin_in, w_in);
  const bool norm = w_in.defined();
  if (norm) {
    TORCH_CHECK(x_in.sizes() == dy_in.sizes() && x_in.scalar_type() == dy_in.scalar_type(),
                "RoPE CUDA backward: x must match dy");
    TORCH_CHECK(rstd.defined() && rstd.scalar_type() == at::kFloat && rstd.numel() == dy_in.numel() / dy_in.size(3),
                "RoPE CUDA backward: rstd must be fp32 [B*S*H]");
  }
  c10::cuda::CUDAGuard guard(dy_in.device());
  const at::Tensor dy = Aligned(dy_in.contiguous()), cos = Aligned(cos_in.contiguous()),
                   sin = Aligned(sin_in.contiguous());
  const at::Tensor x = norm ? Aligned(x_in.contiguous()) : at::Tensor();
  const at::Tensor w = norm ? Aligned(w_in.contiguous()) : at::Tensor();
  const at::Tensor r = norm ? rstd.contiguous() : at::Tensor();
  const Launch l = Plan(dy, cos);
  at::Tensor dx = at::empty_like(dy);
  at::Tensor dw = norm ? at::empty_like(w) : at::Tensor();
  if (dy.numel() == 0) {
    if (norm) dw.zero_();
    return {dx, dw};
  }
  const size_t smem = norm ? static_cast<size_t>(l.block.y) * l.dims.D * sizeof(float) : 0;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(dy.scalar_type(), "rope_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    constexpr int V = cuda::kVec16<scalar_t>;
    auto* kernel = l.vec ? (norm ? RopeBackwardKernel<scalar_t, V, true> : RopeBackwardKernel<scalar_t, V, false>)
                         : (norm ? RopeBackwardKernel<scalar_t, 1, true> : RopeBackwardKernel<scalar_t, 1, false>);
    if (smem > 48 * 1024) {
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem)));
    }
    int per_sm = 1;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, l.block.x * l.block.y, smem));
    const int64_t grid = std::min<int64_t>(l.dims.tokens, static_cast<int64_t>(std::max(per_sm, 1)) * cuda::NumSms());
    at::Tensor partial = norm ? at::empty({grid, l.dims.D}, dy.options().dtype(at::kFloat)) : at::Tensor();
    kernel<<<grid, l.block, smem, stream>>>(dy.data_ptr<scalar_t>(), cos.data_ptr<scalar_t>(), sin.data_ptr<scalar_t>(),
                                            norm ? x.data_ptr<scalar_t>() : nullptr,
                                            norm ? w.data_ptr<scalar_t>() : nullptr,
                                            norm ? r.data_ptr<float>() : nullptr, dx.data_ptr<scalar_t>(),
                                            norm ? partial.data_ptr<float>() : nullptr, l.dims);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (norm) cuda::ColumnSumInto(partial, dw);
  });
  return {dx, dw};
}

}  // namespace ftd::kernels
