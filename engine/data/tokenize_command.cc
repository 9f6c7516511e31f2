#include "engine/data/tokenize_command.h"

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/command_flags.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "engine/data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace ftd::data {
namespace {

constexpr char kUsage[] =
    "usage: tokenize --tokenizer DIR_OR_FILE --input FILE --out FILE [--decode]\n"
    "                [--input-format lines|json] [--no-special-tokens] [--skip-special-tokens]\n";

struct TokenizeFlags {
  std::string tokenizer;
  std::string input;
  std::string out;
  std::string input_format = "lines";
  bool decode = false;
  bool add_special_tokens = true;
  bool skip_special_tokens = false;
};

absl::StatusOr<TokenizeFlags> ParseFlags(int argc, char** argv) {
  TokenizeFlags flags;
  FTD_RETURN_IF_ERROR(ParseCommandFlags(argc, argv,
                                        {{"--tokenizer", &flags.tokenizer},
                                         {"--input", &flags.input},
                                         {"--out", &flags.out},
                                         {"--input-format", &flags.input_format},
                                         {"--decode", nullptr, &flags.decode},
                                         {"--no-special-tokens", nullptr, &flags.add_special_tokens, false},
                                         {"--skip-special-tokens", nullptr, &flags.skip_special_tokens}}));
  if (flags.tokenizer.empty() || flags.input.empty() || flags.out.empty()) {
    return absl::InvalidArgumentError("--tokenizer, --input and --out are required");
  }
  if (flags.input_format != "lines" && flags.input_format != "json") {
    return absl::InvalidArgumentError("--input-format must be lines or json");
  }
  return flags;
}

absl::StatusOr<std::vector<std::string>> ReadTexts(const TokenizeFlags& flags, const std::string& data) {
  std::vector<std::string> texts;
  if (flags.input_format == "json") {
    nlohmann::json parsed = nlohmann::json::parse(data, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(flags.input, ": not a JSON array of strings"));
    }
    for (size_t i = 0; i < parsed.size(); ++i) {
      if (!parsed[i].is_string()) {
        return absl::InvalidArgumentError(absl::StrCat(flags.input, ": element ", i, " is not a string"));
      }
      texts.push_back(parsed[i].get<std::string>());
    }
    return texts;
  }
  texts = absl::StrSplit(data, '\n');
  if (!texts.empty() && texts.back().empty()) texts.pop_back();  // the file's final newline
  return texts;
}

absl::Status Run(const TokenizeFlags& flags) {
  auto tokenizer = Tokenizer::FromFile(flags.tokenizer);
  if (!tokenizer.ok()) return tokenizer.status();
  auto data = ReadFileToString(flags.input);
  if (!data.ok()) return data.status();
  std::string out;
  if (!flags.decode) {
    auto texts = ReadTexts(flags, *data);
    if (!texts.ok()) return texts.status();
    out = "[";
    for (size_t i = 0; i < texts->size(); ++i) {
      const std::vector<int32_t> ids = (*tokenizer)->Encode((*texts)[i], flags.add_special_tokens);
      absl::StrAppend(&out, i == 0 ? "\n[" : ",\n[");
      for (size_t j = 0; j < ids.size(); ++j) absl::StrAppend(&out, j == 0 ? "" : ",", ids[j]);
      out += "]";
    }
    out += "\n]\n";
  } else {
    nlohmann::json parsed = nlohmann::json::parse(*data, nullptr, false);
    if (parsed.is_discarded() || !parsed.is_array()) {
      return absl::InvalidArgumentError(absl::StrCat(flags.input, ": not a JSON array of id arrays"));
    }
    nlohmann::json texts = nlohmann::json::array();
    for (size_t i = 0; i < parsed.size(); ++i) {
      if (!parsed[i].is_array()) {
        return absl::InvalidArgumentError(absl::StrCat(flags.input, ": element ", i, " is not an array of ids"));
      }
      std::vector<int32_t> ids;
      for (const auto& id : parsed[i]) {
        if (!id.is_number_integer()) {
          return absl::InvalidArgumentError(absl::StrCat(flags.input, ": element ", i, " holds a non-integer id"));
        }
        ids.push_back(id.get<int32_t>());
      }
      texts.push_back((*tokenizer)->Decode(ids, flags.skip_special_tokens));
    }
    out = texts.dump(1, ' ', /*ensure_ascii=*/false, nlohmann::json::error_handler_t::replace) + "\n";
  }
  return WriteFileAtomically(flags.out, out);
}

}  // namespace

int RunTokenizeCommand(int argc, char** argv) {
  auto flags = ParseFlags(argc, argv);
  if (!flags.ok()) {
    std::cerr << "tokenize: " << flags.status().message() << "\n" << kUsage;
    return 2;
  }
  const absl::Status status = Run(*flags);
  if (!status.ok()) {
    std::cerr << "tokenize: " << status.message() << "\n";
    return 1;
  }
  return 0;
}

}  // namespace ftd::data
