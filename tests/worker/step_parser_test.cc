// worker/step_parser: rank 0's stdout lines and metrics-file lines become reports, eval lines
// (datasets.validation, hyperparameters.eval_every) included.
#include "worker/step_parser.h"

#include <gtest/gtest.h>

namespace ftd::worker {
namespace {

TEST(StepParserTest, MetricsFileEvalLineBecomesAnEvalReport) {
  auto r = ParseMetricsLine(R"({"event":"eval","step":40,"loss":2.3125,"targets":5120})");
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->kind_case(), ftd::v1::RankReport::kEval);
  EXPECT_EQ(r->eval().step(), 40);
  EXPECT_DOUBLE_EQ(r->eval().loss(), 2.3125);
  EXPECT_EQ(r->eval().targets(), 5120);
}

TEST(StepParserTest, MetricsFileEvalLineWithoutStepOrLossIsIgnored) {
  EXPECT_FALSE(ParseMetricsLine(R"({"event":"eval","loss":2.5,"targets":1})").has_value());
  EXPECT_FALSE(ParseMetricsLine(R"({"event":"eval","step":4,"targets":1})").has_value());
  EXPECT_FALSE(ParseMetricsLine(R"({"event":"eval","step":4,"loss":null})").has_value());  // NaN
  EXPECT_FALSE(ParseMetricsLine(R"({"event":"eval","step":4,"loss":"2.5"})").has_value());
  EXPECT_FALSE(ParseMetricsLine(R"({"event":"eval","step":4,)").has_value());  // partial line
}

TEST(StepParserTest, MetricsFileStepAndCheckpointLinesStillParse) {
  auto step = ParseMetricsLine(
      R"({"event":"step","rank":0,"world_size":2,"step":3,"total_steps":10,"epoch":0,"tokens":512,)"
      R"("loss":2.5,"grad_norm":0.7,"lr":0.001,"step_seconds":0.5,"tokens_per_second_per_gpu":512.0})");
  ASSERT_TRUE(step.has_value());
  ASSERT_EQ(step->kind_case(), ftd::v1::RankReport::kStep);
  EXPECT_EQ(step->step().progress().step(), 3);
  EXPECT_DOUBLE_EQ(step->step().metrics().loss(), 2.5);
  EXPECT_EQ(step->step().metrics().eval_step(), 0);  // a step sample carries no eval
  auto ck = ParseMetricsLine(R"({"event":"checkpoint","step":3,"path":"/o/checkpoint-3"})");
  ASSERT_TRUE(ck.has_value());
  EXPECT_EQ(ck->checkpoint().path(), "/o/checkpoint-3");
}

TEST(StepParserTest, StdoutEvalLineBecomesAnEvalReportWithoutAMetricsFile) {
  // The engine's log line (engine/train/trainer.cc).
  auto r = ParseStdoutLine("eval step 4/10 loss 2.418700 targets 93\n", 2, /*steps_from_metrics_file=*/false);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->kind_case(), ftd::v1::RankReport::kEval);
  EXPECT_EQ(r->eval().step(), 4);
  EXPECT_DOUBLE_EQ(r->eval().loss(), 2.4187);
  EXPECT_EQ(r->eval().targets(), 93);
  // With a metrics file, the file reports evaluations (not twice).
  EXPECT_FALSE(ParseStdoutLine("eval step 4/10 loss 2.418700 targets 93", 2, true).has_value());
  // Malformed or non-finite lines are not reports.
  EXPECT_FALSE(ParseStdoutLine("eval step x/10 loss 2.4 targets 93", 2, false).has_value());
  EXPECT_FALSE(ParseStdoutLine("eval step 4/10 loss nan targets 93", 2, false).has_value());
  EXPECT_FALSE(ParseStdoutLine("eval step 4/10", 2, false).has_value());
  EXPECT_FALSE(ParseStdoutLine("evaluation done", 2, false).has_value());
}

TEST(StepParserTest, StdoutStepLineIsStillAStep) {
  auto r = ParseStdoutLine(
      "step 4/10 loss 2.500000 grad_norm 0.7000 lr 1.000e-03 tokens/s 1024.0 step_time 0.500s a2a 0.010s", 2, false);
  ASSERT_TRUE(r.has_value());
  ASSERT_EQ(r->kind_case(), ftd::v1::RankReport::kStep);
  EXPECT_EQ(r->step().progress().step(), 4);
  EXPECT_DOUBLE_EQ(r->step().metrics().loss(), 2.5);
  EXPECT_DOUBLE_EQ(r->step().metrics().tokens_per_second_per_gpu(), 512.0);
}

}  // namespace
}  // namespace ftd::worker
