// CUDA counting sort of kernels/expert_sort.h, three launches:
//  1. per-chunk histograms [chunks, E] (shared-memory atomics: counts do not depend on order);
//  2. one block: per-expert totals, the exclusive scan over experts, and each chunk's starting
//     row for each expert (written over the histograms);
//  3. per chunk, in rounds of one element per thread: a warp's equal ids found with
//     __match_any_sync, ranks within the warp by popcount, earlier warps of the round through
//     a [warps, E] shared table — positions are stable by construction.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/cuda_utils.cuh"
#include "kernels/expert_sort.h"

namespace ftd::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kChunk = 4 * kThreads;  // elements per chunk (block)
constexpr int kMaxExperts = 1024;

__global__ void ChunkHistogramKernel(const int64_t* __restrict__ ids, int64_t n, int E, int* __restrict__ hist) {
  extern __shared__ int local[];
  for (int e = threadIdx.x; e < E; e += blockDim.x) local[e] = 0;
  __syncthreads();
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  const int64_t end = min(begin + kChunk, n);
  for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) atomicAdd(&local[ids[i]], 1);
  __syncthreads();
  for (int e = threadIdx.x; e < E; e += blockDim.x) hist[static_cast<int64_t>(blockIdx.x) * E + e] = local[e];
}

// One block of kMaxExperts threads; thread e owns expert e.
__global__ void __launch_bounds__(kMaxExperts) ScanKernel(int* __restrict__ hist, int chunks, int E,
                                                          int64_t* __restrict__ counts, int* __restrict__ ends) {
  __shared__ int warp_totals[kMaxExperts / 32];
  const int e = threadIdx.x;
  int total = 0;
  if (e < E) {
    for (int c = 0; c < chunks; ++c) total += hist[static_cast<int64_t>(c) * E + e];
  }
  // Inclusive scan over experts: within warps, then over warp totals.
  const int lane = e & 31, warp = e >> 5;
  int incl = total;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int v = __shfl_up_sync(0xffffffffu, incl, offset);
    if (lane >= offset) incl += v;
  }
  if (lane == 31) warp_totals[warp] = incl;
  __syncthreads();
  if (warp == 0) {
    int w = lane < (blockDim.x >> 5) ? warp_totals[lane] : 0;
    for (int offset = 1; offset < 32; offset <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, w, offset);
      if (lane >= offset) w += v;
    }
    warp_totals[lane] = w;  // inclusive over warps
  }
  __syncthreads();
  if (warp > 0) incl += warp_totals[warp - 1];
  if (e >= E) return;
  counts[e] = total;
  ends[e] = incl;
  int running = incl - total;
  for (int c = 0; c < chunks; ++c) {
    const int64_t at = static_cast<int64_t>(c) * E + e;
    const int h = hist[at];
    hist[at] = running;
    running += h;
  }
}

__global__ void __launch_bounds__(kThreads) ScatterKernel(const int64_t* __restrict__ ids, int64_t n, int E,
                                                          const int* __restrict__ chunk_starts,
                                                          int64_t* __restrict__ order, int64_t* __restrict__ inverse) {
  extern __shared__ int smem[];
  int* running = smem;          // [E] next free row per expert for this chunk
  int* warp_counts = smem + E;  // [kWarps][E] this round's per-warp counts
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    running[e] = chunk_starts[static_cast<int64_t>(blockIdx.x) * E + e];
  }
  for (int i = threadIdx.x; i < kWarps * E; i += blockDim.x) warp_counts[i] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * kChunk;
  for (int round = 0; round < kChunk / kThreads; ++round) {
    const int64_t i = begin + round * kThreads + threadIdx.x;
    const bool valid = i < n;
    const int id = valid ? static_cast<int>(ids[i]) : -1;
    const unsigned peers = __match_any_sync(0xffffffffu, id);
    const int rank = __popc(peers & ((1u << lane) - 1u));
    if (valid && rank == 0) warp_counts[warp * E + id] = __popc(peers);
    __syncthreads();
    if (valid) {
      int pos = running[id] + rank;
      for (int w = 0; w < warp; ++w) pos += warp_counts[w * E + id];
      order[pos] = i;
      inverse[i] = pos;
    }
    __syncthreads();
    for (int e = threadIdx.x; e < E; e += blockDim.x) {
      int s = 0;
      for (int w = 0; w < kWarps; ++w) {
        s += warp_counts[w * E + e];
        warp_counts[w * E + e] = 0;
      }
      running[e] += s;
    }
    __syncthreads();
  }
}

}  // namespace

ExpertOrder SortByExpertCuda(const at::Tensor& experts_in, int64_t num_experts) {
  TORCH_CHECK(experts_in.is_cuda() && experts_in.scalar_type() == at::kLong,
              "SortByExpertCuda: experts must be a CUDA int64 tensor, got ", experts_in.scalar_type());
  TORCH_CHECK(num_experts >= 1 && num_experts <= kMaxExperts, "SortByExpertCuda: num_experts must be in [1, ",
              kMaxExperts, "], got ", num_experts);
  c10::cuda::CUDAGuard guard(experts_in.device());
  const at::Tensor ids = experts_in.contiguous().view({-1});
  const int64_t n = ids.numel();
  TORCH_CHECK(n < (int64_t{1} << 31), "SortByExpertCuda: too many rows: ", n);
  const int E = static_cast<int>(num_experts);
  auto opts = ids.options();
  ExpertOrder r;
  r.counts = at::empty({E}, opts);
  r.ends = at::empty({E}, opts.dtype(at::kInt));
  r.order = at::empty({n}, opts);
  r.inverse = at::empty({n}, opts);
  const int chunks = static_cast<int>(std::max<int64_t>(cuda::CeilDiv(n, kChunk), 1));
  at::Tensor hist = at::empty({chunks, E}, opts.dtype(at::kInt));
  auto stream = at::cuda::getCurrentCUDAStream();
  const int64_t* ids_ptr = ids.data_ptr<int64_t>();
  int* hist_ptr = hist.data_ptr<int>();
  ChunkHistogramKernel<<<chunks, kThreads, E * sizeof(int), stream>>>(ids_ptr, n, E, hist_ptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  ScanKernel<<<1, kMaxExperts, 0, stream>>>(hist_ptr, chunks, E, r.counts.data_ptr<int64_t>(),
                                            r.ends.data_ptr<int>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  if (n > 0) {
    const size_t smem = static_cast<size_t>(E) * (1 + kWarps) * sizeof(int);
    ScatterKernel<<<chunks, kThreads, smem, stream>>>(ids_ptr, n, E, hist_ptr, r.order.data_ptr<int64_t>(),
                                                      r.inverse.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  return r;
}

}  // namespace ftd::kernels
