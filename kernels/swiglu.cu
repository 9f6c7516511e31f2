// CUDA kernels of kernels/swiglu.h. Weighted: one warp per row of F outputs; lanes move 16-byte vectors
// of the gate half, the up half and the output (scalar accesses when F or the alignment do not
// allow it). Backward: the routing-weight gradient is the warp's sum, no shared memory. The
// options (alpha, clamp, up offset) are kernel arguments, not template parameters: the plain
// and the clamped variant share one instantiation per dtype and vector width (the extra
// arithmetic is free in these bandwidth-bound kernels).
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/swiglu.h"

namespace ftd::kernels {
namespace {

using cuda::Load;
using cuda::Store;
using cuda::ToFloat;
using cuda::Vec;

constexpr int kWarpsPerBlock = 8;

__device__ __forceinline__ float SigmoidFast(float g) { return 1.f / (1.f + __expf(-g)); }

// SwigluOptions in fp32 (the dtype the kernels compute in).
struct Activation {
  float alpha, limit, up_offset;
  bool clamp;  // limit > 0

  // min(g, limit); NaN stays NaN, as at::clamp_max.
  __device__ __forceinline__ float Gate(float g) const { return clamp && g > limit ? limit : g; }
  // clamp(u, -limit, limit) + up_offset; NaN stays NaN, as at::clamp.
  __device__ __forceinline__ float Up(float u) const {
    if (clamp) u = u > limit ? limit : (u < -limit ? -limit : u);
    return u + up_offset;
  }
  // Whether the clamps pass the gradient of g, u (autograd's masks: the boundary passes, NaN not).
  __device__ __forceinline__ bool GatePasses(float g) const { return !clamp || g <= limit; }
  __device__ __forceinline__ bool UpPasses(float u) const { return !clamp || (u >= -limit && u <= limit); }
};

Activation ToActivation(const SwigluOptions& o) {
  return {static_cast<float>(o.alpha), static_cast<float>(o.limit), static_cast<float>(o.up_offset), o.limit > 0};
}

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SwigluForwardKernel(const T* __restrict__ h,
                                                                           const T* __restrict__ w,
                                                                           T* __restrict__ out, int64_t rows,
                                                                           int64_t F, Activation act) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float wr = ToFloat(w[r]);
    const T* hr = h + r * 2 * F;
    T* orow = out + r * F;
#pragma unroll 2
    for (int64_t f = static_cast<int64_t>(threadIdx.x) * VEC; f < F; f += 32 * VEC) {
      const Vec<T, VEC> gv = Load<T, VEC>(hr + f);
      const Vec<T, VEC> uv = Load<T, VEC>(hr + F + f);
      Vec<T, VEC> o;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float g = act.Gate(ToFloat(gv.v[i]));
        o.v[i] = static_cast<T>(g * SigmoidFast(act.alpha * g) * act.Up(ToFloat(uv.v[i])) * wr);
      }
      Store<T, VEC>(orow + f, o);
    }
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(32 * kWarpsPerBlock) SwigluBackwardKernel(const T* __restrict__ dout,
                                                                            const T* __restrict__ h,
                                                                            const T* __restrict__ w,
                                                                            T* __restrict__ dh, T* __restrict__ dw,
                                                                            int64_t rows, int64_t F,
                                                                            Activation act) {
  for (int64_t r = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + threadIdx.y; r < rows;
       r += static_cast<int64_t>(gridDim.x) * kWarpsPerBlock) {
    const float wr = ToFloat(w[r]);
    const T* hr = h + r * 2 * F;
    const T* dr = dout + r * F;
    T* dhr = dh + r * 2 * F;
    float acc = 0.f;
#pragma unroll 2
    for (int64_t f = static_cast<int64_t>(threadIdx.x) * VEC; f < F; f += 32 * VEC) {
      const Vec<T, VEC> gv = Load<T, VEC>(hr + f);
      const Vec<T, VEC> uv = Load<T, VEC>(hr + F + f);
      const Vec<T, VEC> dv = Load<T, VEC>(dr + f);
      Vec<T, VEC> dg, du;
#pragma unroll
      for (int i = 0; i < VEC; ++i) {
        const float g_in = ToFloat(gv.v[i]), u_in = ToFloat(uv.v[i]), d = ToFloat(dv.v[i]);
        const float g = act.Gate(g_in), u = act.Up(u_in);
        const float ag = act.alpha * g;
        const float s = SigmoidFast(ag);
        const float glu = g * s;
        // d/dg [g * s(alpha g)] = s * (1 + alpha * g * (1 - s)); zero where a clamp cut the input.
        const float dact = d * wr;
        dg.v[i] = static_cast<T>(act.GatePasses(g_in) ? dact * u * s * (1.f + ag * (1.f - s)) : 0.f);
        du.v[i] = static_cast<T>(act.UpPasses(u_in) ? dact * glu : 0.f);
        acc += d * (u * glu);
      }
      Store<T, VEC>(dhr + f, dg);
      Store<T, VEC>(dhr + F + f, du);
    }
    acc = cuda::WarpSum(acc);
    if (threadIdx.x == 0) dw[r] = static_cast<T>(acc);
  }
}

void CheckInputs(const at::Tensor& h, const at::Tensor& w) {
  TORCH_CHECK(h.is_cuda() && w.is_cuda(), "WeightedSwiglu: CUDA tensors expected");
  TORCH_CHECK(h.dim() == 2 && h.size(1) % 2 == 0, "WeightedSwiglu: h must be [N, 2F], got ", h.sizes());
  TORCH_CHECK(w.dim() == 1 && w.size(0) == h.size(0), "WeightedSwiglu: w must be [N], got ", w.sizes());
  TORCH_CHECK(h.scalar_type() == w.scalar_type(), "WeightedSwiglu: h and w must share a dtype");
}

int64_t GridFor(int64_t rows) {
  return std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(rows, kWarpsPerBlock), 32LL * cuda::NumSms()));
}

}  // namespace

at::Tensor WeightedSwigluForwardCuda(const at::Tensor& h_in, const at::Tensor& w_in, const SwigluOptions& opts) {
  CheckInputs(h_in, w_in);
  opts.Check("WeightedSwigluForwardCuda");
  c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), w = w_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1) / 2;
  at::Tensor out = at::empty({rows, F}, h.options());
  if (rows == 0 || F == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(h.scalar_type(), "swiglu_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = cuda::CanVectorize(h, F) && cuda::Aligned16(out.data_ptr());
    auto* kernel = vec ? SwigluForwardKernel<scalar_t, cuda::kVec16<scalar_t>> : SwigluForwardKernel<scalar_t, 1>;
    kernel<<<GridFor(rows), dim3(32, kWarpsPerBlock), 0, stream>>>(h.data_ptr<scalar_t>(), w.data_ptr<scalar_t>(),
                                                                   out.data_ptr<scalar_t>(), rows, F,
                                                                   ToActivation(opts));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> WeightedSwigluBackwardCuda(const at::Tensor& dout_in, const at::Tensor& h_in,
                                                              const at::Tensor& w_in, const SwigluOptions& opts) {
  CheckInputs(h_in, w_in);
  opts.Check("WeightedSwigluBackwardCuda");
  TORCH_CHECK(dout_in.dim() == 2 && dout_in.size(0) == h_in.size(0) && dout_in.size(1) * 2 == h_in.size(1) &&
                  dout_in.scalar_type() == h_in.scalar_type(),
              "WeightedSwiglu backward: dout must be [N, F] in h's dtype");
  c10::cuda::CUDAGuard guard(h_in.device());
  const at::Tensor h = h_in.contiguous(), w = w_in.contiguous(), dout = dout_in.contiguous();
  const int64_t rows = h.size(0), F = h.size(1) / 2;
  at::Tensor dh = at::empty_like(h), dw = at::empty_like(w);
  if (rows == 0) return {dh, dw};
  if (F == 0) return {dh, dw.zero_()};
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(h.scalar_type(), "swiglu_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const bool vec = cuda::CanVectorize(h, F) && cuda::CanVectorize(dout, F) && cuda::Aligned16(dh.data_ptr());
    auto* kernel = vec ? SwigluBackwardKernel<scalar_t, cuda::kVec16<scalar_t>> : SwigluBackwardKernel<scalar_t, 1>;
    kernel<<<GridFor(rows), dim3(32, kWarpsPerBlock), 0, stream>>>(dout.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(),
                                                                   w.data_ptr<scalar_t>(), dh.data_ptr<scalar_t>(),
                                                                   dw.data_ptr<scalar_t>(), rows, F, ToActivation(opts));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dh, dw};
}

namespace {

// The dense MLP's pair (gate, up, out all [numel], no per-row weight): flat grid-strided 16-byte
// vectors, so a few long rows still spread over every SM. Elements past the last whole vector
// (and all of them when the pointers are not 16-byte aligned, VEC 1) in the same loop.
template <typename T, int VEC>
__global__ void __launch_bounds__(256) SwigluPairForwardKernel(const T* __restrict__ gate, const T* __restrict__ up,
                                                               T* __restrict__ out, int64_t vectors) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vectors;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, VEC> gv = Load<T, VEC>(gate + i * VEC);
    const Vec<T, VEC> uv = Load<T, VEC>(up + i * VEC);
    Vec<T, VEC> o;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float g = ToFloat(gv.v[e]);
      o.v[e] = static_cast<T>(g * SigmoidFast(g) * ToFloat(uv.v[e]));
    }
    Store<T, VEC>(out + i * VEC, o);
  }
}

template <typename T, int VEC>
__global__ void __launch_bounds__(256) SwigluPairBackwardKernel(const T* __restrict__ dout, const T* __restrict__ gate,
                                                                const T* __restrict__ up, T* __restrict__ dgate,
                                                                T* __restrict__ dup, int64_t vectors) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < vectors;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const Vec<T, VEC> gv = Load<T, VEC>(gate + i * VEC);
    const Vec<T, VEC> uv = Load<T, VEC>(up + i * VEC);
    const Vec<T, VEC> dv = Load<T, VEC>(dout + i * VEC);
    Vec<T, VEC> dg, du;
#pragma unroll
    for (int e = 0; e < VEC; ++e) {
      const float g = ToFloat(gv.v[e]), u = ToFloat(uv.v[e]), d = ToFloat(dv.v[e]);
      const float s = SigmoidFast(g);
      dg.v[e] = static_cast<T>(d * u * s * (1.f + g * (1.f - s)));
      du.v[e] = static_cast<T>(d * g * s);
    }
    Store<T, VEC>(dgate + i * VEC, dg);
    Store<T, VEC>(dup + i * VEC, du);
  }
}

void CheckPair(const at::Tensor& gate, const at::Tensor& up, const char* op) {
  TORCH_CHECK(gate.is_cuda() && up.is_cuda(), op, ": CUDA tensors expected");
  TORCH_CHECK(gate.sizes() == up.sizes() && gate.scalar_type() == up.scalar_type(), op,
              ": gate and up must share shape and dtype, got ", gate.sizes(), " ", gate.scalar_type(), " and ",
              up.sizes(), " ", up.scalar_type());
}

// Launches kernel<VEC> over n elements: 16-byte vectors when every pointer is aligned and n is a
// multiple of the vector (the common case: F % 8 == 0), else one element a thread.
template <typename T, template <typename, int> class Launch, typename... Ptrs>
void LaunchFlat(int64_t n, cudaStream_t stream, Ptrs... ptrs) {
  constexpr int kVec = cuda::kVec16<T>;
  const bool vec = n % kVec == 0 && (cuda::Aligned16(ptrs) && ...);
  const int64_t vectors = vec ? n / kVec : n;
  const int64_t blocks = std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(vectors, 256), 16LL * cuda::NumSms()));
  if (vec) {
    Launch<T, kVec>::Run(blocks, stream, vectors, ptrs...);
  } else {
    Launch<T, 1>::Run(blocks, stream, vectors, ptrs...);
  }
}

template <typename T, int VEC>
struct PairForward {
  static void Run(int64_t blocks, cudaStream_t stream, int64_t vectors, const T* gate, const T* up, T* out) {
    SwigluPairForwardKernel<T, VEC><<<blocks, 256, 0, stream>>>(gate, up, out, vectors);
  }
};

template <typename T, int VEC>
struct PairBackward {
  static void Run(int64_t blocks, cudaStream_t stream, int64_t vectors, const T* dout, const T* gate, const T* up,
                  T* dgate, T* dup) {
    SwigluPairBackwardKernel<T, VEC><<<blocks, 256, 0, stream>>>(dout, gate, up, dgate, dup, vectors);
  }
};

}  // namespace

at::Tensor SwigluForwardCuda(const at::Tensor& gate_in, const at::Tensor& up_in) {
  CheckPair(gate_in, up_in, "SwigluForwardCuda");
  c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous();
  at::Tensor out = at::empty_like(gate, at::MemoryFormat::Contiguous);
  if (gate.numel() == 0) return out;
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(gate.scalar_type(), "swiglu_pair_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    LaunchFlat<scalar_t, PairForward>(gate.numel(), stream, gate.const_data_ptr<scalar_t>(),
                                      up.const_data_ptr<scalar_t>(), out.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> SwigluBackwardCuda(const at::Tensor& dout_in, const at::Tensor& gate_in,
                                                      const at::Tensor& up_in) {
  CheckPair(gate_in, up_in, "SwigluBackwardCuda");
  TORCH_CHECK(dout_in.sizes() == gate_in.sizes() && dout_in.scalar_type() == gate_in.scalar_type(),
              "SwigluBackwardCuda: dout must have gate's shape and dtype, got ", dout_in.sizes());
  c10::cuda::CUDAGuard guard(gate_in.device());
  const at::Tensor gate = gate_in.contiguous(), up = up_in.contiguous(), dout = dout_in.contiguous();
  at::Tensor dgate = at::empty_like(gate, at::MemoryFormat::Contiguous);
  at::Tensor dup = at::empty_like(up, at::MemoryFormat::Contiguous);
  if (gate.numel() == 0) return {dgate, dup};
  auto stream = at::cuda::getCurrentCUDAStream();
  cuda::DispatchFloatTypes(gate.scalar_type(), "swiglu_pair_bwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    LaunchFlat<scalar_t, PairBackward>(gate.numel(), stream, dout.const_data_ptr<scalar_t>(),
                                       gate.const_data_ptr<scalar_t>(), up.const_data_ptr<scalar_t>(),
                                       dgate.data_ptr<scalar_t>(), dup.data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dgate, dup};
}

}  // namespace ftd::kernels
