// CUDA kernels of kernels/rms_norm.h. A row of D elements is owned by `tpr` threads (a lane
// group inside a warp for small D, whole warps otherwise); each thread keeps its slice of the
// row in registers as 16-byte vectors between the statistics pass and the output pass.
// Backward: a persistent grid; each thread accumulates dw for its columns over the rows its
// block visits, the block sums its row slots through shared memory and writes one partial row,
// and a column-sum kernel reduces the partials.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/rms_norm.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Round;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kThreads = 256;
constexpr int kMaxElemsPerThread = 32;
constexpr int64_t kMaxD = 8192;

// Sum over the tpr threads of this row; every thread of the row gets it. `red` holds 32 floats.
// tpr is uniform over the block, so the barriers are reached by all threads.
__device__ __forceinline__ float RowSum(float v, int tpr, float* red) {
  if (tpr <= 32) return cuda::GroupSum(v, tpr);
  v = cuda::WarpSum(v);
  const int lin = threadIdx.x + threadIdx.y * blockDim.x;
  if ((lin & 31) == 0) red[lin >> 5] = v;
  __syncthreads();
  const int first = (threadIdx.y * tpr) >> 5;
  float s = 0.f;
  for (int i = 0; i < (tpr >> 5); ++i) s += red[first + i];
  __syncthreads();
  return s;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) RmsNormForwardKernel(const T* __restrict__ x, const T* __restrict__ residual,
                                                                 const T* __restrict__ w, T* __restrict__ y,
                                                                 T* __restrict__ sum_out, float* __restrict__ rstd_out,
                                                                 int64_t rows, int D, float eps) {
  constexpr int MAXV = kMaxElemsPerThread / VEC;
  __shared__ float red[32];
  const int tpr = blockDim.x, tx = threadIdx.x;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * blockDim.y + threadIdx.y;
  const bool active = row < rows;
  float xs[MAXV][VEC];
  float ss = 0.f;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = (i * tpr + tx) * VEC;
    if (active && c < D) {
      const Vec<T, VEC> xv = Load<T, VEC>(x + row * D + c);
      if (residual != nullptr) {
        const Vec<T, VEC> rv = Load<T, VEC>(residual + row * D + c);
        Vec<T, VEC> sv;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          sv.v[j] = static_cast<T>(ToFloat(xv.v[j]) + ToFloat(rv.v[j]));
          xs[i][j] = ToFloat(sv.v[j]);
        }
        Store<T, VEC>(sum_out + row * D + c, sv);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xs[i][j] = ToFloat(xv.v[j]);
      }
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) xs[i][j] = 0.f;
    }
#pragma unroll
    for (int j = 0; j < VEC; ++j) ss += xs[i][j] * xs[i][j];
  }
  ss = RowSum(ss, tpr, red);
  const float r = rsqrtf(ss / static_cast<float>(D) + eps);
  if (!active) return;  // no barrier follows
  if (tx == 0) rstd_out[row] = r;
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = (i * tpr + tx) * VEC;
    if (c < D) {
      const Vec<T, VEC> wv = Load<T, VEC>(w + c);
      Vec<T, VEC> out;
#pragma unroll
      for (int j = 0; j < VEC; ++j) out.v[j] = static_cast<T>(ToFloat(wv.v[j]) * Round<T>(xs[i][j] * r));
      Store<T, VEC>(y + row * D + c, out);
    }
  }
}

// dx = r * (g - xhat * mean(g * xhat)) (+ dsum), g = round(dy * w), xhat = x * r;
// dw += dy * round(xhat) into this block's partial row.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads) RmsNormBackwardKernel(const T* __restrict__ dy, const T* __restrict__ dsum,
                                                                  const T* __restrict__ x, const T* __restrict__ w,
                                                                  const float* __restrict__ rstd, T* __restrict__ dx,
                                                                  float* __restrict__ dw_partial, int64_t rows, int D) {
  constexpr int MAXV = kMaxElemsPerThread / VEC;
  extern __shared__ float smem[];  // [32] reduction scratch, then [rows per block][D] dw slots
  float* red = smem;
  float* slots = smem + 32;
  const int tpr = blockDim.x, tx = threadIdx.x, rpb = blockDim.y;
  float dwacc[MAXV][VEC];
#pragma unroll
  for (int i = 0; i < MAXV; ++i)
#pragma unroll
    for (int j = 0; j < VEC; ++j) dwacc[i][j] = 0.f;

  for (int64_t base = static_cast<int64_t>(blockIdx.x) * rpb; base < rows; base += static_cast<int64_t>(gridDim.x) * rpb) {
    const int64_t row = base + threadIdx.y;
    const bool active = row < rows;
    Vec<T, VEC> xv[MAXV], dv[MAXV];
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int c = (i * tpr + tx) * VEC;
      if (active && c < D) {
        xv[i] = Load<T, VEC>(x + row * D + c);
        dv[i] = Load<T, VEC>(dy + row * D + c);
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) xv[i].v[j] = dv[i].v[j] = static_cast<T>(0.f);
      }
    }
    const float r = active ? rstd[row] : 0.f;
    float dot = 0.f;
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int c = (i * tpr + tx) * VEC;
      if (c < D) {
        const Vec<T, VEC> wv = Load<T, VEC>(w + c);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float g = Round<T>(ToFloat(dv[i].v[j]) * ToFloat(wv.v[j]));
          dot += g * ToFloat(xv[i].v[j]) * r;
        }
      }
    }
    dot = RowSum(dot, tpr, red) / static_cast<float>(D);
    if (!active) continue;  // RowSum's barriers are the only ones inside the loop
#pragma unroll
    for (int i = 0; i < MAXV; ++i) {
      const int c = (i * tpr + tx) * VEC;
      if (c < D) {
        const Vec<T, VEC> wv = Load<T, VEC>(w + c);
        Vec<T, VEC> sv;
        if (dsum != nullptr) sv = Load<T, VEC>(dsum + row * D + c);
        Vec<T, VEC> out;
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          const float d = ToFloat(dv[i].v[j]);
          const float g = Round<T>(d * ToFloat(wv.v[j]));
          const float xhat = ToFloat(xv[i].v[j]) * r;
          float v = r * (g - xhat * dot);
          if (dsum != nullptr) v += ToFloat(sv.v[j]);
          out.v[j] = static_cast<T>(v);
          dwacc[i][j] += d * Round<T>(xhat);
        }
        Store<T, VEC>(dx + row * D + c, out);
      }
    }
  }
  // Sum the block's row slots, one partial row per block.
#pragma unroll
  for (int i = 0; i < MAXV; ++i) {
    const int c = (i * tpr + tx) * VEC;
    if (c < D) {
#pragma unroll
      for (int j = 0; j < VEC; ++j) slots[threadIdx.y * D + c + j] = dwacc[i][j];
    }
  }
  __syncthreads();
  for (int c = threadIdx.x + threadIdx.y * blockDim.x; c < D; c += blockDim.x * blockDim.y) {
    float s = 0.f;
    for (int t = 0; t < rpb; ++t) s += slots[t * D + c];
    dw_partial[static_cast<int64_t>(blockIdx.x) * D + c] = s;
  }
}

struct Shape {
  int vec;       // elements per access
  int tpr;       // threads per row
  int rpb;       // rows per block
};

Shape ChooseShape(int64_t D, bool vectorize, int elem_vec) {
  Shape s;
  s.vec = vectorize ? elem_vec : 1;
  const int64_t nvec = D / s.vec;
  const int64_t maxv = kMaxElemsPerThread / s.vec;
  s.tpr = std::max(cuda::NextPow2(cuda::CeilDiv(nvec, maxv)), std::min(32, cuda::NextPow2(nvec)));
  s.rpb = std::max(1, kThreads / s.tpr);
  return s;
}

template <typename T>
bool Vectorizable(const std::initializer_list<const at::Tensor*>& ts, int64_t D) {
  for (const at::Tensor* t : ts) {
    if (t->defined() && !cuda::CanVectorize(*t, D)) return false;
  }
  return true;
}

}  // namespace

bool RmsNormCudaSupports(const at::Tensor& x, const at::Tensor& w) {
  if (!x.is_cuda() || !w.is_cuda() || x.dim() < 1 || w.dim() != 1) return false;
  const auto t = x.scalar_type();
  if (t != at::kFloat && t != at::kBFloat16 && t != at::kHalf) return false;
  return w.scalar_type() == t && w.size(0) == x.size(-1) && x.size(-1) >= 1 && x.size(-1) <= kMaxD;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> RmsNormForwardCuda(const at::Tensor& x_in, const at::Tensor& res_in,
                                                                  const at::Tensor& w_in, double eps) {
  TORCH_CHECK(RmsNormCudaSupports(x_in, w_in), "RmsNormForwardCuda: x [..., D] and w [D] must be CUDA tensors of one "
              "floating dtype with D <= ", kMaxD, "; got x ", x_in.sizes(), " ", x_in.scalar_type(), ", w ",
              w_in.sizes(), " ", w_in.scalar_type());
  if (res_in.defined()) {
    TORCH_CHECK(res_in.sizes() == x_in.sizes() && res_in.scalar_type() == x_in.scalar_type() && res_in.is_cuda(),
                "RmsNormForwardCuda: residual must match x in shape and dtype");
  }
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous();
  const at::Tensor res = res_in.defined() ? res_in.contiguous() : at::Tensor();
  const int64_t D = x.size(-1), rows = x.numel() / D;
  at::Tensor y = at::empty_like(x);
  at::Tensor sum = res.defined() ? at::empty_like(x) : at::Tensor();
  at::Tensor rstd = at::empty({rows}, x.options().dtype(at::kFloat));
  if (rows == 0) return {y, sum, rstd};
  cuda::DispatchFloatTypes(x.scalar_type(), "rms_norm_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = Vectorizable<scalar_t>({&x, &w, &res, &y, &sum}, D);
    const Shape s = ChooseShape(D, vec, cuda::kVec16<scalar_t>);
    const dim3 block(s.tpr, s.rpb);
    const int64_t grid = cuda::CeilDiv(rows, s.rpb);
    auto stream = at::cuda::getCurrentCUDAStream();
    auto* kernel = vec ? RmsNormForwardKernel<scalar_t, cuda::kVec16<scalar_t>> : RmsNormForwardKernel<scalar_t, 1>;
    kernel<<<grid, block, 0, stream>>>(x.data_ptr<scalar_t>(), res.defined() ? res.data_ptr<scalar_t>() : nullptr,
                                       w.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
                                       sum.defined() ? sum.data_ptr<scalar_t>() : nullptr, rstd.data_ptr<float>(), rows,
                                       static_cast<int>(D), static_cast<float>(eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {y, sum, rstd};
}

std::tuple<at::Tensor, at::Tensor> RmsNormBackwardCuda(const at::Tensor& dy_in, const at::Tensor& dsum_in,
                                                       const at::Tensor& x_in, const at::Tensor& w_in,
                                                       const at::Tensor& rstd_in) {
  TORCH_CHECK(RmsNormCudaSupports(x_in, w_in), "RmsNormBackwardCuda: unsupported x/w (see RmsNormCudaSupports)");
  TORCH_CHECK(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(),
              "RmsNormBackwardCuda: dy must match x");
  if (dsum_in.defined()) {
    TORCH_CHECK(dsum_in.sizes() == x_in.sizes() && dsum_in.scalar_type() == x_in.scalar_type(),
                "RmsNormBackwardCuda: dsum must match x");
  }
  c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous(), w = w_in.contiguous(), dy = dy_in.contiguous();
  const at::Tensor dsum = dsum_in.defined() ? dsum_in.contiguous() : at::Tensor();
  const at::Tensor rstd = rstd_in.contiguous();
  const int64_t D = x.size(-1), rows = x.numel() / D;
  TORCH_CHECK(rstd.scalar_type() == at::kFloat && rstd.numel() == rows, "RmsNormBackwardCuda: rstd must be fp32 [rows]");
  at::Tensor dx = at::empty_like(x);
  if (rows == 0) return {dx, at::zeros_like(w)};
  at::Tensor dw = at::empty_like(w);
  cuda::DispatchFloatTypes(x.scalar_type(), "rms_norm_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = Vectorizable<scalar_t>({&x, &w, &dy, &dsum, &dx}, D);
    const Shape s = ChooseShape(D, vec, cuda::kVec16<scalar_t>);
    const dim3 block(s.tpr, s.rpb);
    auto* kernel = vec ? RmsNormBackwardKernel<scalar_t, cuda::kVec16<scalar_t>> : RmsNormBackwardKernel<scalar_t, 1>;
    const size_t smem = (32 + static_cast<size_t>(s.rpb) * D) * sizeof(float);
    int per_sm = 1;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, s.tpr * s.rpb, smem));
    const int64_t grid = std::min<int64_t>(cuda::CeilDiv(rows, s.rpb), static_cast<int64_t>(std::max(per_sm, 1)) * cuda::NumSms());
    at::Tensor partial = at::empty({grid, D}, x.options().dtype(at::kFloat));
    auto stream = at::cuda::getCurrentCUDAStream();
    kernel<<<grid, block, smem, stream>>>(dy.data_ptr<scalar_t>(), dsum.defined() ? dsum.data_ptr<scalar_t>() : nullptr,
                                          x.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(), rstd.data_ptr<float>(),
                                          dx.data_ptr<scalar_t>(), partial.data_ptr<float>(), rows, static_cast<int>(D));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    cuda::ColumnSumInto(partial, dw);
  });
  return {dx, dw};
}

}  // namespace ftd::kernels
