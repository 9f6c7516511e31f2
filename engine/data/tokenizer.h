// A Hugging Face `tokenizers` tokenizer loaded from tokenizer.json, for the byte-level BPE
// families (GPT-2, Qwen2/Qwen3, Llama-3, DeepSeek-V3, GPT-OSS). Encode gives the same ids as
// the Python `tokenizers` library (tests/python/test_tokenizer_parity.py checks it).
//
// Pipeline, as in HF: added/special tokens are cut out of the raw text (non-normalized ones),
// the rest is normalized, normalized added tokens are cut out, pre-tokenized into words, each
// word BPE-encoded; with add_special_tokens the post-processor adds BOS/EOS.
//
// Thread-safe: Encode/Decode are const and may run from several threads at once.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "engine/data/added_tokens.h"
#include "engine/data/bpe_model.h"
#include "engine/data/normalizer.h"
#include "engine/data/pre_tokenizer.h"
#include "engine/data/tokenizer_config.h"

namespace ftd::data {

class Tokenizer {
 public:
  // `path_or_dir`: a tokenizer.json file, or a model directory holding tokenizer.json (and
  // optionally tokenizer_config.json / chat_template.jinja, read from the same directory).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromFile(const std::string& path_or_dir);
  // From the text of tokenizer.json and (optional, may be empty) tokenizer_config.json.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(const std::string& tokenizer_json,
                                                             const std::string& config_json,
                                                             const std::string& source = "tokenizer.json");

  std::vector<int32_t> Encode(std::string_view text, bool add_special_tokens) const;
  // Appends to `ids` (no allocation for the result when `ids` has capacity).
  void EncodeAppend(std::string_view text, bool add_special_tokens, std::vector<int32_t>* ids) const;

  // Encodes without special tokens (as apply_chat_template does) and gives each token's byte
  // range [begin, end) in `text`, as HF's offsets mapping does in characters. Where the
  // normalizer changed a piece's bytes, each of its tokens gets the whole piece.
  void EncodeWithOffsets(std::string_view text, std::vector<int32_t>* ids,
                         std::vector<std::pair<size_t, size_t>>* offsets) const;

  // Unknown ids are skipped, as HF does. Invalid UTF-8 in the bytes becomes U+FFFD.
  std::string Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  std::optional<std::string> IdToToken(int32_t id) const;
  // One past the largest id (model vocab and added tokens): valid ids are [0, vocab_size).
  int32_t vocab_size() const { return vocab_size_; }
  bool IsSpecialToken(int32_t id) const { return special_ids_.contains(id); }

  const TokenizerConfig& config() const { return config_; }
  std::optional<int32_t> bos_id() const { return bos_id_; }
  std::optional<int32_t> eos_id() const { return eos_id_; }
  std::optional<int32_t> pad_id() const { return pad_id_; }

  // Ids the post-processor puts around a single sequence when add_special_tokens is true.
  const std::vector<int32_t>& special_prefix() const { return special_prefix_; }
  const std::vector<int32_t>& special_suffix() const { return special_suffix_; }

 private:
  Tokenizer() = default;
  absl::Status LoadPostProcessor(const nlohmann::json& spec);
  absl::Status LoadDecoder(const nlohmann::json& spec);
  void EncodeNonAdded(std::string_view text, std::vector<int32_t>* ids) const;
  void EncodeNormalized(std::string_view text, std::vector<int32_t>* ids) const;

  std::unique_ptr<BpeModel> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::vector<AddedToken> added_tokens_;
  absl::flat_hash_map<std::string, int32_t> added_token_ids_;
  absl::flat_hash_map<int32_t, std::string> added_id_tokens_;
  absl::flat_hash_set<int32_t> special_ids_;
  std::unique_ptr<AddedTokenMatcher> raw_matcher_;         // normalized == false
  std::unique_ptr<AddedTokenMatcher> normalized_matcher_;  // normalized == true
  std::vector<int32_t> special_prefix_;
  std::vector<int32_t> special_suffix_;
  enum class DecoderKind { kJoinWithSpaces, kByteLevel };
  DecoderKind decoder_ = DecoderKind::kJoinWithSpaces;
  int32_t vocab_size_ = 0;
  TokenizerConfig config_;
  std::optional<int32_t> bos_id_, eos_id_, pad_id_;
};

}  // namespace ftd::data
