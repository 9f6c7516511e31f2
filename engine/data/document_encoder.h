// Turns parsed dataset records into token ids and labels with the model's tokenizer:
//   messages            the model's chat template (or a built-in layout when it has none), loss
//                       on assistant turns
//   prompt/completion   BOS (if the tokenizer adds one) + prompt + completion + EOS, loss on
//                       completion + EOS
//   text                BOS (if any) + text + EOS, loss everywhere
//   input_ids[/labels]  as given (labels default to input_ids)
#pragma once

#include <memory>
#include <optional>

#include "absl/status/statusor.h"
#include "engine/data/chat_format.h"
#include "engine/data/dataset_record.h"
#include "engine/data/tokenized_document.h"
#include "engine/data/tokenizer.h"

namespace ftd::data {

struct DocumentEncoderOptions {
  // Append the tokenizer's EOS (tokenizer_config.json eos_token) to text and completions.
  bool append_eos = true;
  std::optional<ChatFamily> chat_family;  // detected when unset
  ChatFormatOptions chat;
};

class DocumentEncoder {
 public:
  // `tokenizer` may be null when the data is pre-tokenized (input_ids records only); it must
  // outlive the encoder.
  static absl::StatusOr<std::unique_ptr<DocumentEncoder>> Create(const Tokenizer* tokenizer,
                                                                 DocumentEncoderOptions options = {});

  absl::StatusOr<TokenizedDocument> Encode(const DatasetRecord& record) const;

  // The tokenizer's vocab size, or 0 without a tokenizer.
  int32_t vocab_size() const { return tokenizer_ ? tokenizer_->vocab_size() : 0; }
  const Tokenizer* tokenizer() const { return tokenizer_; }
  // How chat records are rendered (for logs), or why they cannot be.
  std::string DescribeChat() const { return chat_ ? chat_->Describe() : std::string(chat_status_.message()); }

 private:
  DocumentEncoder(const Tokenizer* tokenizer, DocumentEncoderOptions options)
      : tokenizer_(tokenizer), options_(options) {}

  const Tokenizer* tokenizer_;
  DocumentEncoderOptions options_;
  std::unique_ptr<ChatFormatter> chat_;
  absl::Status chat_status_;  // why there is no chat formatter, reported on the first chat record
};

}  // namespace ftd::data
