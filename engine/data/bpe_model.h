// The BPE `model` of tokenizer.json: vocab, ranked merges, and the options that the byte-level
// families set (ignore_merges for Llama-3/GPT-OSS, byte_fallback, unk_token, fuse_unk,
// continuing_subword_prefix, end_of_word_suffix).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "nlohmann/json_fwd.hpp"

namespace ftd::data {

class BpeModel {
 public:
  // INVALID_ARGUMENT naming the field (or the merge) that is wrong; UNIMPLEMENTED for a model
  // type other than BPE or for BPE dropout.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-tokenized word. Results for words up to kMaxCachedWordBytes
  // are memoised in a bounded per-thread cache, so frequent words cost one hash lookup.
  void EncodeWord(std::string_view word, std::vector<int32_t>* ids) const;

  std::optional<int32_t> TokenToId(std::string_view token) const;
  // nullptr when no token has this id.
  const std::string* IdToToken(int32_t id) const;
  // One past the largest id of the vocab.
  int32_t id_limit() const { return static_cast<int32_t>(id_to_token_.size()); }

  static constexpr size_t kMaxCachedWordBytes = 256;
  static constexpr size_t kMaxCacheEntries = 1 << 16;

 private:
  BpeModel() = default;
  void MergeWord(std::string_view word, std::vector<int32_t>* ids) const;

  struct MergeTarget {
    int32_t rank;
    int32_t new_id;
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<bool> id_present_;
  absl::flat_hash_map<uint64_t, MergeTarget> merges_;
  std::optional<int32_t> unk_id_;
  bool fuse_unk_ = false;
  bool byte_fallback_ = false;
  bool ignore_merges_ = false;
  std::string continuing_subword_prefix_;
  std::string end_of_word_suffix_;
  // Distinguishes models in the per-thread word cache (addresses can be reused).
  uint64_t generation_ = 0;
};

}  // namespace ftd::data
