// Small byte-level BPE tokenizer.json files built in code, for the data tests.
#pragma once

#include <string>
#include <vector>

namespace ftd::data::testing {

struct TestTokenizerSpec {
  // Pre-tokenizer: "gpt2" (ByteLevel with its regex) or "llama3" (Split + ByteLevel).
  std::string pre_tokenizer = "llama3";
  std::string normalizer = "null";          // JSON, e.g. {"type":"NFC"}
  std::vector<std::string> special_tokens;  // added as special, non-normalized tokens
  std::string bos_token;                    // TemplateProcessing BOS when non-empty
  bool merges_as_pairs = false;             // ["a","b"] instead of "a b"
};

// tokenizer.json text: the 256 byte-level symbols, merges that build "hello", " world",
// "the", " the", "ing", "  " and "\n\n", then the special tokens.
std::string MakeTokenizerJson(const TestTokenizerSpec& spec);

// A fresh directory under the test temp dir holding tokenizer.json and tokenizer_config.json
// (eos/bos/pad and a chat template containing `template_marker`).
std::string WriteTokenizerDir(const std::string& name, const TestTokenizerSpec& spec, const std::string& eos_token,
                              const std::string& template_marker);

std::string WriteTempFile(const std::string& name, const std::string& contents);

}  // namespace ftd::data::testing
