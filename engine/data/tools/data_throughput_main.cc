// ftd-data-throughput: tokenization and packing throughput on one core (bench/RESULTS.md,
// "## Data").
//
//   ftd-data-throughput --tokenizer DIR_OR_FILE --corpus FILE [--seq-len N] [--min-seconds S]
//
// The corpus is a JSONL file of {"text": ...} documents. Measured, single-threaded:
//   encode (cold)   first pass over the corpus with an empty word cache
//   encode (warm)   further passes (steady state of a long run)
//   jsonl->packed   {"text": line} JSONL through JsonlDocumentSource + SequencePacker: JSON
//                   parsing, tokenization and packing, as the training producer runs them
//   pack only       packing pre-tokenized documents
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/file_util.h"
#include "engine/data/document_encoder.h"
#include "engine/data/document_source.h"
#include "engine/data/sequence_packer.h"
#include "engine/data/tokenizer.h"
#include "nlohmann/json.hpp"

namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point start) { return std::chrono::duration<double>(Clock::now() - start).count(); }

void Report(const char* name, double bytes, double tokens, double seconds) {
  std::printf("%-16s %8.2f MB/s %12.0f tokens/s  (%.0f MB, %.0f tokens, %.2f s)\n", name, bytes / seconds / 1e6,
              tokens / seconds, bytes / 1e6, tokens, seconds);
}

}  // namespace

int main(int argc, char** argv) {
  std::string tokenizer_path, corpus_path;
  int32_t seq_len = 4096;
  double min_seconds = 3;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--tokenizer") tokenizer_path = argv[i + 1];
    else if (flag == "--corpus") corpus_path = argv[i + 1];
    else if (flag == "--seq-len") seq_len = std::stoi(argv[i + 1]);
    else if (flag == "--min-seconds") min_seconds = std::stod(argv[i + 1]);
    else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }
  if (tokenizer_path.empty() || corpus_path.empty()) {
    std::cerr << "usage: ftd-data-throughput --tokenizer DIR_OR_FILE --corpus FILE [--seq-len N] [--min-seconds S]\n";
    return 2;
  }
  auto tokenizer = ftd::data::Tokenizer::FromFile(tokenizer_path);
  if (!tokenizer.ok()) {
    std::cerr << tokenizer.status() << "\n";
    return 1;
  }
  auto corpus = ftd::ReadFileToString(corpus_path);
  if (!corpus.ok()) {
    std::cerr << corpus.status() << "\n";
    return 1;
  }
  std::vector<std::string> lines;
  for (absl::string_view row : absl::StrSplit(*corpus, '\n', absl::SkipEmpty())) {
    auto parsed = nlohmann::json::parse(row.begin(), row.end(), nullptr, false);
    if (parsed.is_discarded() || !parsed.contains("text") || !parsed["text"].is_string()) {
      std::cerr << corpus_path << ": every line must be {\"text\": ...}\n";
      return 1;
    }
    lines.push_back(parsed["text"].get<std::string>());
  }
  double corpus_bytes = 0;
  for (const auto& line : lines) corpus_bytes += line.size();
  std::printf("tokenizer %s (vocab %d), corpus %s: %zu documents, %.1f MB, seq_len %d, 1 thread\n",
              tokenizer_path.c_str(), (*tokenizer)->vocab_size(), corpus_path.c_str(), lines.size(), corpus_bytes / 1e6,
              seq_len);

  // Encode, cold then warm.
  std::vector<int32_t> ids;
  double tokens = 0;
  auto start = Clock::now();
  for (const auto& line : lines) {
    ids.clear();
    (*tokenizer)->EncodeAppend(line, false, &ids);
    tokens += ids.size();
  }
  Report("encode (cold)", corpus_bytes, tokens, Seconds(start));
  double bytes = 0;
  tokens = 0;
  start = Clock::now();
  do {
    for (const auto& line : lines) {
      ids.clear();
      (*tokenizer)->EncodeAppend(line, false, &ids);
      tokens += ids.size();
    }
    bytes += corpus_bytes;
  } while (Seconds(start) < min_seconds);
  Report("encode (warm)", bytes, tokens, Seconds(start));

  // JSONL -> packed samples, through the same source and packer as training.
  const std::string jsonl_path = corpus_path + ".throughput.jsonl";
  {
    std::ofstream out(jsonl_path);
    for (const auto& line : lines) out << nlohmann::json{{"text", line}}.dump() << "\n";
  }
  std::ifstream jsonl_file(jsonl_path, std::ios::ate);
  const double jsonl_bytes = static_cast<double>(jsonl_file.tellg());
  auto encoder = ftd::data::DocumentEncoder::Create(tokenizer->get());
  auto source = ftd::data::JsonlDocumentSource::Open(jsonl_path, ftd::data::DatasetFormat::kText, encoder->get());
  if (!source.ok()) {
    std::cerr << source.status() << "\n";
    return 1;
  }
  ftd::data::PackingOptions packing;
  packing.seq_len = seq_len;
  packing.num_epochs = 0;  // repeat until the time is up
  auto packer = ftd::data::SequencePacker::Create(source->get(), packing);
  double real_tokens = 0, samples = 0;
  start = Clock::now();
  int64_t epochs_done = 0;
  while (true) {
    auto sample = (*packer)->Next();
    if (!sample.ok() || !*sample) {
      std::cerr << "packing failed: " << sample.status() << "\n";
      return 1;
    }
    real_tokens += (*sample)->num_real_tokens;
    ++samples;
    if ((*sample)->next_position.epoch > epochs_done) {
      epochs_done = (*sample)->next_position.epoch;
      if (Seconds(start) >= min_seconds) break;
    }
  }
  const double packed_seconds = Seconds(start);
  Report("jsonl->packed", jsonl_bytes * epochs_done, real_tokens, packed_seconds);
  std::printf("                 %.0f samples/s of %d tokens, %.1f%% of positions are real tokens\n",
              samples / packed_seconds, seq_len, 100.0 * real_tokens / (samples * seq_len));

  // Packing alone, from pre-tokenized documents.
  std::vector<ftd::data::TokenizedDocument> documents;
  for (size_t i = 0; i < (*source)->size(); ++i) documents.push_back(*(*source)->Get(i));
  ftd::data::InMemoryDocumentSource memory(std::move(documents));
  auto pack_only = ftd::data::SequencePacker::Create(&memory, packing);
  real_tokens = 0;
  start = Clock::now();
  epochs_done = 0;
  while (true) {
    auto sample = (*pack_only)->Next();
    real_tokens += (*sample)->num_real_tokens;
    if ((*sample)->next_position.epoch > epochs_done) {
      epochs_done = (*sample)->next_position.epoch;
      if (Seconds(start) >= min_seconds) break;
    }
  }
  Report("pack only", 0, real_tokens, Seconds(start));
  std::remove(jsonl_path.c_str());
  return 0;
}
