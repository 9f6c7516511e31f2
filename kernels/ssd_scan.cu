// CUDA kernels of kernels/ssd_scan.h. One block per (batch, head, tile of 16 head_dim rows p);
// in a block, 16 lanes split the state dimension n (lane + 16 k, k < NK) of each row p, so a row's
// state h[p, :] lives in the registers of one 16-lane group and y_t[p] = h[p, :] . C_t is that
// group's shuffle sum. Tokens are processed in order (forward) or in reverse (backward).
//
// Backward, per 128-token chunk from the last: (A) from the state saved by forward at the chunk's
// start, recompute the states at every 16th token into a per-block scratch (L2-resident); (B) for
// each 16-token sub-chunk from the last, recompute its 16 states into registers, then step the
// adjoint g_t = C_t dy_t^T + a_{t+1} g_{t+1} back through them:
//   dx_t[p] = dt_t g_t[p, :] . B_t + D dy_t[p]            (this row's, no reduction)
//   dB_t    = dt_t sum_p g_t[p, :] x_t[p]                 (over rows, heads of the group: atomics)
//   dC_t    = sum_p dy_t[p] h_t[p, :]
//   ddt_t   = sum_{p,n} g_t (x_t B_t^T + A a_t h_{t-1})   (over rows and p tiles: atomics)
//   dA      = sum_t dt_t a_t sum_{p,n} g_t h_{t-1},  dD = sum_t sum_p dy_t x_t
#include <type_traits>
#include <utility>

#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/ssd_scan.h"

namespace ftd::kernels {
namespace {

using cuda::ToFloat;

constexpr int kLanes = 16;   // threads over the state dimension per row p
constexpr int kRows = 16;    // rows p per block
constexpr int kSub = 16;     // tokens per register-resident sub-chunk (backward)
constexpr int kChunk = 128;  // tokens between saved states
constexpr int kMaxN = 128;

template <typename T>
struct ScanArgs {
  const T* x;         // x[(b * S + t) * x_row + h * P + p]
  const T* bm;        // B[(b * S + t) * bc_row + g * N + n]
  const T* cm;        // C[(b * S + t) * cc_row + g * N + n]
  const float* dt;    // [B, S, nh]
  const float* A;     // [nh]
  const float* D;     // [nh]
  const int64_t* seg;  // [B, S] or null
  int64_t x_row, bc_row, cc_row;
  int64_t B, S, nh, P, G, N, chunks;
};

template <typename T>
__device__ __forceinline__ float Decay(const ScanArgs<T>& a, int64_t b, int64_t h, int64_t t, float dt) {
  if (a.seg != nullptr && t > 0 && a.seg[b * a.S + t] != a.seg[b * a.S + t - 1]) return 0.f;  // a document starts
  return __expf(dt * a.A[h]);
}

template <typename T, int NK>
__global__ void __launch_bounds__(kLanes* kRows) SsdForwardKernel(ScanArgs<T> a, float* __restrict__ y,
                                                                  float* __restrict__ ckpt) {
  const int64_t b = blockIdx.x / a.nh, h = blockIdx.x % a.nh, g = h / (a.nh / a.G);
  const int64_t p = static_cast<int64_t>(blockIdx.y) * kRows + threadIdx.y;
  const int lane = threadIdx.x;
  const bool row = p < a.P;
  float st[NK];
#pragma unroll
  for (int k = 0; k < NK; ++k) st[k] = 0.f;
  const float Dh = a.D[h];
  // Unrolled so that the next tokens' loads (independent of the state) overlap this one's FMAs.
#pragma unroll 4
  for (int64_t t = 0; t < a.S; ++t) {
    if (t % kChunk == 0 && row) {  // the state before token t, for backward
      float* out = ckpt + (((b * a.nh + h) * a.chunks + t / kChunk) * a.P + p) * a.N;
#pragma unroll
      for (int k = 0; k < NK; ++k) {
        const int n = lane + kLanes * k;
        if (n < a.N) out[n] = st[k];
      }
    }
    const int64_t bt = b * a.S + t;
    const float dt = a.dt[bt * a.nh + h];
    const float decay = Decay(a, b, h, t, dt);
    const float xv = row ? ToFloat(a.x[bt * a.x_row + h * a.P + p]) : 0.f;
    const T* bn = a.bm + bt * a.bc_row + g * a.N;
    const T* cn = a.cm + bt * a.cc_row + g * a.N;
    float acc = 0.f;
#pragma unroll
    for (int k = 0; k < NK; ++k) {
      const int n = lane + kLanes * k;
      if (n < a.N) {
        st[k] = decay * st[k] + dt * xv * ToFloat(bn[n]);
        acc += st[k] * ToFloat(cn[n]);
      }
    }
    acc = cuda::GroupSum(acc, kLanes);
    if (lane == 0 && row) y[(bt * a.nh + h) * a.P + p] = acc + Dh * xv;
  }
}

// One token's state update for the recomputations of backward.
template <typename T, int NK>
__device__ __forceinline__ void Step(const ScanArgs<T>& a, int64_t b, int64_t h, int64_t g, int64_t p, bool row,
                                     int lane, int64_t t, float* st) {
  const int64_t bt = b * a.S + t;
  const float dt = a.dt[bt * a.nh + h];
  const float decay = Decay(a, b, h, t, dt);
  const float xv = row ? ToFloat(a.x[bt * a.x_row + h * a.P + p]) : 0.f;
  const T* bn = a.bm + bt * a.bc_row + g * a.N;
#pragma unroll
  for (int k = 0; k < NK; ++k) {
    const int n = lane + kLanes * k;
    if (n < a.N) st[k] = decay * st[k] + dt * xv * ToFloat(bn[n]);
  }
}

template <typename T, int NK>
__global__ void __launch_bounds__(kLanes* kRows) SsdBackwardKernel(ScanArgs<T> a, const float* __restrict__ dy,
                                                                   const float* __restrict__ ckpt,
                                                                   float* __restrict__ scratch,
                                                                   float* __restrict__ dx, float* __restrict__ ddt,
                                                                   float* __restrict__ dA, float* __restrict__ db,
                                                                   float* __restrict__ dc, float* __restrict__ dD) {
  __shared__ float s_db[kRows][kLanes * NK];
  __shared__ float s_dc[kRows][kLanes * NK];
  __shared__ float s_ddt[kRows];
  __shared__ float s_sum[kRows][2];
  const int64_t b = blockIdx.x / a.nh, h = blockIdx.x % a.nh, g = h / (a.nh / a.G);
  const int64_t p = static_cast<int64_t>(blockIdx.y) * kRows + threadIdx.y;
  const int lane = threadIdx.x, tid = threadIdx.y * kLanes + lane;
  const bool row = p < a.P;
  const float Ah = a.A[h], Dh = a.D[h];
  // This block's scratch: the state before every kSub-th token of the current chunk.
  float* my_scratch =
      scratch + (static_cast<int64_t>(blockIdx.y) * gridDim.x + blockIdx.x) * (kChunk / kSub) * kRows * (kLanes * NK);
  float gg[NK];
#pragma unroll
  for (int k = 0; k < NK; ++k) gg[k] = 0.f;
  float a_next = 0.f;  // decay of the token after the current one (0 past the end)
  float dA_acc = 0.f, dD_acc = 0.f;

  for (int64_t c = a.chunks - 1; c >= 0; --c) {
    const int64_t t0 = c * kChunk, t1 = min(a.S, t0 + kChunk);
    // (A) states before every kSub-th token of the chunk.
    float st[NK];
    {
      const float* in = ckpt + (((b * a.nh + h) * a.chunks + c) * a.P + (row ? p : 0)) * a.N;
#pragma unroll
      for (int k = 0; k < NK; ++k) {
        const int n = lane + kLanes * k;
        st[k] = row && n < a.N ? in[n] : 0.f;
      }
    }
    for (int64_t t = t0; t < t1; ++t) {
      if ((t - t0) % kSub == 0) {
        float* out = my_scratch + (((t - t0) / kSub) * kRows + threadIdx.y) * (kLanes * NK);
#pragma unroll
        for (int k = 0; k < NK; ++k) out[lane + kLanes * k] = st[k];
      }
      Step<T, NK>(a, b, h, g, p, row, lane, t, st);
    }
    // (B) sub-chunks from the last.
    const int64_t subs = (t1 - t0 + kSub - 1) / kSub;
    for (int64_t i = subs - 1; i >= 0; --i) {
      const int64_t s0 = t0 + i * kSub;
      float prev[NK], hist[kSub][NK];
      {
        const float* in = my_scratch + (i * kRows + threadIdx.y) * (kLanes * NK);
#pragma unroll
        for (int k = 0; k < NK; ++k) prev[k] = in[lane + kLanes * k];
      }
#pragma unroll
      for (int k = 0; k < NK; ++k) st[k] = prev[k];
#pragma unroll
      for (int j = 0; j < kSub; ++j) {
        if (s0 + j < t1) Step<T, NK>(a, b, h, g, p, row, lane, s0 + j, st);
#pragma unroll
        for (int k = 0; k < NK; ++k) hist[j][k] = st[k];
      }
#pragma unroll
      for (int j = kSub - 1; j >= 0; --j) {
        const int64_t t = s0 + j;
        if (t >= t1) continue;  // uniform over the block
        const int64_t bt = b * a.S + t;
        const float dt = a.dt[bt * a.nh + h];
        const float decay = Decay(a, b, h, t, dt);
        const float xv = row ? ToFloat(a.x[bt * a.x_row + h * a.P + p]) : 0.f;
        const float dyv = row ? dy[(bt * a.nh + h) * a.P + p] : 0.f;
        const T* bn = a.bm + bt * a.bc_row + g * a.N;
        const T* cn = a.cm + bt * a.cc_row + g * a.N;
        float dx_acc = 0.f, ddt_acc = 0.f, hg_acc = 0.f;
#pragma unroll
        for (int k = 0; k < NK; ++k) {
          const int n = lane + kLanes * k;
          float db_v = 0.f, dc_v = 0.f;
          if (n < a.N) {
            const float bv = ToFloat(bn[n]), cv = ToFloat(cn[n]);
            gg[k] = gg[k] * a_next + cv * dyv;
            const float h_prev = j > 0 ? hist[j - 1][k] : prev[k];
            dx_acc += gg[k] * bv;
            ddt_acc += gg[k] * xv * bv;
            hg_acc += gg[k] * h_prev;
            db_v = dt * gg[k] * xv;
            dc_v = dyv * hist[j][k];
          }
          s_db[threadIdx.y][lane + kLanes * k] = db_v;
          s_dc[threadIdx.y][lane + kLanes * k] = dc_v;
        }
        dx_acc = cuda::GroupSum(dx_acc, kLanes);
        ddt_acc = cuda::GroupSum(ddt_acc + Ah * decay * hg_acc, kLanes);
        hg_acc = cuda::GroupSum(hg_acc, kLanes);
        if (lane == 0) {
          if (row) dx[(bt * a.nh + h) * a.P + p] = dt * dx_acc + Dh * dyv;
          s_ddt[threadIdx.y] = ddt_acc;
          dA_acc += dt * decay * hg_acc;
          dD_acc += dyv * xv;
        }
        a_next = decay;
        __syncthreads();
        // Sums over the block's rows: dB_t and dC_t per n, ddt_t.
        for (int n = tid; n < 2 * a.N; n += kLanes * kRows) {
          const bool is_b = n < a.N;
          const int nn = is_b ? n : n - static_cast<int>(a.N);
          float sum = 0.f;
#pragma unroll
          for (int r = 0; r < kRows; ++r) sum += is_b ? s_db[r][nn] : s_dc[r][nn];
          atomicAdd((is_b ? db : dc) + (bt * a.G + g) * a.N + nn, sum);
        }
        if (tid == kLanes * kRows - 1) {
          float sum = 0.f;
#pragma unroll
          for (int r = 0; r < kRows; ++r) sum += s_ddt[r];
          atomicAdd(ddt + bt * a.nh + h, sum);
        }
        __syncthreads();
      }
    }
  }
  // dA and dD: this block's sums.
  if (lane == 0) {
    s_sum[threadIdx.y][0] = dA_acc;
    s_sum[threadIdx.y][1] = dD_acc;
  }
  __syncthreads();
  if (tid == 0) {
    float sa = 0.f, sd = 0.f;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      sa += s_sum[r][0];
      sd += s_sum[r][1];
    }
    atomicAdd(dA + h, sa);
    atomicAdd(dD + h, sd);
  }
}

// [B, S, K, M] with unit stride in M, stride M between K (heads or groups), one row stride: a
// column slice of a contiguous [B, S, *] tensor qualifies; returns the tensor to use and its row
// stride.
std::pair<at::Tensor, int64_t> Rows(const at::Tensor& t) {
  const bool ok = t.stride(3) == 1 && t.stride(2) == t.size(3) && t.stride(0) == t.size(1) * t.stride(1);
  at::Tensor u = ok ? t : t.contiguous();
  return {u, u.stride(1)};
}

void CheckInputs(const at::Tensor& x, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& b,
                 const at::Tensor& c, const at::Tensor& D, const at::Tensor& seg) {
  TORCH_CHECK(x.is_cuda() && dt.is_cuda() && A.is_cuda() && b.is_cuda() && c.is_cuda() && D.is_cuda(),
              "SsdScan: CUDA tensors expected");
  TORCH_CHECK(x.dim() == 4 && b.dim() == 4 && c.sizes() == b.sizes(), "SsdScan: x [B, S, nh, P], b/c [B, S, G, N]");
  const int64_t B = x.size(0), S = x.size(1), nh = x.size(2);
  TORCH_CHECK(b.size(0) == B && b.size(1) == S && nh % b.size(2) == 0, "SsdScan: b/c must be [B, S, G, N], G | nh");
  TORCH_CHECK(b.size(3) <= kMaxN, "SsdScan: state size ", b.size(3), " > ", kMaxN);
  TORCH_CHECK(dt.sizes() == at::IntArrayRef({B, S, nh}) && dt.scalar_type() == at::kFloat,
              "SsdScan: dt must be fp32 [B, S, nh]");
  TORCH_CHECK(A.numel() == nh && D.numel() == nh, "SsdScan: A and D must be [nh]");
  TORCH_CHECK(x.scalar_type() == b.scalar_type() && b.scalar_type() == c.scalar_type(),
              "SsdScan: x, b and c must share a dtype");
  TORCH_CHECK(!seg.defined() || (seg.dim() == 2 && seg.size(0) == B && seg.size(1) == S),
              "SsdScan: segment_ids must be [B, S]");
}

template <typename T>
ScanArgs<T> MakeArgs(const at::Tensor& x, int64_t x_row, const at::Tensor& b, int64_t b_row, const at::Tensor& c,
                     int64_t c_row, const at::Tensor& dt, const at::Tensor& A, const at::Tensor& D,
                     const at::Tensor& seg) {
  ScanArgs<T> a;
  a.x = x.data_ptr<T>();
  a.bm = b.data_ptr<T>();
  a.cm = c.data_ptr<T>();
  a.dt = dt.data_ptr<float>();
  a.A = A.data_ptr<float>();
  a.D = D.data_ptr<float>();
  a.seg = seg.defined() ? seg.data_ptr<int64_t>() : nullptr;
  a.x_row = x_row;
  a.bc_row = b_row;
  a.cc_row = c_row;
  a.B = x.size(0);
  a.S = x.size(1);
  a.nh = x.size(2);
  a.P = x.size(3);
  a.G = b.size(2);
  a.N = b.size(3);
  a.chunks = (a.S + kChunk - 1) / kChunk;
  return a;
}

// Calls f with the compile-time NK (state values per lane) that covers N.
template <typename F>
void DispatchNk(int64_t N, F&& f) {
  if (N <= kLanes) {
    f(std::integral_constant<int, 1>{});
  } else if (N <= 2 * kLanes) {
    f(std::integral_constant<int, 2>{});
  } else if (N <= 4 * kLanes) {
    f(std::integral_constant<int, 4>{});
  } else {
    f(std::integral_constant<int, 8>{});
  }
}

}  // namespace

bool SsdScanCudaSupports(const at::Tensor& x, const at::Tensor& b) {
  return x.is_cuda() && b.dim() == 4 && b.size(3) <= kMaxN;
}

std::tuple<at::Tensor, at::Tensor> SsdScanForwardCuda(const at::Tensor& x_in, const at::Tensor& dt_in,
                                                      const at::Tensor& A_in, const at::Tensor& b_in,
                                                      const at::Tensor& c_in, const at::Tensor& D_in,
                                                      const at::Tensor& seg_in) {
  CheckInputs(x_in, dt_in, A_in, b_in, c_in, D_in, seg_in);
  c10::cuda::CUDAGuard guard(x_in.device());
  const std::pair<at::Tensor, int64_t> xr = Rows(x_in), br = Rows(b_in), cr = Rows(c_in);
  const at::Tensor &x = xr.first, &b = br.first, &c = cr.first;
  const int64_t x_row = xr.second, b_row = br.second, c_row = cr.second;
  const at::Tensor dt = dt_in.contiguous(), A = A_in.to(at::kFloat).contiguous(), D = D_in.to(at::kFloat).contiguous();
  const at::Tensor seg = seg_in.defined() ? seg_in.to(x.device(), at::kLong).contiguous() : seg_in;
  const int64_t B = x.size(0), S = x.size(1), nh = x.size(2), P = x.size(3), N = b.size(3);
  const int64_t chunks = (S + kChunk - 1) / kChunk;
  at::Tensor y = at::empty({B, S, nh, P}, x.options().dtype(at::kFloat));
  at::Tensor ckpt = at::empty({B, nh, chunks, P, N}, y.options());
  if (y.numel() == 0) return {y, ckpt};
  auto stream = at::cuda::getCurrentCUDAStream();
  const dim3 grid(static_cast<unsigned>(B * nh), static_cast<unsigned>(cuda::CeilDiv(P, kRows)));
  cuda::DispatchFloatTypes(x.scalar_type(), "ssd_scan_fwd", [&](auto tag) {
    using scalar_t = decltype(tag);
    const ScanArgs<scalar_t> args = MakeArgs<scalar_t>(x, x_row, b, b_row, c, c_row, dt, A, D, seg);
    DispatchNk(N, [&](auto nk) {
      SsdForwardKernel<scalar_t, decltype(nk)::value><<<grid, dim3(kLanes, kRows), 0, stream>>>(
          args, y.data_ptr<float>(), ckpt.data_ptr<float>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {y, ckpt};
}

SsdScanGrads SsdScanBackwardCuda(const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& dt_in,
                                 const at::Tensor& A_in, const at::Tensor& b_in, const at::Tensor& c_in,
                                 const at::Tensor& D_in, const at::Tensor& seg_in, const at::Tensor& ckpt) {
  CheckInputs(x_in, dt_in, A_in, b_in, c_in, D_in, seg_in);
  TORCH_CHECK(dy_in.sizes() == x_in.sizes(), "SsdScan backward: dy must be [B, S, nh, P]");
  c10::cuda::CUDAGuard guard(x_in.device());
  const std::pair<at::Tensor, int64_t> xr = Rows(x_in), br = Rows(b_in), cr = Rows(c_in);
  const at::Tensor &x = xr.first, &b = br.first, &c = cr.first;
  const int64_t x_row = xr.second, b_row = br.second, c_row = cr.second;
  const at::Tensor dy = dy_in.to(at::kFloat).contiguous();
  const at::Tensor dt = dt_in.contiguous(), A = A_in.to(at::kFloat).contiguous(), D = D_in.to(at::kFloat).contiguous();
  const at::Tensor seg = seg_in.defined() ? seg_in.to(x.device(), at::kLong).contiguous() : seg_in;
  const int64_t B = x.size(0), S = x.size(1), nh = x.size(2), P = x.size(3), G = b.size(2), N = b.size(3);
  TORCH_CHECK(ckpt.defined() && ckpt.dim() == 5 && ckpt.size(2) == (S + kChunk - 1) / kChunk,
              "SsdScan backward: the forward's checkpoints are missing");
  auto f32 = x.options().dtype(at::kFloat);
  at::Tensor dx = at::empty({B, S, nh, P}, f32);
  at::Tensor ddt = at::zeros({B, S, nh}, f32), dA = at::zeros({nh}, f32), dD = at::zeros({nh}, f32);
  at::Tensor db = at::zeros({B, S, G, N}, f32), dc = at::zeros({B, S, G, N}, f32);
  if (x.numel() > 0) {
    const dim3 grid(static_cast<unsigned>(B * nh), static_cast<unsigned>(cuda::CeilDiv(P, kRows)));
    auto stream = at::cuda::getCurrentCUDAStream();
    cuda::DispatchFloatTypes(x.scalar_type(), "ssd_scan_bwd", [&](auto tag) {
      using scalar_t = decltype(tag);
      const ScanArgs<scalar_t> args = MakeArgs<scalar_t>(x, x_row, b, b_row, c, c_row, dt, A, D, seg);
      DispatchNk(N, [&](auto nk) {
        constexpr int NK = decltype(nk)::value;
        at::Tensor scratch =
            at::empty({static_cast<int64_t>(grid.x) * grid.y * (kChunk / kSub) * kRows * kLanes * NK}, f32);
        SsdBackwardKernel<scalar_t, NK><<<grid, dim3(kLanes, kRows), 0, stream>>>(
            args, dy.data_ptr<float>(), ckpt.data_ptr<float>(), scratch.data_ptr<float>(), dx.data_ptr<float>(),
            ddt.data_ptr<float>(), dA.data_ptr<float>(), db.data_ptr<float>(), dc.data_ptr<float>(),
            dD.data_ptr<float>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {dx.to(x_in.scalar_type()), ddt.to(dt_in.scalar_type()), dA.to(A_in.scalar_type()),
          db.to(b_in.scalar_type()), dc.to(c_in.scalar_type()), dD.to(D_in.scalar_type())};
}

}  // namespace ftd::kernels
