// AdamW on the compact optimizer state (PrecisionPolicy::kCompact, engine/train/optimizer.h):
// the weights keep an exact fp32 master in 4 bytes and the two moments take 2 bytes together,
// so a bf16 parameter costs 6 bytes of state (as bf16 weights with bf16 moments) while updates
// of any size survive (bf16 round-to-nearest drops updates below half an ulp, 85% of the
// parameters at a fine-tuning lr of 1e-5).
//
// Weights: the fp32 master is the bf16 parameter (its upper 16 bits, rounded half away from
// zero) plus `master_low` [n] int16, the signed remainder of the fp32 bit pattern:
//   bits(master) = bits(param) << 16 + master_low
// so the update runs on the exact fp32 value and the forward reads the parameter as it is. An
// fp32 parameter is its own master (master_low undefined).
//
// Moments, per block of kCompactBlock consecutive elements (the last block may be short):
//   s = sqrt(v): s_codes [n] uint8, a logarithmic code relative to the block's largest s
//       (s_max [blocks] fp32): code c > 0 is s_max * 2^((c - 255) / 16) (steps of 4.4%, 16
//       binades), code 0 is s = 0;
//   r = m / s:   r_codes [n] int8, linear with r_scale [blocks] fp32 = max |r| / 127.
// Adam's update is m / sqrt(v) = r, so r's error is absolute in units of the update (at most
// 0.4% of the block's largest), and s's error (at most 2.2%) only scales it. The update itself
// uses this step's unquantised m and v; only what is stored is rounded. On the tiny preset
// (bf16, 20 steps at lr 1e-5) the trained delta is within ~3% of fp32 master weights with fp32
// moments (bf16 moments: ~3% too; an fp8 m: 5-6%).
//
// Per step and element: p, master_low, g, r, s read (8 bytes for bf16), p, master_low, r, s
// written (6 bytes): the traffic of bf16 AdamW.
//
// Without master_low (precision compact_sr) a bf16 parameter is its own weight: the update runs
// on its fp32 value and the result is rounded stochastically to bf16 (kernels/stochastic_round.h),
// exact on average. 10 bytes of traffic an element instead of 14, 2 bytes of state instead of 4.
#pragma once

#include <cstdint>

#include <ATen/core/Tensor.h>

#include "kernels/adamw.h"
#include "kernels/adamw_compact_args.h"

namespace ftd::kernels {

constexpr int64_t kCompactBlock = 256;

inline int64_t CompactBlocks(int64_t numel) { return (numel + kCompactBlock - 1) / kCompactBlock; }

// The moments of `numel` elements, all zero.
struct CompactMoments {
  at::Tensor r_codes;  // [n] int8
  at::Tensor s_codes;  // [n] uint8
  at::Tensor r_scale;  // [blocks] fp32
  at::Tensor s_max;    // [blocks] fp32
  static CompactMoments Zeros(int64_t numel, c10::Device device);
  // Elements [begin, begin + length) of these moments; begin a multiple of kCompactBlock.
  CompactMoments Narrow(int64_t begin, int64_t length) const;
  int64_t Bytes() const;
};

// The fp32 master of a bf16 parameter and its low half, and back (bit-exact both ways).
at::Tensor MasterFromSplit(const at::Tensor& param_bf16, const at::Tensor& master_low);
// (bf16 parameter, int16 low half) of fp32 values.
std::pair<at::Tensor, at::Tensor> SplitMaster(const at::Tensor& master);

// The moments as fp32 (m, v) [n], and their encoding (blockwise, as the step stores them).
std::pair<at::Tensor, at::Tensor> DecodeCompactMoments(const CompactMoments& moments);
void EncodeCompactMoments(const at::Tensor& m, const at::Tensor& v, const CompactMoments& out);

// One step in place. param bf16 (with master_low int16, or without: the fp32 result is rounded
// stochastically to bf16 with h.round_salt and h.round_index_base, kernels/stochastic_round.h)
// or fp32 (master_low undefined); grad of
// param's numel, bf16 or fp32; step fp32 [] already incremented; hyper.scalars, when defined,
// holds (lr, grad_scale) on param's device and overrides hyper.lr / hyper.grad_scale;
// hyper.grad_sq_sum, when defined, gets the sum of squares of the scaled gradient added. Runs
// the CUDA kernel when CompactAdamWCudaSupports, else CompactAdamWStepReference.
void CompactAdamWStep(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                      const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);

// fp32 `values` [n] rounded stochastically to bf16 as the kernels round a parameter whose first
// element is element `index_base` of the whole parameter, at optimizer step `step` ([] fp32).
at::Tensor StochasticRoundToBf16(const at::Tensor& values, const at::Tensor& step, uint32_t salt, int64_t index_base);

// The same arithmetic with ATen ops (any device).
void CompactAdamWStepReference(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                               const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);

// The hyperparameters as the CUDA kernels read them (pointers into h.scalars and h.grad_sq_sum).
CompactUpdateHyper MakeCompactUpdateHyper(const AdamWHyper& h);

bool CompactAdamWCudaSupports(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                              const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);
// FTD_WITH_CUDA only; on the current stream. Blocks whose moments are zero and whose gradient
// is zero are left untouched without writing (exact when the weight decay is 0).
void CompactAdamWStepCuda(const at::Tensor& param, const at::Tensor& master_low, const at::Tensor& grad,
                          const CompactMoments& moments, const at::Tensor& step, const AdamWHyper& h);

// An embedding table's step from its lookup's gradient (as AdamWEmbeddingStepCuda): `rows`
// [T, cols] holds, at each position where a run of equal sorted ids starts, the summed gradient
// of that token, and slot_of[token] is that position (-1 for tokens not in the batch; restored
// to -1 by the step). Blocks of rows without a gradient and with zero moments are skipped
// (exact when the weight decay is 0). cols % kCompactBlock == 0.
bool CompactAdamWRowsSupports(const at::Tensor& param, const at::Tensor& master_low, const CompactMoments& moments,
                              const at::Tensor& step, const AdamWHyper& h);
void CompactAdamWRowsStepCuda(const at::Tensor& param, const at::Tensor& master_low, const CompactMoments& moments,
                              const at::Tensor& step, const at::Tensor& rows, const at::Tensor& slot_of,
                              const AdamWHyper& h);

}  // namespace ftd::kernels
