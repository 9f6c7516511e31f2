// Packs tokenized documents into fixed-length training samples of `seq_len` tokens, keeping
// documents apart so that attention and loss never cross a document boundary.
//
// Sample layout (all vectors have seq_len entries except cu_seqlens):
//   input_ids[i]     token at position i; padding (pad_token_id) after the last document.
//   labels[i]        ALREADY SHIFTED: the token position i must predict, i.e. the document's
//                    next token, or -100 (kIgnoreLabel) when there is nothing to learn there:
//                    the last token of each document (its "next" token belongs to another
//                    document), positions whose next token is masked (prompt, non-assistant
//                    turns, labels of -100 in the data) and padding. The loss is
//                    cross_entropy(logits[i], labels[i], ignore_index=-100) with NO further shift.
//   position_ids[i]  position within its document, restarting at 0 for each (padding too).
//   cu_seqlens       cumulative document boundaries [0, end_1, ..., end_n(, seq_len)]: document
//                    k spans [cu_seqlens[k], cu_seqlens[k+1]). Padding, when present, is the
//                    last segment, so cu_seqlens always ends at seq_len. On GPU pass it to varlen
//                    attention (flash-attn cu_seqlens_q/k, max_seqlen = max segment length); on
//                    CPU build a block-diagonal causal mask from it.
//
// Order: documents are visited in a per-epoch permutation drawn from (seed, epoch) and packed
// greedily in that order: a document that does not fit in the current sample starts the next
// one. A sample holds documents of one epoch only. Documents longer than seq_len are truncated
// (default) or split into independent seq_len chunks. With `pack` off, every document is a
// sample of its own (the one-row-per-line layout of pre-tokenized data).
//
// Planning without tokens: PackedLength() is all the greedy rule needs to know of a document
// (4 bytes instead of its tokens), and ForEachPlannedSample() replays the rule on those lengths
// for one epoch's order, so a trainer can count an epoch's samples, or find where a given sample
// starts, without holding or re-tokenizing the data.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/data_position.h"
#include "engine/data/document_source.h"
#include "engine/data/sample_stream.h"

namespace ftd::data {

enum class LongDocumentPolicy { kTruncate, kSplit };

struct PackingOptions {
  int32_t seq_len = 4096;
  uint64_t seed = 0;
  bool shuffle = true;
  int64_t num_epochs = 1;  // 0: repeat forever
  int32_t pad_token_id = 0;
  LongDocumentPolicy long_documents = LongDocumentPolicy::kTruncate;
  // Skip documents (or chunks) with no trained position, which would only cost compute.
  bool skip_untrained_documents = true;
  // false: one document per sample, not padded (input_ids as long as the possibly truncated
  // document; cu_seqlens = [0, length]).
  bool pack = true;
};

class SequencePacker final : public SampleStream {
 public:
  // `source` must outlive the packer. INVALID_ARGUMENT for seq_len < 2, an empty source or a
  // `start` that does not fit the source.
  static absl::StatusOr<std::unique_ptr<SequencePacker>> Create(const DocumentSource* source, PackingOptions options,
                                                                DataPosition start = {});

  // The next sample, or nullopt after the last epoch. Errors (a bad line met while packing)
  // name the file and line.
  absl::StatusOr<std::optional<PackedSample>> Next() override;

  // The position after the last sample returned.
  const DataPosition& position() const { return position_; }
  const PackingOptions& options() const { return options_; }

  // A sample of padding only (no loss), for ranks that run out of data one step early.
  PackedSample PaddingSample() const override;

 private:
  SequencePacker(const DocumentSource* source, PackingOptions options, DataPosition start);
  bool Finished() const { return options_.num_epochs > 0 && position_.epoch >= options_.num_epochs; }
  void Append(const TokenizedDocument& document, size_t begin, size_t end, PackedSample* sample) const;
  void Pad(PackedSample* sample) const;

  const DocumentSource* source_;
  PackingOptions options_;
  DataPosition position_;
  std::vector<uint32_t> order_;
  int64_t order_epoch_ = -1;
  // The document at position_.doc_index, kept when it did not fit in the previous sample.
  std::optional<TokenizedDocument> pending_;
};

// The number of tokens of `document` a truncating packer places in a sample: min(length,
// seq_len), or 0 when it places none (an empty document, or an untrained one under
// skip_untrained_documents).
int32_t PackedLength(const TokenizedDocument& document, const PackingOptions& options);

// Replays the packer on documents known only by their PackedLength (`packed_lengths[d]` for
// document d of the source), for the documents of epoch `epoch` in that epoch's order: calls
// `visit(start)` once per sample, in order, where `start` is the position a packer created with
// (source, options, start) begins at to return exactly that sample next (its doc_index and epoch
// are set; token_offset and samples_emitted are 0). Truncating packers only
// (INVALID_ARGUMENT for kSplit); returns the number of samples.
absl::StatusOr<int64_t> ForEachPlannedSample(const std::vector<int32_t>& packed_lengths, const PackingOptions& options,
                                             int64_t epoch, const std::function<void(const DataPosition&)>& visit);

}  // namespace ftd::data
