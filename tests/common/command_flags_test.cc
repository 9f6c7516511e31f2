#include "common/command_flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace ftd {
namespace {

struct Args {
  std::vector<std::string> words;
  std::vector<char*> argv;
  explicit Args(std::vector<std::string> w) : words(std::move(w)) {
    for (std::string& s : words) argv.push_back(s.data());
  }
  int argc() const { return static_cast<int>(argv.size()); }
};

TEST(CommandFlags, OptionsAndSwitchesAreSet) {
  std::string input, out;
  bool decode = false, special = true;
  Args a({"tokenize", "--input", "in.txt", "--decode", "--no-special", "--out", "o.txt"});
  ASSERT_TRUE(ParseCommandFlags(a.argc(), a.argv.data(),
                                {{"--input", &input},
                                 {"--out", &out},
                                 {"--decode", nullptr, &decode},
                                 {"--no-special", nullptr, &special, false}})
                  .ok());
  EXPECT_EQ(input, "in.txt");
  EXPECT_EQ(out, "o.txt");
  EXPECT_TRUE(decode);
  EXPECT_FALSE(special);
}

TEST(CommandFlags, ErrorsNameTheFlag) {
  std::string input;
  Args unknown({"cmd", "--inptu", "x"});
  absl::Status st = ParseCommandFlags(unknown.argc(), unknown.argv.data(), {{"--input", &input}});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "unknown flag --inptu");
  Args missing({"cmd", "--input"});
  st = ParseCommandFlags(missing.argc(), missing.argv.data(), {{"--input", &input}});
  EXPECT_EQ(st.message(), "--input needs a value");
  EXPECT_TRUE(input.empty());
}

}  // namespace
}  // namespace ftd
