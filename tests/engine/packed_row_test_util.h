// The packing guarantee for any model family: one packed row of two documents (positions
// restarting, targets stopping at the boundary) against each document alone, on fresh copies of
// the same weights; the families' tests add what is theirs (a leak check, their own parameters).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include <ATen/core/Tensor.h>

#include "engine/model/transformer.h"

namespace ftd::engine::testing {

struct PackedRowRun {
  // Their parameters hold the gradients of the packed row and of the two documents' summed loss.
  std::unique_ptr<MoeTransformer> packed_model, alone_model;
  Batch packed;                          // ids [1, n1 + n2], segment ids 0 then 1
  ForwardResult packed_result;           // logits and loss
  std::vector<at::Tensor> logits_alone;  // [1, n1], [1, n2]
  at::Tensor loss_alone;                 // summed over both documents
};

// Random ids (at::manual_seed(seed)) of documents of n1 and n2 tokens, run packed and alone.
PackedRowRun RunPackedRowAndDocuments(const ModelConfig& c, const ModelOptions& o, const ModelWeights& init,
                                      int64_t n1, int64_t n2, uint64_t seed);

// EXPECTs: each document's logits (1e-5), the loss (1e-4 abs) and every parameter's gradient
// (rtol 1e-4, atol 1e-5) equal, packed and alone.
void ExpectPackedRowEqualsDocuments(PackedRowRun& run);

}  // namespace ftd::engine::testing
