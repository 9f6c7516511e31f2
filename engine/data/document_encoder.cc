#include "engine/data/document_encoder.h"

#include "absl/strings/str_cat.h"

namespace ftd::data {

absl::StatusOr<std::unique_ptr<DocumentEncoder>> DocumentEncoder::Create(const Tokenizer* tokenizer,
                                                                         DocumentEncoderOptions options) {
  std::unique_ptr<DocumentEncoder> encoder(new DocumentEncoder(tokenizer, options));
  if (tokenizer == nullptr) {
    encoder->chat_status_ = absl::FailedPreconditionError("chat records need a tokenizer");
    return encoder;
  }
  auto chat = ChatFormatter::Create(tokenizer, options.chat_family, options.chat);
  if (chat.ok()) {
    encoder->chat_ = std::move(*chat);
  } else {
    encoder->chat_status_ = chat.status();
  }
  return encoder;
}

absl::StatusOr<TokenizedDocument> DocumentEncoder::Encode(const DatasetRecord& record) const {
  TokenizedDocument document;
  if (record.format != DatasetFormat::kTokenIds && tokenizer_ == nullptr) {
    return absl::FailedPreconditionError(
        absl::StrCat(DatasetFormatName(record.format), " records need a tokenizer"));
  }
  const auto append_eos = [&](std::vector<int32_t>* ids) {
    if (options_.append_eos && tokenizer_->eos_id() && (ids->empty() || ids->back() != *tokenizer_->eos_id())) {
      ids->push_back(*tokenizer_->eos_id());
    }
  };
  switch (record.format) {
    case DatasetFormat::kMessages:
      if (!chat_) return chat_status_;
      return chat_->Format(record.conversation);
    case DatasetFormat::kPromptCompletion: {
      tokenizer_->EncodeAppend(record.prompt, /*add_special_tokens=*/true, &document.input_ids);
      // The post-processor's suffix (e.g. an EOS of a Bert-style template) belongs after the
      // completion, not between prompt and completion.
      const auto& suffix = tokenizer_->special_suffix();
      document.input_ids.resize(document.input_ids.size() - suffix.size());
      document.labels.assign(document.input_ids.size(), kIgnoreLabel);
      std::vector<int32_t> completion;
      tokenizer_->EncodeAppend(record.completion, /*add_special_tokens=*/false, &completion);
      completion.insert(completion.end(), suffix.begin(), suffix.end());
      append_eos(&completion);
      document.input_ids.insert(document.input_ids.end(), completion.begin(), completion.end());
      document.labels.insert(document.labels.end(), completion.begin(), completion.end());
      return document;
    }
    case DatasetFormat::kText:
      tokenizer_->EncodeAppend(record.text, /*add_special_tokens=*/true, &document.input_ids);
      append_eos(&document.input_ids);
      document.labels = document.input_ids;
      return document;
    case DatasetFormat::kTokenIds:
      document.input_ids = record.input_ids;
      document.labels = record.labels ? *record.labels : record.input_ids;
      return document;
    case DatasetFormat::kAuto:
      break;
  }
  return absl::InternalError("record has no format");
}

}  // namespace ftd::data
