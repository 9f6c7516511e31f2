// Packed samples of the data pipeline (engine/data/sequence_packer.h) as engine batches.
// The packer's labels are already shifted, which is the engine's `targets` convention; its
// cu_seqlens become per-position document ids (segment_ids), from which attention builds the
// block-diagonal causal mask (CPU) or varlen boundaries (GPU).
#pragma once

#include <vector>

#include <ATen/core/Tensor.h>

#include "engine/data/sequence_packer.h"
#include "engine/model/transformer.h"

namespace ftd::engine {

// Samples -> one batch [B = samples.size(), S = seq_len] on `device`. All samples must have
// the same length (the packer guarantees it).
Batch BatchFromPackedSamples(const std::vector<data::PackedSample>& samples, at::Device device);

// Document id of each position from cu_seqlens [0, end_1, ..., S]: seq_len entries.
std::vector<int64_t> SegmentIdsFromCuSeqlens(const std::vector<int32_t>& cu_seqlens, int64_t seq_len);

}  // namespace ftd::engine
