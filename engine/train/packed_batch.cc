#include "engine/train/packed_batch.h"

#include <ATen/ATen.h>

namespace ftd::engine {
namespace {

at::Tensor Int64Row(const std::vector<int32_t>& values) {
  return at::tensor(at::ArrayRef<int32_t>(values), at::kInt).to(at::kLong);
}

}  // namespace

std::vector<int64_t> SegmentIdsFromCuSeqlens(const std::vector<int32_t>& cu_seqlens, int64_t seq_len) {
  std::vector<int64_t> ids(static_cast<size_t>(seq_len), 0);
  for (size_t doc = 0; doc + 1 < cu_seqlens.size(); ++doc) {
    for (int64_t i = cu_seqlens[doc]; i < cu_seqlens[doc + 1] && i < seq_len; ++i) ids[i] = static_cast<int64_t>(doc);
  }
  return ids;
}

Batch BatchFromPackedSamples(const std::vector<data::PackedSample>& samples, at::Device device) {
  std::vector<at::Tensor> inputs, targets, positions, segments;
  for (const data::PackedSample& s : samples) {
    const int64_t seq_len = static_cast<int64_t>(s.input_ids.size());
    inputs.push_back(Int64Row(s.input_ids));
    targets.push_back(Int64Row(s.labels));
    positions.push_back(Int64Row(s.position_ids));
    segments.push_back(at::tensor(SegmentIdsFromCuSeqlens(s.cu_seqlens, seq_len), at::kLong));
  }
  Batch batch;
  batch.input_ids = at::stack(inputs).to(device);        // [B, S]
  batch.targets = at::stack(targets).to(device);         // [B, S], shifted, -100 = ignore
  batch.position_ids = at::stack(positions).to(device);  // [B, S], restart per document
  batch.segment_ids = at::stack(segments).to(device);    // [B, S], document index
  return batch;
}

}  // namespace ftd::engine
