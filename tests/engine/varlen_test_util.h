// Shared by the varlen attention tests (CPU and CUDA): a per-document attention reference, error
// measures, and the packed-versus-one-by-one model comparison of issue 10 on any device/dtype.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include "engine/model/transformer.h"

namespace ftd::engine::testing {

// Causal attention of each sequence [cu[k], cu[k+1]) on its own through
// at::scaled_dot_product_attention(is_causal=true, enable_gqa=true), in the inputs' dtype and
// device; differentiable. q [T, Hq, D], k, v [T, Hkv, D] -> [T, Hq, D].
at::Tensor PerDocumentAttention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                const std::vector<int32_t>& cu, double scale);

// ||actual - expected||_2 / ||expected||_2, in fp64 on the CPU.
double RelativeError(const at::Tensor& actual, const at::Tensor& expected);

// max |actual - expected| / max |expected|, in fp64 on the CPU.
double MaxRelativeError(const at::Tensor& actual, const at::Tensor& expected);

// Segment ids [B, S] int64 (CPU) for rows given as run lengths; ids count up within a row, and
// a run length given negated is padding (id -1).
at::Tensor SegmentIdsFromRuns(const std::vector<std::vector<int64_t>>& rows);

// The tiny model of these tests: qwen3_moe, GQA 4/2 heads of head_dim 16, one MoE and one dense
// layer, vocab 128, initializer_range 0.2 (attention moves the logits far more than rounding).
const char* TinyModelConfigJson();

// A random packed batch on `device` whose rows are given as run lengths (SegmentIdsFromRuns):
// positions restart per run, targets are the next token within the run (-100 at run ends and
// on padding). segment_ids stay on the CPU, as the trainer passes them.
Batch RandomPackedBatch(const std::vector<std::vector<int64_t>>& rows, int64_t vocab, c10::Device device);

// The packing guarantee on one device and dtype: a tiny MoE model (head_dim 16, GQA 4/2) runs
// two packed rows of seven documents (with padding), then each document alone.
struct PackedVsSeparate {
  double loss_packed = 0, loss_separate = 0;  // summed token cross-entropies (training path)
  int64_t targets_packed = 0, targets_separate = 0;
  double logits_error = 0;  // max over documents of MaxRelativeError(packed slice, alone)
  double grad_error = 0;    // RelativeError of all parameter gradients, concatenated
  double leak_logits_error = 0;  // logits_error with segment ids and positions dropped
  bool used_varlen = false;      // whether the packed batch qualified for varlen attention
};
// One line with every figure, for the test log.
std::string Describe(const PackedVsSeparate& r);
PackedVsSeparate ComparePackedWithSeparate(c10::Device device, c10::ScalarType dtype, bool varlen_attention);

}  // namespace ftd::engine::testing
