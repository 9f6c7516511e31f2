// The per-step metrics file of ftd-train (CONTRACT.md): paths per rank, the step line's fields,
// and the checkpoint/done events, appended and flushed line by line.
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "engine/train/metrics_file.h"
#include "nlohmann/json.hpp"
#include "tests/dist/ranks_util.h"

namespace ftd::engine {
namespace {

std::vector<nlohmann::json> ReadLines(const std::string& path) {
  std::ifstream in(path);
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(MetricsFileTest, PathPerRank) {
  EXPECT_EQ(MetricsFilePath("/m.jsonl", 0, 1), "/m.jsonl");
  EXPECT_EQ(MetricsFilePath("/m.jsonl", 0, 4), "/m.jsonl");
  EXPECT_EQ(MetricsFilePath("/m.jsonl", 3, 4), "/m.jsonl.rank3");
}

TEST(MetricsFileTest, StepLineHasEveryContractField) {
  StepReport r;
  r.rank = 2;
  r.world_size = 4;
  r.step = 12;
  r.total_steps = 100;
  r.tokens = 8192;
  r.loss = 2.31;
  r.grad_norm = 0.8;
  r.lr = 1e-5;
  r.step_seconds = 0.42;
  r.forward_seconds = 0.1;
  r.expert_load_imbalance = 1.3;
  nlohmann::json j = nlohmann::json::parse(StepMetricsLine(r));
  for (const char* k : {"event", "rank", "world_size", "step", "total_steps", "epoch", "tokens", "loss", "grad_norm",
                        "lr", "step_seconds", "forward_seconds", "backward_seconds", "optimizer_seconds",
                        "all_to_all_seconds", "tokens_per_second", "tokens_per_second_per_gpu", "tflops_per_gpu",
                        "mfu", "peak_memory_bytes", "reserved_memory_bytes", "expert_load_imbalance"}) {
    EXPECT_TRUE(j.contains(k)) << k;
  }
  EXPECT_EQ(j.size(), 22u);
  EXPECT_EQ(j["event"], "step");
  EXPECT_EQ(j["rank"], 2);
  EXPECT_EQ(j["step"], 12);
  EXPECT_EQ(j["tokens"], 8192);
  EXPECT_DOUBLE_EQ(j["loss"].get<double>(), 2.31);
  EXPECT_DOUBLE_EQ(j["expert_load_imbalance"].get<double>(), 1.3);
  // JSON has no NaN: a diverged loss is null, never an unparsable line.
  r.loss = std::numeric_limits<double>::quiet_NaN();
  EXPECT_TRUE(nlohmann::json::parse(StepMetricsLine(r))["loss"].is_null());
}

TEST(MetricsFileTest, AppendsStepsAndEvents) {
  const std::string dir = testing::FreshTempDir("metrics");
  const std::string base = dir + "/metrics.jsonl";
  {
    auto f = MetricsFile::Open(base, 0, 2);
    ASSERT_TRUE(f.ok()) << f.status();
    StepReport r;
    r.step = 1;
    ASSERT_TRUE((*f)->WriteStep(r).ok());
    // Flushed per line: a reader sees it before the file is closed.
    EXPECT_EQ(ReadLines(base).size(), 1u);
    ASSERT_TRUE((*f)->WriteCheckpoint(1, dir + "/out/checkpoint-1").ok());
    ASSERT_TRUE((*f)->WriteDone(1, dir + "/out/checkpoint-1").ok());
  }
  {
    auto f = MetricsFile::Open(base, 1, 2);
    ASSERT_TRUE(f.ok());
    EXPECT_EQ((*f)->path(), base + ".rank1");
  }
  {
    auto again = MetricsFile::Open(base, 0, 2);  // appends
    ASSERT_TRUE(again.ok());
    StepReport r;
    r.step = 2;
    ASSERT_TRUE((*again)->WriteStep(r).ok());
  }
  std::vector<nlohmann::json> lines = ReadLines(base);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_EQ(lines[0]["event"], "step");
  // Paths are absolute and normalised.
  const std::string abs = std::filesystem::path(dir + "/out/checkpoint-1").lexically_normal().string();
  EXPECT_EQ(lines[1], (nlohmann::json{{"event", "checkpoint"}, {"step", 1}, {"path", abs}}));
  EXPECT_EQ(lines[2]["event"], "done");
  EXPECT_EQ(lines[3]["step"], 2);
  auto bad = MetricsFile::Open(dir + "/no/such/dir/m.jsonl", 0, 1);
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--metrics-out"), std::string::npos);
}

}  // namespace
}  // namespace ftd::engine
