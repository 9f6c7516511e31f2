#include "engine/data/dataset_validator.h"

#include "engine/data/document_encoder.h"
#include "engine/data/jsonl_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

using ::testing::HasSubstr;
using testing::WriteTempFile;

struct BadLine {
  const char* line;
  DatasetFormat format;
  const char* reason;
};

class BadLineTest : public ::testing::TestWithParam<BadLine> {};

// Each kind of bad line is reported with its 1-based line number (after a blank line, which is
// skipped but counted) and the reason.
TEST_P(BadLineTest, NamesLineAndReason) {
  const BadLine& c = GetParam();
  const std::string good = R"({"messages":[{"role":"user","content":"hi"},{"role":"assistant","content":"yo"}]})";
  const std::string path = WriteTempFile("bad.jsonl", good + "\n\n" + good + "\n" + c.line + "\n" + good + "\n");
  absl::Status status = ValidateDataset(path, c.format, /*vocab_size=*/100);
  ASSERT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(path + ":4: " + c.reason));
  EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr(":5:")));
}

INSTANTIATE_TEST_SUITE_P(
    Kinds, BadLineTest,
    ::testing::Values(
        BadLine{"{not json", DatasetFormat::kAuto, "not valid JSON"},
        BadLine{"[1,2]", DatasetFormat::kAuto, "the line must be a JSON object, not an array"},
        BadLine{R"({"foo":1})", DatasetFormat::kAuto, "none of the known fields"},
        BadLine{R"({"text":"x"})", DatasetFormat::kMessages, "\"messages\" is missing"},
        BadLine{R"({"messages":"hi"})", DatasetFormat::kAuto, "\"messages\" must be an array, not a string"},
        BadLine{R"({"messages":[]})", DatasetFormat::kAuto, "\"messages\" is empty"},
        BadLine{R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"},{"role":"bot","content":"c"}]})",
                DatasetFormat::kAuto, "\"messages\"[2].role must be one of system|user|assistant|tool|developer, not \"bot\""},
        BadLine{R"({"messages":[{"role":"user"}]})", DatasetFormat::kAuto, "\"messages\"[0].content is missing"},
        BadLine{R"({"messages":[{"role":"user","content":5}]})", DatasetFormat::kAuto,
                "\"messages\"[0].content must be a string or a list of content parts, not a number"},
        BadLine{R"({"messages":[{"role":"user","content":"a"}]})", DatasetFormat::kAuto, "\"messages\" has no assistant turn"},
        BadLine{R"({"prompt":"a"})", DatasetFormat::kAuto, "\"completion\" is missing"},
        BadLine{R"({"prompt":"a","completion":""})", DatasetFormat::kAuto, "\"completion\" is empty"},
        BadLine{R"({"text":""})", DatasetFormat::kAuto, "\"text\" is empty"},
        BadLine{R"({"text":["a"]})", DatasetFormat::kAuto, "\"text\" must be a string, not an array"},
        BadLine{R"({"input_ids":[1,2,100]})", DatasetFormat::kAuto,
                "\"input_ids\"[2] = 100 is out of the vocabulary range [0, 100)"},
        BadLine{R"({"input_ids":[1,-1]})", DatasetFormat::kAuto, "\"input_ids\"[1] = -1 is out of the vocabulary range"},
        BadLine{R"({"input_ids":[1,"2"]})", DatasetFormat::kAuto, "\"input_ids\"[1] must be an integer, not a string"},
        BadLine{R"({"input_ids":[1,2],"labels":[-100]})", DatasetFormat::kAuto,
                "\"labels\" has 1 entries but \"input_ids\" has 2"},
        BadLine{R"({"input_ids":[1,2],"labels":[-100,7000]})", DatasetFormat::kAuto, "\"labels\"[1] = 7000 is out of"},
        BadLine{R"({"input_ids":[]})", DatasetFormat::kAuto, "\"input_ids\" is empty"}));

TEST(ValidateDatasetTest, GoodFileAndLimits) {
  const std::string good = WriteTempFile(
      "good.jsonl",
      "{\"text\":\"a\"}\n{\"prompt\":\"p\",\"completion\":\"c\"}\n{\"input_ids\":[1,2],\"labels\":[-100,2]}\r\n");
  EXPECT_TRUE(ValidateDataset(good, DatasetFormat::kAuto, 10).ok());
  std::string many;
  for (int i = 0; i < 30; ++i) many += "oops\n";
  absl::Status status = ValidateDataset(WriteTempFile("many.jsonl", many), DatasetFormat::kAuto, 0);
  EXPECT_THAT(std::string(status.message()), HasSubstr(":10: not valid JSON"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("... and 20 more bad lines (30 of 30)"));
  EXPECT_EQ(ValidateDataset(WriteTempFile("empty.jsonl", "\n \n"), DatasetFormat::kAuto, 0).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ValidateDataset("/nonexistent/x.jsonl", DatasetFormat::kAuto, 0).code(), absl::StatusCode::kNotFound);
}

TEST(ValidateDatasetTest, WithTokenizerChecksChatFormat) {
  auto tokenizer = Tokenizer::FromJson(testing::MakeTokenizerJson({}), "");  // no chat markers
  ASSERT_TRUE(tokenizer.ok());
  const std::string path = WriteTempFile(
      "chat.jsonl", R"({"messages":[{"role":"user","content":"a"},{"role":"assistant","content":"b"}]})" "\n");
  absl::Status status = ValidateDataset(path, DatasetFormat::kAuto, tokenizer->get());
  EXPECT_THAT(std::string(status.message()), HasSubstr(":1: no supported chat format"));
}

TEST(JsonlFileTest, IndexesNonBlankLinesWithLineNumbers) {
  const std::string path = WriteTempFile("index.jsonl", "\n{\"a\":1}\n  \n{\"b\":2}\r\n{\"c\":3}");
  auto file = JsonlFile::Open(path);
  ASSERT_TRUE(file.ok());
  ASSERT_EQ((*file)->num_records(), 3u);
  std::string line;
  ASSERT_TRUE((*file)->ReadRecord(1, &line).ok());
  EXPECT_EQ(line, "{\"b\":2}");
  EXPECT_EQ((*file)->LineNumber(1), 4);
  ASSERT_TRUE((*file)->ReadRecord(2, &line).ok());
  EXPECT_EQ(line, "{\"c\":3}");
  EXPECT_EQ((*file)->LineNumber(2), 5);
}

TEST(DocumentEncoderTest, PromptCompletionTrainsCompletionAndEos) {
  testing::TestTokenizerSpec spec;
  spec.special_tokens = {"<|begin_of_text|>", "<|eot_id|>"};
  spec.bos_token = "<|begin_of_text|>";
  auto tokenizer = Tokenizer::FromJson(testing::MakeTokenizerJson(spec), R"({"eos_token":"<|eot_id|>"})");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto encoder = DocumentEncoder::Create(tokenizer->get());
  ASSERT_TRUE(encoder.ok());
  auto record = ParseDatasetRecord(R"({"prompt":"hello","completion":" world"})", DatasetFormat::kAuto, 0);
  ASSERT_TRUE(record.ok());
  auto document = (*encoder)->Encode(*record);
  ASSERT_TRUE(document.ok());
  const auto& t = **tokenizer;
  const int32_t bos = *t.TokenToId("<|begin_of_text|>"), eos = *t.TokenToId("<|eot_id|>");
  const int32_t hello = *t.TokenToId("hello"), world = *t.TokenToId("\xC4\xA0world");
  EXPECT_EQ(document->input_ids, (std::vector<int32_t>{bos, hello, world, eos}));
  EXPECT_EQ(document->labels, (std::vector<int32_t>{kIgnoreLabel, kIgnoreLabel, world, eos}));

  auto text = ParseDatasetRecord(R"({"text":"hello"})", DatasetFormat::kAuto, 0);
  auto text_document = (*encoder)->Encode(*text);
  EXPECT_EQ(text_document->input_ids, (std::vector<int32_t>{bos, hello, eos}));
  EXPECT_EQ(text_document->labels, text_document->input_ids);

  auto ids = ParseDatasetRecord(R"({"input_ids":[5,6,7],"labels":[-100,6,7]})", DatasetFormat::kAuto, 300);
  auto ids_document = (*encoder)->Encode(*ids);
  EXPECT_EQ(ids_document->labels, (std::vector<int32_t>{kIgnoreLabel, 6, 7}));
}

}  // namespace
}  // namespace ftd::data
