#include "engine/data/dataset_record.h"

#include "absl/strings/str_cat.h"
#include "engine/data/tokenized_document.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

using nlohmann::json;

const char* TypeName(const json& value) {
  switch (value.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a float";
    default: return "a number";
  }
}

absl::Status WrongType(const std::string& field, const char* expected, const json& value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be ", expected, ", not ", TypeName(value)));
}

absl::StatusOr<std::string> NonEmptyString(const json& object, const char* name) {
  auto it = object.find(name);
  const std::string field = absl::StrCat("\"", name, "\"");
  if (it == object.end()) return absl::InvalidArgumentError(absl::StrCat(field, " is missing"));
  if (!it->is_string()) return WrongType(field, "a string", *it);
  if (it->get_ref<const std::string&>().empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  return it->get<std::string>();
}

absl::Status ParseMessages(const json& object, std::string_view line, DatasetRecord* record) {
  const json& messages = object["messages"];
  if (!messages.is_array()) return WrongType("\"messages\"", "an array", messages);
  if (messages.empty()) return absl::InvalidArgumentError("\"messages\" is empty");
  bool has_assistant = false;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& message = messages[i];
    const std::string where = absl::StrCat("\"messages\"[", i, "]");
    if (!message.is_object()) return WrongType(where, "an object", message);
    auto role = message.find("role");
    if (role == message.end()) return absl::InvalidArgumentError(absl::StrCat(where, ".role is missing"));
    if (!role->is_string()) return WrongType(absl::StrCat(where, ".role"), "a string", *role);
    const std::string& role_name = role->get_ref<const std::string&>();
    if (role_name != "system" && role_name != "user" && role_name != "assistant" && role_name != "tool" &&
        role_name != "developer") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".role must be one of system|user|assistant|tool|developer, not \"", role_name, "\""));
    }
    auto tool_calls = message.find("tool_calls");
    const bool has_tool_calls = tool_calls != message.end() && !tool_calls->is_null();
    if (has_tool_calls && (!tool_calls->is_array() || tool_calls->empty())) {
      return WrongType(absl::StrCat(where, ".tool_calls"), "a non-empty array", *tool_calls);
    }
    auto content = message.find("content");
    const bool no_content = content == message.end() || content->is_null();
    if (no_content && !has_tool_calls) return absl::InvalidArgumentError(absl::StrCat(where, ".content is missing"));
    if (!no_content && !content->is_string() && !content->is_array()) {
      return WrongType(absl::StrCat(where, ".content"), "a string or a list of content parts", *content);
    }
    if (role_name == "assistant" && !has_tool_calls &&
        (no_content || (content->is_string() && content->get_ref<const std::string&>().empty()) ||
         (content->is_array() && content->empty()))) {
      return absl::InvalidArgumentError(absl::StrCat(where, ".content is empty (an assistant turn to train on)"));
    }
    has_assistant = has_assistant || role_name == "assistant";
    record->messages.push_back({role_name, !no_content && content->is_string() ? content->get<std::string>() : ""});
  }
  if (!has_assistant) {
    return absl::InvalidArgumentError("\"messages\" has no assistant turn (nothing to train on)");
  }
  for (const char* list : {"tools", "documents"}) {
    if (object.contains(list) && !object[list].is_null() && !object[list].is_array()) {
      return WrongType(absl::StrCat("\"", list, "\""), "an array", object[list]);
    }
  }
  // The template sees the data with its key order (tojson prints it), so keep an ordered copy.
  const nlohmann::ordered_json ordered = nlohmann::ordered_json::parse(line.begin(), line.end(), nullptr, false);
  record->conversation.messages = ordered["messages"];
  if (ordered.contains("tools")) record->conversation.tools = ordered["tools"];
  if (ordered.contains("documents")) record->conversation.documents = ordered["documents"];
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> IdArray(const json& object, const char* name, int32_t vocab_size,
                                             bool allow_ignore) {
  const json& array = object[name];
  const std::string field = absl::StrCat("\"", name, "\"");
  if (!array.is_array()) return WrongType(field, "an array of token ids", array);
  if (array.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  std::vector<int32_t> ids;
  ids.reserve(array.size());
  for (size_t i = 0; i < array.size(); ++i) {
    const json& value = array[i];
    if (!value.is_number_integer()) {
      return WrongType(absl::StrCat(field, "[", i, "]"), "an integer", value);
    }
    const int64_t id = value.get<int64_t>();
    const bool ignored = allow_ignore && id == kIgnoreLabel;
    if (!ignored && (id < 0 || (vocab_size > 0 && id >= vocab_size) || id > INT32_MAX)) {
      return absl::InvalidArgumentError(absl::StrCat(field, "[", i, "] = ", id, " is out of the vocabulary range [0, ",
                                                     vocab_size > 0 ? vocab_size : INT32_MAX, ")",
                                                     allow_ignore ? " and is not -100" : ""));
    }
    ids.push_back(static_cast<int32_t>(id));
  }
  return ids;
}

}  // namespace

absl::StatusOr<DatasetFormat> ParseDatasetFormat(std::string_view name) {
  if (name == "auto" || name.empty()) return DatasetFormat::kAuto;
  if (name == "messages" || name == "chat") return DatasetFormat::kMessages;
  if (name == "prompt_completion") return DatasetFormat::kPromptCompletion;
  if (name == "text") return DatasetFormat::kText;
  if (name == "input_ids" || name == "tokens") return DatasetFormat::kTokenIds;
  return absl::InvalidArgumentError(absl::StrCat("dataset format \"", std::string(name),
                                                 "\" is not one of auto|messages|prompt_completion|text|input_ids"));
}

const char* DatasetFormatName(DatasetFormat format) {
  switch (format) {
    case DatasetFormat::kAuto: return "auto";
    case DatasetFormat::kMessages: return "messages";
    case DatasetFormat::kPromptCompletion: return "prompt_completion";
    case DatasetFormat::kText: return "text";
    case DatasetFormat::kTokenIds: return "input_ids";
  }
  return "unknown";
}

absl::StatusOr<DatasetRecord> ParseDatasetRecord(std::string_view line, DatasetFormat format, int32_t vocab_size) {
  json object = json::parse(line.begin(), line.end(), nullptr, /*allow_exceptions=*/false);
  if (object.is_discarded()) return absl::InvalidArgumentError("not valid JSON");
  if (!object.is_object()) return WrongType("the line", "a JSON object", object);
  if (format == DatasetFormat::kAuto) {
    if (object.contains("messages")) {
      format = DatasetFormat::kMessages;
    } else if (object.contains("prompt") || object.contains("completion")) {
      format = DatasetFormat::kPromptCompletion;
    } else if (object.contains("text")) {
      format = DatasetFormat::kText;
    } else if (object.contains("input_ids")) {
      format = DatasetFormat::kTokenIds;
    } else {
      return absl::InvalidArgumentError(
          "none of the known fields: \"messages\", \"prompt\"+\"completion\", \"text\", \"input_ids\"");
    }
  }
  DatasetRecord record;
  record.format = format;
  switch (format) {
    case DatasetFormat::kMessages: {
      if (!object.contains("messages")) return absl::InvalidArgumentError("\"messages\" is missing");
      absl::Status status = ParseMessages(object, line, &record);
      if (!status.ok()) return status;
      break;
    }
    case DatasetFormat::kPromptCompletion: {
      auto prompt = NonEmptyString(object, "prompt");
      if (!prompt.ok()) return prompt.status();
      auto completion = NonEmptyString(object, "completion");
      if (!completion.ok()) return completion.status();
      record.prompt = std::move(*prompt);
      record.completion = std::move(*completion);
      break;
    }
    case DatasetFormat::kText: {
      auto text = NonEmptyString(object, "text");
      if (!text.ok()) return text.status();
      record.text = std::move(*text);
      break;
    }
    case DatasetFormat::kTokenIds: {
      if (!object.contains("input_ids")) return absl::InvalidArgumentError("\"input_ids\" is missing");
      auto ids = IdArray(object, "input_ids", vocab_size, /*allow_ignore=*/false);
      if (!ids.ok()) return ids.status();
      record.input_ids = std::move(*ids);
      if (object.contains("labels") && !object["labels"].is_null()) {
        auto labels = IdArray(object, "labels", vocab_size, /*allow_ignore=*/true);
        if (!labels.ok()) return labels.status();
        if (labels->size() != record.input_ids.size()) {
          return absl::InvalidArgumentError(absl::StrCat("\"labels\" has ", labels->size(), " entries but \"input_ids\" has ",
                                                         record.input_ids.size()));
        }
        record.labels = std::move(*labels);
      }
      break;
    }
    case DatasetFormat::kAuto:
      break;
  }
  return record;
}

}  // namespace ftd::data
