// CUDA kernels of kernels/adamw_compact.h: one warp per block of kCompactBlock (256) elements,
// 8 consecutive elements per lane (16-byte loads of the bf16 parameter, its low half and the
// gradient), the block maxima of the new moments by warp shuffles.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "kernels/adamw_compact.h"
#include "kernels/adamw_compact_block.cuh"
#include "kernels/cuda_utils.cuh"

namespace ftd::kernels {
namespace {

using namespace compact_update;  // NOLINT: the shared block update
using Hyper = CompactUpdateHyper;
static_assert(kCompactUpdateBlock == kCompactBlock);

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
    if (IdleBlock(cur, skip_idle)) continue;
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

// Grid-stride over the table's blocks of 256 (a row is cols / 256 of them), one warp each: the
// code tables and step values are computed once a CTA, not once a row (a CTA a row spent most of
// its time there, the batch's few rows aside). The gradient of row r is rows[slot_of[r]] when
// the token was in the batch, else zero. slot_of is restored to -1 after the kernel (every warp
// must have read it first).
template <typename P, typename G>
__global__ void __launch_bounds__(256) CompactAdamWRowsKernel(P* __restrict__ p, int16_t* __restrict__ low,
                                                               int8_t* __restrict__ r_codes,
                                                               uint8_t* __restrict__ s_codes,
                                                               float* __restrict__ r_scale, float* __restrict__ s_max,
                                                               const G* __restrict__ rows,
                                                               const int32_t* __restrict__ slot_of,
                                                               const float* __restrict__ step, int64_t cols,
                                                               int64_t table_blocks, Hyper h, bool skip_idle) {
  __shared__ CodeTables tables;
  FillCodeTables(tables);
  const StepValues sv = Values(step, h);
  const int lane = threadIdx.x & 31;
  const int64_t row_blocks = cols / kCompactBlock;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * (blockDim.x >> 5);
  float g_sq = 0.0f;
  for (int64_t b = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) >> 5; b < table_blocks;
       b += warps) {
    const int64_t row = b / row_blocks, i = b - row * row_blocks;
    const int32_t slot = slot_of[row];
    if (skip_idle && slot < 0 && s_max[b] == 0.0f) continue;  // uniform over the warp
    const int64_t o = b * kCompactBlock + lane * kPerLane;
    // The weights and moments at the table's offsets; the gradient from the token's row.
    const G* grad = slot >= 0 ? rows + static_cast<int64_t>(slot) * cols + i * kCompactBlock + lane * kPerLane : nullptr;
    LaneData<P, G> d;
    d.LoadFull(p, low, grad, r_codes, s_codes, s_max, r_scale, b, o);
    g_sq += UpdateBlock<P, G>(d, p, low, r_codes, s_codes, r_scale, s_max, b, kPerLane, h, sv, tables);
  }
  AddGradSquares(g_sq, h.grad_sq_sum);
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
  const Hyper hyper = MakeCompactUpdateHyper(h);
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
  const Hyper hyper = MakeCompactUpdateHyper(h);
  const bool skip_idle = h.weight_decay == 0.0;
  const int64_t table_blocks = table_rows * (cols / kCompactBlock);
  const int64_t ctas =
      std::max<int64_t>(1, std::min<int64_t>(cuda::CeilDiv(table_blocks, 8), int64_t{cuda::NumSms()} * 4));
  int16_t* low = master_low.defined() ? master_low.data_ptr<int16_t>() : nullptr;
  auto launch = [&](auto ptag, auto gtag) {
    using P = decltype(ptag);
    using G = decltype(gtag);
    CompactAdamWRowsKernel<P, G><<<ctas, 256, 0, at::cuda::getCurrentCUDAStream()>>>(
        reinterpret_cast<P*>(param.data_ptr()), low, moments.r_codes.data_ptr<int8_t>(),
        moments.s_codes.data_ptr<uint8_t>(), moments.r_scale.data_ptr<float>(), moments.s_max.data_ptr<float>(),
        rows.numel() > 0 ? reinterpret_cast<const G*>(rows.data_ptr()) : nullptr, slot_of.data_ptr<int32_t>(),
        step.data_ptr<float>(), cols, table_blocks, hyper, skip_idle);
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
  slot_of.fill_(-1);  // after every warp has read it
}

}  // namespace ftd::kernels
