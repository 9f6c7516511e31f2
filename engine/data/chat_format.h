// Chat formatting: token ids and a loss mask that is on for assistant turns only (by default).
//
// A model with a chat template (tokenizer_config.json "chat_template" or chat_template.jinja) is
// rendered with that template, exactly as transformers' apply_chat_template renders it, and the
// loss mask is derived from the rendering (engine/data/chat_template.h says how).
//
// FALLBACK, only for a model that ships no chat template (or when a family is named
// explicitly): four built-in layouts, the family detected from the vocabulary's marker tokens:
//
//   ChatML (Qwen2/Qwen3):  <|im_start|>{role}\n{content}<|im_end|>\n
//   Llama-3:               <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//   DeepSeek-V3:           <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{reply}<｜end▁of▁sentence｜>
//   GPT-OSS harmony:       <|start|>{role}<|message|>{content}<|end|>; assistant turns are
//                          <|start|>assistant<|channel|>final<|message|>{content}<|end|>, the last
//                          one ending in <|return|>; a system message becomes the developer
//                          message "# Instructions\n\n{content}\n\n" after the harmony system
//                          header (as GPT-OSS's own template renders them, date included; tool
//                          results are refused: they need the template's tool calls).
//
// Trained tokens of an assistant turn: its content and its end-of-turn token; the role header
// is never trained. Text between special tokens is encoded piecewise (header, then content);
// because headers end at a special token or a newline, this gives the same ids as encoding the
// rendered string (checked in tests/data/chat_format_test.cc).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/chat_template.h"
#include "engine/data/tokenized_document.h"
#include "engine/data/tokenizer.h"

namespace ftd::data {

enum class ChatFamily { kChatMl, kLlama3, kDeepSeekV3, kHarmony };
const char* ChatFamilyName(ChatFamily family);

struct ChatMessage {
  std::string role;  // system | user | assistant | tool
  std::string content;
};

struct ChatFormatOptions {
  // Train on every token (template) / every turn's content (built-in layouts) instead of
  // assistant turns only.
  bool train_on_all_turns = false;
  // Extra chat template variables, e.g. {"enable_thinking": false}; a JSON object or null.
  nlohmann::ordered_json template_kwargs;
};

// From the chat template's markers, else from which marker tokens the vocabulary has;
// NOT_FOUND when neither identifies a supported family.
absl::StatusOr<ChatFamily> DetectChatFamily(const Tokenizer& tokenizer);

class ChatFormatter {
 public:
  // `tokenizer` must outlive the formatter. Without `family`: the tokenizer's chat template
  // when it has one (a template that does not parse is an error naming its line), else the
  // built-in layout detected from the vocabulary. With `family`: that built-in layout.
  // FAILED_PRECONDITION naming the missing token when the vocabulary lacks one of a built-in
  // layout's markers.
  static absl::StatusOr<std::unique_ptr<ChatFormatter>> Create(const Tokenizer* tokenizer,
                                                               std::optional<ChatFamily> family = std::nullopt,
                                                               ChatFormatOptions options = {});

  // Token ids and HF-style labels (kIgnoreLabel outside trained turns).
  absl::StatusOr<TokenizedDocument> Format(const ChatConversation& conversation) const;
  absl::StatusOr<TokenizedDocument> Format(const std::vector<ChatMessage>& messages) const;
  // The rendered conversation as text.
  absl::StatusOr<std::string> Render(const ChatConversation& conversation) const;
  std::string Render(const std::vector<ChatMessage>& messages) const;

  // True when rendering with the model's own template; family() is meaningful otherwise.
  bool uses_template() const { return template_ != nullptr; }
  ChatFamily family() const { return family_; }
  // For logs: "the model's chat template (...)" or "built-in chatml layout (...)".
  std::string Describe() const;

 private:
  // A rendered piece: literal text, or a marker token by its content.
  struct Piece {
    std::string text;
    bool is_token;
    bool trained;
  };
  ChatFormatter(const Tokenizer* tokenizer, ChatFamily family, ChatFormatOptions options)
      : tokenizer_(tokenizer), family_(family), options_(options) {}
  std::vector<Piece> Pieces(const std::vector<ChatMessage>& messages) const;
  absl::StatusOr<TokenizedDocument> FormatBuiltIn(const std::vector<ChatMessage>& messages) const;

  const Tokenizer* tokenizer_;
  ChatFamily family_;
  ChatFormatOptions options_;
  std::unique_ptr<ChatTemplate> template_;
};

}  // namespace ftd::data
