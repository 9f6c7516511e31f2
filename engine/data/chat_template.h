// A model's own chat template (tokenizer_config.json "chat_template", or chat_template.jinja,
// which takes priority), rendered as transformers' apply_chat_template renders it, and the loss
// mask derived from it.
//
// Rendering matches apply_chat_template(tokenize=False) byte for byte: messages have their
// null-valued keys dropped and reasoning aliased (reasoning_content / thinking / reasoning) as
// transformers does; the template sees messages, tools, documents, add_generation_prompt, the
// tokenizer's named special tokens (bos_token, eos_token, ...) and the extra keyword
// variables (enable_thinking, reasoning_effort, ...), which override special tokens.
//
// Which tokens are trained (assistant spans, in bytes of the rendered text):
//  - The template has {% generation %} blocks: exactly the text they produced, as
//    return_assistant_tokens_mask does; a token is trained when it overlaps a span.
//  - Otherwise, for each assistant message i, from the end of the generation prompt to the end
//    of the message: start = the common prefix of the full rendering with the rendering of
//    messages[:i] with add_generation_prompt=True (what the model sees before it writes turn
//    i); end = the length of the rendering of messages[:i+1], which for templates that render
//    history the same way as the latest turn (ChatML, Llama-3, Mistral, Gemma, Phi,
//    DeepSeek...) is a prefix of the full rendering. Trailing whitespace after the turn's end
//    token (ChatML's "\n") is not trained: the model stops at the end token. Templates that
//    render the last turn differently from history (Qwen3 drops earlier reasoning, harmony ends
//    the last turn in <|return|>) are handled by locating the message's content in the full
//    rendering (a sentinel appended to it must appear exactly once), then extending the span
//    over the end-of-turn text that the message-as-last rendering puts after the content, as far
//    as the full rendering agrees, never splitting a token. When neither works the error says so
//    (add {% generation %} blocks to the template).
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/jinja/template.h"
#include "engine/data/tokenized_document.h"
#include "engine/data/tokenizer.h"
#include "engine/data/tokenizer_config.h"
#include "nlohmann/json.hpp"

namespace ftd::data {

// One conversation as a dataset line or a request gives it (key order kept: it shows in
// tojson output).
struct ChatConversation {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  nlohmann::ordered_json tools;      // null: none
  nlohmann::ordered_json documents;  // null: none
};

// A byte range of rendered text; `exact_end` is false when the end came from aligning two
// renderings and may fall inside a token (the token is then not trained).
struct TrainedSpan {
  size_t begin;
  size_t end;
  bool exact_end = true;
};

class ChatTemplate {
 public:
  // `special_tokens`: the tokenizer config whose named tokens the template sees. A syntax error
  // names the template line and column.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> Create(std::string_view source,
                                                              const TokenizerConfig& special_tokens);
  // The tokenizer's template; NOT_FOUND when it has none.
  static absl::StatusOr<std::unique_ptr<ChatTemplate>> FromTokenizer(const Tokenizer& tokenizer);

  // The rendered text (and {% generation %} spans). `kwargs`: a JSON object of extra template
  // variables, or null.
  absl::StatusOr<jinja::RenderResult> Render(const ChatConversation& conversation, bool add_generation_prompt,
                                             const nlohmann::ordered_json& kwargs,
                                             const jinja::RenderOptions& options = {}) const;

  // The trained spans of `rendered` (the conversation rendered without a generation prompt),
  // by the rules above.
  absl::StatusOr<std::vector<TrainedSpan>> AssistantSpans(const ChatConversation& conversation,
                                                          const nlohmann::ordered_json& kwargs,
                                                          const jinja::RenderResult& rendered,
                                                          const jinja::RenderOptions& options = {}) const;

  // Renders, tokenizes as apply_chat_template(tokenize=True) does (no added special tokens) and
  // labels the tokens overlapping the trained spans (all tokens with train_on_all).
  absl::StatusOr<TokenizedDocument> Encode(const Tokenizer& tokenizer, const ChatConversation& conversation,
                                           const nlohmann::ordered_json& kwargs, bool train_on_all = false,
                                           std::string* rendered_text = nullptr) const;

  bool has_generation_blocks() const { return default_->has_generation_blocks(); }

 private:
  ChatTemplate() = default;
  const jinja::Template& Select(const ChatConversation& conversation) const;

  std::shared_ptr<const jinja::Template> default_;
  std::shared_ptr<const jinja::Template> tool_use_;  // the "tool_use" named template, if any
  std::vector<std::pair<std::string, jinja::Value>> special_tokens_;
};

// Token-level mask for byte spans: token t is trained when [offsets[t].first, offsets[t].second)
// overlaps a span (as transformers' assistant_masks); for spans whose end is not exact, tokens
// reaching past the end are not trained.
std::vector<bool> MaskFromSpans(const std::vector<std::pair<size_t, size_t>>& offsets,
                                const std::vector<TrainedSpan>& spans);

}  // namespace ftd::data
