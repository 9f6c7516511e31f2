#include "engine/data/tokenizer.h"

#include "engine/data/unicode_nfc.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using testing::MakeTokenizerJson;
using testing::TestTokenizerSpec;

std::unique_ptr<Tokenizer> Load(const TestTokenizerSpec& spec) {
  auto tokenizer = Tokenizer::FromJson(MakeTokenizerJson(spec), "");
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return std::move(*tokenizer);
}

int32_t Id(const Tokenizer& tokenizer, const std::string& token) {
  auto id = tokenizer.TokenToId(token);
  EXPECT_TRUE(id.has_value()) << token;
  return id.value_or(-1);
}

TEST(TokenizerTest, MergesApplyByRank) {
  auto tokenizer = Load({});
  // "hello" is built by merges; " world" too (Ġ is the byte-level space).
  EXPECT_THAT(tokenizer->Encode("hello world", false),
              ElementsAre(Id(*tokenizer, "hello"), Id(*tokenizer, "\xC4\xA0world")));
  // "xyz" has no merges: one id per byte.
  EXPECT_THAT(tokenizer->Encode("xyz", false), ElementsAre(Id(*tokenizer, "x"), Id(*tokenizer, "y"), Id(*tokenizer, "z")));
}

TEST(TokenizerTest, PairAndStringMergeFormsAgree) {
  TestTokenizerSpec pairs;
  pairs.merges_as_pairs = true;
  auto a = Load({});
  auto b = Load(pairs);
  const std::string text = "the thing, hello world\n\nthe end  ";
  EXPECT_EQ(a->Encode(text, false), b->Encode(text, false));
}

TEST(TokenizerTest, ByteLevelRoundTripsArbitraryUtf8) {
  auto tokenizer = Load({});
  const std::string text = "héllo 世界 🤖 \t\n  مرحبا नमस्ते\r\n";
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(text, false), false), text);
}

TEST(TokenizerTest, InvalidUtf8IsReplacedNotCrashed) {
  auto tokenizer = Load({});
  const std::string text = "ok \xFF\xFE bad \xE4\xB8";
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode(text, false), false), "ok \xEF\xBF\xBD\xEF\xBF\xBD bad \xEF\xBF\xBD");
}

TEST(TokenizerTest, SpecialTokensSplitBeforePreTokenization) {
  TestTokenizerSpec spec;
  spec.special_tokens = {"<|im_start|>", "<|im_end|>"};
  auto tokenizer = Load(spec);
  const int32_t start = Id(*tokenizer, "<|im_start|>");
  const int32_t end = Id(*tokenizer, "<|im_end|>");
  EXPECT_THAT(tokenizer->Encode("<|im_start|>hello<|im_end|>", false),
              ElementsAre(start, Id(*tokenizer, "hello"), end));
  // A partial marker is plain text.
  EXPECT_EQ(tokenizer->Encode("<|im_sta", false).size(), 8u);
  EXPECT_TRUE(tokenizer->IsSpecialToken(start));
  EXPECT_EQ(tokenizer->Decode({start, Id(*tokenizer, "hello"), end}, /*skip_special_tokens=*/true), "hello");
  EXPECT_EQ(tokenizer->Decode({start, Id(*tokenizer, "hello"), end}, false), "<|im_start|>hello<|im_end|>");
}

TEST(TokenizerTest, TemplateProcessingAddsBos) {
  TestTokenizerSpec spec;
  spec.special_tokens = {"<|begin_of_text|>"};
  spec.bos_token = "<|begin_of_text|>";
  auto tokenizer = Load(spec);
  const int32_t bos = Id(*tokenizer, "<|begin_of_text|>");
  EXPECT_THAT(tokenizer->Encode("hello", true), ElementsAre(bos, Id(*tokenizer, "hello")));
  EXPECT_THAT(tokenizer->Encode("hello", false), ElementsAre(Id(*tokenizer, "hello")));
}

TEST(TokenizerTest, Gpt2ByteLevelRegexSplitsContractionsAndSpaces) {
  TestTokenizerSpec spec;
  spec.pre_tokenizer = "gpt2";
  auto tokenizer = Load(spec);
  // "  the": the regex `\s+(?!\S)` leaves the last space to the word: [" ", " the"], so the
  // "  " merge (ĠĠ) must not apply; " the" then merges h+e first (rank order), leaving Ġ t he.
  const int32_t space = Id(*tokenizer, "\xC4\xA0");
  EXPECT_THAT(tokenizer->Encode("  the", false),
              ElementsAre(space, space, Id(*tokenizer, "t"), Id(*tokenizer, "he")));
  EXPECT_THAT(tokenizer->Encode("   x", false), ElementsAre(Id(*tokenizer, "\xC4\xA0\xC4\xA0"), space, Id(*tokenizer, "x")));
}

TEST(TokenizerTest, NfcNormalizerComposes) {
  TestTokenizerSpec spec;
  spec.normalizer = R"({"type":"Sequence","normalizers":[{"type":"NFC"}]})";
  auto tokenizer = Load(spec);
  EXPECT_EQ(tokenizer->Encode("e\xCC\x81", false), tokenizer->Encode("\xC3\xA9", false));
  EXPECT_EQ(tokenizer->Decode(tokenizer->Encode("e\xCC\x81", false), false), "\xC3\xA9");
}

TEST(TokenizerTest, UnsupportedComponentsAreNamed) {
  std::string json = MakeTokenizerJson({});
  const auto replace = [&](const std::string& from, const std::string& to) {
    std::string copy = json;
    copy.replace(copy.find(from), from.size(), to);
    return copy;
  };
  auto bad_normalizer = Tokenizer::FromJson(replace("\"normalizer\":null", R"("normalizer":{"type":"Lowercase"})"), "");
  ASSERT_FALSE(bad_normalizer.ok());
  EXPECT_THAT(bad_normalizer.status().message(), HasSubstr("normalizer type \"Lowercase\" is not supported"));
  auto bad_model = Tokenizer::FromJson(replace("\"type\":\"BPE\"", "\"type\":\"WordPiece\""), "");
  ASSERT_FALSE(bad_model.ok());
  EXPECT_THAT(bad_model.status().message(), HasSubstr("model type \"WordPiece\" is not supported"));
  auto bad_decoder = Tokenizer::FromJson(replace(R"("decoder":{"type":"ByteLevel"})", R"("decoder":{"type":"Metaspace"})"), "");
  ASSERT_FALSE(bad_decoder.ok());
  EXPECT_THAT(bad_decoder.status().message(), HasSubstr("decoder type \"Metaspace\" is not supported"));
}

TEST(TokenizerTest, FromFileReadsConfigAndChatTemplate) {
  TestTokenizerSpec spec;
  spec.special_tokens = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
  const std::string dir = testing::WriteTokenizerDir("qwen_like", spec, "<|im_end|>", "<|im_start|>");
  auto tokenizer = Tokenizer::FromFile(dir);
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  EXPECT_EQ((*tokenizer)->eos_id(), (*tokenizer)->TokenToId("<|im_end|>"));
  EXPECT_EQ((*tokenizer)->pad_id(), (*tokenizer)->eos_id());
  EXPECT_THAT((*tokenizer)->config().chat_template, HasSubstr("<|im_start|>"));
  EXPECT_EQ((*tokenizer)->vocab_size(), *(*tokenizer)->TokenToId("<|endoftext|>") + 1);
  auto missing = Tokenizer::FromFile(dir + "/nope");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST(UnicodeNfcTest, ComposesReordersAndKeepsCompatibilityForms) {
  EXPECT_EQ(NormalizeNfc("A\xCC\x8A"), "\xC3\x85");                  // A + ring -> Å
  EXPECT_EQ(NormalizeNfc("\xE2\x84\xAB"), "\xC3\x85");               // Angstrom sign -> Å
  EXPECT_EQ(NormalizeNfc("\xE1\x84\x92\xE1\x85\xA1\xE1\x86\xAB"), "\xED\x95\x9C");  // Hangul jamo -> 한
  EXPECT_EQ(NormalizeNfc("q\xCC\x87\xCC\xA3"), "q\xCC\xA3\xCC\x87");  // marks reordered by class
  EXPECT_EQ(NormalizeNfc("\xEF\xAC\x81"), "\xEF\xAC\x81");            // ﬁ is compatibility-only
  EXPECT_EQ(NormalizeNfc("plain ascii"), "plain ascii");
}

}  // namespace
}  // namespace ftd::data
