#include "engine/data/chat_template.h"

#include <chrono>
#include <ctime>
#include <optional>

#include "absl/strings/str_cat.h"

namespace ftd::data {
namespace {

using jinja::Value;
using nlohmann::ordered_json;

// Marks where one message's content begins or ends in probe renderings: printable (json.dumps
// keeps it as it is, for tool-call names), not whitespace (trim keeps it), and not in real text.
constexpr std::string_view kSentinel = "\u2983ftd-probe\u2984";

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

// Message `message` with the sentinel added to the start (or end) of: its content when that is
// a non-empty string (probe 0); its first (last) tool call's function name (probe 1); its
// content, empty or absent, set to the sentinel (probe 2). Null when the probe does not apply.
std::optional<Value> ProbedMessage(const Value& message, bool at_end, int probe) {
  auto probed = std::make_shared<jinja::Dict>(message.dict());
  const auto mark = [&](const std::string& text) {
    return at_end ? text + std::string(kSentinel) : std::string(kSentinel) + text;
  };
  const Value* content = message.dict().FindStr("content");
  const bool has_text = content != nullptr && content->is_string() && !content->str().empty();
  if (probe == 0 || probe == 2) {
    if (has_text != (probe == 0)) return std::nullopt;
    if (probe == 2 && content != nullptr && !content->is_string()) return std::nullopt;
    probed->Set(Value("content"), Value(mark(has_text ? content->str() : "")));
    return Value::MakeDict(probed);
  }
  const Value* calls = message.dict().FindStr("tool_calls");
  if (calls == nullptr || !calls->is_list() || calls->list().empty()) return std::nullopt;
  std::vector<Value> new_calls = calls->list();
  Value& call = at_end ? new_calls.back() : new_calls.front();
  if (!call.is_dict()) return std::nullopt;
  auto new_call = std::make_shared<jinja::Dict>(call.dict());
  const Value* function = call.dict().FindStr("function");
  if (function != nullptr && function->is_dict()) {
    const Value* name = function->dict().FindStr("name");
    if (name == nullptr || !name->is_string()) return std::nullopt;
    auto new_function = std::make_shared<jinja::Dict>(function->dict());
    new_function->Set(Value("name"), Value(mark(name->str())));
    new_call->Set(Value("function"), Value::MakeDict(new_function));
  } else {
    const Value* name = call.dict().FindStr("name");
    if (name == nullptr || !name->is_string()) return std::nullopt;
    new_call->Set(Value("name"), Value(mark(name->str())));
  }
  call = Value::MakeDict(new_call);
  probed->Set(Value("tool_calls"), Value::List(std::move(new_calls)));
  return Value::MakeDict(probed);
}

// Where message `index`'s data begins (at_end: ends) in `base`, the rendering of the first
// `count` messages: the sentinel must appear exactly once in the probe rendering, and the
// rendering must agree with `base` up to it (up to whitespace the template trimmed, at the end).
std::optional<size_t> LocateMessageData(const jinja::Template& tmpl, const PreparedInputs& in, size_t count,
                                        size_t index, const std::string& base, bool at_end,
                                        const jinja::RenderOptions& options) {
  for (int kind = 0; kind < 3; ++kind) {
    std::optional<Value> probed = ProbedMessage(in.messages[index], at_end, kind);
    if (!probed) continue;
    PreparedInputs probe = in;
    probe.messages[index] = std::move(*probed);
    auto rendered = RenderPrepared(tmpl, probe, count, /*add_generation_prompt=*/false, options);
    if (!rendered.ok()) continue;
    const std::string& text = rendered->text;
    const size_t sentinel = text.find(kSentinel);
    if (sentinel == std::string::npos || text.find(kSentinel, sentinel + 1) != std::string::npos) continue;
    const size_t agree = CommonPrefix(base, text);
    if (agree > sentinel) continue;
    if (!at_end) {
      if (agree == sentinel) return agree;
      continue;
    }
    bool trimmed_only = true;
    for (size_t i = agree; i < sentinel; ++i) {
      trimmed_only = trimmed_only && std::string_view(" \t\r\n").find(text[i]) != std::string_view::npos;
    }
    if (trimmed_only) return agree;
  }
  return std::nullopt;
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
    auto as_last = RenderPrepared(tmpl, *in, i + 1, /*add_generation_prompt=*/false, options);
    if (!as_last.ok()) return absl::Status(as_last.status().code(), where() + std::string(as_last.status().message()));
    const std::string differently =
        "the template renders the conversation before this message differently when the message is the last "
        "one, and ";
    size_t begin = CommonPrefix(full, prompt->text);
    // The rendering without the generation prompt is only needed when the full rendering does not
    // continue the prompt (the common case needs two renderings per assistant turn).
    absl::StatusOr<jinja::RenderResult> history = jinja::RenderResult{prompt->text, {}};
    if (begin < prompt->text.size()) {
      history = RenderPrepared(tmpl, *in, i, /*add_generation_prompt=*/false, options);
      if (!history.ok()) return absl::Status(history.status().code(), where() + std::string(history.status().message()));
    }
    if (begin < history->text.size()) {
      // The prompt renders earlier turns differently (e.g. Mistral puts the system prompt in the
      // last user turn only): start where the message's own data begins, after the generation
      // prompt's text if the full rendering has it there.
      std::optional<size_t> data = LocateMessageData(tmpl, *in, in->messages.size(), i, full, false, options);
      if (!data || *data < previous_end) {
        return absl::FailedPreconditionError(where() + differently + "its content or tool call could not be "
                                             "located exactly once; add {% generation %} blocks to the chat template");
      }
      begin = *data;
      if (IsPrefix(history->text, prompt->text) && prompt->text.size() > history->text.size()) {
        const std::string generation_prompt = prompt->text.substr(history->text.size());
        const size_t header = *data >= generation_prompt.size() ? full.rfind(generation_prompt, *data - generation_prompt.size())
                                                                : std::string::npos;
        if (header != std::string::npos && header >= previous_end) begin = header + generation_prompt.size();
      }
    }
    begin = std::max(begin, previous_end);
    TrainedSpan span{begin, begin, true};
    if (IsPrefix(as_last->text, full) && as_last->text.size() >= begin) {
      span.end = as_last->text.size();
    } else {
      // The template renders this message differently as the last one (Qwen3 drops earlier
      // reasoning, harmony ends the last turn in <|return|>): find where its data ends in the
      // full rendering, then add the end-of-turn text that both renderings agree on.
      std::optional<size_t> data_end = LocateMessageData(tmpl, *in, in->messages.size(), i, full, true, options);
      std::optional<size_t> last_data_end = LocateMessageData(tmpl, *in, i + 1, i, as_last->text, true, options);
      if (!data_end || !last_data_end || *data_end < begin) {
        return absl::FailedPreconditionError(
            where() + "the template renders this message differently when it is the last one, and its content or "
                      "tool call could not be located exactly once; add {% generation %} blocks to the chat template");
      }
      const std::string_view tail = std::string_view(as_last->text).substr(*last_data_end);
      span.end = *data_end + CommonPrefix(std::string_view(full).substr(*data_end), tail);
      span.exact_end = span.end == *data_end + tail.size();
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
