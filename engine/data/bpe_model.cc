#include "engine/data/bpe_model.h"

#include <atomic>
#include <cstdio>
#include <queue>

#include "absl/strings/str_cat.h"
#include "engine/data/utf8.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

std::atomic<uint64_t> next_generation{1};

struct WordCache {
  uint64_t generation = 0;
  absl::flat_hash_map<std::string, std::vector<int32_t>> entries;
};

WordCache& ThreadWordCache() {
  thread_local WordCache cache;
  return cache;
}

std::optional<std::string> OptionalString(const nlohmann::json& model, const char* name) {
  auto it = model.find(name);
  if (it == model.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

bool BoolField(const nlohmann::json& model, const char* name) {
  auto it = model.find(name);
  return it != model.end() && it->is_boolean() && it->get<bool>();
}

// One symbol of a word being merged, in a doubly linked list over the initial characters (as
// HF's Word): `length == 0` marks a symbol merged into its left neighbour.
struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  int32_t length;
};

struct MergeCandidate {
  int32_t rank;
  int32_t position;
  int32_t new_id;
  // std::priority_queue pops the largest: lowest rank first, then leftmost position.
  bool operator<(const MergeCandidate& other) const {
    if (rank != other.rank) return rank > other.rank;
    return position > other.position;
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& model) {
  if (!model.is_object()) return absl::InvalidArgumentError("model: expected an object");
  const std::string type = model.contains("type") && model["type"].is_string() ? model["type"].get<std::string>() : "BPE";
  if (type != "BPE") {
    return absl::UnimplementedError(
        absl::StrCat("model type \"", type, "\" is not supported (supported: BPE)"));
  }
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0) {
    return absl::UnimplementedError("model.dropout > 0 (BPE dropout) is not supported");
  }
  if (!model.contains("vocab") || !model["vocab"].is_object()) {
    return absl::InvalidArgumentError("model.vocab must be an object of token -> id");
  }
  std::unique_ptr<BpeModel> bpe(new BpeModel());
  bpe->generation_ = next_generation.fetch_add(1);
  const auto& vocab = model["vocab"];
  bpe->vocab_.reserve(vocab.size());
  int32_t max_id = -1;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) {
    if (!it.value().is_number_integer() || it.value().get<int64_t>() < 0 ||
        it.value().get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.vocab[\"", it.key(), "\"] must be a non-negative integer id"));
    }
    const auto id = static_cast<int32_t>(it.value().get<int64_t>());
    bpe->vocab_[it.key()] = id;
    max_id = std::max(max_id, id);
  }
  bpe->id_to_token_.resize(max_id + 1);
  bpe->id_present_.resize(max_id + 1, false);
  for (const auto& [token, id] : bpe->vocab_) {
    bpe->id_to_token_[id] = token;
    bpe->id_present_[id] = true;
  }

  bpe->continuing_subword_prefix_ = OptionalString(model, "continuing_subword_prefix").value_or("");
  bpe->end_of_word_suffix_ = OptionalString(model, "end_of_word_suffix").value_or("");
  bpe->fuse_unk_ = BoolField(model, "fuse_unk");
  bpe->byte_fallback_ = BoolField(model, "byte_fallback");
  bpe->ignore_merges_ = BoolField(model, "ignore_merges");
  if (auto unk = OptionalString(model, "unk_token")) {
    auto it = bpe->vocab_.find(*unk);
    if (it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model.unk_token \"", *unk, "\" is not in the vocab"));
    }
    bpe->unk_id_ = it->second;
  }

  if (!model.contains("merges") || !model["merges"].is_array()) {
    return absl::InvalidArgumentError("model.merges must be an array");
  }
  const auto& merges = model["merges"];
  bpe->merges_.reserve(merges.size());
  const size_t prefix_length = bpe->continuing_subword_prefix_.size();
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& merge = merges[rank];
    std::string left, right;
    if (merge.is_string()) {
      // "a b": byte-level tokens never contain a plain space, so one space separates them.
      const std::string& line = merge.get_ref<const std::string&>();
      const size_t space = line.find(' ');
      if (space == std::string::npos || line.find(' ', space + 1) != std::string::npos) {
        return absl::InvalidArgumentError(
            absl::StrCat("model.merges[", rank, "] \"", line, "\" must be two tokens separated by one space"));
      }
      left = line.substr(0, space);
      right = line.substr(space + 1);
    } else if (merge.is_array() && merge.size() == 2 && merge[0].is_string() && merge[1].is_string()) {
      left = merge[0].get<std::string>();
      right = merge[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "] must be \"a b\" or [\"a\", \"b\"]"));
    }
    auto left_it = bpe->vocab_.find(left);
    auto right_it = bpe->vocab_.find(right);
    if (left_it == bpe->vocab_.end() || right_it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "]: token \"",
                                                     left_it == bpe->vocab_.end() ? left : right,
                                                     "\" is not in the vocab"));
    }
    const std::string merged =
        left + (prefix_length > 0 && right.size() >= prefix_length ? right.substr(prefix_length) : right);
    auto merged_it = bpe->vocab_.find(merged);
    if (merged_it == bpe->vocab_.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("model.merges[", rank, "]: merged token \"", merged, "\" is not in the vocab"));
    }
    // The first (lowest) rank of a pair wins, as when HF builds its merge map.
    bpe->merges_.try_emplace(PairKey(left_it->second, right_it->second),
                             MergeTarget{static_cast<int32_t>(rank), merged_it->second});
  }
  return bpe;
}

std::optional<int32_t> BpeModel::TokenToId(std::string_view token) const {
  auto it = vocab_.find(AsAbsl(token));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

const std::string* BpeModel::IdToToken(int32_t id) const {
  if (id < 0 || id >= id_limit() || !id_present_[id]) return nullptr;
  return &id_to_token_[id];
}

void BpeModel::EncodeWord(std::string_view word, std::vector<int32_t>* ids) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    auto it = vocab_.find(AsAbsl(word));
    if (it != vocab_.end()) {
      ids->push_back(it->second);
      return;
    }
  }
  if (word.size() > kMaxCachedWordBytes) {
    MergeWord(word, ids);
    return;
  }
  WordCache& cache = ThreadWordCache();
  if (cache.generation != generation_) {
    cache.entries.clear();
    cache.generation = generation_;
  }
  auto it = cache.entries.find(AsAbsl(word));
  if (it != cache.entries.end()) {
    ids->insert(ids->end(), it->second.begin(), it->second.end());
    return;
  }
  const size_t first = ids->size();
  MergeWord(word, ids);
  if (cache.entries.size() >= kMaxCacheEntries) cache.entries.clear();
  cache.entries.emplace(std::string(word), std::vector<int32_t>(ids->begin() + first, ids->end()));
}

void BpeModel::MergeWord(std::string_view word, std::vector<int32_t>* ids) const {
  thread_local std::vector<Symbol> symbols;
  thread_local std::string scratch;
  thread_local std::vector<MergeCandidate> heap_storage;
  symbols.clear();

  const auto add_symbol = [&](int32_t id, int32_t length) {
    const auto index = static_cast<int32_t>(symbols.size());
    if (index > 0) symbols.back().next = index;
    symbols.push_back({id, index - 1, -1, length});
  };

  // An unknown character waiting to be emitted (fused with following ones under fuse_unk).
  bool has_pending_unk = false;
  int32_t pending_unk_id = 0, pending_unk_length = 0;
  size_t pos = 0;
  while (pos < word.size()) {
    size_t length;
    DecodeUtf8At(word, pos, &length);
    const bool is_first = pos == 0;
    const bool is_last = pos + length == word.size();
    std::string_view piece = word.substr(pos, length);
    if ((!is_first && !continuing_subword_prefix_.empty()) || (is_last && !end_of_word_suffix_.empty())) {
      scratch.clear();
      if (!is_first) scratch += continuing_subword_prefix_;
      scratch.append(piece);
      if (is_last) scratch += end_of_word_suffix_;
      piece = scratch;
    }
    auto it = vocab_.find(AsAbsl(piece));
    if (it != vocab_.end()) {
      if (has_pending_unk) {
        add_symbol(pending_unk_id, pending_unk_length);
        has_pending_unk = false;
      }
      add_symbol(it->second, static_cast<int32_t>(length));
    } else {
      bool handled = false;
      if (byte_fallback_) {
        std::vector<int32_t> byte_ids;
        for (unsigned char b : piece) {
          char name[8];
          std::snprintf(name, sizeof(name), "<0x%02X>", b);
          auto byte_it = vocab_.find(absl::string_view(name));
          if (byte_it == vocab_.end()) break;
          byte_ids.push_back(byte_it->second);
        }
        if (byte_ids.size() == piece.size()) {
          for (int32_t id : byte_ids) add_symbol(id, 1);
          handled = true;
        }
      }
      if (!handled && unk_id_) {
        const auto byte_length = static_cast<int32_t>(length);
        if (has_pending_unk && fuse_unk_) {
          pending_unk_length += byte_length;
        } else {
          if (has_pending_unk) add_symbol(pending_unk_id, pending_unk_length);
          has_pending_unk = true;
          pending_unk_id = *unk_id_;
          pending_unk_length = byte_length;
        }
      }
    }
    pos += length;
  }
  if (has_pending_unk) add_symbol(pending_unk_id, pending_unk_length);

  // HF's Word::merge_all: a heap of candidate merges (lowest rank, then leftmost), skipping
  // entries made stale by earlier merges.
  heap_storage.clear();
  std::priority_queue<MergeCandidate, std::vector<MergeCandidate>> queue(std::less<MergeCandidate>(),
                                                                         std::move(heap_storage));
  const auto find_merge = [&](int32_t left, int32_t right) -> const MergeTarget* {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) {
    if (const MergeTarget* m = find_merge(symbols[i].id, symbols[i + 1].id)) {
      queue.push({m->rank, static_cast<int32_t>(i), m->new_id});
    }
  }
  while (!queue.empty()) {
    const MergeCandidate top = queue.top();
    queue.pop();
    Symbol& current = symbols[top.position];
    if (current.length == 0 || current.next == -1) continue;
    const int32_t next_position = current.next;
    const Symbol right = symbols[next_position];
    const MergeTarget* still = find_merge(current.id, right.id);
    if (still == nullptr || still->new_id != top.new_id) continue;
    current.id = top.new_id;
    current.length += right.length;
    current.next = right.next;
    symbols[next_position].length = 0;
    if (right.next >= 0) symbols[right.next].prev = top.position;
    if (current.prev >= 0) {
      if (const MergeTarget* m = find_merge(symbols[current.prev].id, current.id)) {
        queue.push({m->rank, current.prev, m->new_id});
      }
    }
    if (current.next >= 0) {
      if (const MergeTarget* m = find_merge(current.id, symbols[current.next].id)) {
        queue.push({m->rank, top.position, m->new_id});
      }
    }
  }
  for (const Symbol& symbol : symbols) {
    if (symbol.length != 0) ids->push_back(symbol.id);
  }
}

}  // namespace ftd::data
