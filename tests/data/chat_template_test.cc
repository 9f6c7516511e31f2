// The chat template interpreter (engine/data/jinja) and ChatTemplate: rendering semantics that
// transformers' jinja2 environment has (expected strings checked against jinja2 3.1 with
// transformers' settings), errors that name the template line and column, generation spans,
// loss masks, and a no-crash pass over mutated real templates. Byte parity with transformers on
// real model templates is tests/python/test_chat_template_parity.py.
#include <cstdlib>
#include <ctime>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include "engine/data/chat_format.h"
#include "engine/data/chat_template.h"
#include "engine/data/jinja/template.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/data/test_tokenizer_util.h"

namespace ftd::data {
namespace {

using ::testing::HasSubstr;
using jinja::Template;
using jinja::Value;
using nlohmann::ordered_json;

absl::StatusOr<std::string> Render(const std::string& source, const std::string& variables_json = "{}") {
  auto parsed = Template::Parse(source);
  if (!parsed.ok()) return parsed.status();
  std::vector<std::pair<std::string, Value>> variables;
  const ordered_json vars = ordered_json::parse(variables_json);
  for (auto it = vars.begin(); it != vars.end(); ++it) variables.emplace_back(it.key(), Value::FromJson(it.value()));
  auto rendered = (*parsed)->Render(variables);
  if (!rendered.ok()) return rendered.status();
  return rendered->text;
}

struct RenderCase {
  const char* source;
  const char* variables;
  const char* expected;
};

class JinjaRenderTest : public ::testing::TestWithParam<RenderCase> {};

TEST_P(JinjaRenderTest, MatchesJinja2) {
  auto out = Render(GetParam().source, GetParam().variables);
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(*out, GetParam().expected) << GetParam().source;
}

// Expected outputs are jinja2's (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks).
INSTANTIATE_TEST_SUITE_P(
    Semantics, JinjaRenderTest,
    ::testing::Values(
        // whitespace control: trim_blocks, lstrip_blocks, -, +, comments, trailing newline dropped
        RenderCase{"  {% if true %}\n  yes\n  {% endif %}\n{{- 'x' -}}\n  z  {#- c -#}  w\n", "{}", "  yes\nxzw"},
        RenderCase{"a  {%+ if true %}b{% endif +%}  \nc", "{}", "a  b  \nc"},
        RenderCase{"{% raw %}{{ not }}{% endraw %}", "{}", "{{ not }}"},
        // scoping: loop bodies are scopes, if blocks are not; namespace carries state out
        RenderCase{"{% set x = 0 %}{% for i in range(3) %}{{ x }}{% set x = x + 1 %}{{ x }};{% endfor %}{{ x }}", "{}",
                   "01;01;01;0"},
        RenderCase{"{% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }}", "{}", "2"},
        RenderCase{"{% set ns = namespace(a=1) %}{% for i in range(3) %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }}",
                   "{}", "4"},
        RenderCase{"{% for i in [1] %}{{ x }}{% endfor %}{% set x = 5 %}{{ x }}", R"({"x": 3})", "5"},
        RenderCase{"{{ x }}{% set x = 5 %}{{ x }}", R"({"x": 3})", "35"},
        // loops: loop variables, filters, else, break/continue (else also after a first-iteration break)
        RenderCase{"{% for a in 'xyz' %}{{ loop.index }}{{ loop.first }}{{ loop.last }}{{ loop.revindex0 }}|{% endfor %}",
                   "{}", "1TrueFalse2|2FalseFalse1|3FalseTrue0|"},
        RenderCase{"{% for i in range(5) if i is odd %}{{ i }}/{{ loop.length }} {% endfor %}", "{}", "1/2 3/2 "},
        RenderCase{"{% for i in range(9) %}{% if i == 1 %}{% continue %}{% endif %}{% if i == 3 %}{% break %}{% endif %}"
                   "{{ i }}{% endfor %}",
                   "{}", "02"},
        RenderCase{"{% for t in [1, 2] %}a{% break %}{% else %}E{% endfor %}{% for t in [] %}{% else %}F{% endfor %}",
                   "{}", "aEF"},
        RenderCase{"{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}", R"({"d": {"b": 1, "a": [2]}})",
                   "b=1;a=[2];"},
        // Python values: str() and repr(), floats, division, slicing by code point
        RenderCase{"{{ [1, 'a', none, true, 1.5, (2,)] }}{{ {'k': 'v'} }}{{ 1/2 }}{{ 7//2 }}{{ -7//2 }}{{ -7 % 3 }}{{ 1e20 }}"
                   "{{ 0.1 + 0.2 }}{{ 1e-5 }}",
                   "{}", "[1, 'a', None, True, 1.5, (2,)]{'k': 'v'}0.53-421e+200.300000000000000041e-05"},
        RenderCase{"{{ s[::-1] }}{{ s[1] }}{{ s | length }}{{ s[1:-1] }}", R"({"s": "héllo"})", "olléhé5éll"},
        // filters, including transformers' tojson (no HTML escaping, ensure_ascii=False)
        RenderCase{"{{ x | tojson }}|{{ x | tojson(indent=2) }}", R"({"x": {"a": [1, 2.0, "é<\n"]}})",
                   "{\"a\": [1, 2.0, \"é<\\n\"]}|{\n  \"a\": [\n    1,\n    2.0,\n    \"é<\\n\"\n  ]\n}"},
        RenderCase{"{{ m | selectattr('role', 'equalto', 'user') | map(attribute='content') | join(',') }}"
                   "{{ m | rejectattr('role', 'equalto', 'user') | list | length }}",
                   R"({"m": [{"role": "user", "content": "a"}, {"role": "bot", "content": "b"}, {"role": "user", "content": "c"}]})",
                   "a,c1"},
        RenderCase{"{{ '  a  ' | trim }}|{{ 'a\nb' | indent(2) }}|{{ none | default('d') }}|{{ '' | default('e', true) }}"
                   "|{{ 3.7 | int }}|{{ 'x' | int }}|{{ [3, 1, 2] | sort }}|{{ 'a b' | title }}",
                   "{}", "a|a\n  b|None|e|3|0|[1, 2, 3]|A B"},
        RenderCase{"{{ '<b>' | safe + '<i>' }}|{{ '<i>' + '<b>' | safe }}", "{}", "<b>&lt;i&gt;|<i><b>"},
        // str and dict methods
        RenderCase{"{{ s.split('</think>')[-1].lstrip('\\n') }}|{{ s.startswith('<think>') }}|{{ 'a,b'.split(',') }}"
                   "|{{ ' x '.strip() }}|{{ 'abc'.replace('b', 'B') }}|{{ d.get('q', 1) }}|{{ 'a {} {x}'.format(1, x=2) }}",
                   R"({"s": "<think>r</think>\n\nans", "d": {}})", "ans|True|['a', 'b']|x|aBc|1|a 1 2"},
        // tests and operators
        RenderCase{"{{ x is defined }}{{ y is defined }}{{ y is none }}{{ 'a' is string }}{{ d is mapping }}{{ 3 is odd }}"
                   "{{ 'b' in 'abc' }}{{ 'k' in d }}{{ 1 < 2 < 3 }}{{ 'x' if false else 'y' }}{{ 1 if false }}",
                   R"({"x": 1, "d": {"k": 1}})", "TrueFalseFalseTrueTrueTrueTrueTrueTruey"},
        // macros with defaults and keywords
        RenderCase{"{% macro f(a, b=2, c='x') %}{{ a }}{{ b }}{{ c }}{% endmacro %}{{ f(1) }}{{ f(1, 3) }}{{ f(1, c='y') }}",
                   "{}", "12x13x12y"},
        // sandbox: internals and mutating methods are undefined
        RenderCase{"[{{ ''.__class__ }}][{{ d.update }}]", R"({"d": {}})", "[][]"}));

struct ErrorCase {
  const char* source;
  const char* variables;
  const char* message;  // expected substring, with the line and column
};

class JinjaErrorTest : public ::testing::TestWithParam<ErrorCase> {};

TEST_P(JinjaErrorTest, NamesLineAndColumn) {
  auto out = Render(GetParam().source, GetParam().variables);
  ASSERT_FALSE(out.ok()) << GetParam().source << " rendered " << *out;
  EXPECT_THAT(std::string(out.status().message()), HasSubstr(GetParam().message));
}

INSTANTIATE_TEST_SUITE_P(
    Errors, JinjaErrorTest,
    ::testing::Values(
        ErrorCase{"line one\n{% for x in y %}\n{{ x }}", "{}",
                  "chat template line 3, column 8: syntax error: unexpected end of template: a block is not closed "
                  "(expected 'endfor' or 'else')"},
        ErrorCase{"{{ 1 + }}", "{}", "chat template line 1, column 8: syntax error: unexpected end of print statement"},
        ErrorCase{"a\n  {% include 'x.jinja' %}", "{}",
                  "chat template line 2, column 6: syntax error: the 'include' statement is not available"},
        ErrorCase{"{% frobnicate %}", "{}", "line 1, column 4: syntax error: Encountered unknown tag 'frobnicate'"},
        ErrorCase{"{% endif %}", "{}", "line 1, column 4: syntax error: unexpected 'endif'"},
        ErrorCase{"{{ 'abc }}", "{}", "line 1, column 4: syntax error: unexpected end of string literal"},
        ErrorCase{"{# never closed", "{}", "line 1, column 1: syntax error: Missing end of comment tag"},
        ErrorCase{"ok\n{{ messages[0].content | nosuchfilter }}", R"({"messages": [{"content": "x"}]})",
                  "chat template line 2, column 26: No filter named 'nosuchfilter'."},
        ErrorCase{"{{ x is nosuchtest }}", "{}", "line 1, column 9: No test named 'nosuchtest'."},
        ErrorCase{"{{ a.b.c }}", R"({"a": {}})", "line 1, column 7: 'dict object' has no attribute 'b'"},
        ErrorCase{"{{ 1 + 'a' }}", "{}", "line 1, column 6: unsupported operand type(s) for +: 'int' and 'str'"},
        ErrorCase{"\n\n   {{- raise_exception('Conversation roles must alternate user/assistant') }}", "{}",
                  "chat template line 3, column 8: the template raised an exception: Conversation roles must alternate "
                  "user/assistant"},
        ErrorCase{"{% set l = [] %}{{ l.append(1) }}", "{}",
                  "access to attribute 'append' of 'list' object is unsafe."},
        ErrorCase{"{% set ns = namespace() %}{% set ns._x = 1 %}", "{}",
                  "cannot store underscore-prefixed attributes on a namespace"},
        ErrorCase{"{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}", "{}", "maximum macro recursion depth exceeded"},
        ErrorCase{"{{ range(1000000) | length }}", "{}", "Range too big"}));

TEST(JinjaTest, RaiseExceptionIsFailedPrecondition) {
  auto parsed = Template::Parse("{{ raise_exception('nope') }}");
  ASSERT_TRUE(parsed.ok());
  auto out = (*parsed)->Render({});
  EXPECT_EQ(out.status().code(), absl::StatusCode::kFailedPrecondition);
  auto other = Render("{{ x.y.z }}");
  EXPECT_EQ(other.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(JinjaTest, GenerationBlocksGiveSpans) {
  auto parsed = Template::Parse(
      "{% for m in messages %}<{{ m.role }}>{% if m.role == 'assistant' %}{% generation %}{{ m.content }}</s>"
      "{% endgeneration %}{% else %}{{ m.content }}{% endif %}\n{% endfor %}");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_TRUE((*parsed)->has_generation_blocks());
  const Value messages = Value::FromJson(ordered_json::parse(
      R"([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}, {"role": "user", "content": "x"},
          {"role": "assistant", "content": "ok"}])"));
  auto out = (*parsed)->Render({{"messages", messages}});
  ASSERT_TRUE(out.ok()) << out.status();
  EXPECT_EQ(out->text, "<user>hi<assistant>yo</s><user>x<assistant>ok</s>");  // trim_blocks ate the newlines
  ASSERT_EQ(out->generation_spans.size(), 2u);
  EXPECT_EQ(out->text.substr(out->generation_spans[0].first,
                             out->generation_spans[0].second - out->generation_spans[0].first),
            "yo</s>");
  EXPECT_EQ(out->text.substr(out->generation_spans[1].first,
                             out->generation_spans[1].second - out->generation_spans[1].first),
            "ok</s>");
}

TEST(JinjaTest, StrftimeNowUsesTheGivenClock) {
  auto parsed = Template::Parse("{{ strftime_now('%d %b %Y') }}");
  ASSERT_TRUE(parsed.ok());
  jinja::RenderOptions options;
  options.now = [] { return std::time_t{1721952000}; };  // 2024-07-26 00:00 UTC
  setenv("TZ", "UTC", 1);
  tzset();
  auto out = (*parsed)->Render({}, options);
  ASSERT_TRUE(out.ok());
  EXPECT_EQ(out->text, "26 Jul 2024");
}

std::string ReadFixture(const std::string& name) {
  std::ifstream in(std::string(FTD_SOURCE_DIR) + "/tests/data/chat_templates/" + name);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

// Random byte edits of real templates, and random inputs to them: every parse and render ends
// in text or an error, never a crash or a hang.
TEST(JinjaTest, MutatedRealTemplatesNeverCrash) {
  const std::vector<std::string> sources = {ReadFixture("Qwen-Qwen3-0.6B.jinja"),
                                            ReadFixture("openai-gpt-oss-120b.jinja"),
                                            ReadFixture("meta-llama-Llama-3.1-8B-Instruct.jinja")};
  const std::string alphabet = "{}%#-+|.()[]'\"\n :,=~!<>*/0123456789abcdefgnotifelsendfrom";
  const Value messages = Value::FromJson(ordered_json::parse(
      R"([{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "<think>t</think>a", "tool_calls": [{"function": {"name": "f", "arguments": {"x": 1}}}]},
          {"role": "tool", "content": 5}, {"role": "assistant", "content": null}])"));
  std::mt19937 rng(7);
  int parsed_ok = 0, rendered_ok = 0, runs = 0;
  for (int i = 0; i < 600; ++i) {
    std::string source = sources[i % sources.size()];
    ASSERT_FALSE(source.empty());
    const int edits = 1 + static_cast<int>(rng() % 4);
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % source.size();
      switch (rng() % 3) {
        case 0: source.erase(pos, 1 + rng() % 8); break;
        case 1: source.insert(pos, 1, alphabet[rng() % alphabet.size()]); break;
        default: source[pos] = alphabet[rng() % alphabet.size()];
      }
    }
    ++runs;
    auto parsed = Template::Parse(source);
    if (!parsed.ok()) {
      EXPECT_THAT(std::string(parsed.status().message()), HasSubstr("chat template line "));
      continue;
    }
    ++parsed_ok;
    auto out = (*parsed)->Render({{"messages", messages}, {"add_generation_prompt", Value(i % 2 == 0)},
                                  {"tools", Value::None()}});
    if (out.ok()) {
      ++rendered_ok;
    } else {
      EXPECT_THAT(std::string(out.status().message()), HasSubstr("chat template line "));
    }
  }
  EXPECT_GT(parsed_ok, 0);
  EXPECT_GT(rendered_ok, 0);
  std::cout << "mutated templates: " << runs << " runs, " << parsed_ok << " parsed, " << rendered_ok << " rendered\n";
}

// ---- ChatTemplate and ChatFormatter on a small byte-level tokenizer ----

std::unique_ptr<Tokenizer> ChatMlTokenizer(const std::string& name, const std::string& chat_template) {
  testing::TestTokenizerSpec spec;
  spec.special_tokens = {"<|im_start|>", "<|im_end|>", "<|endoftext|>"};
  const std::string path = testing::WriteTempFile(name + "/tokenizer.json", testing::MakeTokenizerJson(spec));
  testing::WriteTempFile(name + "/tokenizer_config.json",
                         nlohmann::json({{"eos_token", "<|im_end|>"}, {"pad_token", "<|endoftext|>"}}).dump());
  testing::WriteTempFile(name + "/chat_template.jinja", chat_template);
  auto tokenizer = Tokenizer::FromFile(path);
  EXPECT_TRUE(tokenizer.ok()) << tokenizer.status();
  return tokenizer.ok() ? std::move(*tokenizer) : nullptr;
}

std::string TrainedText(const Tokenizer& tokenizer, const TokenizedDocument& doc) {
  std::string out;
  std::vector<int32_t> run;
  for (size_t i = 0; i <= doc.labels.size(); ++i) {
    if (i < doc.labels.size() && doc.labels[i] != kIgnoreLabel) {
      EXPECT_EQ(doc.labels[i], doc.input_ids[i]);
      run.push_back(doc.labels[i]);
    } else if (!run.empty()) {
      out += "[" + tokenizer.Decode(run, false) + "]";
      run.clear();
    }
  }
  return out;
}

ChatConversation Conversation(const std::string& messages_json) {
  ChatConversation conversation;
  conversation.messages = ordered_json::parse(messages_json);
  return conversation;
}

TEST(ChatTemplateTest, QwenTemplateMasksAssistantTurnsFromPrefixRenders) {
  auto tokenizer = ChatMlTokenizer("qwen3", ReadFixture("Qwen-Qwen3-0.6B.jinja"));
  auto formatter = ChatFormatter::Create(tokenizer.get());
  ASSERT_TRUE(formatter.ok()) << formatter.status();
  EXPECT_TRUE((*formatter)->uses_template());
  EXPECT_THAT((*formatter)->Describe(), HasSubstr("the model's chat template"));
  const ChatConversation conversation = Conversation(
      R"([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hello"},
          {"role": "assistant", "content": "the thing", "reasoning_content": "think"},
          {"role": "user", "content": "again"}, {"role": "assistant", "content": "hello world", "reasoning_content": "why"}])");
  auto document = (*formatter)->Format(conversation);
  ASSERT_TRUE(document.ok()) << document.status();
  auto rendered = (*formatter)->Render(conversation);
  ASSERT_TRUE(rendered.ok());
  // Tokens are the rendered text's, encoded as a whole.
  EXPECT_EQ(document->input_ids, tokenizer->Encode(*rendered, false));
  // History turns lose their reasoning (as Qwen3 renders them); the last keeps it.
  EXPECT_EQ(TrainedText(*tokenizer, *document),
            "[the thing<|im_end|>][<think>\nwhy\n</think>\n\nhello world<|im_end|>]");
}

TEST(ChatTemplateTest, GenerationBlocksDecideTheMask) {
  auto tokenizer = ChatMlTokenizer(
      "gen", "{% for m in messages %}<|im_start|>{{ m.role }}\n{% if m.role == 'assistant' %}{% generation %}"
             "{{ m.content }}<|im_end|>{% endgeneration %}{% else %}{{ m.content }}<|im_end|>{% endif %}\n{% endfor %}");
  auto formatter = ChatFormatter::Create(tokenizer.get());
  ASSERT_TRUE(formatter.ok()) << formatter.status();
  EXPECT_THAT((*formatter)->Describe(), HasSubstr("{% generation %}"));
  auto document = (*formatter)->Format(Conversation(
      R"([{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the world"}])"));
  ASSERT_TRUE(document.ok()) << document.status();
  EXPECT_EQ(TrainedText(*tokenizer, *document), "[the world<|im_end|>]");
}

TEST(ChatTemplateTest, TemplateErrorsReachTheFormatter) {
  auto bad = ChatMlTokenizer("bad", "{% for m in messages %}{{ m.content }");
  auto formatter = ChatFormatter::Create(bad.get());
  ASSERT_FALSE(formatter.ok());
  EXPECT_THAT(std::string(formatter.status().message()), HasSubstr("chat template line 1, column"));

  auto strict = ChatMlTokenizer(
      "strict", "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}"
                "{{ raise_exception('role ' + m.role + ' is not supported') }}{% endif %}{{ m.content }}{% endfor %}");
  auto strict_formatter = ChatFormatter::Create(strict.get());
  ASSERT_TRUE(strict_formatter.ok());
  auto document = (*strict_formatter)->Format(Conversation(
      R"([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "y"}])"));
  ASSERT_FALSE(document.ok());
  EXPECT_THAT(std::string(document.status().message()),
              HasSubstr("the template raised an exception: role tool is not supported"));
}

TEST(ChatTemplateTest, ModelsWithoutATemplateUseTheBuiltInLayout) {
  testing::TestTokenizerSpec spec;
  spec.special_tokens = {"<|im_start|>", "<|im_end|>"};
  auto tokenizer = Tokenizer::FromFile(testing::WriteTempFile("notemplate/tokenizer.json", testing::MakeTokenizerJson(spec)));
  ASSERT_TRUE(tokenizer.ok());
  auto formatter = ChatFormatter::Create(tokenizer->get());
  ASSERT_TRUE(formatter.ok()) << formatter.status();
  EXPECT_FALSE((*formatter)->uses_template());
  EXPECT_THAT((*formatter)->Describe(), HasSubstr("built-in chatml layout (the model has no chat template)"));
  ChatConversation with_tools = Conversation(R"([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}])");
  with_tools.tools = ordered_json::array({{{"type", "function"}}});
  EXPECT_THAT(std::string((*formatter)->Format(with_tools).status().message()), HasSubstr("need the model's chat template"));
}

TEST(ChatTemplateTest, MaskFromSpansFollowsTransformersOverlapRule) {
  // Tokens [0,2) [2,5) [5,9) [9,10); span [3,6) overlaps tokens 1 and 2.
  const std::vector<std::pair<size_t, size_t>> offsets = {{0, 2}, {2, 5}, {5, 9}, {9, 10}};
  EXPECT_EQ(MaskFromSpans(offsets, {{3, 6, true}}), (std::vector<bool>{false, true, true, false}));
  // An inexact end does not take a token that reaches past it.
  EXPECT_EQ(MaskFromSpans(offsets, {{3, 6, false}}), (std::vector<bool>{false, true, false, false}));
  EXPECT_EQ(MaskFromSpans(offsets, {{0, 1, true}, {9, 10, true}}), (std::vector<bool>{true, false, false, true}));
}

}  // namespace
}  // namespace ftd::data
