// One line of a JSONL training file, parsed and checked. Formats:
//   {"messages": [{"role": "system|user|assistant|tool|developer", "content": "..."}, ...],
//    "tools"?: [...], "documents"?: [...]}
//       messages as chat APIs and transformers take them: content may be null or a list of
//       parts, assistant turns may carry tool_calls and reasoning_content; rendered with the
//       model's chat template (engine/data/chat_format.h)
//   {"prompt": "...", "completion": "..."}       loss on the completion only
//   {"text": "..."}                               loss on every token
//   {"input_ids": [...], "labels": [...]}         labels optional; -100 = no loss
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/chat_format.h"

namespace ftd::data {

enum class DatasetFormat { kAuto, kMessages, kPromptCompletion, kText, kTokenIds };

// "auto" | "messages" | "prompt_completion" | "text" | "input_ids".
absl::StatusOr<DatasetFormat> ParseDatasetFormat(std::string_view name);
const char* DatasetFormatName(DatasetFormat format);

struct DatasetRecord {
  DatasetFormat format = DatasetFormat::kAuto;  // never kAuto once parsed
  std::vector<ChatMessage> messages;  // role and string content (the built-in layouts' view)
  ChatConversation conversation;      // the messages, tools and documents as given
  std::string prompt;
  std::string completion;
  std::string text;
  std::vector<int32_t> input_ids;
  std::optional<std::vector<int32_t>> labels;
};

// Parses and checks one line. `vocab_size` (> 0) bounds token ids and labels; 0 skips that
// check. The error says what is wrong with which field, e.g.
// `"messages"[2].role must be one of system|user|assistant|tool|developer` (callers add "file:line: ").
absl::StatusOr<DatasetRecord> ParseDatasetRecord(std::string_view line, DatasetFormat format, int32_t vocab_size);

}  // namespace ftd::data
