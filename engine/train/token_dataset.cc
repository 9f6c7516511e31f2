#include "engine/train/token_dataset.h"

#include <algorithm>
#include <fstream>
#include <random>

#include <ATen/ATen.h>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace ftd::engine {

absl::StatusOr<std::vector<TokenSequence>> ReadTokenJsonl(const std::string& path, int64_t vocab_size) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open dataset ", path));
  std::vector<TokenSequence> out;
  std::string line;
  int64_t line_no = 0;
  auto bad = [&](const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ":", line_no, ": ", why));
  };
  auto read_ids = [&](const nlohmann::json& arr, const char* field, bool allow_ignore,
                      std::vector<int64_t>* ids) -> absl::Status {
    if (!arr.is_array()) return bad(absl::StrCat("\"", field, "\" must be an array of integers"));
    ids->reserve(arr.size());
    for (size_t i = 0; i < arr.size(); ++i) {
      if (!arr[i].is_number_integer()) return bad(absl::StrCat("\"", field, "\"[", i, "] is not an integer"));
      int64_t v = arr[i].get<int64_t>();
      bool ok = (v >= 0 && v < vocab_size) || (allow_ignore && v == -100);
      if (!ok) return bad(absl::StrCat("\"", field, "\"[", i, "] = ", v, " is outside the vocabulary [0, ", vocab_size, ")"));
      ids->push_back(v);
    }
    return absl::OkStatus();
  };
  while (std::getline(in, line)) {
    ++line_no;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) return bad("not valid JSON");
    if (!j.is_object()) return bad("each line must be a JSON object");
    auto it = j.find("input_ids");
    if (it == j.end()) return bad("missing \"input_ids\"");
    TokenSequence seq;
    if (auto st = read_ids(*it, "input_ids", false, &seq.input_ids); !st.ok()) return st;
    if (seq.input_ids.size() < 2) return bad("\"input_ids\" needs at least 2 tokens");
    if (auto lt = j.find("labels"); lt != j.end() && !lt->is_null()) {
      if (auto st = read_ids(*lt, "labels", true, &seq.labels); !st.ok()) return st;
      if (seq.labels.size() != seq.input_ids.size()) return bad("\"labels\" and \"input_ids\" differ in length");
    }
    out.push_back(std::move(seq));
  }
  if (out.empty()) return absl::InvalidArgumentError(absl::StrCat(path, ": the dataset has no samples"));
  return out;
}

const std::vector<int64_t>& SampleOrder::EpochOrder(int64_t epoch) {
  if (cached_epoch_ == epoch) return cached_;
  cached_.resize(n_);
  for (int64_t i = 0; i < n_; ++i) cached_[i] = i;
  std::mt19937_64 rng(seed_ * 0x9E3779B97F4A7C15ull + static_cast<uint64_t>(epoch));
  for (int64_t i = n_ - 1; i > 0; --i) {
    // Modulo bias is irrelevant here; portability (no std distributions) is what matters.
    int64_t j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(cached_[i], cached_[j]);
  }
  cached_epoch_ = epoch;
  return cached_;
}

std::vector<int64_t> SampleOrder::Take(int64_t count, DataPosition* pos) {
  std::vector<int64_t> ids;
  ids.reserve(count);
  while (static_cast<int64_t>(ids.size()) < count) {
    if (pos->index >= n_) {
      ++pos->epoch;
      pos->index = 0;
    }
    ids.push_back(EpochOrder(pos->epoch)[pos->index++]);
  }
  return ids;
}

MicroBatchTensors CollateMicroBatch(const std::vector<const TokenSequence*>& seqs, int64_t seq_len) {
  int64_t S = 0;
  bool any_packed = false;
  for (const TokenSequence* s : seqs) {
    S = std::max<int64_t>(S, std::min<int64_t>(seq_len, s->input_ids.size()));
    any_packed = any_packed || s->packed();
  }
  const int64_t B = static_cast<int64_t>(seqs.size());
  at::Tensor ids = at::zeros({B, S}, at::kLong);
  at::Tensor targets = at::full({B, S}, -100, at::kLong);
  auto id_acc = ids.accessor<int64_t, 2>();
  auto tgt_acc = targets.accessor<int64_t, 2>();
  MicroBatchTensors out;
  if (any_packed) {
    // Unpacked rows and padding: one document from position 0; padding is a segment of its own.
    out.position_ids = at::arange(S, at::kLong).repeat({B, 1});
    out.segment_ids = at::zeros({B, S}, at::kLong);
  }
  for (int64_t b = 0; b < B; ++b) {
    const TokenSequence& s = *seqs[b];
    const int64_t n = std::min<int64_t>(seq_len, s.input_ids.size());
    const std::vector<int64_t>& labels = s.labels.empty() ? s.input_ids : s.labels;
    for (int64_t i = 0; i < n; ++i) {
      id_acc[b][i] = s.input_ids[i];
      if (s.packed()) {
        tgt_acc[b][i] = s.targets[i];
      } else if (i + 1 < n) {
        tgt_acc[b][i] = labels[i + 1];
      }
    }
    if (any_packed) {
      auto pos_acc = out.position_ids.accessor<int64_t, 2>();
      auto seg_acc = out.segment_ids.accessor<int64_t, 2>();
      for (int64_t i = 0; i < S; ++i) {
        if (s.packed() && i < n) {
          pos_acc[b][i] = s.position_ids[i];
          seg_acc[b][i] = s.segment_ids[i];
        } else if (i >= n) {
          seg_acc[b][i] = -1;  // padding never attends to the row's tokens
        }
      }
    }
  }
  out.input_ids = ids;
  out.targets = targets;
  return out;
}

}  // namespace ftd::engine
