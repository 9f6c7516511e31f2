#include "engine/data/chat_format.h"

#include <fstream>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "engine/data/chat_template.h"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

using testing::TestTokenizerSpec;

struct FamilyCase {
  const char* name;
  std::vector<std::string> specials;
  const char* template_marker;
  const char* eos;
  ChatFamily family;
  const char* assistant_end;  // the end-of-turn token trained with the last assistant turn
};

class ChatFormatTest : public ::testing::TestWithParam<FamilyCase> {};

const std::vector<ChatMessage> kConversation = {
    {"system", "Be brief."},
    {"user", "hello world"},
    {"assistant", "the thing"},
    {"user", "again\n\nplease"},
    {"assistant", " hello  world"},
};

TEST_P(ChatFormatTest, DetectsFamilyMasksAssistantTurnsAndMatchesWholeStringEncoding) {
  const FamilyCase& c = GetParam();
  TestTokenizerSpec spec;
  spec.special_tokens = c.specials;
  auto tokenizer = Tokenizer::FromFile(testing::WriteTokenizerDir(c.name, spec, c.eos, c.template_marker));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto family = DetectChatFamily(**tokenizer);
  ASSERT_TRUE(family.ok()) << family.status();
  EXPECT_EQ(*family, c.family);
  // The fixture's tokenizer_config.json has a (stub) chat template; the built-in layouts are
  // the fallback for models without one, so the family is named here.
  auto formatter = ChatFormatter::Create(tokenizer->get(), *family);
  ASSERT_TRUE(formatter.ok()) << formatter.status();
  EXPECT_FALSE((*formatter)->uses_template());
  auto document = (*formatter)->Format(kConversation);
  ASSERT_TRUE(document.ok()) << document.status();
  ASSERT_EQ(document->input_ids.size(), document->labels.size());

  // Encoding piecewise equals encoding the rendered text (specials split out as HF does).
  const std::string rendered = (*formatter)->Render(kConversation);
  EXPECT_EQ(document->input_ids, (*tokenizer)->Encode(rendered, /*add_special_tokens=*/false)) << rendered;

  // The trained tokens decode to exactly the assistant contents and their end tokens.
  std::vector<int32_t> trained;
  for (size_t i = 0; i < document->labels.size(); ++i) {
    if (document->labels[i] != kIgnoreLabel) {
      EXPECT_EQ(document->labels[i], document->input_ids[i]);
      trained.push_back(document->labels[i]);
    }
  }
  const std::string trained_text = (*tokenizer)->Decode(trained, false);
  const std::string first_reply = c.family == ChatFamily::kLlama3 ? "the thing" : "the thing";
  EXPECT_EQ(trained_text.find(first_reply), 0u) << trained_text;
  EXPECT_NE(trained_text.find(c.assistant_end), std::string::npos) << trained_text;
  EXPECT_EQ(trained_text.find("Be brief"), std::string::npos);
  EXPECT_EQ(trained_text.find("please"), std::string::npos);
  EXPECT_EQ(trained_text.find("assistant"), std::string::npos) << "role headers are never trained";
  // The last trained token is the final end-of-turn marker.
  EXPECT_EQ(trained.back(), *(*tokenizer)->TokenToId(c.assistant_end));

  // train_on_all_turns trains user content too.
  ChatFormatOptions all;
  all.train_on_all_turns = true;
  auto all_formatter = ChatFormatter::Create(tokenizer->get(), *family, all);
  ASSERT_TRUE(all_formatter.ok());
  auto all_document = (*all_formatter)->Format(kConversation);
  ASSERT_TRUE(all_document.ok());
  size_t all_trained = 0;
  for (int32_t label : all_document->labels) all_trained += label != kIgnoreLabel;
  EXPECT_GT(all_trained, trained.size());
}

INSTANTIATE_TEST_SUITE_P(
    Families, ChatFormatTest,
    ::testing::Values(
        FamilyCase{"chatml", {"<|im_start|>", "<|im_end|>", "<|endoftext|>"}, "<|im_start|>", "<|im_end|>",
                   ChatFamily::kChatMl, "<|im_end|>"},
        FamilyCase{"llama3",
                   {"<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"},
                   "<|start_header_id|>", "<|eot_id|>", ChatFamily::kLlama3, "<|eot_id|>"},
        FamilyCase{"deepseek",
                   {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<｜User｜>", "<｜Assistant｜>"},
                   "<｜User｜>", "<｜end▁of▁sentence｜>", ChatFamily::kDeepSeekV3, "<｜end▁of▁sentence｜>"},
        FamilyCase{"harmony", {"<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"}, "<|channel|>",
                   "<|return|>", ChatFamily::kHarmony, "<|return|>"}),
    [](const auto& info) { return std::string(info.param.name); });

TEST(ChatFormatErrorsTest, MissingMarkerIsNamed) {
  TestTokenizerSpec spec;
  spec.special_tokens = {"<|im_start|>"};  // no <|im_end|>
  auto tokenizer = Tokenizer::FromJson(testing::MakeTokenizerJson(spec), "");
  ASSERT_TRUE(tokenizer.ok());
  auto formatter = ChatFormatter::Create(tokenizer->get(), ChatFamily::kChatMl);
  ASSERT_FALSE(formatter.ok());
  EXPECT_THAT(formatter.status().message(), ::testing::HasSubstr("\"<|im_end|>\" is not in the vocabulary"));
  EXPECT_EQ(DetectChatFamily(**tokenizer).status().code(), absl::StatusCode::kNotFound);
}

// The built-in harmony layout (for a GPT-OSS-style vocabulary without a chat template) against
// GPT-OSS's own template (tests/data/chat_templates/openai-gpt-oss-120b.jinja, which
// test_chat_template_parity.py checks byte for byte against transformers): the same text and
// token ids for the conversations the layout accepts; clear errors for those it cannot render.
TEST(ChatFormatHarmonyTest, BuiltInLayoutRendersAsGptOssOwnTemplate) {
  std::ifstream in(std::string(FTD_SOURCE_DIR) + "/tests/data/chat_templates/openai-gpt-oss-120b.jinja");
  std::stringstream source;
  source << in.rdbuf();
  ASSERT_FALSE(source.str().empty());
  TestTokenizerSpec spec;
  spec.special_tokens = {"<|start|>", "<|message|>", "<|end|>", "<|channel|>", "<|return|>"};
  auto tokenizer = Tokenizer::FromFile(testing::WriteTokenizerDir("harmony-real", spec, "<|return|>", "<|channel|>"));
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto real = ChatTemplate::Create(source.str(), (*tokenizer)->config());
  ASSERT_TRUE(real.ok()) << real.status();
  auto built_in = ChatFormatter::Create(tokenizer->get(), ChatFamily::kHarmony);
  ASSERT_TRUE(built_in.ok()) << built_in.status();

  const std::vector<std::vector<ChatMessage>> conversations = {
      kConversation,                                                                     // system + two turns
      {{"user", "hi"}, {"assistant", "hello"}},                                          // no system
      {{"user", "hi"}, {"assistant", "hello"}, {"user", "and?"}},                        // ends with the user
      {{"developer", "Answer in French."}, {"user", "hi"}, {"assistant", "bonjour"}},    // developer role
      {{"user", "  spaces\n\nand lines  "}, {"assistant", ""}},                         // empty reply
  };
  for (const auto& messages : conversations) {
    ChatConversation conversation;
    for (const ChatMessage& m : messages) conversation.messages.push_back({{"role", m.role}, {"content", m.content}});
    auto theirs = (*real)->Render(conversation, /*add_generation_prompt=*/false, nullptr);
    ASSERT_TRUE(theirs.ok()) << theirs.status();
    const std::string ours = (*built_in)->Render(messages);
    EXPECT_EQ(ours, theirs->text);
    auto document = (*built_in)->Format(messages);
    ASSERT_TRUE(document.ok()) << document.status();
    EXPECT_EQ(document->input_ids, (*tokenizer)->Encode(theirs->text, /*add_special_tokens=*/false)) << ours;
  }

  // What the layout cannot render the same way is refused, naming the message.
  auto tool = (*built_in)->Format(std::vector<ChatMessage>{{"user", "hi"}, {"assistant", "calling"}, {"tool", "42"}});
  ASSERT_FALSE(tool.ok());
  EXPECT_THAT(tool.status().message(), ::testing::HasSubstr("\"messages\"[2] has role tool"));
  auto late_system = (*built_in)->Format(std::vector<ChatMessage>{{"user", "hi"}, {"system", "be brief"}, {"assistant", "ok"}});
  ASSERT_FALSE(late_system.ok());
  EXPECT_THAT(late_system.status().message(), ::testing::HasSubstr("\"messages\"[1] has role system"));
}

}  // namespace
}  // namespace ftd::data
