#include "engine/data/chat_format.h"

#include <ctime>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace ftd::data {
namespace {

struct FamilyMarkers {
  ChatFamily family;
  const char* template_marker;
  std::vector<std::string> required_tokens;
};

const std::vector<FamilyMarkers>& AllFamilies() {
  static const auto* families = new std::vector<FamilyMarkers>{
      {ChatFamily::kHarmony, "<|channel|>", {"<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"}},
      {ChatFamily::kChatMl, "<|im_start|>", {"<|im_start|>", "<|im_end|>"}},
      {ChatFamily::kLlama3, "<|start_header_id|>",
       {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"}},
      {ChatFamily::kDeepSeekV3, "<｜User｜>",
       {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"}},
  };
  return *families;
}

const FamilyMarkers& MarkersOf(ChatFamily family) {
  for (const auto& markers : AllFamilies()) {
    if (markers.family == family) return markers;
  }
  return AllFamilies().front();
}

// The system message GPT-OSS's own chat template writes with its defaults (model identity,
// reasoning_effort medium, no tools), today's date included as its strftime_now gives it (local
// time); tests/data/chat_format_test.cc renders both and compares.
std::string HarmonySystemHeader() {
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  localtime_r(&now, &local);
  char date[16];
  std::strftime(date, sizeof(date), "%Y-%m-%d", &local);
  return absl::StrCat(
      "You are ChatGPT, a large language model trained by OpenAI.\nKnowledge cutoff: 2024-06\nCurrent date: ", date,
      "\n\nReasoning: medium\n\n# Valid channels: analysis, commentary, final. Channel must be included for every "
      "message.");
}

}  // namespace

const char* ChatFamilyName(ChatFamily family) {
  switch (family) {
    case ChatFamily::kChatMl: return "chatml";
    case ChatFamily::kLlama3: return "llama3";
    case ChatFamily::kDeepSeekV3: return "deepseek_v3";
    case ChatFamily::kHarmony: return "harmony";
  }
  return "unknown";
}

absl::StatusOr<ChatFamily> DetectChatFamily(const Tokenizer& tokenizer) {
  const std::string& chat_template = tokenizer.config().chat_template;
  if (!chat_template.empty()) {
    for (const auto& markers : AllFamilies()) {
      if (chat_template.find(markers.template_marker) != std::string::npos) return markers.family;
    }
  }
  for (const auto& markers : AllFamilies()) {
    bool all = true;
    for (const auto& token : markers.required_tokens) all = all && tokenizer.TokenToId(token).has_value();
    if (all) return markers.family;
  }
  return absl::NotFoundError(
      "no supported chat format: the chat template and vocabulary have none of the markers of ChatML "
      "(<|im_start|>), Llama-3 (<|start_header_id|>), DeepSeek-V3 (<｜User｜>) or GPT-OSS harmony (<|channel|>)");
}

namespace {

// A conversation's messages for the built-in layouts: role and string content only.
absl::StatusOr<std::vector<ChatMessage>> BuiltInMessages(const ChatConversation& conversation) {
  std::vector<ChatMessage> messages;
  if (!conversation.messages.is_array()) return absl::InvalidArgumentError("\"messages\" must be a list");
  for (size_t i = 0; i < conversation.messages.size(); ++i) {
    const auto& m = conversation.messages[i];
    const auto role = m.find("role");
    const auto content = m.find("content");
    if (m.contains("tool_calls") && !m["tool_calls"].is_null()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "\"messages\"[", i, "] has tool_calls, which the built-in chat layouts cannot render; the model needs a "
          "chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja)"));
    }
    if (role == m.end() || !role->is_string()) return absl::InvalidArgumentError(absl::StrCat("\"messages\"[", i, "].role must be a string"));
    if (content != m.end() && !content->is_null() && !content->is_string()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "\"messages\"[", i, "].content is not a string, which the built-in chat layouts cannot render; the model "
          "needs a chat template (tokenizer_config.json \"chat_template\" or chat_template.jinja)"));
    }
    messages.push_back({role->get<std::string>(),
                        content == m.end() || content->is_null() ? "" : content->get<std::string>()});
  }
  return messages;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ChatFormatter>> ChatFormatter::Create(const Tokenizer* tokenizer,
                                                                     std::optional<ChatFamily> family,
                                                                     ChatFormatOptions options) {
  if (!family && !tokenizer->config().chat_template.empty()) {
    auto chat_template = ChatTemplate::FromTokenizer(*tokenizer);
    if (!chat_template.ok()) return chat_template.status();
    std::unique_ptr<ChatFormatter> formatter(new ChatFormatter(tokenizer, ChatFamily::kChatMl, options));
    formatter->template_ = std::move(*chat_template);
    return formatter;
  }
  if (!family) {
    auto detected = DetectChatFamily(*tokenizer);
    if (!detected.ok()) return detected.status();
    family = *detected;
  }
  for (const auto& token : MarkersOf(*family).required_tokens) {
    if (!tokenizer->TokenToId(token)) {
      return absl::FailedPreconditionError(absl::StrCat("chat format ", ChatFamilyName(*family), ": token \"",
                                                        token, "\" is not in the vocabulary"));
    }
  }
  return std::unique_ptr<ChatFormatter>(new ChatFormatter(tokenizer, *family, options));
}

std::vector<ChatFormatter::Piece> ChatFormatter::Pieces(const std::vector<ChatMessage>& messages) const {
  std::vector<Piece> pieces;
  const auto token = [&](const char* content, bool trained = false) { pieces.push_back({content, true, trained}); };
  const auto text = [&](std::string content, bool trained = false) {
    if (!content.empty()) pieces.push_back({std::move(content), false, trained});
  };
  const auto trained_turn = [&](const ChatMessage& m) {
    return options_.train_on_all_turns || m.role == "assistant";
  };

  switch (family_) {
    case ChatFamily::kChatMl:
      for (const ChatMessage& m : messages) {
        const bool trained = trained_turn(m);
        token("<|im_start|>");
        if (m.role == "tool") {  // Qwen2.5/Qwen3 put tool results in a user turn
          text("user\n");
          text(absl::StrCat("<tool_response>\n", m.content, "\n</tool_response>"), trained);
        } else {
          text(absl::StrCat(m.role, "\n"));
          text(m.content, trained);
        }
        token("<|im_end|>", trained);
        text("\n");
      }
      break;
    case ChatFamily::kLlama3:
      token("<|begin_of_text|>");
      for (const ChatMessage& m : messages) {
        const bool trained = trained_turn(m);
        token("<|start_header_id|>");
        text(m.role == "tool" ? "ipython" : m.role);
        token("<|end_header_id|>");
        text("\n\n");
        text(std::string(absl::StripAsciiWhitespace(m.content)), trained);
        token("<|eot_id|>", trained);
      }
      break;
    case ChatFamily::kDeepSeekV3: {
      token("<｜begin▁of▁sentence｜>");
      std::vector<std::string> system;
      for (const ChatMessage& m : messages) {
        if (m.role == "system") system.push_back(m.content);
      }
      text(absl::StrJoin(system, "\n\n"), options_.train_on_all_turns);
      for (const ChatMessage& m : messages) {
        const bool trained = trained_turn(m);
        if (m.role == "user") {
          token("<｜User｜>");
          text(m.content, trained);
        } else if (m.role == "assistant") {
          token("<｜Assistant｜>");
          text(m.content, trained);
          token("<｜end▁of▁sentence｜>", trained);
        } else if (m.role == "tool") {
          // Tool outputs go in a user-side turn (the vocabulary's tool markers are optional).
          token("<｜User｜>");
          text(m.content, trained);
        }
      }
      break;
    }
    case ChatFamily::kHarmony:
      token("<|start|>");
      text("system");
      token("<|message|>");
      text(HarmonySystemHeader());
      token("<|end|>");
      for (size_t i = 0; i < messages.size(); ++i) {
        const ChatMessage& m = messages[i];
        const bool trained = trained_turn(m);
        token("<|start|>");
        if (m.role == "assistant") {
          text("assistant");
          token("<|channel|>");
          text("final");
          token("<|message|>");
          text(m.content, trained);
          // <|return|> ends the conversation's last message only (the template's loop.last).
          token(i + 1 == messages.size() ? "<|return|>" : "<|end|>", trained);
          continue;
        }
        if (m.role == "system" || m.role == "developer") {  // first message only (FormatBuiltIn)
          text("developer");
          token("<|message|>");
          text(absl::StrCat("# Instructions\n\n", m.content, "\n\n"), trained);
        } else {
          text(m.role);
          token("<|message|>");
          text(m.content, trained);
        }
        token("<|end|>", trained);
      }
      break;
  }
  return pieces;
}

std::string ChatFormatter::Describe() const {
  if (template_) {
    return absl::StrCat("the model's chat template (", template_->has_generation_blocks() ? "loss on its {% generation %} blocks" : "loss on assistant turns, found by rendering prefixes", ")");
  }
  return absl::StrCat("built-in ", ChatFamilyName(family_), " layout (the model has no chat template)");
}

absl::StatusOr<TokenizedDocument> ChatFormatter::Format(const ChatConversation& conversation) const {
  if (template_) {
    return template_->Encode(*tokenizer_, conversation, options_.template_kwargs, options_.train_on_all_turns);
  }
  if (!conversation.tools.is_null() || !conversation.documents.is_null()) {
    return absl::FailedPreconditionError(
        "\"tools\" and \"documents\" need the model's chat template (tokenizer_config.json \"chat_template\" or "
        "chat_template.jinja); the built-in chat layouts cannot render them");
  }
  auto messages = BuiltInMessages(conversation);
  if (!messages.ok()) return messages.status();
  return FormatBuiltIn(*messages);
}

absl::StatusOr<TokenizedDocument> ChatFormatter::Format(const std::vector<ChatMessage>& messages) const {
  if (!template_) return FormatBuiltIn(messages);
  ChatConversation conversation;
  for (const ChatMessage& m : messages) {
    nlohmann::ordered_json message = nlohmann::ordered_json::object();
    message["role"] = m.role;
    message["content"] = m.content;
    conversation.messages.push_back(std::move(message));
  }
  return Format(conversation);
}

absl::StatusOr<std::string> ChatFormatter::Render(const ChatConversation& conversation) const {
  if (template_) {
    auto rendered = template_->Render(conversation, /*add_generation_prompt=*/false, options_.template_kwargs);
    if (!rendered.ok()) return rendered.status();
    return std::move(rendered->text);
  }
  auto messages = BuiltInMessages(conversation);
  if (!messages.ok()) return messages.status();
  return Render(*messages);
}

std::string ChatFormatter::Render(const std::vector<ChatMessage>& messages) const {
  if (template_) {
    ChatConversation conversation;
    for (const ChatMessage& m : messages) conversation.messages.push_back({{"role", m.role}, {"content", m.content}});
    auto rendered = Render(conversation);
    return rendered.ok() ? *rendered : "";
  }
  std::string out;
  for (const Piece& piece : Pieces(messages)) out += piece.text;
  return out;
}

absl::StatusOr<TokenizedDocument> ChatFormatter::FormatBuiltIn(const std::vector<ChatMessage>& messages) const {
  if (family_ == ChatFamily::kHarmony) {
    for (size_t i = 0; i < messages.size(); ++i) {
      const std::string& role = messages[i].role;
      if (role == "tool") {
        // Harmony writes a tool result as a message from the function a tool call named.
        return absl::FailedPreconditionError(absl::StrCat(
            "\"messages\"[", i, "] has role tool, which the built-in harmony layout cannot render (GPT-OSS tool "
            "results answer a tool call); the model needs its chat template (chat_template.jinja)"));
      }
      if (i > 0 && (role == "system" || role == "developer")) {
        // GPT-OSS's template reads instructions from the first message only (it drops others).
        return absl::InvalidArgumentError(absl::StrCat("\"messages\"[", i, "] has role ", role,
                                                       ": harmony takes system/developer instructions from the "
                                                       "first message only"));
      }
    }
  }
  TokenizedDocument document;
  std::vector<int32_t> ids;
  for (const Piece& piece : Pieces(messages)) {
    ids.clear();
    if (piece.is_token) {
      auto id = tokenizer_->TokenToId(piece.text);
      if (!id) {
        return absl::FailedPreconditionError(absl::StrCat("chat format ", ChatFamilyName(family_), ": token \"",
                                                          piece.text, "\" is not in the vocabulary"));
      }
      ids.push_back(*id);
    } else {
      tokenizer_->EncodeAppend(piece.text, /*add_special_tokens=*/false, &ids);
    }
    document.input_ids.insert(document.input_ids.end(), ids.begin(), ids.end());
    for (int32_t id : ids) document.labels.push_back(piece.trained ? id : kIgnoreLabel);
  }
  return document;
}

}  // namespace ftd::data
