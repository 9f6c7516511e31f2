// CreateJob's validate_only dataset pass (server/dataset_check.h): a bad line is reported with
// its field, file and line before any rank starts.
#include "server/dataset_check.h"

#include <filesystem>
#include <fstream>
#include <string>

#include <unistd.h>

#include "gtest/gtest.h"

namespace ftd::server {
namespace {

namespace fs = std::filesystem;

class DatasetCheckTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("ftd_dataset_check_" + std::to_string(::getpid()));
    fs::create_directories(dir_ / "model");
    Write("model/config.json",
          R"({"model_type": "qwen3_moe", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
              "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 4, "intermediate_size": 8,
              "moe_intermediate_size": 4, "num_experts": 4, "num_experts_per_tok": 2})");
    spec_.set_base_model((dir_ / "model").string());
    spec_.mutable_datasets()->set_format("jsonl_tokens");
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Write(const std::string& name, const std::string& text) {
    std::ofstream(dir_ / name) << text;
    return (dir_ / name).string();
  }
  fs::path dir_;
  ftd::v1::JobSpec spec_;
};

TEST_F(DatasetCheckTest, GoodTokenFilePasses) {
  spec_.mutable_datasets()->set_train(Write("ok.jsonl", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [4, 5]}\n"));
  EXPECT_TRUE(CheckDatasets(spec_).ok()) << CheckDatasets(spec_);
}

TEST_F(DatasetCheckTest, BadLineIsNamedWithFieldFileAndLine) {
  spec_.mutable_datasets()->set_train(
      Write("bad.jsonl", "{\"input_ids\": [1, 2, 3]}\n{\"input_ids\": [1, 2]}\n{\"input_ids\": [7, \"x\"]}\n"));
  absl::Status s = CheckDatasets(spec_);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("spec.datasets.train"), std::string::npos) << s;
  EXPECT_NE(s.message().find("bad.jsonl:3"), std::string::npos) << s;
}

TEST_F(DatasetCheckTest, TokenIdsBeyondTheModelVocabularyAreRejected) {
  spec_.mutable_datasets()->set_train(Write("big.jsonl", "{\"input_ids\": [1, 2]}\n{\"input_ids\": [1, 100]}\n"));
  absl::Status s = CheckDatasets(spec_);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("big.jsonl:2"), std::string::npos) << s;
}

TEST_F(DatasetCheckTest, ChatDataWithoutTokenizerIsAClearError) {
  spec_.mutable_datasets()->set_format("messages");
  spec_.mutable_datasets()->set_train(
      Write("chat.jsonl", R"({"messages": [{"role": "user", "content": "hi"}]})" "\n"));
  absl::Status s = CheckDatasets(spec_);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("tokenizer.json"), std::string::npos) << s;
}

TEST_F(DatasetCheckTest, MissingValidationFileIsNamed) {
  spec_.mutable_datasets()->set_train(Write("ok.jsonl", "{\"input_ids\": [1]}\n"));
  spec_.mutable_datasets()->set_validation((dir_ / "nope.jsonl").string());
  absl::Status s = CheckDatasets(spec_);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("spec.datasets.validation"), std::string::npos) << s;
}

}  // namespace
}  // namespace ftd::server
