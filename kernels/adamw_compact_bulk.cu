// CUDA kernel of kernels/adamw_compact_bulk.h. Each thread block owns a ring of kStages shared-
// memory stages; thread 0 fills a stage with one chunk (16 blocks of the moments: the parameter,
// its low half, the gradient, both codes and both scales) by bulk copies that complete on the
// stage's mbarrier, the 8 warps update the chunk in place (two blocks each, the element-wise
// kernel's UpdateBlock on shared-memory pointers), and thread 0 stores the chunk back by bulk
// copies and refills the stage with the chunk kStages ahead once the stores have read it.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/adamw_compact_block.cuh"
#include "kernels/adamw_compact_bulk.h"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using namespace compact_update;  // NOLINT: the shared block update

constexpr int kChunkBlocks = static_cast<int>(kCompactBulkChunk / kCompactUpdateBlock);
constexpr int kChunk = static_cast<int>(kCompactBulkChunk);
constexpr int kStages = 5;
constexpr int kThreads = 256;

struct alignas(128) Stage {
  uint16_t param[kChunk];  // bf16 bits
  int16_t low[kChunk];
  uint16_t grad[kChunk];  // bf16 bits
  int8_t r_codes[kChunk];
  uint8_t s_codes[kChunk];
  float r_scale[kChunkBlocks];
  float s_max[kChunkBlocks];
};
constexpr uint32_t kStageLoadBytes = 3 * 2 * kChunk + 2 * kChunk + 2 * 4 * kChunkBlocks;

struct Shared {
  Stage stages[kStages];
  uint64_t full[kStages];  // mbarriers: the stage's loads have landed
  CodeTables tables;
};

__device__ __forceinline__ uint32_t SmemAddress(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void BarrierInit(uint64_t* bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;" ::"r"(SmemAddress(bar)), "r"(count) : "memory");
}

__device__ __forceinline__ void BarrierExpectBytes(uint64_t* bar, uint32_t bytes) {
  asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;" ::"r"(SmemAddress(bar)), "r"(bytes)
               : "memory");
}

__device__ __forceinline__ void BarrierWait(uint64_t* bar, uint32_t parity) {
  asm volatile(
      "{\n"
      ".reg .pred done;\n"
      "LAB_WAIT:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@!done bra LAB_WAIT;\n"
      "}" ::"r"(SmemAddress(bar)),
      "r"(parity)
      : "memory");
}

// Global -> shared, completing `bytes` of the stage's barrier transaction count.
__device__ __forceinline__ void LoadBulk(void* smem, const void* gmem, uint32_t bytes, uint64_t* bar) {
  asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];" ::"r"(
                   SmemAddress(smem)),
               "l"(gmem), "r"(bytes), "r"(SmemAddress(bar))
               : "memory");
}

__device__ __forceinline__ void StoreBulk(void* gmem, const void* smem, uint32_t bytes) {
  asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;" ::"l"(gmem), "r"(SmemAddress(smem)),
               "r"(bytes)
               : "memory");
}

__global__ void __launch_bounds__(kThreads, 1)
    CompactAdamWBulkKernel(uint16_t* __restrict__ p, int16_t* __restrict__ low, const uint16_t* __restrict__ g,
                           int8_t* __restrict__ r_codes, uint8_t* __restrict__ s_codes, float* __restrict__ r_scale,
                           float* __restrict__ s_max, const float* __restrict__ step, int64_t chunks,
                           CompactUpdateHyper h, bool skip_idle) {
  extern __shared__ __align__(128) unsigned char raw[];
  Shared& sh = *reinterpret_cast<Shared*>(raw);
  FillCodeTablesUnsynced(sh.tables, threadIdx.x, blockDim.x);
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) BarrierInit(&sh.full[i], 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();

  auto fill = [&](int stage, int64_t chunk) {  // thread 0
    Stage& st = sh.stages[stage];
    const int64_t e = chunk * kChunk, b = chunk * kChunkBlocks;
    BarrierExpectBytes(&sh.full[stage], kStageLoadBytes);
    LoadBulk(st.param, p + e, 2 * kChunk, &sh.full[stage]);
    LoadBulk(st.low, low + e, 2 * kChunk, &sh.full[stage]);
    LoadBulk(st.grad, g + e, 2 * kChunk, &sh.full[stage]);
    LoadBulk(st.r_codes, r_codes + e, kChunk, &sh.full[stage]);
    LoadBulk(st.s_codes, s_codes + e, kChunk, &sh.full[stage]);
    LoadBulk(st.r_scale, r_scale + b, 4 * kChunkBlocks, &sh.full[stage]);
    LoadBulk(st.s_max, s_max + b, 4 * kChunkBlocks, &sh.full[stage]);
  };
  const int64_t stride = gridDim.x;
  if (threadIdx.x == 0) {
    for (int i = 0; i < kStages; ++i) {
      const int64_t chunk = blockIdx.x + i * stride;
      if (chunk < chunks) fill(i, chunk);
    }
  }

  const StepValues sv = Values(step, h);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  float g_sq = 0.0f;
  int k = 0;
  for (int64_t chunk = blockIdx.x; chunk < chunks; chunk += stride, ++k) {
    const int stage = k % kStages;
    BarrierWait(&sh.full[stage], static_cast<uint32_t>((k / kStages) & 1));
    Stage& st = sh.stages[stage];
    for (int j = warp; j < kChunkBlocks; j += kThreads / 32) {
      const int o = j * kCompactUpdateBlock + lane * kPerLane;
      LaneData<uint16_t, uint16_t> d;
      d.LoadFull(st.param, st.low, st.grad + o, st.r_codes, st.s_codes, st.s_max, st.r_scale, j, o);
      if (IdleBlock(d, skip_idle)) continue;  // left as loaded
      g_sq += UpdateBlock<uint16_t, uint16_t>(d, st.param, st.low, st.r_codes, st.s_codes, st.r_scale, st.s_max, j,
                                              kPerLane, h, sv, sh.tables);
    }
    asm volatile("fence.proxy.async.shared::cta;" ::: "memory");  // the bulk stores see the warps' writes
    __syncthreads();
    if (threadIdx.x == 0) {
      const int64_t e = chunk * kChunk, b = chunk * kChunkBlocks;
      StoreBulk(p + e, st.param, 2 * kChunk);
      StoreBulk(low + e, st.low, 2 * kChunk);
      StoreBulk(r_codes + e, st.r_codes, kChunk);
      StoreBulk(s_codes + e, st.s_codes, kChunk);
      StoreBulk(r_scale + b, st.r_scale, 4 * kChunkBlocks);
      StoreBulk(s_max + b, st.s_max, 4 * kChunkBlocks);
      asm volatile("cp.async.bulk.commit_group;" ::: "memory");
      const int64_t next = chunk + kStages * stride;
      if (next < chunks) {
        asm volatile("cp.async.bulk.wait_group.read 0;" ::: "memory");  // the stage is free again
        fill(stage, next);
      }
    }
  }
  if (threadIdx.x == 0) asm volatile("cp.async.bulk.wait_group 0;" ::: "memory");
  AddGradSquares(g_sq, h.grad_sq_sum);
}

}  // namespace

void CompactAdamWStepBulkCuda(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h, int ctas) {
  TORCH_CHECK(CompactAdamWBulkSupports(param, master_low, grad, moments, step, h),
              "CompactAdamWStepBulkCuda: unsupported tensors (see CompactAdamWBulkSupports)");
  const int64_t chunks = param.numel() / kCompactBulkChunk;
  if (chunks == 0) return;
  const c10::cuda::CUDAGuard guard(param.device());
  const int sms = cuda::NumSms();
  const int grid = static_cast<int>(std::min<int64_t>(chunks, ctas > 0 && ctas < sms ? ctas : sms));
  constexpr int bytes = static_cast<int>(sizeof(Shared));
  static const bool configured = [] {
    return cudaFuncSetAttribute(CompactAdamWBulkKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) ==
           cudaSuccess;
  }();
  TORCH_CHECK(configured, "CompactAdamWStepBulkCuda: ", bytes, " bytes of shared memory are not available");
  CompactAdamWBulkKernel<<<grid, kThreads, bytes, at::cuda::getCurrentCUDAStream()>>>(
      reinterpret_cast<uint16_t*>(param.data_ptr()), master_low.data_ptr<int16_t>(),
      reinterpret_cast<const uint16_t*>(grad.data_ptr()), moments.r_codes.data_ptr<int8_t>(),
      moments.s_codes.data_ptr<uint8_t>(), moments.r_scale.data_ptr<float>(), moments.s_max.data_ptr<float>(),
      step.data_ptr<float>(), chunks, MakeCompactUpdateHyper(h), h.weight_decay == 0.0);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace ftd::kernels
