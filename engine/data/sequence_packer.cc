#include "engine/data/sequence_packer.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "engine/data/epoch_order.h"

namespace ftd::data {

absl::StatusOr<std::unique_ptr<SequencePacker>> SequencePacker::Create(const DocumentSource* source,
                                                                       PackingOptions options, DataPosition start) {
  if (options.seq_len < 2) return absl::InvalidArgumentError("packing: seq_len must be at least 2");
  if (source->size() == 0) return absl::InvalidArgumentError("packing: the dataset has no documents");
  if (source->size() > UINT32_MAX) return absl::InvalidArgumentError("packing: more than 2^32 documents");
  if (start.doc_index > static_cast<int64_t>(source->size())) {
    return absl::InvalidArgumentError(absl::StrCat("packing: resume position doc_index ", start.doc_index,
                                                   " is past the dataset's ", source->size(), " documents"));
  }
  if (start.token_offset > 0 && options.long_documents != LongDocumentPolicy::kSplit) {
    return absl::InvalidArgumentError("packing: resume position has a token_offset but long documents are truncated");
  }
  return std::unique_ptr<SequencePacker>(new SequencePacker(source, options, start));
}

SequencePacker::SequencePacker(const DocumentSource* source, PackingOptions options, DataPosition start)
    : source_(source), options_(options), position_(start) {}

void SequencePacker::Append(const TokenizedDocument& document, size_t begin, size_t end, PackedSample* sample) const {
  const size_t length = end - begin;
  for (size_t i = 0; i < length; ++i) {
    sample->input_ids.push_back(document.input_ids[begin + i]);
    const int32_t label = i + 1 < length ? document.labels[begin + i + 1] : kIgnoreLabel;
    sample->labels.push_back(label);
    sample->position_ids.push_back(static_cast<int32_t>(i));
    if (label != kIgnoreLabel) ++sample->num_loss_tokens;
  }
  sample->cu_seqlens.push_back(static_cast<int32_t>(sample->input_ids.size()));
  sample->num_real_tokens += static_cast<int32_t>(length);
  ++sample->num_documents;
}

void SequencePacker::Pad(PackedSample* sample) const {
  if (!options_.pack) return;  // a document of its own, as long as it is
  const auto used = static_cast<int32_t>(sample->input_ids.size());
  for (int32_t i = 0; i < options_.seq_len - used; ++i) {
    sample->input_ids.push_back(options_.pad_token_id);
    sample->labels.push_back(kIgnoreLabel);
    sample->position_ids.push_back(i);
  }
  if (used < options_.seq_len) sample->cu_seqlens.push_back(options_.seq_len);
}

PackedSample SequencePacker::PaddingSample() const {
  PackedSample sample;
  sample.cu_seqlens.push_back(0);
  for (int32_t i = 0; i < options_.seq_len; ++i) {
    sample.input_ids.push_back(options_.pad_token_id);
    sample.labels.push_back(kIgnoreLabel);
    sample.position_ids.push_back(i);
  }
  sample.cu_seqlens.push_back(options_.seq_len);
  sample.epoch = position_.epoch;
  sample.next_position = position_;
  return sample;
}

absl::StatusOr<std::optional<PackedSample>> SequencePacker::Next() {
  const auto num_documents = static_cast<int64_t>(source_->size());
  const auto seq_len = static_cast<size_t>(options_.seq_len);
  PackedSample sample;
  sample.input_ids.reserve(seq_len);
  sample.labels.reserve(seq_len);
  sample.position_ids.reserve(seq_len);
  sample.cu_seqlens.push_back(0);
  while (true) {
    if (Finished()) {
      if (sample.num_documents == 0) return std::optional<PackedSample>();
      break;
    }
    if (position_.doc_index >= num_documents) {
      if (sample.num_documents > 0) break;  // a sample holds one epoch's documents
      ++position_.epoch;
      position_.doc_index = 0;
      position_.token_offset = 0;
      continue;
    }
    if (options_.shuffle && order_epoch_ != position_.epoch) {
      order_ = EpochOrder(static_cast<uint32_t>(num_documents), options_.seed, position_.epoch, options_.shuffle);
      order_epoch_ = position_.epoch;
    }
    if (!pending_) {
      // Unshuffled: file order, without materializing it (a packer per row stays cheap).
      const size_t index = options_.shuffle ? order_[position_.doc_index] : static_cast<size_t>(position_.doc_index);
      auto document = source_->Get(index);
      if (!document.ok()) return document.status();
      if (document->labels.size() != document->input_ids.size()) {
        return absl::InvalidArgumentError(
            absl::StrCat("packing: document ", index, " has labels and input_ids of different lengths"));
      }
      pending_ = std::move(*document);
    }
    const TokenizedDocument& document = *pending_;
    const size_t length = document.input_ids.size();
    const auto begin = static_cast<size_t>(position_.token_offset);
    const size_t end = std::min(length, begin + seq_len);
    const bool last_piece = options_.long_documents == LongDocumentPolicy::kTruncate || end == length;
    const auto advance = [&] {
      if (last_piece) {
        pending_.reset();
        ++position_.doc_index;
        position_.token_offset = 0;
      } else {
        position_.token_offset = static_cast<int64_t>(end);
      }
    };
    bool trained = false;
    for (size_t i = begin + 1; i < end && !trained; ++i) trained = document.labels[i] != kIgnoreLabel;
    if (end <= begin || (options_.skip_untrained_documents && !trained)) {
      advance();  // nothing to learn from this document (or chunk)
      continue;
    }
    if (sample.input_ids.size() + (end - begin) > seq_len) break;  // starts the next sample
    Append(document, begin, end, &sample);
    sample.epoch = position_.epoch;
    advance();
    if (sample.input_ids.size() == seq_len || !options_.pack) break;
  }
  Pad(&sample);
  ++position_.samples_emitted;
  sample.next_position = position_;
  return std::optional<PackedSample>(std::move(sample));
}

int32_t PackedLength(const TokenizedDocument& document, const PackingOptions& options) {
  const auto end = static_cast<int32_t>(std::min<size_t>(document.input_ids.size(), options.seq_len));
  if (end <= 0) return 0;
  if (!options.skip_untrained_documents) return end;
  for (int32_t i = 1; i < end && i < static_cast<int32_t>(document.labels.size()); ++i) {
    if (document.labels[i] != kIgnoreLabel) return end;
  }
  return 0;
}

absl::StatusOr<int64_t> ForEachPlannedSample(const std::vector<int32_t>& packed_lengths, const PackingOptions& options,
                                             int64_t epoch, const std::function<void(const DataPosition&)>& visit) {
  if (options.long_documents != LongDocumentPolicy::kTruncate) {
    return absl::InvalidArgumentError("packing plan: only truncating packers can be planned from lengths");
  }
  if (packed_lengths.size() > UINT32_MAX) return absl::InvalidArgumentError("packing: more than 2^32 documents");
  const std::vector<uint32_t> order =
      EpochOrder(static_cast<uint32_t>(packed_lengths.size()), options.seed, epoch, options.shuffle);
  // The same decisions as Next(): a document that does not fit closes the sample and starts the
  // next one (which then begins at it); a full sample, or any sample when not packing, closes
  // after its document (the next begins after it); the epoch's end closes the last one.
  int64_t samples = 0;
  int64_t used = 0;  // tokens in the open sample (0: none open)
  DataPosition start{epoch, 0, 0, 0};
  const auto close = [&](int64_t next_doc_index) {
    visit(start);
    ++samples;
    used = 0;
    start.doc_index = next_doc_index;
  };
  for (size_t k = 0; k < order.size(); ++k) {
    const int64_t length = packed_lengths[order[k]];
    if (length <= 0) continue;  // skipped by the packer
    if (used > 0 && used + length > options.seq_len) close(static_cast<int64_t>(k));
    used += length;
    if (used == options.seq_len || !options.pack) close(static_cast<int64_t>(k) + 1);
  }
  if (used > 0) close(static_cast<int64_t>(order.size()));
  return samples;
}

}  // namespace ftd::data
