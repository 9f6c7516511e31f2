// The compact AdamW step (kernels/adamw_compact.h) on a chosen number of SMs: a persistent
// kernel of `ctas` thread blocks, one an SM, that streams its chunks of the state through shared
// memory with the Hopper bulk-copy engine (cp.async.bulk: five chunks' loads in flight, the
// results stored back the same way) instead of each warp's 16-byte loads, so that the other SMs
// stay free for a GEMM on another stream (GroupedGemmArgs::sm_count, ATen's SM carve-out). The
// arithmetic is kernels/adamw_compact_block.cuh's: bit for bit the element-wise kernel's.
// Measured on an H100 (bench/RESULTS.md): ~12 GB/s an SM whatever the number of SMs, so the
// update's arithmetic, not memory, bounds its 8 warps an SM, and a few SMs cannot carry the
// update (AdamWConfig::side_stream_bulk_sms, which uses it, is off by default).
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/adamw.h"
#include "kernels/adamw_compact.h"

namespace ftd::kernels {

// Elements a thread block stages at a time: 16 blocks of the moments.
constexpr int64_t kCompactBulkChunk = 16 * kCompactBlock;

// bf16 parameter with its int16 low half and a bf16 gradient, contiguous, 16-byte aligned, on
// an sm90 device, with a multiple of kCompactBulkChunk elements (the caller steps the rest with
// CompactAdamWStepCuda).
bool CompactAdamWBulkSupports(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);

// CompactAdamWStepCuda's step on `ctas` thread blocks (at most one an SM; 0: one an SM of the
// device), on the current stream. FTD_WITH_CUDA only.
void CompactAdamWStepBulkCuda(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h, int ctas);

}  // namespace ftd::kernels
