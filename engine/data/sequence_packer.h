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
// (default) or split into independent seq_len chunks.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/data_position.h"
#include "engine/data/document_source.h"

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
};

struct PackedSample {
  std::vector<int32_t> input_ids;
  std::vector<int32_t> labels;
  std::vector<int32_t> position_ids;
  std::vector<int32_t> cu_seqlens;
  int32_t num_documents = 0;    // real documents (padding not counted)
  int32_t num_real_tokens = 0;  // tokens that are not padding
  int32_t num_loss_tokens = 0;  // labels != -100
  int64_t epoch = 0;
  // Resume from here to continue with the sample that follows this one.
  DataPosition next_position;
};

class SequencePacker {
 public:
  // `source` must outlive the packer. INVALID_ARGUMENT for seq_len < 2, an empty source or a
  // `start` that does not fit the source.
  static absl::StatusOr<std::unique_ptr<SequencePacker>> Create(const DocumentSource* source, PackingOptions options,
                                                                DataPosition start = {});

  // The next sample, or nullopt after the last epoch. Errors (a bad line met while packing)
  // name the file and line.
  absl::StatusOr<std::optional<PackedSample>> Next();

  // The position after the last sample returned.
  const DataPosition& position() const { return position_; }
  const PackingOptions& options() const { return options_; }

  // A sample of padding only (no loss), for ranks that run out of data one step early.
  PackedSample PaddingSample() const;

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

}  // namespace ftd::data
