// CUDA kernels of kernels/mla_qkv.h. One block a token (grid-stride): 16-byte vectors for the
// copied columns, the rotary columns element by element (a third of a row or less, and the
// interleaved gather is strided); the key's rotary part is rotated once a token, in shared
// memory, and written to every head. The backward sums dk_rope over the heads in a fixed order
// (no atomics), so a step is reproducible bit for bit.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>

#include "kernels/cuda_utils.cuh"
#include "kernels/mla_qkv.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kThreads = 256;
constexpr int kMaxRope = 256;  // rotary width bound (the shared key row)

struct MlaDims {
  int64_t tokens;
  int64_t S;
  int H, dn, dr, dv, v_width;
  int64_t k_rope_token_stride;  // elements between consecutive tokens' k_rope rows
  int64_t cos_batch_stride;     // S * dr, or 0 when cos/sin have batch 1
  bool interleave;
};

// Where rotate-half element k sits in the row as stored: [evens | odds] when interleaved.
__device__ __forceinline__ int Source(int k, int half, bool interleave) {
  return !interleave ? k : (k < half ? 2 * k : 2 * (k - half) + 1);
}

// Element i (rotate-half order) of the rotated row x: x'_i c_i + rotate_half(x')_i s_i.
template <typename T>
__device__ __forceinline__ float Rotated(const T* __restrict__ x, const T* __restrict__ c, const T* __restrict__ s,
                                         int i, int half, bool interleave) {
  const float xi = ToFloat(x[Source(i, half, interleave)]);
  const float xp = ToFloat(x[Source(i < half ? i + half : i - half, half, interleave)]);
  return xi * ToFloat(c[i]) + (i < half ? -xp : xp) * ToFloat(s[i]);
}

// Element p (the row's stored order) of the gradient of x, from the rotated row's gradient dy:
// dx'_k = dy_k c_k + rotate_half^T(dy s)_k, with rotate_half^T [a, b] = [b, -a].
template <typename T>
__device__ __forceinline__ float RotatedBack(const T* __restrict__ dy, const T* __restrict__ c,
                                             const T* __restrict__ s, int p, int half, bool interleave) {
  const int k = !interleave ? p : ((p & 1) ? half + (p >> 1) : (p >> 1));
  const float g = ToFloat(dy[k]) * ToFloat(c[k]);
  return k < half ? g + ToFloat(dy[k + half]) * ToFloat(s[k + half])
                  : g - ToFloat(dy[k - half]) * ToFloat(s[k - half]);
}

// Offset of a token's cos/sin row.
__device__ __forceinline__ int64_t AngleRow(int64_t token, const MlaDims& d) {
  const int64_t b = token / d.S;
  return b * d.cos_batch_stride + (token - b * d.S) * d.dr;
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    MlaQkvForwardKernel(const T* __restrict__ q, const T* __restrict__ kv, const T* __restrict__ k_rope,
                        const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ query,
                        T* __restrict__ key, T* __restrict__ value, MlaDims d) {
  constexpr int VEC = cuda::kVec16<T>;
  __shared__ float k_rot[kMaxRope];
  const int half = d.dr / 2, dqk = d.dn + d.dr, dkv = d.dn + d.dv;
  const int row_vecs = dqk / VEC, v_vecs = d.v_width / VEC;
  for (int64_t token = blockIdx.x; token < d.tokens; token += gridDim.x) {
    const T* c = cos + AngleRow(token, d);
    const T* sn = sin + AngleRow(token, d);
    __syncthreads();  // the previous token's k_rot has been read
    const T* kr = k_rope + token * d.k_rope_token_stride;
    for (int i = threadIdx.x; i < d.dr; i += blockDim.x) k_rot[i] = Rotated(kr, c, sn, i, half, d.interleave);
    __syncthreads();
    const T* qt = q + token * d.H * dqk;
    const T* kvt = kv + token * d.H * dkv;
    T* qo = query + token * d.H * dqk;
    T* ko = key + token * d.H * dqk;
    for (int v = threadIdx.x; v < d.H * row_vecs; v += blockDim.x) {
      const int h = v / row_vecs, col = (v - h * row_vecs) * VEC;
      if (col < d.dn) {
        Store<T, VEC>(qo + h * dqk + col, Load<T, VEC>(qt + h * dqk + col));
        Store<T, VEC>(ko + h * dqk + col, Load<T, VEC>(kvt + h * dkv + col));
      } else {
        Vec<T, VEC> qv, kv_out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const int i = col - d.dn + j;
          qv.v[j] = static_cast<T>(Rotated(qt + h * dqk + d.dn, c, sn, i, half, d.interleave));
          kv_out.v[j] = static_cast<T>(k_rot[i]);
        }
        Store<T, VEC>(qo + h * dqk + col, qv);
        Store<T, VEC>(ko + h * dqk + col, kv_out);
      }
    }
    T* vo = value + token * d.H * d.v_width;
    for (int v = threadIdx.x; v < d.H * v_vecs; v += blockDim.x) {
      const int h = v / v_vecs, col = (v - h * v_vecs) * VEC;
      Vec<T, VEC> out;
      if (col < d.dv) {
        out = Load<T, VEC>(kvt + h * dkv + d.dn + col);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<T>(0.0f);
      }
      Store<T, VEC>(vo + h * d.v_width + col, out);
    }
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
    MlaQkvBackwardKernel(const T* __restrict__ dquery, const T* __restrict__ dkey, const T* __restrict__ dvalue,
                         const T* __restrict__ cos, const T* __restrict__ sin, T* __restrict__ dq,
                         T* __restrict__ dkv, T* __restrict__ dk_rope, MlaDims d) {
  constexpr int VEC = cuda::kVec16<T>;
  const int half = d.dr / 2, dqk = d.dn + d.dr, dkvw = d.dn + d.dv;
  const int row_vecs = dqk / VEC, v_vecs = d.dv / VEC;
  for (int64_t token = blockIdx.x; token < d.tokens; token += gridDim.x) {
    const T* c = cos + AngleRow(token, d);
    const T* sn = sin + AngleRow(token, d);
    const T* dqt = dquery + token * d.H * dqk;
    const T* dkt = dkey + token * d.H * dqk;
    T* dqo = dq + token * d.H * dqk;
    T* dkvo = dkv + token * d.H * dkvw;
    for (int v = threadIdx.x; v < d.H * row_vecs; v += blockDim.x) {
      const int h = v / row_vecs, col = (v - h * row_vecs) * VEC;
      if (col < d.dn) {
        Store<T, VEC>(dqo + h * dqk + col, Load<T, VEC>(dqt + h * dqk + col));
        Store<T, VEC>(dkvo + h * dkvw + col, Load<T, VEC>(dkt + h * dqk + col));
      } else {
        Vec<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          out.v[j] = static_cast<T>(RotatedBack(dqt + h * dqk + d.dn, c, sn, col - d.dn + j, half, d.interleave));
        }
        Store<T, VEC>(dqo + h * dqk + col, out);
      }
    }
    const T* dvt = dvalue + token * d.H * d.v_width;
    for (int v = threadIdx.x; v < d.H * v_vecs; v += blockDim.x) {
      const int h = v / v_vecs, col = (v - h * v_vecs) * VEC;
      Store<T, VEC>(dkvo + h * dkvw + d.dn + col, Load<T, VEC>(dvt + h * d.v_width + col));
    }
    // The key's rotary part is one head's, broadcast: its gradient sums over the heads.
    for (int p = threadIdx.x; p < d.dr; p += blockDim.x) {
      float sum = 0.0f;
      for (int h = 0; h < d.H; ++h) sum += RotatedBack(dkt + h * dqk + d.dn, c, sn, p, half, d.interleave);
      dk_rope[token * d.dr + p] = static_cast<T>(sum);
    }
  }
}

int Blocks(int64_t tokens) { return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(tokens, cuda::NumSms() * 8))); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvForwardCuda(const at::Tensor& q, const at::Tensor& kv,
                                                                 const at::Tensor& k_rope, const at::Tensor& cos,
                                                                 const at::Tensor& sin, int64_t nope_dim,
                                                                 int64_t v_width, bool interleave) {
  TORCH_CHECK(MlaQkvCudaSupports(q, kv, k_rope, cos, sin, nope_dim, v_width),
              "MlaQkvForwardCuda: tensors the kernel does not take (see MlaQkvCudaSupports)");
  c10::cuda::CUDAGuard guard(q.device());
  const int64_t B = q.size(0), S = q.size(1), H = q.size(2), dn = nope_dim, dr = q.size(3) - dn,
                dv = kv.size(3) - dn;
  at::Tensor query = at::empty(q.sizes(), q.options()), key = at::empty(q.sizes(), q.options());
  at::Tensor value = at::empty({B, S, H, v_width}, q.options());
  const MlaDims d{B * S, S, static_cast<int>(H), static_cast<int>(dn), static_cast<int>(dr), static_cast<int>(dv),
                  static_cast<int>(v_width), k_rope.stride(1), cos.size(0) == 1 ? 0 : S * dr, interleave};
  if (d.tokens == 0) return {query, key, value};
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(q.scalar_type(), "MlaQkvForwardCuda", [&](auto tag) {
    using T = decltype(tag);
    MlaQkvForwardKernel<T><<<Blocks(d.tokens), kThreads, 0, stream>>>(
        q.data_ptr<T>(), kv.data_ptr<T>(), k_rope.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(),
        query.data_ptr<T>(), key.data_ptr<T>(), value.data_ptr<T>(), d);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {query, key, value};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> MlaQkvBackwardCuda(const at::Tensor& dquery, const at::Tensor& dkey,
                                                                  const at::Tensor& dvalue, const at::Tensor& cos,
                                                                  const at::Tensor& sin, int64_t nope_dim,
                                                                  int64_t v_dim, bool interleave) {
  TORCH_CHECK(dquery.is_contiguous() && dkey.is_contiguous() && dvalue.is_contiguous() &&
                  dkey.sizes() == dquery.sizes() && dvalue.dim() == 4 && dvalue.size(3) >= v_dim,
              "MlaQkvBackwardCuda: gradients of the wrong layout");
  c10::cuda::CUDAGuard guard(dquery.device());
  const int64_t B = dquery.size(0), S = dquery.size(1), H = dquery.size(2), dn = nope_dim,
                dr = dquery.size(3) - dn;
  at::Tensor dq = at::empty(dquery.sizes(), dquery.options());
  at::Tensor dkv = at::empty({B, S, H, dn + v_dim}, dquery.options());
  at::Tensor dk_rope = at::empty({B, S, dr}, dquery.options());
  const MlaDims d{B * S, S, static_cast<int>(H), static_cast<int>(dn), static_cast<int>(dr), static_cast<int>(v_dim),
                  static_cast<int>(dvalue.size(3)), dr, cos.size(0) == 1 ? 0 : S * dr, interleave};
  if (d.tokens == 0) return {dq, dkv, dk_rope};
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(dquery.scalar_type(), "MlaQkvBackwardCuda", [&](auto tag) {
    using T = decltype(tag);
    MlaQkvBackwardKernel<T><<<Blocks(d.tokens), kThreads, 0, stream>>>(
        dquery.data_ptr<T>(), dkey.data_ptr<T>(), dvalue.data_ptr<T>(), cos.data_ptr<T>(), sin.data_ptr<T>(),
        dq.data_ptr<T>(), dkv.data_ptr<T>(), dk_rope.data_ptr<T>(), d);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {dq, dkv, dk_rope};
}

}  // namespace ftd::kernels
