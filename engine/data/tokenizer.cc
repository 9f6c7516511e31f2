#include "engine/data/tokenizer.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/data/byte_level.h"
#include "engine/data/utf8.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

bool BoolField(const nlohmann::json& spec, const char* name, bool fallback) {
  auto it = spec.find(name);
  return it != spec.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

absl::Status Prefixed(const absl::Status& status, const std::string& source) {
  return absl::Status(status.code(), absl::StrCat(source, ": ", status.message()));
}

// The ids of a post-processor's special token given as [token, id] (Bert/Roberta processing).
absl::StatusOr<int32_t> PairId(const nlohmann::json& spec, const char* name) {
  auto it = spec.find(name);
  if (it == spec.end() || !it->is_array() || it->size() != 2 || !(*it)[1].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat("post_processor: \"", name, "\" must be [token, id]"));
  }
  return (*it)[1].get<int32_t>();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromFile(const std::string& path_or_dir) {
  namespace fs = std::filesystem;
  std::error_code error;
  fs::path json_path = path_or_dir;
  if (fs::is_directory(json_path, error)) json_path /= "tokenizer.json";
  if (!fs::exists(json_path, error)) {
    return absl::NotFoundError(absl::StrCat("tokenizer: ", json_path.string(), " does not exist"));
  }
  FTD_ASSIGN_OR_RETURN(std::string tokenizer_json, ReadFileToString(json_path.string()));
  const fs::path dir = json_path.parent_path();
  std::string config_json;
  if (fs::exists(dir / "tokenizer_config.json", error)) {
    FTD_ASSIGN_OR_RETURN(config_json, ReadFileToString((dir / "tokenizer_config.json").string()));
  }
  FTD_ASSIGN_OR_RETURN(auto tokenizer, FromJson(tokenizer_json, config_json, json_path.string()));
  // As in transformers, chat_template.jinja takes priority over tokenizer_config.json's template.
  if (fs::exists(dir / "chat_template.jinja", error)) {
    FTD_ASSIGN_OR_RETURN(tokenizer->config_.chat_template,
                         ReadFileToString((dir / "chat_template.jinja").string()));
  }
  return tokenizer;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(const std::string& tokenizer_json,
                                                               const std::string& config_json,
                                                               const std::string& source) {
  nlohmann::json spec = nlohmann::json::parse(tokenizer_json, nullptr, /*allow_exceptions=*/false);
  if (spec.is_discarded() || !spec.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  }
  std::unique_ptr<Tokenizer> tokenizer(new Tokenizer());
  if (!spec.contains("model")) return absl::InvalidArgumentError(absl::StrCat(source, ": no \"model\""));
  auto model = BpeModel::FromJson(spec["model"]);
  if (!model.ok()) return Prefixed(model.status(), source);
  tokenizer->model_ = std::move(*model);

  auto normalizer = NormalizerFromJson(spec.value("normalizer", nlohmann::json()));
  if (!normalizer.ok()) return Prefixed(normalizer.status(), source);
  tokenizer->normalizer_ = std::move(*normalizer);

  auto pre_tokenizer = PreTokenizerFromJson(spec.value("pre_tokenizer", nlohmann::json()));
  if (!pre_tokenizer.ok()) return Prefixed(pre_tokenizer.status(), source);
  tokenizer->pre_tokenizer_ = std::move(*pre_tokenizer);

  if (auto status = tokenizer->LoadPostProcessor(spec.value("post_processor", nlohmann::json())); !status.ok()) {
    return Prefixed(status, source);
  }
  if (auto status = tokenizer->LoadDecoder(spec.value("decoder", nlohmann::json())); !status.ok()) {
    return Prefixed(status, source);
  }

  int32_t vocab_size = tokenizer->model_->id_limit();
  if (spec.contains("added_tokens") && !spec["added_tokens"].is_null()) {
    if (!spec["added_tokens"].is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(source, ": \"added_tokens\" must be an array"));
    }
    size_t index = 0;
    for (const auto& entry : spec["added_tokens"]) {
      if (!entry.is_object() || !entry.contains("content") || !entry["content"].is_string() ||
          !entry.contains("id") || !entry["id"].is_number_integer()) {
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": added_tokens[", index, "] needs a string \"content\" and an integer \"id\""));
      }
      AddedToken token;
      token.content = entry["content"].get<std::string>();
      token.id = entry["id"].get<int32_t>();
      token.single_word = BoolField(entry, "single_word", false);
      token.lstrip = BoolField(entry, "lstrip", false);
      token.rstrip = BoolField(entry, "rstrip", false);
      token.special = BoolField(entry, "special", false);
      token.normalized = BoolField(entry, "normalized", !token.special);
      tokenizer->added_token_ids_[token.content] = token.id;
      tokenizer->added_id_tokens_[token.id] = token.content;
      if (token.special) tokenizer->special_ids_.insert(token.id);
      vocab_size = std::max(vocab_size, token.id + 1);
      tokenizer->added_tokens_.push_back(std::move(token));
      ++index;
    }
  }
  tokenizer->vocab_size_ = vocab_size;
  std::vector<std::string> raw_patterns, normalized_patterns;
  for (const AddedToken& token : tokenizer->added_tokens_) {
    raw_patterns.push_back(token.normalized ? std::string() : token.content);
    std::string normalized_content;
    if (token.normalized) {
      if (tokenizer->normalizer_) {
        tokenizer->normalizer_->Normalize(token.content, &normalized_content);
      } else {
        normalized_content = token.content;
      }
    }
    normalized_patterns.push_back(std::move(normalized_content));
  }
  tokenizer->raw_matcher_ = std::make_unique<AddedTokenMatcher>(&tokenizer->added_tokens_, raw_patterns);
  tokenizer->normalized_matcher_ =
      std::make_unique<AddedTokenMatcher>(&tokenizer->added_tokens_, normalized_patterns);

  if (!config_json.empty()) {
    FTD_ASSIGN_OR_RETURN(tokenizer->config_, ParseTokenizerConfig(config_json, "tokenizer_config.json"));
    const auto resolve = [&](const std::optional<std::string>& token, const char* name,
                             std::optional<int32_t>* id) -> absl::Status {
      if (!token) return absl::OkStatus();
      *id = tokenizer->TokenToId(*token);
      if (!*id) {
        return absl::InvalidArgumentError(
            absl::StrCat("tokenizer_config.json: ", name, " \"", *token, "\" is not a token of ", source));
      }
      return absl::OkStatus();
    };
    FTD_RETURN_IF_ERROR(resolve(tokenizer->config_.bos_token, "bos_token", &tokenizer->bos_id_));
    FTD_RETURN_IF_ERROR(resolve(tokenizer->config_.eos_token, "eos_token", &tokenizer->eos_id_));
    FTD_RETURN_IF_ERROR(resolve(tokenizer->config_.pad_token, "pad_token", &tokenizer->pad_id_));
  }
  return tokenizer;
}

absl::Status Tokenizer::LoadPostProcessor(const nlohmann::json& spec) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") return absl::OkStatus();  // offsets only; ids unchanged
  if (type == "Sequence") {
    if (!spec.contains("processors") || !spec["processors"].is_array()) {
      return absl::InvalidArgumentError("post_processor Sequence: \"processors\" must be an array");
    }
    for (const auto& child : spec["processors"]) FTD_RETURN_IF_ERROR(LoadPostProcessor(child));
    return absl::OkStatus();
  }
  // Later processors of a Sequence wrap what earlier ones produced.
  std::vector<int32_t> prefix, suffix;
  if (type == "TemplateProcessing") {
    if (!spec.contains("single") || !spec["single"].is_array()) {
      return absl::InvalidArgumentError("post_processor TemplateProcessing: \"single\" must be an array");
    }
    const auto& specials = spec.value("special_tokens", nlohmann::json::object());
    bool seen_sequence = false;
    for (const auto& piece : spec["single"]) {
      if (piece.contains("Sequence")) {
        if (piece["Sequence"].value("id", "") != "A") {
          return absl::InvalidArgumentError("post_processor TemplateProcessing: \"single\" may only use $A");
        }
        seen_sequence = true;
      } else if (piece.contains("SpecialToken")) {
        const std::string name = piece["SpecialToken"].value("id", "");
        if (!specials.contains(name) || !specials[name].contains("ids") || !specials[name]["ids"].is_array()) {
          return absl::InvalidArgumentError(absl::StrCat(
              "post_processor TemplateProcessing: special token \"", name, "\" is not in \"special_tokens\""));
        }
        auto& target = seen_sequence ? suffix : prefix;
        for (const auto& id : specials[name]["ids"]) target.push_back(id.get<int32_t>());
      } else {
        return absl::InvalidArgumentError("post_processor TemplateProcessing: unknown piece in \"single\"");
      }
    }
  } else if (type == "BertProcessing" || type == "RobertaProcessing") {
    FTD_ASSIGN_OR_RETURN(int32_t cls, PairId(spec, "cls"));
    FTD_ASSIGN_OR_RETURN(int32_t sep, PairId(spec, "sep"));
    prefix = {cls};
    suffix = {sep};
  } else {
    return absl::UnimplementedError(absl::StrCat(
        "post_processor type \"", type,
        "\" is not supported (supported: ByteLevel, TemplateProcessing, BertProcessing, RobertaProcessing, "
        "Sequence, null)"));
  }
  prefix.insert(prefix.end(), special_prefix_.begin(), special_prefix_.end());
  special_prefix_ = std::move(prefix);
  special_suffix_.insert(special_suffix_.end(), suffix.begin(), suffix.end());
  return absl::OkStatus();
}

absl::Status Tokenizer::LoadDecoder(const nlohmann::json& spec) {
  if (spec.is_null()) return absl::OkStatus();
  const std::string type = spec.value("type", "");
  if (type == "ByteLevel") {
    decoder_ = DecoderKind::kByteLevel;
    return absl::OkStatus();
  }
  if (type == "Sequence" && spec.contains("decoders") && spec["decoders"].is_array() &&
      spec["decoders"].size() == 1) {
    return LoadDecoder(spec["decoders"][0]);
  }
  return absl::UnimplementedError(absl::StrCat(
      "decoder type \"", type, "\" is not supported (supported: ByteLevel, a Sequence of one ByteLevel, null)"));
}

void Tokenizer::EncodeWithOffsets(std::string_view text, std::vector<int32_t>* ids,
                                  std::vector<std::pair<size_t, size_t>>* offsets) const {
  ids->clear();
  offsets->clear();
  if (!IsValidUtf8(text)) {
    // Offsets into repaired text would not match the caller's bytes: one span for everything.
    EncodeAppend(text, /*add_special_tokens=*/false, ids);
    offsets->assign(ids->size(), {0, text.size()});
    return;
  }
  std::vector<TextSegment> segments;
  if (raw_matcher_->empty()) {
    segments.push_back(TextSegment{0, text.size(), -1});
  } else {
    raw_matcher_->Split(text, &segments);
  }
  std::vector<int32_t> piece;
  std::string bytes;
  for (const TextSegment& segment : segments) {
    if (segment.token >= 0) {
      ids->push_back(added_tokens_[segment.token].id);
      offsets->emplace_back(segment.begin, segment.end);
      continue;
    }
    piece.clear();
    EncodeNonAdded(text.substr(segment.begin, segment.end - segment.begin), &piece);
    // Each token's bytes, cumulated; when normalization changed the text the sums differ and
    // every token of the segment gets the whole segment.
    std::vector<size_t> lengths;
    size_t total = 0;
    for (int32_t id : piece) {
      bytes.clear();
      auto added = added_id_tokens_.find(id);
      const std::string* token = added != added_id_tokens_.end() ? &added->second : model_->IdToToken(id);
      if (token != nullptr && !(added == added_id_tokens_.end() && decoder_ == DecoderKind::kByteLevel &&
                                AppendBytesFromByteLevel(*token, &bytes))) {
        bytes = *token;
      }
      lengths.push_back(bytes.size());
      total += bytes.size();
    }
    const bool exact = total == segment.end - segment.begin;
    size_t pos = segment.begin;
    for (size_t i = 0; i < piece.size(); ++i) {
      ids->push_back(piece[i]);
      if (exact) {
        offsets->emplace_back(pos, pos + lengths[i]);
        pos += lengths[i];
      } else {
        offsets->emplace_back(segment.begin, segment.end);
      }
    }
  }
}

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool add_special_tokens) const {
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 4);
  EncodeAppend(text, add_special_tokens, &ids);
  return ids;
}

void Tokenizer::EncodeAppend(std::string_view text, bool add_special_tokens, std::vector<int32_t>* ids) const {
  std::string repaired;
  if (!IsValidUtf8(text)) {
    repaired = ToValidUtf8(text);
    text = repaired;
  }
  if (add_special_tokens) ids->insert(ids->end(), special_prefix_.begin(), special_prefix_.end());
  if (raw_matcher_->empty()) {
    EncodeNonAdded(text, ids);
  } else {
    std::vector<TextSegment> segments;
    raw_matcher_->Split(text, &segments);
    for (const TextSegment& segment : segments) {
      if (segment.token >= 0) {
        ids->push_back(added_tokens_[segment.token].id);
      } else {
        EncodeNonAdded(text.substr(segment.begin, segment.end - segment.begin), ids);
      }
    }
  }
  if (add_special_tokens) ids->insert(ids->end(), special_suffix_.begin(), special_suffix_.end());
}

void Tokenizer::EncodeNonAdded(std::string_view text, std::vector<int32_t>* ids) const {
  thread_local std::string normalized;
  std::string_view view = text;
  if (normalizer_) {
    normalizer_->Normalize(text, &normalized);
    view = normalized;
  }
  if (normalized_matcher_->empty()) {
    EncodeNormalized(view, ids);
    return;
  }
  // `normalized` may be reused by a nested call; keep this text alive in a local.
  const std::string owned(view);
  std::vector<TextSegment> segments;
  normalized_matcher_->Split(owned, &segments);
  for (const TextSegment& segment : segments) {
    if (segment.token >= 0) {
      ids->push_back(added_tokens_[segment.token].id);
    } else {
      EncodeNormalized(std::string_view(owned).substr(segment.begin, segment.end - segment.begin), ids);
    }
  }
}

void Tokenizer::EncodeNormalized(std::string_view text, std::vector<int32_t>* ids) const {
  if (text.empty()) return;
  thread_local PreTokenizedText words, scratch;
  words.Reset(text);
  if (pre_tokenizer_) pre_tokenizer_->PreTokenize(&words, &scratch);
  const std::string_view all = words.text;
  for (const auto& [begin, end] : words.pieces) model_->EncodeWord(all.substr(begin, end - begin), ids);
}

std::string Tokenizer::Decode(absl::Span<const int32_t> ids, bool skip_special_tokens) const {
  std::string out;
  bool first = true;
  for (int32_t id : ids) {
    if (skip_special_tokens && special_ids_.contains(id)) continue;
    const std::string* token = nullptr;
    auto added = added_id_tokens_.find(id);
    if (added != added_id_tokens_.end()) {
      token = &added->second;
    } else {
      token = model_->IdToToken(id);
    }
    if (token == nullptr) continue;
    if (decoder_ == DecoderKind::kByteLevel) {
      if (!AppendBytesFromByteLevel(*token, &out)) out += *token;
    } else {
      if (!first) out.push_back(' ');
      out += *token;
    }
    first = false;
  }
  if (decoder_ == DecoderKind::kByteLevel) return ToValidUtf8(out);
  return out;
}

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  auto it = added_token_ids_.find(AsAbsl(token));
  if (it != added_token_ids_.end()) return it->second;
  return model_->TokenToId(token);
}

std::optional<std::string> Tokenizer::IdToToken(int32_t id) const {
  auto it = added_id_tokens_.find(id);
  if (it != added_id_tokens_.end()) return it->second;
  if (const std::string* token = model_->IdToToken(id)) return *token;
  return std::nullopt;
}

}  // namespace ftd::data
