#include "engine/data/chat_template_command.h"

#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/command_flags.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/data/chat_template.h"
#include "engine/data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

using nlohmann::ordered_json;

constexpr char kUsage[] =
    "usage: chat-template --tokenizer DIR --input conversations.jsonl --out rendered.jsonl\n"
    "                     [--add-generation-prompt] [--kwargs JSON] [--ids] [--template FILE]\n"
    "                     [--raw] [--keep-going]\n";

struct Flags {
  std::string tokenizer;
  std::string input;
  std::string out;
  std::string template_file;
  std::string kwargs = "{}";
  bool add_generation_prompt = false;
  bool ids = false;
  bool raw = false;
  bool keep_going = false;
};

absl::StatusOr<Flags> ParseFlags(int argc, char** argv) {
  Flags flags;
  FTD_RETURN_IF_ERROR(ParseCommandFlags(argc, argv,
                                        {{"--tokenizer", &flags.tokenizer},
                                         {"--input", &flags.input},
                                         {"--out", &flags.out},
                                         {"--template", &flags.template_file},
                                         {"--kwargs", &flags.kwargs},
                                         {"--add-generation-prompt", nullptr, &flags.add_generation_prompt},
                                         {"--ids", nullptr, &flags.ids},
                                         {"--raw", nullptr, &flags.raw},
                                         {"--keep-going", nullptr, &flags.keep_going}}));
  if (flags.input.empty() || flags.out.empty()) return absl::InvalidArgumentError("--input and --out are required");
  if (flags.tokenizer.empty() && flags.template_file.empty()) {
    return absl::InvalidArgumentError("--tokenizer (or --template) is required");
  }
  if (flags.ids && flags.tokenizer.empty()) return absl::InvalidArgumentError("--ids needs --tokenizer");
  if (flags.raw && flags.ids) return absl::InvalidArgumentError("--raw renders text only; drop --ids");
  return flags;
}

absl::StatusOr<ChatConversation> ParseConversation(const ordered_json& line) {
  if (!line.is_object()) return absl::InvalidArgumentError("the line must be a JSON object");
  for (auto it = line.begin(); it != line.end(); ++it) {
    if (it.key() != "messages" && it.key() != "tools" && it.key() != "documents") {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown field \"", it.key(), "\" (expected messages, tools, documents; template "
                       "variables go in --kwargs)"));
    }
  }
  if (!line.contains("messages")) return absl::InvalidArgumentError("\"messages\" is missing");
  ChatConversation conversation;
  conversation.messages = line["messages"];
  if (line.contains("tools")) conversation.tools = line["tools"];
  if (line.contains("documents")) conversation.documents = line["documents"];
  return conversation;
}

absl::Status Run(const Flags& flags) {
  ordered_json kwargs = ordered_json::parse(flags.kwargs, nullptr, /*allow_exceptions=*/false);
  if (kwargs.is_discarded() || !kwargs.is_object()) return absl::InvalidArgumentError("--kwargs must be a JSON object");
  std::unique_ptr<Tokenizer> tokenizer;
  if (!flags.tokenizer.empty()) {
    auto loaded = Tokenizer::FromFile(flags.tokenizer);
    if (!loaded.ok()) return loaded.status();
    tokenizer = std::move(*loaded);
  }
  TokenizerConfig config = tokenizer ? tokenizer->config() : TokenizerConfig{};
  if (!flags.template_file.empty()) {
    auto text = ReadFileToString(flags.template_file);
    if (!text.ok()) return text.status();
    config.chat_template = std::move(*text);
    config.named_chat_templates.clear();
  }
  if (config.chat_template.empty()) {
    return absl::NotFoundError(absl::StrCat(flags.tokenizer, ": the tokenizer has no chat template (neither "
                                            "tokenizer_config.json \"chat_template\" nor chat_template.jinja)"));
  }
  auto chat = ChatTemplate::Create(config.chat_template, config);
  if (!chat.ok()) return chat.status();
  std::shared_ptr<const jinja::Template> raw_template;
  if (flags.raw) {
    auto parsed = jinja::Template::Parse(config.chat_template);
    if (!parsed.ok()) return parsed.status();
    raw_template = std::move(*parsed);
  }
  auto data = ReadFileToString(flags.input);
  if (!data.ok()) return data.status();
  std::vector<std::string> lines = absl::StrSplit(*data, '\n');
  if (!lines.empty() && lines.back().empty()) lines.pop_back();
  std::string out;
  size_t failures = 0;
  absl::Status first_error;
  for (size_t n = 0; n < lines.size(); ++n) {
    const auto line_error = [&](const absl::Status& status) {
      return absl::Status(status.code(), absl::StrCat(flags.input, ":", n + 1, ": ", status.message()));
    };
    ordered_json line = ordered_json::parse(lines[n].begin(), lines[n].end(), nullptr, false);
    ordered_json result = ordered_json::object();
    absl::Status status;
    if (line.is_discarded()) {
      status = absl::InvalidArgumentError("not valid JSON");
    } else if (flags.raw) {
      if (!line.is_object()) {
        status = absl::InvalidArgumentError("the line must be a JSON object of template variables");
      } else {
        std::vector<std::pair<std::string, jinja::Value>> variables;
        for (auto it = line.begin(); it != line.end(); ++it) {
          variables.emplace_back(it.key(), jinja::Value::FromJson(it.value()));
        }
        auto rendered = raw_template->Render(variables);
        if (rendered.ok()) {
          result["text"] = rendered->text;
        } else {
          status = rendered.status();
        }
      }
    } else {
      auto conversation = ParseConversation(line);
      if (!conversation.ok()) {
        status = conversation.status();
      } else if (flags.ids) {
        std::string text;
        auto document = (*chat)->Encode(*tokenizer, *conversation, kwargs, false, &text);
        if (document.ok()) {
          result["text"] = text;
          result["input_ids"] = document->input_ids;
          result["labels"] = document->labels;
          std::vector<int> mask;
          for (int32_t label : document->labels) mask.push_back(label != kIgnoreLabel);
          result["assistant_masks"] = mask;
        } else {
          status = document.status();
        }
      } else {
        auto rendered = (*chat)->Render(*conversation, flags.add_generation_prompt, kwargs);
        if (rendered.ok()) {
          result["text"] = rendered->text;
        } else {
          status = rendered.status();
        }
      }
    }
    if (!status.ok()) {
      if (!flags.keep_going) return line_error(status);
      ++failures;
      if (first_error.ok()) first_error = line_error(status);
      result = ordered_json::object();
      result["error"] = std::string(status.message());
    }
    out += result.dump(-1, ' ', /*ensure_ascii=*/false, ordered_json::error_handler_t::replace);
    out += '\n';
  }
  absl::Status written = WriteFileAtomically(flags.out, out);
  if (!written.ok()) return written;
  if (failures > 0) {
    return absl::Status(first_error.code(),
                        absl::StrCat(failures, " of ", lines.size(), " lines failed; the first: ", first_error.message()));
  }
  return absl::OkStatus();
}

}  // namespace

int RunChatTemplateCommand(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::cerr << "chat-template: " << flags.status().message() << "\n" << kUsage;
    return 2;
  }
  const absl::Status status = Run(*flags);
  if (!status.ok()) {
    std::cerr << "chat-template: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace ftd::data
