#include "tests/data/test_tokenizer_util.h"

#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "engine/data/byte_level.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace ftd::data::testing {
namespace {

std::string ByteLevel(const std::string& text) {
  std::string out;
  AppendByteLevel(text, &out);
  return out;
}

std::string TempRoot() {
  const char* dir = std::getenv("TEST_TMPDIR");
  std::filesystem::path root = dir ? dir : std::filesystem::temp_directory_path();
  root /= "ftd_data_tests_" + std::to_string(::getpid());
  std::filesystem::create_directories(root);
  return root.string();
}

}  // namespace

std::string MakeTokenizerJson(const TestTokenizerSpec& spec) {
  nlohmann::json vocab = nlohmann::json::object();
  int id = 0;
  for (int b = 0; b < 256; ++b) vocab[ByteLevel(std::string(1, static_cast<char>(b)))] = id++;
  // Merges as (left, right) over byte-level strings; each result joins the vocab.
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"h", "e"}, {"l", "l"}, {"he", "ll"}, {"hell", "o"}, {" ", "w"}, {"o", "r"}, {" w", "or"}, {"l", "d"},
      {" wor", "ld"}, {"t", "h"}, {"th", "e"}, {" ", "the"}, {"i", "n"}, {"in", "g"}, {" ", " "}, {"\n", "\n"}};
  nlohmann::json merge_list = nlohmann::json::array();
  for (const auto& [left, right] : merges) {
    const std::string l = ByteLevel(left), r = ByteLevel(right);
    if (!vocab.contains(l + r)) vocab[l + r] = id++;
    if (spec.merges_as_pairs) {
      merge_list.push_back({l, r});
    } else {
      merge_list.push_back(l + " " + r);
    }
  }
  nlohmann::json added = nlohmann::json::array();
  for (const auto& token : spec.special_tokens) {
    added.push_back({{"id", id}, {"content", token}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
    vocab[token] = id++;
  }
  nlohmann::json pre_tokenizer;
  if (spec.pre_tokenizer == "gpt2") {
    pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    pre_tokenizer = {
        {"type", "Sequence"},
        {"pretokenizers",
         {{{"type", "Split"},
           {"pattern",
            {{"Regex",
              R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"}}},
           {"behavior", "Isolated"},
           {"invert", false}},
          {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  }
  nlohmann::json post = {{"type", "ByteLevel"}, {"trim_offsets", false}};
  if (!spec.bos_token.empty()) {
    post = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", spec.bos_token}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", nlohmann::json::array()},
            {"special_tokens",
             {{spec.bos_token, {{"id", spec.bos_token}, {"ids", {vocab[spec.bos_token]}}, {"tokens", {spec.bos_token}}}}}}};
  }
  nlohmann::json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", nlohmann::json::parse(spec.normalizer)},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", post},
      {"decoder", {{"type", "ByteLevel"}}},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"fuse_unk", false}, {"byte_fallback", false},
        {"ignore_merges", false}, {"vocab", vocab}, {"merges", merge_list}}}};
  return tokenizer.dump();
}

std::string WriteTempFile(const std::string& name, const std::string& contents) {
  const std::string path = TempRoot() + "/" + name;
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

std::string WriteTokenizerDir(const std::string& name, const TestTokenizerSpec& spec, const std::string& eos_token,
                              const std::string& template_marker) {
  WriteTempFile(name + "/tokenizer.json", MakeTokenizerJson(spec));
  nlohmann::json config = {{"eos_token", eos_token},
                           {"pad_token", eos_token},
                           {"chat_template", "{% for m in messages %}" + template_marker + "{{ m.content }}{% endfor %}"}};
  if (!spec.bos_token.empty()) config["bos_token"] = {{"content", spec.bos_token}, {"__type", "AddedToken"}};
  WriteTempFile(name + "/tokenizer_config.json", config.dump());
  return TempRoot() + "/" + name;
}

}  // namespace ftd::data::testing
