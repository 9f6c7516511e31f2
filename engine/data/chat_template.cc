#include "engine/data/chat_template.h"

#include <chrono>
#include <ctime>
#include <optional>

#include "absl/strings/str_cat.h"

namespace ftd::data {
namespace {

using jinja::Value;
using nlohmann::ordered_json;

// Marks the end of one message's content in probe renderings; control characters that no
// template treats specially and real content does not hold.
constexpr std::string_view kSentinel = "\x1e\x1d" "ftd-content-end" "\x1d\x1e";

size_t CommonPrefix(std::string_view a, std::string_view b) {
  size_t n = std::min(a.size(), b.size());
  size_t i = 0;
  while (i < n && a[i] == b[i]) ++i;
  return i;
}

bool IsPrefix(std::string_view prefix, std::string_view text) {
  return prefix.size() <= text.size() && text.compare(0, prefix.size(), prefix) == 0;
}

// transformers' _normalize_chat_messages (drop null-valued keys) and _alias_reasoning_fields.
absl::StatusOr<std::vector<Value>> PrepareMessages(const ordered_json& messages) {
  if (!messages.is_array()) return absl::InvalidArgumentError("\"messages\" must be a list of message objects");
  std::vector<Value> out;
  out.reserve(messages.size());
  for (size_t i = 0; i < messages.size(); ++i) {
    const ordered_json& message = messages[i];
    if (!message.is_object()) {
      return absl::InvalidArgumentError(absl::StrCat("\"messages\"[", i, "] must be an object"));
    }
    ordered_json kept = ordered_json::object();
    for (auto it = message.begin(); it != message.end(); ++it) {
      if (!it.value().is_null()) kept[it.key()] = it.value();
    }
    const ordered_json* reasoning = nullptr;
    for (const char* field : {"reasoning_content", "thinking", "reasoning"}) {
      auto it = kept.find(field);
      if (it != kept.end()) {
        reasoning = &*it;
        break;
      }
    }
    if (reasoning != nullptr) {
      ordered_json aliased = ordered_json::object();
      aliased["thinking"] = *reasoning;
      for (auto it = kept.begin(); it != kept.end(); ++it) aliased[it.key()] = it.value();
      aliased["reasoning_content"] = *reasoning;
      kept = std::move(aliased);
    }
    out.push_back(Value::FromJson(kept));
  }
  return out;
}

std::string RoleOf(const Value& message) {
  if (!message.is_dict()) return "";
  const Value* role = message.dict().FindStr("role");
  return role && role->is_string() ? role->str() : "";
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::Create(std::string_view source,
                                                                   const TokenizerConfig& config) {
  std::unique_ptr<ChatTemplate> chat(new ChatTemplate());
  auto parsed = jinja::Template::Parse(source);
  if (!parsed.ok()) return parsed.status();
  chat->default_ = std::move(*parsed);
  for (const auto& [name, text] : config.named_chat_templates) {
    if (name != "tool_use") continue;
    auto tool_use = jinja::Template::Parse(text);
    if (!tool_use.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("\"tool_use\" ", tool_use.status().message()));
    }
    chat->tool_use_ = std::move(*tool_use);
  }
  for (const auto& [name, token] :
       {std::pair{"bos_token", &config.bos_token}, std::pair{"eos_token", &config.eos_token},
        std::pair{"unk_token", &config.unk_token}, std::pair{"sep_token", &config.sep_token},
        std::pair{"pad_token", &config.pad_token}, std::pair{"cls_token", &config.cls_token},
        std::pair{"mask_token", &config.mask_token}}) {
    if (token->has_value()) chat->special_tokens_.emplace_back(name, Value(**token));
  }
  return chat;
}

absl::StatusOr<std::unique_ptr<ChatTemplate>> ChatTemplate::FromTokenizer(const Tokenizer& tokenizer) {
  if (tokenizer.config().chat_template.empty()) {
    return absl::NotFoundError(
        "the tokenizer has no chat template (neither tokenizer_config.json \"chat_template\" nor chat_template.jinja)");
  }
  return Create(tokenizer.config().chat_template, tokenizer.config());
}

const jinja::Template& ChatTemplate::Select(const ChatConversation& conversation) const {
  if (tool_use_ && !conversation.tools.is_null()) return *tool_use_;
  return *default_;
}

namespace {

struct PreparedInputs {
  std::vector<Value> messages;
  Value tools;
  Value documents;
  std::vector<std::pair<std::string, Value>> extra;  // special tokens, then kwargs over them
};

absl::StatusOr<PreparedInputs> Prepare(const ChatConversation& conversation, const ordered_json& kwargs,
                                       const std::vector<std::pair<std::string, Value>>& special_tokens) {
  PreparedInputs in;
  auto messages = PrepareMessages(conversation.messages);
  if (!messages.ok()) return messages.status();
  in.messages = std::move(*messages);
  if (!conversation.tools.is_null() && !conversation.tools.is_array()) {
    return absl::InvalidArgumentError("\"tools\" must be a list of tool schemas");
  }
  if (!conversation.documents.is_null() && !conversation.documents.is_array()) {
    return absl::InvalidArgumentError("\"documents\" must be a list of documents");
  }
  in.tools = conversation.tools.is_null() ? Value::None() : Value::FromJson(conversation.tools);
  in.documents = conversation.documents.is_null() ? Value::None() : Value::FromJson(conversation.documents);
  in.extra = special_tokens;
  if (!kwargs.is_null()) {
    if (!kwargs.is_object()) return absl::InvalidArgumentError("template keyword arguments must be a JSON object");
    for (auto it = kwargs.begin(); it != kwargs.end(); ++it) {
      const std::string& key = it.key();
      if (key == "messages" || key == "tools" || key == "documents" || key == "add_generation_prompt") {
        return absl::InvalidArgumentError(
            absl::StrCat("template keyword argument \"", key, "\" is set by the conversation itself"));
      }
      bool replaced = false;
      for (auto& [name, value] : in.extra) {
        if (name == key) {
          value = Value::FromJson(it.value());
          replaced = true;
        }
      }
      if (!replaced) in.extra.emplace_back(key, Value::FromJson(it.value()));
    }
  }
  return in;
}

absl::StatusOr<jinja::RenderResult> RenderPrepared(const jinja::Template& tmpl, const PreparedInputs& in,
                                                   size_t message_count, bool add_generation_prompt,
                                                   const jinja::RenderOptions& options) {
  std::vector<std::pair<std::string, Value>> variables;
  variables.reserve(in.extra.size() + 4);
  variables.emplace_back("messages", Value::List(std::vector<Value>(in.messages.begin(),
                                                                    in.messages.begin() + message_count)));
  variables.emplace_back("tools", in.tools);
  variables.emplace_back("documents", in.documents);
  variables.emplace_back("add_generation_prompt", Value(add_generation_prompt));
  variables.insert(variables.end(), in.extra.begin(), in.extra.end());
  return tmpl.Render(variables, options);
}

// Where `probed` (= `base` with the sentinel inserted once) has its sentinel.
std::optional<size_t> SentinelPosition(const std::string& base, const std::string& probed) {
  if (probed.size() != base.size() + kSentinel.size()) return std::nullopt;
  const size_t at = CommonPrefix(base, probed);
  if (probed.compare(at, kSentinel.size(), kSentinel) != 0) return std::nullopt;
  if (probed.compare(at + kSentinel.size(), std::string::npos, base, at, std::string::npos) != 0) return std::nullopt;
  return at;
}

}  // namespace

absl::StatusOr<jinja::RenderResult> ChatTemplate::Render(const ChatConversation& conversation,
                                                         bool add_generation_prompt, const ordered_json& kwargs,
                                                         const jinja::RenderOptions& options) const {
  auto in = Prepare(conversation, kwargs, special_tokens_);
  if (!in.ok()) return in.status();
  return RenderPrepared(Select(conversation), *in, in->messages.size(), add_generation_prompt, options);
}

absl::StatusOr<std::vector<TrainedSpan>> ChatTemplate::AssistantSpans(const ChatConversation& conversation,
                                                                      const ordered_json& kwargs,
                                                                      const jinja::RenderResult& rendered,
                                                                      const jinja::RenderOptions& options) const {
  std::vector<TrainedSpan> spans;
  const jinja::Template& tmpl = Select(conversation);
  if (tmpl.has_generation_blocks()) {
    for (const auto& [begin, end] : rendered.generation_spans) {
      if (end > begin) spans.push_back({begin, end, true});
    }
    return spans;
  }
  auto in = Prepare(conversation, kwargs, special_tokens_);
  if (!in.ok()) return in.status();
  const std::string& full = rendered.text;
  size_t previous_end = 0;
  for (size_t i = 0; i < in->messages.size(); ++i) {
    if (RoleOf(in->messages[i]) != "assistant") continue;
    const auto where = [&]() { return absl::StrCat("loss mask for \"messages\"[", i, "] (assistant): "); };
    auto prompt = RenderPrepared(tmpl, *in, i, /*add_generation_prompt=*/true, options);
    if (!prompt.ok()) return absl::Status(prompt.status().code(), where() + std::string(prompt.status().message()));
    size_t begin = std::max(previous_end, CommonPrefix(full, prompt->text));
    auto as_last = RenderPrepared(tmpl, *in, i + 1, /*add_generation_prompt=*/false, options);
    if (!as_last.ok()) return absl::Status(as_last.status().code(), where() + std::string(as_last.status().message()));
    TrainedSpan span{begin, begin, true};
    if (IsPrefix(as_last->text, full) && as_last->text.size() >= begin) {
      span.end = as_last->text.size();
    } else {
      // The template renders this message differently as the last one: find its content's end
      // in the full rendering with a sentinel, then add the end-of-turn text both agree on.
      const Value* content = in->messages[i].dict().FindStr("content");
      if (content == nullptr || !content->is_string()) {
        return absl::FailedPreconditionError(
            where() + "the template renders this message differently when it is the last one, and without a string "
                      "\"content\" it cannot be located; add {% generation %} blocks to the chat template");
      }
      PreparedInputs probe = *in;
      auto probed_message = std::make_shared<jinja::Dict>(in->messages[i].dict());
      probed_message->Set(Value("content"), Value(content->str() + std::string(kSentinel)));
      probe.messages[i] = Value::MakeDict(probed_message);
      auto full_probe = RenderPrepared(tmpl, probe, probe.messages.size(), false, options);
      auto last_probe = RenderPrepared(tmpl, probe, i + 1, false, options);
      std::optional<size_t> content_end, last_content_end;
      if (full_probe.ok() && last_probe.ok()) {
        content_end = SentinelPosition(full, full_probe->text);
        last_content_end = SentinelPosition(as_last->text, last_probe->text);
      }
      if (!content_end || !last_content_end || *content_end < begin) {
        return absl::FailedPreconditionError(
            where() + "the template renders this message differently when it is the last one, and its content "
                      "does not appear exactly once in the rendering; add {% generation %} blocks to the chat "
                      "template");
      }
      const std::string_view tail = std::string_view(as_last->text).substr(*last_content_end);
      span.end = *content_end + CommonPrefix(std::string_view(full).substr(*content_end), tail);
      span.exact_end = span.end == *content_end + tail.size();
    }
    while (span.end > span.begin && std::string_view(" \t\r\n").find(full[span.end - 1]) != std::string_view::npos) {
      --span.end;
      span.exact_end = true;
    }
    if (span.end > span.begin) spans.push_back(span);
    previous_end = std::max(previous_end, span.end);
  }
  return spans;
}

std::vector<bool> MaskFromSpans(const std::vector<std::pair<size_t, size_t>>& offsets,
                                const std::vector<TrainedSpan>& spans) {
  std::vector<bool> mask(offsets.size(), false);
  size_t s = 0;
  for (size_t t = 0; t < offsets.size(); ++t) {
    const auto [begin, end] = offsets[t];
    while (s < spans.size() && begin >= spans[s].end) ++s;
    if (s == spans.size()) break;
    if (end > spans[s].begin && (spans[s].exact_end || end <= spans[s].end)) mask[t] = true;
  }
  return mask;
}

absl::StatusOr<TokenizedDocument> ChatTemplate::Encode(const Tokenizer& tokenizer,
                                                       const ChatConversation& conversation,
                                                       const ordered_json& kwargs, bool train_on_all,
                                                       std::string* rendered_text) const {
  // One clock reading for every rendering of this conversation (strftime_now dates agree).
  const std::time_t now = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now());
  jinja::RenderOptions options;
  options.now = [now]() { return now; };
  auto rendered = Render(conversation, /*add_generation_prompt=*/false, kwargs, options);
  if (!rendered.ok()) return rendered.status();
  std::vector<TrainedSpan> spans;
  if (!train_on_all) {
    auto found = AssistantSpans(conversation, kwargs, *rendered, options);
    if (!found.ok()) return found.status();
    spans = std::move(*found);
  } else {
    spans.push_back({0, rendered->text.size(), true});
  }
  TokenizedDocument document;
  std::vector<std::pair<size_t, size_t>> offsets;
  tokenizer.EncodeWithOffsets(rendered->text, &document.input_ids, &offsets);
  const std::vector<bool> mask = MaskFromSpans(offsets, spans);
  document.labels.resize(document.input_ids.size());
  for (size_t t = 0; t < mask.size(); ++t) document.labels[t] = mask[t] ? document.input_ids[t] : kIgnoreLabel;
  if (rendered_text) *rendered_text = std::move(rendered->text);
  return document;
}

}  // namespace ftd::data
