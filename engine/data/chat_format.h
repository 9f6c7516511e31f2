// Chat formatting for the supported model families, producing token ids and a loss mask that is
// on for assistant turns only (by default). The family is detected from the model's chat
// template (tokenizer_config.json or chat_template.jinja), or from its special tokens.
//
//   ChatML (Qwen2/Qwen3):  <|im_start|>{role}\n{content}<|im_end|>\n
//   Llama-3:               <|begin_of_text|><|start_header_id|>{role}<|end_header_id|>\n\n{content}<|eot_id|>
//   DeepSeek-V3:           <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{reply}<｜end▁of▁sentence｜>
//   GPT-OSS harmony:       <|start|>{role}<|message|>{content}<|end|>; assistant turns are
//                          <|start|>assistant<|channel|>final<|message|>{content}<|end|>, the last
//                          one ending in <|return|>; a system message becomes the developer
//                          message "# Instructions\n\n{content}" after the harmony system header.
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
  // Train on every turn's content instead of assistant turns only.
  bool train_on_all_turns = false;
};

// From the chat template's markers, else from which marker tokens the vocabulary has;
// NOT_FOUND when neither identifies a supported family.
absl::StatusOr<ChatFamily> DetectChatFamily(const Tokenizer& tokenizer);

class ChatFormatter {
 public:
  // `tokenizer` must outlive the formatter. Without `family`, it is detected. FAILED_PRECONDITION
  // naming the missing token when the vocabulary lacks one of the family's markers.
  static absl::StatusOr<std::unique_ptr<ChatFormatter>> Create(const Tokenizer* tokenizer,
                                                               std::optional<ChatFamily> family = std::nullopt,
                                                               ChatFormatOptions options = {});

  // Token ids and HF-style labels (kIgnoreLabel outside trained turns).
  absl::StatusOr<TokenizedDocument> Format(const std::vector<ChatMessage>& messages) const;
  // The rendered conversation as text (what the model's Jinja template would produce).
  std::string Render(const std::vector<ChatMessage>& messages) const;

  ChatFamily family() const { return family_; }

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

  const Tokenizer* tokenizer_;
  ChatFamily family_;
  ChatFormatOptions options_;
};

}  // namespace ftd::data
