#include "common/command_flags.h"

#include "absl/strings/str_cat.h"

namespace ftd {

absl::Status ParseCommandFlags(int argc, char** argv, const std::vector<CommandFlag>& flags) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    const CommandFlag* match = nullptr;
    for (const CommandFlag& f : flags) {
      if (arg == f.name) match = &f;
    }
    if (match == nullptr) return absl::InvalidArgumentError(absl::StrCat("unknown flag ", arg));
    if (match->value != nullptr) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat(arg, " needs a value"));
      *match->value = argv[++i];
    } else if (match->flag != nullptr) {
      *match->flag = match->switch_value;
    }
  }
  return absl::OkStatus();
}

}  // namespace ftd
