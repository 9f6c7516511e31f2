// One AdamW step on one parameter, in place, with the arithmetic of PyTorch's fused AdamW
// (torch.optim.AdamW(fused=True), the baseline's optimizer): in fp32 on the stored values,
//   p *= 1 - lr * wd;  m = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr / (1 - b1^step) * m / (sqrt(v) / sqrt(1 - b2^step) + eps)
// with `step` a one-element fp32 tensor on the parameter's device, already incremented.
// CUDA: one pass, 16-byte vectors of all four tensors (7 of the parameter's sizes in bytes
// moved); ATen's fused kernel reaches about half of HBM bandwidth on bf16 tensors.
#pragma once

#include <ATen/core/Tensor.h>

#include "kernels/kernels_available.h"

namespace ftd::kernels {

struct AdamWHyper {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.999, weight_decay = 0.0, eps = 1e-8;
  // Background mode for a low-priority side stream: one 16-byte vector per thread, so every
  // block lives a few microseconds and a higher-priority kernel (the backward GEMMs) claims SMs
  // as soon as it is launched. The default grid-stride launch keeps up to 8 long-lived blocks
  // per SM resident for the whole pass, which is fastest alone but holds every SM.
  bool short_blocks = false;
  // The gradient is multiplied by this before use (normalisation and clipping of a step whose
  // factor the host does not know).
  double grad_scale = 1.0;
  // When defined: (lr, grad_scale) as a [2] fp32 tensor on the parameter's device, read by the
  // kernels when they run instead of lr and grad_scale, so that a step captured in a CUDA graph
  // replays with each step's values.
  at::Tensor scalars = {};
  // When defined (compact kernels): an fp32 [1] accumulator on the parameter's device to which
  // the update adds the sum of squares of the scaled gradient it used, so that a step that never
  // holds all gradients still reports their norm.
  at::Tensor grad_sq_sum = {};
  // Compact kernels, a bf16 parameter without a master's low half (precision compact_sr): the
  // parameter's stochastic-rounding salt (kernels/stochastic_round.h SaltOf its name), and the
  // offset in the whole parameter of the first element passed (a ZeRO shard's slice, a chunk).
  uint32_t round_salt = 0;
  int64_t round_index_base = 0;
};

// Whether `scalars` is usable as AdamWHyper::scalars for tensors on `device`.
bool StepScalarsValid(const at::Tensor& scalars, c10::Device device);

// Plain ATen formula in fp32 (the stored tensors are updated in place).
void AdamWStepReference(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                        const at::Tensor& exp_avg_sq, const at::Tensor& step, const AdamWHyper& h);

// CUDA tensors, contiguous, param/grad/moments of one dtype (bf16 or fp32), step fp32 [1] or [].
bool AdamWCudaSupports(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                       const at::Tensor& exp_avg_sq, const at::Tensor& step);

// FTD_WITH_CUDA only; on the current stream.
void AdamWStepCuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                   const at::Tensor& exp_avg_sq, const at::Tensor& step, const AdamWHyper& h);

// Row-sparse form for embedding tables, bit-identical to AdamWStepCuda: a row that has never had
// a nonzero gradient (touched[row] == 0) still has m = v = 0, so without weight decay AdamW
// leaves it exactly as it is. Such rows are skipped after reading their gradient row (2 of the
// 14 bytes per element of the dense update); the first nonzero gradient marks the row touched and
// every later step updates it densely. Only without weight decay (the step's learning rate may
// live on the device, so no test on its value is made).
// param/grad/moments [rows, cols] contiguous CUDA, touched [rows] uint8 on the same device.
bool AdamWRowSparseSupports(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                            const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& touched,
                            const AdamWHyper& h);
void AdamWRowSparseStepCuda(const at::Tensor& param, const at::Tensor& grad, const at::Tensor& exp_avg,
                            const at::Tensor& exp_avg_sq, const at::Tensor& step, const at::Tensor& touched,
                            const AdamWHyper& h);

// The embedding table's update straight from its lookup's output gradient, never forming the
// dense [rows, cols] gradient: the distinct tokens' rows of dy are summed (fp32, in position
// order, rounded once to the dtype), then each row with a
// gradient or with nonzero moments (touched) is updated as AdamWRowSparseStepCuda would; a row
// reached by a token becomes touched. ids [T] int64, dy [T, cols] contiguous, slot_of [rows]
// int32 scratch that holds -1 everywhere between calls (the update restores what it used).
// Reads T rows of dy and only the touched rows of the table: the dense path zero-fills, scatters
// and scans the whole [rows, cols] gradient (0.8 ms for Qwen3's 151,936 x 2048 table).
// Whether the table, its state and ids qualify (dy [T, cols] of the table's dtype is checked by
// the step).
bool AdamWEmbeddingSupports(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                            const at::Tensor& step, const at::Tensor& touched, const at::Tensor& ids,
                            const AdamWHyper& h);
void AdamWEmbeddingStepCuda(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                            const at::Tensor& step, const at::Tensor& touched, const at::Tensor& slot_of,
                            const at::Tensor& ids, const at::Tensor& dy, const AdamWHyper& h);

// The token rows of an embedding gradient: ids [T] int64 and dy [T, cols] (the lookup's output
// gradient) give rows [T, cols] of dy's dtype in which position i of the sorted ids, when it
// starts a run of one token, holds the fp32 sum of that token's rows of dy (rounded once) and
// every other row is zero; slot_of[token] = i (slot_of [table rows] int32, -1 elsewhere on
// entry). The squared norm of the rows is that of the dense [table rows, cols] gradient. CUDA.
at::Tensor EmbeddingTokenRowsCuda(const at::Tensor& ids, const at::Tensor& dy, const at::Tensor& slot_of);

}  // namespace ftd::kernels
